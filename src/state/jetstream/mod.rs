//! The JetStream backend ([`crate::config::Backend::Jetstream`]): the journal as a replicated
//! stream, the leader lease in a KV bucket, snapshots in an object store, all on one NATS
//! cluster. One coordinator leads (holds the lease, appends, decides); the others are standbys
//! that tail the stream into a warm [`Replica`] and take over when the lease expires.
//!
//! Names: the stream `{stream}` (subject `{stream}.journal`), the KV bucket `{stream}_leader`
//! (key `leader`, `max_age` = the lease), the object store `{stream}_snapshots` (object
//! `snapshot`: the stream sequence it covers, then a snapshot file's bytes).

mod journal;
pub mod lease;
mod replica;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use futures_util::StreamExt as _;
use tokio::io::AsyncReadExt as _;

pub use journal::StreamJournal;
pub use lease::LeaseGuard;
pub use replica::{Replica, ReplicaError};

use crate::config::JetStreamConfig;
use crate::engine::Snapshot;
use crate::state::format;

/// Header naming the journal format of a message's records.
pub const FORMAT_HEADER: &str = "Coordinosaur-Format";
/// Header on every part of a batch but its last: the next message continues it.
pub const MORE: &str = "Coordinosaur-More";
/// Header of the marker a new leader appends before deciding anything.
pub const LEADER_HEADER: &str = "Coordinosaur-Leader";
/// The object holding the newest snapshot.
pub const SNAPSHOT_OBJECT: &str = "snapshot";

/// Why the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No server could be reached, or refused us.
    #[error("cannot connect to NATS at {servers}: {cause}")]
    Connect {
        /// The configured servers.
        servers: String,
        /// What the client said.
        cause: String,
    },
    /// A stream, bucket or store could not be created or opened.
    #[error("JetStream {what} {name:?}: {cause}")]
    Asset {
        /// stream, KV bucket or object store.
        what: &'static str,
        /// Its name.
        name: String,
        /// What the server said.
        cause: String,
    },
    /// The stream or snapshot cannot be read.
    #[error("JetStream journal: {0}")]
    Read(String),
}

/// Connections to the stream, the lease bucket and the snapshot store.
#[derive(Clone)]
pub struct Cluster {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The journal stream.
    pub stream: stream::Stream,
    /// Its one subject.
    pub subject: String,
    /// The leader lease bucket.
    pub leases: kv::Store,
    /// The snapshot store.
    pub objects: object_store::ObjectStore,
    /// Its bucket name.
    objects_bucket: String,
    /// How long a pull of the journal's tail lasts ([`tail_expiry`]).
    tail_expires: Duration,
}

/// How long each pull request of a standby's journal tail lasts: half the leader lease, at
/// least 1 s. The client's idle heartbeat is half of that, and it recreates the tail's
/// consumer after two missed heartbeats, so a tail whose consumer died with its NATS node (an
/// ordered consumer is a single replica) is noticed within about the lease. With the client's
/// defaults (30 s pulls, 15 s heartbeats) a standby took over 38 s after such a node loss,
/// catching up through a dead consumer.
pub fn tail_expiry(leader_lease: Duration) -> Duration {
    (leader_lease / 2).max(Duration::from_secs(1))
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("subject", &self.subject)
            .finish()
    }
}

/// Connects to the cluster and opens (creating on first use) the stream, the lease bucket and
/// the snapshot store. Retries until a server answers; JetStream errors are returned.
pub async fn connect(cfg: &JetStreamConfig, node: &str) -> Result<Cluster, ClusterError> {
    let servers = cfg.servers.join(", ");
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("coordinosaur {node}"))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None);
    if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
        options = options.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &cfg.token {
        options = options.token(token.clone());
    }
    if let Some(tls) = &cfg.tls {
        options = options
            .require_tls(true)
            .add_root_certificates(tls.ca_file.clone());
        if let Some(auth) = &tls.client_auth {
            options = options.add_client_certificate(auth.cert.clone(), auth.key.clone());
        }
    }
    let addrs: Vec<async_nats::ServerAddr> =
        cfg.servers.iter().filter_map(|s| s.parse().ok()).collect();
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::Connect {
            servers: servers.clone(),
            cause: e.to_string(),
        })?;
    let js = jetstream::new(client);
    let subject = format!("{}.journal", cfg.stream);
    let asset = |what, name: &str| {
        let name = name.to_owned();
        move |e: &dyn std::fmt::Display| ClusterError::Asset {
            what,
            name,
            cause: e.to_string(),
        }
    };
    let stream = retry(|| {
        js.get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![subject.clone()],
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            // Message ids dedupe a re-sent append for this long.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
    })
    .await
    .map_err(|e| asset("stream", &cfg.stream)(&e))?;
    let bucket = format!("{}_leader", cfg.stream);
    // The bucket's stream is created here, as a KV bucket's stream is laid out: async-nats's
    // `create_key_value` cannot read 2.9's reply to it. Without direct gets: nats-server 2.9
    // leaves a direct get of a key that just expired unanswered, and the client then waits out
    // its whole timeout (seen: a standby's take-over attempt stalled 5 s).
    let leases = retry(|| async {
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: cfg.leader_lease,
            duplicate_window: cfg.leader_lease,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: false,
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        js.get_key_value(&bucket).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| asset("KV bucket", &bucket)(&e))?;
    let store = format!("{}_snapshots", cfg.stream);
    let objects = retry(|| async {
        match js.get_object_store(&store).await {
            Ok(store) => Ok(store),
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: store.clone(),
                    num_replicas: cfg.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string()),
        }
    })
    .await
    .map_err(|e| asset("object store", &store)(&e))?;
    Ok(Cluster {
        js,
        stream,
        subject,
        leases,
        objects,
        objects_bucket: store,
        tail_expires: tail_expiry(cfg.leader_lease),
    })
}

/// Retries `op` a few times over ~10 s: a cluster that is still electing its JetStream leader
/// answers "no responders" or times out for a few seconds after start.
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    mut op: impl FnMut() -> F,
) -> Result<T, E> {
    let mut pause = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tries >= 12 => return Err(e),
            Err(e) => {
                tracing::debug!(cause = %e, "JetStream not ready; retrying");
                tries += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The snapshot object: the stream sequence it covers, then a snapshot file.
fn encode_snapshot(covers: u64, snapshot: &Snapshot) -> Vec<u8> {
    let mut out = covers.to_le_bytes().to_vec();
    out.extend(format::encode_snapshot(snapshot));
    out
}

fn decode_snapshot(bytes: &[u8]) -> Result<(u64, Snapshot), String> {
    let (covers, body) = bytes
        .split_first_chunk::<8>()
        .ok_or("snapshot object shorter than its header")?;
    let snapshot = format::decode_snapshot(body).map_err(|e| match e {
        format::FormatError::Newer(r) | format::FormatError::Damaged(r) => r,
    })?;
    Ok((u64::from_le_bytes(*covers), snapshot))
}

impl Cluster {
    /// The newest snapshot and the sequence it covers (an empty state at 0 if none).
    pub async fn newest_snapshot(&self) -> Result<(u64, Snapshot), ClusterError> {
        // Asked first because nats-server 2.9 does not answer the object store's direct get of
        // an object that was never written (the client waits out its timeout).
        let mut store = self
            .js
            .get_stream(format!("OBJ_{}", self.objects_bucket))
            .await
            .map_err(|e| ClusterError::Read(format!("cannot read the snapshot store: {e}")))?;
        let stored = store
            .info()
            .await
            .map_err(|e| ClusterError::Read(format!("cannot read the snapshot store: {e}")))?
            .state
            .messages;
        if stored == 0 {
            return Ok((0, Snapshot::default()));
        }
        let mut object = match self.objects.get(SNAPSHOT_OBJECT).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Ok((0, Snapshot::default()))
            }
            Err(e) => return Err(ClusterError::Read(format!("cannot read the snapshot: {e}"))),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| ClusterError::Read(format!("cannot read the snapshot: {e}")))?;
        decode_snapshot(&bytes).map_err(|e| ClusterError::Read(format!("snapshot: {e}")))
    }

    /// The last sequence of the journal stream.
    pub async fn last_sequence(&self) -> Result<u64, ClusterError> {
        let mut stream = self.stream.clone();
        stream
            .info()
            .await
            .map(|i| i.state.last_sequence)
            .map_err(|e| ClusterError::Read(format!("cannot read the stream's state: {e}")))
    }

    /// A replica from the newest snapshot, not yet caught up.
    pub async fn replica(&self) -> Result<Replica, ClusterError> {
        let (covers, snapshot) = self.newest_snapshot().await?;
        Ok(Replica::new(snapshot, covers))
    }

    /// An ordered consumer of the journal from sequence `from` on.
    pub async fn tail(&self, from: u64) -> Result<Tail, ClusterError> {
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                // Caps each pull's expiry, and with it the idle heartbeat (half of it).
                max_expires: self.tail_expires,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::Read(format!("cannot follow the journal: {e}")))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ClusterError::Read(format!("cannot follow the journal: {e}")))?;
        Ok(Tail { messages })
    }

    /// Appends the marker a new leader writes before deciding: it lands only right after
    /// `last_seq` (the end this leader caught up to); `Ok(None)` if the stream moved on.
    pub async fn mark_leader(
        &self,
        node: &str,
        last_seq: u64,
    ) -> Result<Option<u64>, ClusterError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::new())
            .expected_last_sequence(last_seq)
            .header(LEADER_HEADER, node);
        let sent = self
            .js
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(|e| ClusterError::Read(format!("cannot append the leader marker: {e}")))?;
        match sent.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(None)
            }
            Err(e) => Err(ClusterError::Read(format!(
                "cannot append the leader marker: {e}"
            ))),
        }
    }
}

/// The journal's messages as they arrive.
pub struct Tail {
    messages: consumer::pull::Ordered,
}

/// One journal message.
#[derive(Debug)]
pub struct JournalMessage {
    /// Its stream sequence.
    pub seq: u64,
    /// Whether the next message continues its batch.
    pub more: bool,
    /// The framed records.
    pub payload: bytes::Bytes,
}

impl Tail {
    /// The next message; `None` if the consumer ended.
    pub async fn next(&mut self) -> Option<Result<JournalMessage, ClusterError>> {
        let message = self.messages.next().await?;
        Some(
            message
                .map_err(|e| ClusterError::Read(format!("following the journal: {e}")))
                .and_then(|m| {
                    let seq = m
                        .info()
                        .map_err(|e| ClusterError::Read(format!("journal message without info: {e}")))?
                        .stream_sequence;
                    let headers = m.headers.as_ref();
                    if let Some(f) = headers.and_then(|h| h.get(FORMAT_HEADER)) {
                        // Batches of every format up to this build's decode alike (format 6
                        // changed only the file journal's tail), so only a newer one is refused.
                        if f.as_str().parse::<u8>().map_or(true, |f| f > format::FORMAT) {
                            return Err(ClusterError::Read(format!(
                                "journal message {seq} is in format {} and this coordinosaur reads {}: upgrade every coordinator",
                                f.as_str(),
                                format::FORMAT
                            )));
                        }
                    }
                    let more = headers.is_some_and(|h| h.get(MORE).is_some());
                    Ok(JournalMessage {
                        seq,
                        more,
                        payload: m.payload.clone(),
                    })
                }),
        )
    }
}

#[cfg(test)]
mod tail_tests {
    use super::tail_expiry;
    use std::time::Duration;

    #[test]
    fn a_dead_tail_is_noticed_within_about_the_lease() {
        let secs = Duration::from_secs;
        assert_eq!(tail_expiry(secs(2)), secs(1), "the default lease");
        assert_eq!(tail_expiry(secs(8)), secs(4));
        assert_eq!(
            tail_expiry(Duration::from_millis(500)),
            secs(1),
            "never below 1 s"
        );
    }
}
