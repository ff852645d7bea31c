//! The load generator's MQTT side: a [`Conn`] per worker (one rumqttc connection whose event
//! loop never awaits the client) and the [`Job`] a worker cycles through: register, wait for
//! `go`, finished.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::{JOB_TIMEOUT_S, REPLY_TIMEOUT};

/// One rumqttc connection: the event loop runs in its own task, which never awaits the client;
/// incoming publishes come out of `rx`.
pub struct Conn {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Publish>,
    pub task: JoinHandle<()>,
}

impl Conn {
    /// Connects and returns once every filter is subscribed (SUBACK), within 10 s.
    pub async fn connect(port: u16, id: &str, filters: Vec<String>) -> Conn {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        eventloop.network_options.set_tcp_nodelay(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let sub = client.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = sub.try_subscribe(f.as_str(), QoS::AtLeastOnce);
                        }
                        if filters.is_empty() {
                            ready.take().map(|r| r.send(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        // One SUBACK per filter; the broker answers them in order.
                        ready.take().map(|r| r.send(()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("client: connection error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("connect + subscribe within 10 s")
            .expect("event loop alive");
        Conn { client, rx, task }
    }

    /// Waits for a publish on exactly `topic`, dropping others.
    pub async fn wait_for(&mut self, topic: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) if p.topic == topic => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => return Err("event loop ended".into()),
                Err(_) => return Err(format!("no {topic} within {REPLY_TIMEOUT:?}")),
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A worker's fixed identity: its channel and uid, and the topics they give.
pub struct Job {
    pub register: String,
    pub finished: String,
    pub go: String,
    pub body: String,
    pub uid: String,
}

impl Job {
    /// `fields`: extra registration fields, each with a leading comma (`,"priority":3`).
    pub fn new(prefix: &str, channel: &str, uid: &str, fields: &str) -> Job {
        Job {
            register: format!("{prefix}/{channel}/register"),
            finished: format!("{prefix}/{channel}/finished"),
            go: format!("{prefix}/{channel}/go/{uid}"),
            body: format!("{{\"uid\":\"{uid}\",\"timeout\":{JOB_TIMEOUT_S}{fields}}}"),
            uid: uid.to_owned(),
        }
    }

    /// After a lost cycle: `finished` for the uid, which ends the job if only its `go` was lost
    /// (the daemon ignores a register for a uid it runs) and is ignored otherwise.
    pub async fn abandon(&self, conn: &mut Conn) {
        let _ = conn
            .client
            .publish(&self.finished, QoS::AtLeastOnce, false, self.uid.clone())
            .await;
    }

    /// register -> go -> finished; returns the register -> go latency.
    pub async fn cycle(&self, conn: &mut Conn) -> Result<Duration, String> {
        let t0 = Instant::now();
        conn.client
            .publish(&self.register, QoS::AtLeastOnce, false, self.body.clone())
            .await
            .map_err(|e| e.to_string())?;
        conn.wait_for(&self.go).await?;
        let latency = t0.elapsed();
        conn.client
            .publish(&self.finished, QoS::AtLeastOnce, false, self.uid.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(latency)
    }
}
