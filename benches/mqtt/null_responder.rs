//! The null responder: this bench binary re-executed with `--null-responder PORT PREFIX ct|mt
//! [fin]`, answering every `register` with `go` at QoS 1 at once. It does the MQTT work the
//! daemon does and nothing else: the reference for the ratios.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// Answers every `PREFIX/+/register` with `PREFIX/{channel}/go/{uid}` at QoS 1; with `finished`
/// also subscribed to `PREFIX/+/finished`, which it ignores. Runs until killed.
pub fn null_responder(port: u16, prefix: &str, multi_thread: bool, finished: bool) {
    let rt = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    rt.block_on(async move {
        let mut opts = MqttOptions::new(format!("null-responder-{prefix}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(500);
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        eventloop.network_options.set_tcp_nodelay(true);
        // Publishing happens in its own task: the polling loop never awaits the client.
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some((topic, uid)) = rx.recv().await {
                if let Err(e) = publisher.publish(topic, QoS::AtLeastOnce, false, uid).await {
                    eprintln!("null responder: publish failed: {e}");
                }
            }
        });
        let filter = format!("{prefix}/+/register");
        let finished_filter = format!("{prefix}/+/finished");
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                    if finished {
                        let _ = client.try_subscribe(finished_filter.as_str(), QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/finished") => {}
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Some(channel) = p.topic.split('/').nth(1) else {
                        continue;
                    };
                    let Some(uid) = parse_uid(&p.payload) else {
                        continue;
                    };
                    let topic = format!("{prefix}/{channel}/go/{uid}");
                    if tx.send((topic, uid)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("null responder: connection error: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

pub fn parse_uid(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match v.get("uid")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
