//! Tests against the real embedded broker, with real rumqttc clients on loopback.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{start, BrokerError, EmbeddedBroker, MAX_PAYLOAD_SIZE};

/// Bound on every wait: generous, because a loaded 2-core machine can be slow.
const WAIT: Duration = Duration::from_secs(10);

/// Shows rumqttd's and our logs on a failing test when `RUST_LOG` is set.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A loopback address whose port was free a moment ago.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a probe listener");
    listener.local_addr().expect("probe listener address")
}

fn start_broker() -> EmbeddedBroker {
    init_logs();
    let addr = free_addr();
    let broker = start(addr).expect("start the embedded broker");
    assert_eq!(broker.local_addr(), addr);
    broker
}

/// A rumqttc client whose event loop runs in its own task and forwards every incoming packet
/// (or the connection error that ended it) to `packets`.
struct TestClient {
    client: AsyncClient,
    packets: mpsc::UnboundedReceiver<Result<Packet, String>>,
}

impl TestClient {
    async fn connect(broker: &EmbeddedBroker, id: &str, max_packet_size: usize) -> TestClient {
        let addr = broker.local_addr();
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_max_packet_size(max_packet_size, max_packet_size);
        let (client, mut event_loop) = AsyncClient::new(options, 16);
        let (tx, packets) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(err) => {
                        let _ = tx.send(Err(err.to_string()));
                        return;
                    }
                }
            }
        });
        let mut client = TestClient { client, packets };
        client
            .expect(|p| matches!(p, Packet::ConnAck(_)).then_some(()))
            .await;
        client
    }

    /// Waits for the first incoming packet that `pick` accepts, skipping others.
    async fn expect<T>(&mut self, pick: impl Fn(&Packet) -> Option<T>) -> T {
        let wait = async {
            loop {
                match self.packets.recv().await {
                    Some(Ok(packet)) => {
                        if let Some(found) = pick(&packet) {
                            return found;
                        }
                    }
                    Some(Err(err)) => panic!("connection to the broker failed: {err}"),
                    None => panic!("event loop task ended"),
                }
            }
        };
        timeout(WAIT, wait)
            .await
            .expect("timed out waiting for a packet")
    }

    async fn subscribe(&mut self, topic: &str) {
        self.client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        self.expect(|p| matches!(p, Packet::SubAck(_)).then_some(()))
            .await;
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    async fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
        self.expect(|p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await;
    }

    /// Waits for a message on `topic` and returns its payload.
    async fn receive(&mut self, topic: &str) -> Vec<u8> {
        self.expect(|p| match p {
            Packet::Publish(publish) if publish.topic == topic => Some(publish.payload.to_vec()),
            _ => None,
        })
        .await
    }
}

#[tokio::test]
async fn qos1_message_round_trips() {
    let broker = start_broker();
    let mut client = TestClient::connect(&broker, "round-trip", 10 * 1024).await;

    client.subscribe("test/echo").await;
    client.publish("test/echo", b"hello".to_vec()).await;

    assert_eq!(client.receive("test/echo").await, b"hello");
    assert!(broker.is_running());
}

#[tokio::test]
async fn large_payload_passes_through() {
    const SIZE: usize = 100 * 1024;
    let broker = start_broker();
    let mut client = TestClient::connect(&broker, "large", SIZE + 1024).await;
    let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();

    client.subscribe("test/large").await;
    client.publish("test/large", payload.clone()).await;

    assert_eq!(client.receive("test/large").await, payload);
}

#[tokio::test]
async fn payload_at_the_limit_passes_with_a_long_topic() {
    let broker = start_broker();
    let mut client = TestClient::connect(&broker, "limit", MAX_PAYLOAD_SIZE + 128 * 1024).await;
    let topic = format!("test/{}", "t".repeat(1000));
    let payload = vec![0xA5; MAX_PAYLOAD_SIZE];

    client.subscribe(&topic).await;
    client.publish(&topic, payload.clone()).await;

    assert!(client.receive(&topic).await == payload, "payload changed");
}

#[test]
fn taken_port_is_reported_before_starting() {
    let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a listener to hold");
    let addr = held.local_addr().expect("held listener address");

    let err = start(addr).expect_err("start on a taken port");

    assert!(
        matches!(err, BrokerError::AddrInUse { addr: a } if a == addr),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("[mqtt]"), "{message}");
    assert!(message.contains(&addr.to_string()), "{message}");
}

#[test]
fn port_zero_picks_a_free_port() {
    init_logs();
    let broker = start((Ipv4Addr::LOCALHOST, 0).into()).expect("start on port 0");

    let addr = broker.local_addr();
    assert_ne!(addr.port(), 0);
    std::net::TcpStream::connect(addr).expect("connect to the picked port");
}
