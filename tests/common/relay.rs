//! A TCP relay between MQTT clients and a broker, on a free loopback port: it can hold back the
//! broker's PUBACKs and cut every connection, to lose a publish's acknowledgement on purpose
//! (the broker has the message, the client never hears so) while the broker keeps the session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The relay; dropping it stops accepting (connections end with their next cut or close).
pub struct Relay {
    port: u16,
    drop_pubacks: Arc<AtomicBool>,
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
        let drop_pubacks = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let (flag, cut_rx) = (drop_pubacks.clone(), cuts.subscribe());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = broker.set_nodelay(true);
                tokio::spawn(relay(client, broker, flag.clone(), cut_rx.clone()));
            }
        });
        Relay {
            port,
            drop_pubacks,
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
        self.drop_pubacks.store(on, Ordering::SeqCst);
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

/// Relays one connection until either side closes or the relay cuts it.
async fn relay(
    client: TcpStream,
    broker: TcpStream,
    drop_pubacks: Arc<AtomicBool>,
    mut cuts: watch::Receiver<u64>,
) {
    cuts.mark_unchanged();
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if broker_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 << 10];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            match broker_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            // Whole MQTT packets only, framed by rumqttc's own parser.
            while let Ok(header) = rumqttc::check(pending.iter(), usize::MAX) {
                let packet: Vec<u8> = pending.drain(..header.frame_length()).collect();
                let puback = matches!(header.packet_type(), Ok(rumqttc::PacketType::PubAck));
                if puback && drop_pubacks.load(Ordering::SeqCst) {
                    continue;
                }
                if client_tx.write_all(&packet).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cuts.changed() => {}
    }
}
