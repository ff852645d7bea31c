//! The leader's journal on a JetStream stream: each batch of changes is appended with the
//! stream's expected last sequence (`Nats-Expected-Last-Sequence`), so an append can only land
//! right after this leader's own previous one: if another coordinator has written, the append
//! is refused and this leader steps down having published nothing of that batch.
//!
//! Group commit by pipelining: batches are published without waiting for the previous
//! acknowledgement (JetStream orders them on the one subject), those that queue up meanwhile
//! go out together as one message, and the driver learns which are committed as the
//! acknowledgements come back in order. Batches no decision waits for (only the broker's
//! acknowledgements) are held up to 2 ms to ride with the next one ([`Coalesce`]): the
//! cluster's CPU per request cycle goes with its messages per cycle. A batch larger than a
//! message is split over several, each but the last marked [`MORE`]; readers apply it with
//! its last part.
//!
//! When an append fails (a timeout, a lost quorum, a connection drop), the appender finds out
//! from the stream itself what landed: messages after the last acknowledged one that carry this
//! leader's message ids count as committed, any other message means another leader wrote
//! (fenced). The rest is sent again with the same ids (JetStream drops duplicates by id).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, object_store, stream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::lease::LeaseGuard;
use super::{Cluster, FORMAT_HEADER, MORE};
use crate::engine::{Change, Snapshot};
use crate::state::format;
use crate::state::group::{Coalesce, Urgency};

/// Journal bytes per message (the server's default `max_payload` is 1 MiB).
const MESSAGE_MAX: usize = 512 << 10;
/// Messages in flight at once. Batches submitted while this many appends wait for their
/// acknowledgement are merged into the next message (group commit): under load each stream
/// message carries many batches, which is what the broker's CPU per request cycle depends on;
/// when idle a batch goes out at once.
const IN_FLIGHT_MAX: usize = 2;
/// Longest pause between attempts to find out what landed, while the cluster is unreachable.
const RETRY_MAX: Duration = Duration::from_secs(1);

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

enum Cmd {
    Batch { id: u64, bytes: Vec<u8> },
    Snapshot(Box<Snapshot>),
}

/// The driver's handle on the stream journal (same interface as the file journal).
pub struct StreamJournal {
    tx: mpsc::UnboundedSender<Cmd>,
    /// Batches held for company before they go to the appender.
    held: Coalesce,
    committed: watch::Receiver<u64>,
    last_id: u64,
    bytes_since_snapshot: u64,
    snapshot_after: u64,
    snapshotting: Arc<AtomicBool>,
    guard: LeaseGuard,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StreamJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamJournal")
            .field("last_id", &self.last_id)
            .field("committed", &*self.committed.borrow())
            .finish()
    }
}

impl StreamJournal {
    /// Starts appending after stream sequence `last_seq` (the takeover marker, which this
    /// leader wrote), as node `node`, while `guard` says the lease is ours.
    pub fn start(
        cluster: &Cluster,
        node: &str,
        last_seq: u64,
        snapshot_after: u64,
        guard: LeaseGuard,
    ) -> StreamJournal {
        let (tx, rx) = mpsc::unbounded_channel();
        let (committed_tx, committed) = watch::channel(0);
        let snapshotting = Arc::new(AtomicBool::new(false));
        let appender = Appender {
            js: cluster.js.clone(),
            subject: cluster.subject.clone(),
            stream: cluster.stream.clone(),
            objects: cluster.objects.clone(),
            writer: format!("{node}-{}", nonce()),
            next_msg: 0,
            last_seq,
            acked_seq: last_seq,
            in_flight: VecDeque::new(),
            queue: VecDeque::new(),
            committed: committed_tx,
            acked_seq_tx: watch::channel(last_seq).0,
            guard: guard.clone(),
            snapshotting: snapshotting.clone(),
        };
        let task = tokio::spawn(appender.run(rx));
        StreamJournal {
            tx,
            held: Coalesce::new(MESSAGE_MAX),
            committed,
            last_id: 0,
            bytes_since_snapshot: 0,
            snapshot_after,
            snapshotting,
            guard,
            task,
        }
    }

    /// Queues one batch at `now`; returns its id (ids start at 1). `urgency` says who waits
    /// for it: a batch no decision waits for is held for the next one, up to
    /// [`crate::state::DEFER_MAX`] (then [`Self::poll`] sends it).
    pub fn submit_with(&mut self, changes: &[Change], urgency: Urgency, now: StdInstant) -> u64 {
        self.last_id += 1;
        let bytes = format::encode_batch(changes);
        self.bytes_since_snapshot += bytes.len() as u64;
        let urgency = Urgency::of(changes, urgency);
        let out = self.held.handle_batch(self.last_id, &bytes, urgency, now);
        self.append(out);
        self.last_id
    }

    /// When held batches must go out even if no other batch comes; call [`Self::poll`] then.
    pub fn deadline(&self) -> Option<StdInstant> {
        self.held.deadline()
    }

    /// Sends the held batches if their [`Self::deadline`] has passed at `now`.
    pub fn poll(&mut self, now: StdInstant) {
        let out = self.held.poll(now);
        self.append(out);
    }

    /// Hands batches to the appender: `out` is the id of the last and the bytes of all.
    fn append(&mut self, out: Option<(u64, Vec<u8>)>) {
        if let Some((id, bytes)) = out {
            let _ = self.tx.send(Cmd::Batch { id, bytes });
        }
    }

    /// The highest batch id acknowledged by JetStream (a quorum stored it).
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Completes when more is committed.
    pub async fn advanced(&mut self) {
        if self.committed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether enough was appended since the last snapshot to write a new one.
    pub fn wants_compaction(&self) -> bool {
        self.bytes_since_snapshot >= self.snapshot_after
            && !self.snapshotting.load(Ordering::Acquire)
    }

    /// Writes `snapshot` (the state after every batch submitted so far) to the object store and
    /// then purges the messages it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let held = self.held.poll_all();
        self.append(held);
        self.snapshotting.store(true, Ordering::Release);
        self.bytes_since_snapshot = 0;
        let _ = self.tx.send(Cmd::Snapshot(Box::new(snapshot)));
    }

    /// Whether the lease is still ours.
    pub fn may_publish(&self) -> bool {
        self.guard.valid()
    }

    /// The lease this journal appends under.
    pub fn guard(&self) -> &LeaseGuard {
        &self.guard
    }

    /// Waits (at most `patience`) for every submitted batch to be committed; returns the last
    /// committed id.
    pub async fn close(mut self, patience: Duration) -> u64 {
        let held = self.held.poll_all();
        self.append(held);
        let want = self.last_id;
        let _ = tokio::time::timeout(patience, async {
            while *self.committed.borrow() < want && self.guard.valid() {
                if self.committed.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let committed = self.committed();
        self.task.abort();
        committed
    }
}

fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}")
}

/// One message published and not yet acknowledged.
struct InFlight {
    seq: u64,
    msg_id: String,
    /// The batch id this message completes, if it is the last part of a batch group.
    commits: Option<u64>,
    payload: bytes::Bytes,
    more: bool,
    ack: Option<AckFuture>,
    /// When it was (last) sent, for the append latency metric.
    sent_at: Instant,
}

/// What a publish needs of an [`InFlight`] (owned: the ack future in it is not `Sync`).
struct Outgoing {
    seq: u64,
    msg_id: String,
    payload: bytes::Bytes,
    more: bool,
}

impl InFlight {
    fn outgoing(&self) -> Outgoing {
        Outgoing {
            seq: self.seq,
            msg_id: self.msg_id.clone(),
            payload: self.payload.clone(),
            more: self.more,
        }
    }
}

struct Appender {
    js: jetstream::Context,
    subject: String,
    stream: stream::Stream,
    objects: object_store::ObjectStore,
    writer: String,
    next_msg: u64,
    /// The sequence the last published message should have.
    last_seq: u64,
    /// The last sequence known stored.
    acked_seq: u64,
    in_flight: VecDeque<InFlight>,
    queue: VecDeque<Cmd>,
    committed: watch::Sender<u64>,
    acked_seq_tx: watch::Sender<u64>,
    guard: LeaseGuard,
    snapshotting: Arc<AtomicBool>,
}

impl Appender {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            if let Err(reason) = self.publish_queued().await {
                self.guard.lose(reason);
                return;
            }
            let room = self.in_flight.len() < IN_FLIGHT_MAX;
            let front = self.in_flight.iter_mut().find_map(|m| m.ack.as_mut());
            let waiting = front.is_some();
            tokio::select! {
                cmd = rx.recv(), if room => match cmd {
                    Some(cmd) => {
                        self.queue.push_back(cmd);
                        while let Ok(cmd) = rx.try_recv() {
                            self.queue.push_back(cmd);
                        }
                    }
                    None => return,
                },
                Some(result) = async { match front { Some(f) => Some(f.await), None => None } }, if waiting => {
                    if let Err(reason) = self.acknowledged(result).await {
                        self.guard.lose(reason);
                        return;
                    }
                }
            }
        }
    }

    /// Publishes the queued batches (as few messages as fit) and takes snapshots in order.
    async fn publish_queued(&mut self) -> Result<(), String> {
        while self.in_flight.len() < IN_FLIGHT_MAX {
            let Some(cmd) = self.queue.pop_front() else {
                return Ok(());
            };
            match cmd {
                Cmd::Snapshot(snapshot) => self.snapshot(*snapshot),
                Cmd::Batch { id, mut bytes } => {
                    let mut last = id;
                    while let Some(Cmd::Batch { .. }) = self.queue.front() {
                        let Some(Cmd::Batch { id, bytes: more }) = self.queue.front() else {
                            break;
                        };
                        if bytes.len() + more.len() > MESSAGE_MAX {
                            break;
                        }
                        bytes.extend_from_slice(more);
                        last = *id;
                        self.queue.pop_front();
                    }
                    let parts: Vec<&[u8]> = bytes.chunks(MESSAGE_MAX).collect();
                    let n = parts.len();
                    for (i, part) in parts.into_iter().enumerate() {
                        let more = i + 1 < n;
                        self.next_msg += 1;
                        self.last_seq += 1;
                        let mut message = InFlight {
                            seq: self.last_seq,
                            msg_id: format!("{}-{}", self.writer, self.next_msg),
                            commits: (!more).then_some(last),
                            payload: bytes::Bytes::copy_from_slice(part),
                            more,
                            ack: None,
                            sent_at: Instant::now(),
                        };
                        message.ack = Some(
                            Self::send(&self.js, &self.subject, &self.guard, message.outgoing())
                                .await?,
                        );
                        self.in_flight.push_back(message);
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes one message (a free function of the fields it needs: the appender holds ack
    /// futures that are `Send` but not `Sync`).
    async fn send(
        js: &jetstream::Context,
        subject: &str,
        guard: &LeaseGuard,
        message: Outgoing,
    ) -> Result<AckFuture, String> {
        if !guard.valid() {
            return Err(guard
                .lost_reason()
                .unwrap_or_else(|| "the leader lease ran out before an append".into()));
        }
        let mut publish = PublishMessage::build()
            .payload(message.payload)
            .message_id(&message.msg_id)
            .expected_last_sequence(message.seq - 1)
            .header(FORMAT_HEADER, format::FORMAT.to_string());
        if message.more {
            publish = publish.header(MORE, "1");
        }
        match js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => Ok(std::future::IntoFuture::into_future(ack)),
            // Not sent: the resync after the first failure re-sends it.
            Err(e) => {
                let e = e.to_string();
                Ok(Box::pin(async move {
                    Err(PublishError::with_source(
                        async_nats::jetstream::context::PublishErrorKind::Other,
                        e,
                    ))
                }))
            }
        }
    }

    /// Handles the acknowledgement of the oldest message in flight.
    async fn acknowledged(
        &mut self,
        result: Result<PublishAck, PublishError>,
    ) -> Result<(), String> {
        let Some(message) = self.in_flight.front_mut() else {
            return Ok(());
        };
        message.ack = None;
        match result {
            Ok(ack) if ack.sequence == message.seq => {
                let message = self.in_flight.pop_front().expect("front exists");
                self.stored(&message);
                Ok(())
            }
            Ok(ack) => Err(format!(
                "journal message stored at sequence {} where {} was expected",
                ack.sequence, message.seq
            )),
            Err(e) => {
                tracing::warn!(cause = %e, seq = message.seq, "journal append not acknowledged; finding out what the stream holds");
                self.resync().await
            }
        }
    }

    fn stored(&mut self, message: &InFlight) {
        metrics::histogram!("coordinosaur_journal_append_seconds")
            .record(message.sent_at.elapsed().as_secs_f64());
        self.acked_seq = message.seq;
        self.acked_seq_tx.send_replace(message.seq);
        if let Some(id) = message.commits {
            self.committed.send_replace(id);
        }
    }

    /// After a failed append: reads what the stream holds after the last acknowledged message,
    /// counts this leader's own messages as stored, and sends the rest again. Another leader's
    /// message means this one is fenced.
    async fn resync(&mut self) -> Result<(), String> {
        let mut pause = Duration::from_millis(50);
        let last = loop {
            if !self.guard.valid() {
                return Err(self.guard.lost_reason().unwrap_or_else(|| {
                    "the leader lease ran out while the journal could not append".into()
                }));
            }
            match self.stream.get_info().await {
                Ok(info) => break info.state.last_sequence,
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot read the journal stream's state; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        };
        let mut seq = self.acked_seq;
        while seq < last {
            seq += 1;
            let id = match self.stream.get_raw_message(seq).await {
                Ok(m) => m
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str().to_owned()),
                Err(e) => {
                    return Err(format!(
                        "cannot read journal message {seq} while resyncing: {e}"
                    ))
                }
            };
            match self.in_flight.front() {
                Some(m) if m.seq == seq && id.as_deref() == Some(m.msg_id.as_str()) => {
                    let m = self.in_flight.pop_front().expect("front exists");
                    self.stored(&m);
                }
                _ => {
                    return Err(format!(
                        "journal message {seq} was written by another coordinator (message id {id:?}): another leader took over"
                    ))
                }
            }
        }
        // Everything still in flight did not land: send it again, in order, with its own id.
        let pending: Vec<usize> = (0..self.in_flight.len()).collect();
        for i in pending {
            let ack = Self::send(
                &self.js,
                &self.subject,
                &self.guard,
                self.in_flight[i].outgoing(),
            )
            .await?;
            self.in_flight[i].ack = Some(ack);
            self.in_flight[i].sent_at = Instant::now();
        }
        Ok(())
    }

    /// Writes `snapshot` (covering every message published so far) once those are stored, then
    /// purges them; in a task of its own, so appends go on meanwhile.
    fn snapshot(&mut self, snapshot: Snapshot) {
        let covers = self.last_seq;
        let mut acked = self.acked_seq_tx.subscribe();
        let objects = self.objects.clone();
        let stream = self.stream.clone();
        let flag = self.snapshotting.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = async {
                acked
                    .wait_for(|seq| *seq >= covers)
                    .await
                    .map_err(|_| "the journal stopped".to_owned())?;
                let bytes =
                    tokio::task::spawn_blocking(move || super::encode_snapshot(covers, &snapshot))
                        .await
                        .map_err(|e| e.to_string())?;
                let size = bytes.len();
                objects
                    .put(super::SNAPSHOT_OBJECT, &mut bytes.as_slice())
                    .await
                    .map_err(|e| format!("cannot store the snapshot: {e}"))?;
                stream.purge().sequence(covers + 1).await.map_err(|e| {
                    format!("snapshot stored, but the journal could not be purged: {e}")
                })?;
                Ok::<_, String>(size)
            }
            .await;
            match result {
                Ok(bytes) => {
                    metrics::counter!("coordinosaur_snapshots_total", "result" => "ok")
                        .increment(1);
                    tracing::info!(
                        covers,
                        bytes,
                        took_ms = started.elapsed().as_millis(),
                        "journal snapshot stored in JetStream; older messages purged"
                    );
                }
                Err(e) => {
                    metrics::counter!("coordinosaur_snapshots_total", "result" => "error")
                        .increment(1);
                    tracing::warn!(cause = %e, "journal snapshot failed; the next one retries");
                }
            }
            flag.store(false, Ordering::Release);
        });
    }
}
