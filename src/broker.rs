//! An MQTT broker (rumqttd) running inside the daemon, so that coordinosaur works on a machine
//! with no broker installed.
//!
//! [`start`] checks that the address is free, configures rumqttd entirely in code (no config
//! file), runs it on its own threads and returns once it answers an MQTT CONNECT. Only the MQTT
//! 3.1.1 (v4) server is started: no TLS, websocket, console, metrics or prometheus endpoint.
//!
//! rumqttd has no way to stop: once started, the broker lives until the process exits, even if
//! the returned [`EmbeddedBroker`] is dropped.
//!
//! rumqttd logs through `tracing` under the target `rumqttd` (e.g. `rumqttd::server::broker`,
//! `rumqttd::router::routing`). It is chatty: every connect, subscribe and disconnect is logged
//! at `info`, and some ordinary events at `error`: a client that sends DISCONNECT before closing
//! ("no-connection id .. is already gone" or "router-drop"), a TCP connection closed before
//! CONNECT. The daemon's default filter is `info,rumqttd=warn`, and [`BenignDisconnects`] drops
//! the errors of a clean disconnect (see [`log_filter`]).
//!
//! Behaviour of rumqttd 0.20 that callers should know:
//! - It refuses clients whose keep-alive is 0 (`ZeroKeepAlive`), and drops a client that sends
//!   nothing for 1.5 x its keep-alive.
//! - It keeps every published message in memory, in one log per subscribed filter (or per
//!   topic, when nobody subscribed), even after delivery, until that log rotates it out (see
//!   [`MAX_SEGMENT_SIZE`]); logs are never removed. A subscriber that falls further behind than
//!   the retained window silently skips ahead. A new subscriber gets only later messages.
//! - At most 100 QoS 1 messages are in flight to one subscriber (a constant in rumqttd).
//! - It does not set `TCP_NODELAY` on accepted sockets; there is no setting for it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

pub mod log_filter;

pub use log_filter::BenignDisconnects;

/// Largest publish payload the embedded broker accepts, in bytes. The daemon's own payload
/// limit must not exceed it, so that the daemon (not the broker) rejects an oversized message.
pub const MAX_PAYLOAD_SIZE: usize = 16 * 1024 * 1024;

/// rumqttd's `max_payload_size` bounds the whole packet after the fixed header, not only the
/// payload. A v4 PUBLISH adds the topic (2-byte length + up to 65535 bytes) and a 2-byte packet
/// id, so this headroom lets any topic carry a [`MAX_PAYLOAD_SIZE`] payload.
const PUBLISH_HEADROOM: usize = 2 + u16::MAX as usize + 2;

/// Size at which rumqttd closes a topic's in-memory log segment and starts a new one.
/// rumqttd's sample config uses 100 MiB, but rumqttd keeps delivered messages too, so that would
/// let every busy topic hold about a gigabyte; a segment may exceed this by one message.
pub const MAX_SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// Closed segments kept per topic before the oldest is dropped. With [`MAX_SEGMENT_SIZE`] this
/// bounds a topic's retained messages to about 5 x 4 MiB, which is also how far a slow
/// subscriber may fall behind before it loses messages.
const MAX_SEGMENT_COUNT: usize = 4;

/// Name of the thread that runs rumqttd's `Broker::start`.
const THREAD_NAME: &str = "embedded-broker";

/// How long [`start`] waits for rumqttd to accept TCP connections.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between attempts to connect while waiting for rumqttd.
const READY_POLL: Duration = Duration::from_millis(10);

/// Why the embedded broker could not start.
#[derive(thiserror::Error, Debug)]
pub enum BrokerError {
    /// Something else already listens on the address.
    #[error(
        "cannot start the embedded MQTT broker: {addr} is already in use. If a broker already \
         runs there, set [embedded_broker] enabled = false and point [mqtt] host/port at it"
    )]
    AddrInUse {
        /// The address that was asked for.
        addr: SocketAddr,
    },
    /// The address cannot be bound for another reason (not local, permission denied, ...).
    #[error("cannot start the embedded MQTT broker: cannot listen on {addr}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The error from binding a probe listener.
        #[source]
        source: io::Error,
    },
    /// The operating system refused to create the broker thread.
    #[error("cannot start the embedded MQTT broker: cannot spawn its thread")]
    Spawn(#[source] io::Error),
    /// The broker thread ended before accepting connections; rumqttd logs the cause under the
    /// `rumqttd` target.
    #[error("the embedded MQTT broker on {addr} stopped while starting (see the rumqttd log)")]
    Exited {
        /// The address the broker was to listen on.
        addr: SocketAddr,
    },
    /// The broker did not accept TCP connections in time.
    #[error("the embedded MQTT broker did not accept connections on {addr} within {waited:?}")]
    NotReady {
        /// The address the broker was to listen on.
        addr: SocketAddr,
        /// How long [`start`] waited.
        waited: Duration,
    },
}

/// A running embedded broker. Dropping it does not stop the broker (rumqttd cannot be
/// stopped); it runs until the process exits.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// The address rumqttd listens on; its port is never 0.
    addr: SocketAddr,
    /// The thread running `Broker::start`; it only finishes if rumqttd gives up.
    thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// The address the broker listens on. When [`start`] was given port 0 this holds the port
    /// that was picked.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the broker thread is still running (it stops only on a rumqttd failure).
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }
}

/// Starts rumqttd listening on `listen` (MQTT 3.1.1 / v4 server), in-process, on its own
/// threads, and returns once it accepts MQTT connections.
///
/// Port 0 picks a free port; read it back with [`EmbeddedBroker::local_addr`]. This blocks for
/// up to a few seconds; from async code call it through `spawn_blocking` or before serving.
pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
    let addr = probe(listen)?;
    let config = config(addr);
    let thread = thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || run(config, addr))
        .map_err(BrokerError::Spawn)?;
    wait_until_ready(addr, &thread)?;
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(EmbeddedBroker { addr, thread })
}

/// Binds and drops a listener on `listen`, so that a taken port is reported here instead of
/// being logged inside rumqttd's thread. Returns the concrete address (port 0 resolved).
fn probe(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let listener = TcpListener::bind(listen).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => BrokerError::AddrInUse { addr: listen },
        _ => BrokerError::Bind {
            addr: listen,
            source,
        },
    })?;
    listener.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })
}

/// Body of the broker thread: `Broker::start` blocks while the server runs and returns only
/// when every server thread has ended.
fn run(config: Config, addr: SocketAddr) {
    let mut broker = Broker::new(config);
    match broker.start() {
        Ok(()) => tracing::error!(%addr, "embedded MQTT broker stopped"),
        Err(err) => tracing::error!(%addr, cause = %err, "embedded MQTT broker failed"),
    }
}

/// Polls `addr` until rumqttd answers an MQTT CONNECT, the broker thread ends, or
/// [`READY_TIMEOUT`] passes.
///
/// A bare TCP connect would do to know the port is open, but rumqttd logs a connection that
/// closes before sending CONNECT at `error` level, which would print an error on every start.
/// A full handshake also proves that the router thread is serving.
fn wait_until_ready(addr: SocketAddr, thread: &JoinHandle<()>) -> Result<(), BrokerError> {
    let target = connectable(addr);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match handshake(target, deadline) {
            Ok(()) => return Ok(()),
            Err(err) => tracing::trace!(%addr, cause = %err, "embedded MQTT broker not ready yet"),
        }
        if thread.is_finished() {
            return Err(BrokerError::Exited { addr });
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::NotReady {
                addr,
                waited: READY_TIMEOUT,
            });
        }
        thread::sleep(READY_POLL);
    }
}

/// MQTT 3.1.1 CONNECT: protocol "MQTT" level 4, clean session, keep-alive 5 s (rumqttd refuses
/// 0), empty client id (the broker assigns one, so it cannot clash with a real client).
const PROBE_CONNECT: [u8; 14] = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 5, 0, 0];

/// CONNACK with no session present and return code 0 (accepted).
const CONNACK_ACCEPTED: [u8; 4] = [0x20, 2, 0, 0];

/// Connects to `target`, sends CONNECT and expects an accepting CONNACK before `deadline`.
fn handshake(target: SocketAddr, deadline: Instant) -> io::Result<()> {
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    };
    let mut stream = TcpStream::connect_timeout(&target, left()?)?;
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(&PROBE_CONNECT)?;
    stream.set_read_timeout(Some(left()?))?;
    let mut connack = [0; 4];
    stream.read_exact(&mut connack)?;
    if connack != CONNACK_ACCEPTED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected CONNACK {connack:02x?}"),
        ));
    }
    // Close without sending DISCONNECT: rumqttd then handles the disconnection once and logs it
    // at `info`. A DISCONNECT packet makes it handle the disconnection twice and log
    // "no-connection id .. is already gone" at `error`.
    Ok(())
}

/// An address a client can connect to: a wildcard listen address becomes loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The whole rumqttd configuration. `RouterConfig::default()` is all zeros (a zero segment size
/// panics in the router) and `ConnectionSettings` has no default, so every field is set here.
fn config(addr: SocketAddr) -> Config {
    let router = RouterConfig {
        max_connections: 10_000,
        // Per read from a topic log for QoS 0 subscribers; QoS 1 reads are bounded by
        // rumqttd's fixed 100-message inflight window instead.
        max_outgoing_packet_count: 200,
        max_segment_size: MAX_SEGMENT_SIZE,
        max_segment_count: MAX_SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let connections = ConnectionSettings {
        // Time a new TCP connection has to send CONNECT; a u16 in rumqttd, so at most ~65 s.
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD_SIZE + PUBLISH_HEADROOM,
        // Despite the name, the number of incoming packets rumqttd reads from one connection
        // in one batch before handing them to the router.
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        // Without it rumqttd disconnects a client that publishes to a topic no one has
        // subscribed to (`NoMatchingFilters`), e.g. a reply nobody waits for any more.
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "embedded-broker-v4".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Config::default()
    }
}

#[cfg(test)]
mod tests;
