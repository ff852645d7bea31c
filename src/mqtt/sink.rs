//! [`MqttSink`]: the driver's outputs as MQTT messages, handed to the [`outbox`](super::outbox).

use std::sync::Arc;

use super::delivery::{Grant, Sent};
use super::{outbox, Ack};
use crate::driver::Sink;
use crate::engine::Output;
use crate::protocol;

/// Encodes the driver's outputs and queues them, with what each publish is (see [`delivery`]),
/// on the [`outbox`]: the driver never waits on rumqttc.
#[derive(Debug, Clone)]
pub struct MqttSink {
    /// Queue to the task that hands requests to rumqttc.
    pub outbox: outbox::Outbox,
    /// First topic level.
    pub prefix: String,
    /// This process's sync marker.
    pub nonce: Arc<str>,
    /// With the JetStream backend: the leader record, published retained on
    /// [`protocol::leader_topic`] after each connect.
    pub leader: Option<Vec<u8>>,
}

impl Sink for MqttSink {
    async fn send(&mut self, output: Output) {
        let grant = match &output {
            Output::Go {
                channel, uid, seq, ..
            }
            | Output::GoAgain {
                channel, uid, seq, ..
            } => Some(Grant {
                channel: channel.clone(),
                uid: uid.clone(),
                seq: *seq,
            }),
            _ => None,
        };
        for (topic, payload) in protocol::encode(&self.prefix, &output) {
            let sent = grant.clone().map_or(Sent::Other, Sent::Grant);
            self.outbox.publish(sent, topic, payload);
        }
    }

    async fn ack(&mut self, ack: Ack) {
        self.outbox.ack(ack);
    }

    async fn mark(&mut self) {
        let topic = protocol::sync_topic(&self.prefix);
        let nonce = self.nonce.as_bytes().to_vec();
        if let Some(record) = &self.leader {
            let topic = protocol::leader_topic(&self.prefix);
            self.outbox.publish_retained(topic, record.clone());
        }
        self.outbox.publish(Sent::Other, topic, nonce);
    }
}
