//! A TCP relay between MQTT clients and a broker, on a free loopback port: it can hold back the
//! broker's PUBACKs and cut every connection, to lose a publish's acknowledgement on purpose
//! (the broker has the message, the client never hears so) while the broker keeps the session;
//! and it can refuse SUBSCRIBEs itself (a SUBACK of failure codes, the broker never asked), as
//! a broker does that denies a filter or, like nats-server during a leader election, cannot set
//! the subscription up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rumqttc::{FixedHeader, PacketType, SubAck, Subscribe, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};

/// What the relay does to the packets it relays; shared by every connection.
#[derive(Default)]
struct Faults {
    /// Drop the broker's PUBACKs.
    drop_pubacks: AtomicBool,
    /// How many more SUBSCRIBEs to refuse.
    refuse_subscribes: AtomicUsize,
}

/// The relay; dropping it stops accepting (connections end with their next cut or close).
pub struct Relay {
    port: u16,
    faults: Arc<Faults>,
    cuts: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays every connection made to [`Relay::port`] to the broker on `upstream`.
    pub async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let faults = Arc::new(Faults::default());
        let (cuts, _) = watch::channel(0u64);
        let (shared, cut_rx) = (faults.clone(), cuts.subscribe());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = broker.set_nodelay(true);
                tokio::spawn(relay(client, broker, shared.clone(), cut_rx.clone()));
            }
        });
        Relay {
            port,
            faults,
            cuts,
            accept,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// While on, PUBACK packets from the broker are dropped instead of relayed.
    pub fn drop_pubacks(&self, on: bool) {
        self.faults.drop_pubacks.store(on, Ordering::SeqCst);
    }

    /// The next `n` SUBSCRIBE packets from clients are not relayed: the relay answers each with
    /// a SUBACK that refuses every filter.
    pub fn refuse_subscribes(&self, n: usize) {
        self.faults.refuse_subscribes.store(n, Ordering::SeqCst);
    }

    /// How many SUBSCRIBEs are still to be refused.
    pub fn subscribes_to_refuse(&self) -> usize {
        self.faults.refuse_subscribes.load(Ordering::SeqCst)
    }

    /// Closes every connection relayed so far (clients see the broker go away).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Relays one connection until either side closes or the relay cuts it, whole MQTT packets at
/// a time ([`Packets`]).
async fn relay(
    client: TcpStream,
    broker: TcpStream,
    faults: Arc<Faults>,
    mut cuts: watch::Receiver<u64>,
) {
    cuts.mark_unchanged();
    let (mut client_rx, client_tx) = client.into_split();
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    // Both directions write to the client: the broker's packets and the relay's refusals.
    let client_tx = Mutex::new(client_tx);
    let up = async {
        let mut packets = Packets::new(&mut client_rx);
        while let Some((header, packet)) = packets.next().await {
            let subscribe = matches!(header.packet_type(), Ok(PacketType::Subscribe));
            let refuse = subscribe
                && faults
                    .refuse_subscribes
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if refuse {
                let Ok(sub) = Subscribe::read(header, Bytes::from(packet)) else {
                    return;
                };
                if !write(&client_tx, &refusal(&sub)).await {
                    return;
                }
            } else if broker_tx.write_all(&packet).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut packets = Packets::new(&mut broker_rx);
        while let Some((header, packet)) = packets.next().await {
            let puback = matches!(header.packet_type(), Ok(PacketType::PubAck));
            if puback && faults.drop_pubacks.load(Ordering::SeqCst) {
                continue;
            }
            if !write(&client_tx, &packet).await {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cuts.changed() => {}
    }
}

/// Whole MQTT packets read from one side of a connection, framed by rumqttc's own parser.
struct Packets<'a> {
    rx: &'a mut OwnedReadHalf,
    buf: Vec<u8>,
    pending: Vec<u8>,
}

impl<'a> Packets<'a> {
    fn new(rx: &'a mut OwnedReadHalf) -> Packets<'a> {
        Packets {
            rx,
            buf: vec![0u8; 16 << 10],
            pending: Vec::new(),
        }
    }

    /// The next packet and its fixed header; `None` once the side closed or failed.
    async fn next(&mut self) -> Option<(FixedHeader, Vec<u8>)> {
        loop {
            if let Ok(header) = rumqttc::check(self.pending.iter(), usize::MAX) {
                let packet = self.pending.drain(..header.frame_length()).collect();
                return Some((header, packet));
            }
            match self.rx.read(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&self.buf[..n]),
            }
        }
    }
}

/// A SUBACK refusing every filter of `sub`.
fn refusal(sub: &Subscribe) -> Vec<u8> {
    let codes = vec![SubscribeReasonCode::Failure; sub.filters.len()];
    let mut out = BytesMut::new();
    SubAck::new(sub.pkid, codes)
        .write(&mut out)
        .expect("encode a SUBACK");
    out.to_vec()
}

/// Writes one whole packet to the client; false once it is gone.
async fn write(client: &Mutex<OwnedWriteHalf>, packet: &[u8]) -> bool {
    client.lock().await.write_all(packet).await.is_ok()
}
