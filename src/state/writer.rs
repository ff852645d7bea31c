//! The journal writer, and the handle the driver uses to submit batches, learn which are
//! committed, and compact.
//!
//! While the disk is healthy the driver writes (and with `fsync` syncs) each group itself,
//! inline: a group's sync is what its decisions wait for anyway, and handing every group to a
//! thread and back cost two cross-thread wake-ups per sync (in this VM ~100-200 us of latency
//! and ~15 us of CPU per cycle; BENCHMARKS section 13). Group commit holds inline as on the
//! thread ([`super::group`]): every request queued when the driver reads shares one batch and
//! one sync, and a batch only acknowledgements wait for is held up to 2 ms
//! ([`FileJournal::deadline`], [`FileJournal::poll`]) for the next one to share its sync.
//!
//! What could block the driver for long goes to a writer thread instead: a write or sync that
//! fails (the thread retries, and stays), one sync slower than [`INLINE_SYNC_MAX`] (the disk
//! is slow or stalled: the thread keeps its syncs off the driver for good), and a compaction's
//! snapshot encode, write and syncs (the writer comes back inline once everything before it is
//! written). The driver closes the journal from a blocking task.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::format::{self, JOURNAL_MAGIC};
use super::group::{Flush, Grouping, Urgency};
use super::{journal_path, snapshot_path, Durability, Store};
use crate::engine::{Change, Snapshot};

/// Zeros written ahead of a journal's records each time they reach the end of the file.
const PREALLOCATE: u64 = 1 << 20;
/// A journal smaller than this is never compacted.
const COMPACT_MIN: u64 = 16 << 20;
/// One write takes at most about this many bytes of queued batches.
const GROUP_MAX: usize = 8 << 20;
/// Longest pause between retries of a failing write.
const RETRY_MAX: Duration = Duration::from_secs(1);
/// An inline write and sync slower than this moves the writer to its thread for good, so a
/// slow or stalled disk delays decisions but not the driver's other work (keep-alive pings,
/// timers). A healthy local disk syncs in well under a millisecond; this VM's disk stalls up to
/// ~35 ms now and then under load, which is no reason to leave inline syncs.
pub const INLINE_SYNC_MAX: Duration = Duration::from_millis(250);

/// What the driver asks the writer thread to do, in order.
enum Cmd {
    /// Append one framed batch; `id` is reported committed once it is durable, or for a
    /// [`Urgency::Lazy`] one once written (see [`super::group`]).
    Batch {
        id: u64,
        bytes: Vec<u8>,
        urgency: Urgency,
    },
    /// Start generation `generation` from `snapshot` (the state after every earlier batch),
    /// encoded on the writer thread.
    Rotate {
        generation: u64,
        snapshot: Box<Snapshot>,
    },
    /// Return the writer for inline writes: everything before this is written.
    HandBack(mpsc::Sender<Writer>),
}

/// The driver's handle on the journal: it writes inline (see the module doc) until a write
/// fails or a sync is slow; then a writer thread does the writing, retrying, and group commit.
pub struct FileJournal {
    /// The writer, while writes happen inline on the caller's thread.
    inline: Option<Writer>,
    /// Inline: batches submitted but not yet written (a `Soon` batch waiting for company).
    held: Vec<u8>,
    /// Inline: which of them to write and sync, and when.
    grouping: Grouping,
    /// Inline: the last batch id written, and synced if it needed a sync.
    inline_committed: u64,
    /// A write and sync slower than this moves the writer to its thread ([`INLINE_SYNC_MAX`]).
    inline_sync_max: Duration,
    tx: Option<mpsc::Sender<Cmd>>,
    /// Disconnected once the writer thread has ended.
    done: Option<mpsc::Receiver<()>>,
    /// Inline writes moved to the thread for a compaction only: take the writer back once the
    /// rotation and every batch are written.
    reclaim: bool,
    /// A compaction is being written (no second one until it is done).
    rotating: Arc<AtomicBool>,
    /// Size of the newest snapshot, as the writer wrote it (sets the next compaction point).
    snapshot_bytes: Arc<AtomicU64>,
    committed: watch::Receiver<u64>,
    /// Id of the last batch submitted (ids start at 1; 0 means none).
    last_id: u64,
    generation: u64,
    bytes_since_snapshot: u64,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    durability: Durability,
    dir: PathBuf,
}

impl std::fmt::Debug for FileJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileJournal")
            .field("dir", &self.dir)
            .field("durability", &self.durability)
            .field("generation", &self.generation)
            .field("inline", &self.inline.is_some())
            .field("last_id", &self.last_id)
            .finish()
    }
}

type StartError = (&'static str, PathBuf, io::Error);

impl FileJournal {
    /// Writes `snapshot` as generation `generation`, drops generations older than `keep_from`,
    /// and starts the writer thread on the new journal.
    pub(super) fn start(
        store: Store,
        generation: u64,
        keep_from: u64,
        snapshot: &Snapshot,
        durability: Durability,
    ) -> Result<FileJournal, StartError> {
        let bytes = format::encode_snapshot(snapshot);
        let file = new_generation(&store.dir, generation, &bytes)?;
        prune(&store.dir, keep_from);
        let (committed_tx, committed) = watch::channel(0);
        let stop = Arc::new(AtomicBool::new(false));
        let rotating = Arc::new(AtomicBool::new(false));
        let snapshot_bytes = Arc::new(AtomicU64::new(bytes.len() as u64));
        let dir = store.dir.clone();
        let writer = Writer {
            store,
            file,
            len: JOURNAL_MAGIC.len() as u64,
            allocated: JOURNAL_MAGIC.len() as u64,
            generation,
            durability,
            committed: committed_tx,
            stop: stop.clone(),
            rotating: rotating.clone(),
            snapshot_bytes: snapshot_bytes.clone(),
        };
        Ok(FileJournal {
            inline: Some(writer),
            held: Vec::new(),
            grouping: Grouping::default(),
            inline_committed: 0,
            inline_sync_max: INLINE_SYNC_MAX,
            tx: None,
            done: None,
            reclaim: false,
            rotating,
            snapshot_bytes,
            committed,
            last_id: 0,
            generation,
            bytes_since_snapshot: 0,
            stop,
            thread: None,
            durability,
            dir,
        })
    }

    /// Moves the writer to its own thread.
    fn spawn_writer(&mut self, writer: Writer) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let _done = done_tx;
                writer.run(rx);
            })?;
        self.tx = Some(tx);
        self.done = Some(done);
        self.thread = Some(thread);
        Ok(())
    }

    /// After a compaction with inline writes: once the thread has written the rotation and
    /// every batch, takes the writer back (the thread has nothing left, so this does not wait
    /// on the disk).
    fn reclaim_writer(&mut self) {
        if !self.reclaim || self.rotating.load(Ordering::SeqCst) || self.committed() < self.last_id
        {
            return;
        }
        let (back_tx, back) = mpsc::channel();
        self.send(Cmd::HandBack(back_tx));
        if let Ok(writer) = back.recv() {
            self.inline = Some(writer);
            self.inline_committed = self.last_id;
            self.tx = None;
            self.done = None;
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
        self.reclaim = false;
    }

    /// Hands a batch of changes that a decision to publish waits for to the writer; returns
    /// its id.
    pub fn submit(&mut self, changes: &[Change]) -> u64 {
        self.submit_with(changes, Urgency::Now, Instant::now())
    }

    /// Hands a batch of changes to the writer at `now`; returns its id. `urgency` says who
    /// waits for it ([`Urgency::Now`]: something to publish; [`Urgency::Soon`]: only
    /// acknowledgements).
    ///
    /// A batch of nothing but the broker's acknowledgements of `go`s ([`Change::Delivered`]) is
    /// [`Urgency::Lazy`] whatever the caller says: written, but not synced on its own. Nothing
    /// waits on it, and losing it to a power cut only means a repeated `go`; syncing it cost an
    /// `fdatasync` per grant that the next decision had to wait behind.
    pub fn submit_with(&mut self, changes: &[Change], urgency: Urgency, now: Instant) -> u64 {
        self.reclaim_writer();
        let urgency = Urgency::of(changes, urgency);
        let bytes = format::encode_batch(changes);
        self.bytes_since_snapshot += bytes.len() as u64;
        self.last_id += 1;
        let id = self.last_id;
        if self.inline.is_some() {
            self.held.extend_from_slice(&bytes);
            // Without syncs there is nothing to share: every batch is written at once.
            let urgency = match self.durability {
                Durability::Os => Urgency::Lazy,
                Durability::Fsync => urgency,
            };
            self.grouping.handle_batch(urgency, now);
            let flush = self.grouping.poll(now);
            self.flush_inline(flush);
            return id;
        }
        self.send(Cmd::Batch { id, bytes, urgency });
        id
    }

    /// Inline: writes (and syncs) the held batches as the grouping said (`flush`). A failed
    /// write, or a sync slower than [`INLINE_SYNC_MAX`], moves the writer to its thread for
    /// good.
    fn flush_inline(&mut self, flush: Flush) {
        let Some(writer) = self.inline.as_mut() else {
            return;
        };
        let sync = match flush {
            Flush::Hold => return,
            Flush::Write => false,
            Flush::Sync => true,
        };
        let started = Instant::now();
        if let Err(e) = writer.write(&self.held, sync) {
            metrics::counter!("coordinosaur_journal_write_errors_total").increment(1);
            tracing::warn!(cause = %e, "journal write failed; moving the journal to a writer thread that retries");
            self.move_to_thread(Urgency::Now);
            return;
        }
        let took = started.elapsed();
        writer.record_commit(took);
        self.held.clear();
        self.inline_committed = self.last_id;
        if took > self.inline_sync_max {
            tracing::warn!(
                took_ms = took.as_millis(),
                "a journal sync took over {} ms; syncing on a writer thread from now on, so a slow disk does not hold up the rest of the daemon",
                self.inline_sync_max.as_millis()
            );
            self.move_to_thread(Urgency::Lazy);
        }
    }

    /// Moves the inline writer to its thread for good (the thread retries failed writes);
    /// the batches still held are its first job, with `urgency` unless one of them is held for
    /// company (then `Soon`).
    fn move_to_thread(&mut self, urgency: Urgency) {
        let Some(writer) = self.inline.take() else {
            return;
        };
        writer.committed.send_replace(self.inline_committed);
        self.reclaim = false;
        let urgency = match self.grouping.deadline() {
            Some(_) if urgency == Urgency::Lazy => Urgency::Soon,
            _ => urgency,
        };
        self.grouping = Grouping::default();
        if let Err(e) = self.spawn_writer(writer) {
            tracing::error!(cause = %e, "cannot start the journal thread; nothing more will be committed");
            return;
        }
        if !self.held.is_empty() {
            let bytes = std::mem::take(&mut self.held);
            self.send(Cmd::Batch {
                id: self.last_id,
                bytes,
                urgency,
            });
        }
    }

    /// Inline: when held batches must be synced even if no batch with outputs comes (`None`
    /// if none are held, or the writer thread does the writing). Call [`Self::poll`] then.
    pub fn deadline(&self) -> Option<Instant> {
        self.inline.as_ref().and(self.grouping.deadline())
    }

    /// Writes and syncs the held batches if their [`Self::deadline`] has passed at `now`.
    pub fn poll(&mut self, now: Instant) {
        if self.inline.is_some() {
            let flush = self.grouping.poll(now);
            self.flush_inline(flush);
        }
    }

    /// Id of the last batch submitted (0 if none).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Id of the last batch known durable.
    pub fn committed(&self) -> u64 {
        if self.inline.is_some() {
            return self.inline_committed;
        }
        *self.committed.borrow()
    }

    /// Completes when more batches are committed by the writer thread. Never completes while
    /// writes are inline (a batch is committed when `submit` or `poll` returns) or once the
    /// thread stopped.
    pub async fn advanced(&mut self) {
        if self.inline.is_some() || self.committed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the journal has outgrown its snapshot enough to be compacted (twice the newest
    /// snapshot, at least 16 MiB), and no compaction is being written.
    pub fn wants_compaction(&self) -> bool {
        let at = COMPACT_MIN.max(2 * self.snapshot_bytes.load(Ordering::SeqCst));
        self.bytes_since_snapshot >= at && !self.rotating.load(Ordering::SeqCst)
    }

    /// Starts a new generation from `snapshot`, which must be the state after every batch
    /// submitted so far; the writer thread encodes and writes it. The old generation is dropped
    /// once the next one begins.
    pub fn compact(&mut self, snapshot: Snapshot) {
        self.generation += 1;
        self.bytes_since_snapshot = 0;
        tracing::info!(generation = self.generation, "compacting the journal");
        if self.inline.is_some() {
            // Inline writes: the rotation's writes and syncs go to a thread, and the writer
            // comes back once they are done (see `reclaim_writer`).
            self.move_to_thread(Urgency::Lazy);
            if self.inline.is_some() || self.tx.is_none() {
                return;
            }
            self.reclaim = true;
        }
        self.rotating.store(true, Ordering::SeqCst);
        self.send(Cmd::Rotate {
            generation: self.generation,
            snapshot: Box::new(snapshot),
        });
    }

    /// Sets the threshold for a slow sync (tests: no disk here is slow on demand, and a test
    /// that counts on inline syncs must not leave them on a stalled disk).
    #[cfg(test)]
    pub(crate) fn set_inline_sync_max(&mut self, max: Duration) {
        self.inline_sync_max = max;
    }

    /// Whether writes happen on the caller's thread now (tests).
    #[cfg(test)]
    pub(super) fn writes_inline(&self) -> bool {
        self.inline.is_some()
    }

    /// Whether a compaction is being written (tests).
    #[cfg(test)]
    pub(super) fn is_rotating(&self) -> bool {
        self.rotating.load(Ordering::SeqCst)
    }

    /// Where the journal lives and how it syncs, for the log.
    pub fn describe(&self) -> (&Path, Durability, u64) {
        (&self.dir, self.durability, self.generation)
    }

    /// Lets the writer finish what was submitted (giving up on a write that keeps failing after
    /// `patience`), then returns the last committed id.
    /// Blocks: call it off the async runtime's threads.
    pub fn close(mut self, patience: Duration) -> u64 {
        if self.inline.is_some() {
            let flush = self.grouping.poll_all();
            self.flush_inline(flush);
        }
        if self.inline.is_some() {
            return self.inline_committed;
        }
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if let Some(done) = self.done.take() {
                // Disconnected when the thread ends; a timeout leaves it retrying a write.
                let _ = done.recv_timeout(patience);
            }
            self.stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
        self.committed()
    }

    fn send(&mut self, cmd: Cmd) {
        let Some(tx) = &self.tx else { return };
        if tx.send(cmd).is_err() {
            // Only if the thread died: batches after this are never committed, so their effects
            // are never published. Loud, because the daemon stops answering.
            tracing::error!("journal writer thread is gone; nothing more will be committed");
            self.tx = None;
        }
    }
}

impl Drop for FileJournal {
    /// Stops the writer after its current write (no retries) and waits for it, so the lock is
    /// released when the handle is gone.
    fn drop(&mut self) {
        self.tx = None;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer's state: on its own thread, or inline in the [`FileJournal`].
struct Writer {
    store: Store,
    file: File,
    /// Bytes of the current journal known written.
    len: u64,
    /// Size of the current journal file: `len`, then zeros written ahead ([`PREALLOCATE`]).
    allocated: u64,
    generation: u64,
    durability: Durability,
    committed: watch::Sender<u64>,
    stop: Arc<AtomicBool>,
    /// Cleared once a rotation is written (or failed).
    rotating: Arc<AtomicBool>,
    /// Size of the newest snapshot written.
    snapshot_bytes: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut group = Vec::new();
        let mut last_id = 0;
        let mut grouping = Grouping::default();
        loop {
            // Sleep until a batch comes, or until a held batch is due for its sync.
            let first = match grouping.deadline() {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            let mut next = match first {
                Ok(cmd) => Some(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Batch { id, bytes, urgency } => {
                        group.extend_from_slice(&bytes);
                        last_id = id;
                        grouping.handle_batch(urgency, Instant::now());
                    }
                    Cmd::Rotate {
                        generation,
                        snapshot,
                    } => {
                        if !self.commit(&mut group, last_id, grouping.poll_all()) {
                            return;
                        }
                        self.rotate(generation, &snapshot);
                    }
                    Cmd::HandBack(back) => {
                        if !self.commit(&mut group, last_id, grouping.poll_all()) {
                            return;
                        }
                        let _ = back.send(self);
                        return;
                    }
                }
                if group.len() < GROUP_MAX {
                    next = rx.try_recv().ok();
                }
            }
            let flush = match group.len() < GROUP_MAX {
                true => grouping.poll(Instant::now()),
                false => grouping.poll_all(),
            };
            if !self.commit(&mut group, last_id, flush) {
                return;
            }
        }
        // The driver is gone (closed, or dropped): what it submitted is still written.
        let flush = grouping.poll_all();
        self.commit(&mut group, last_id, flush);
    }

    /// One attempt to write `bytes` at the end of the journal, and sync it (with `fsync`
    /// durability, unless `sync` is false: only lazy batches).
    fn write(&mut self, bytes: &[u8], sync: bool) -> io::Result<()> {
        // Positioned writes: a retry overwrites whatever a failed attempt left behind.
        self.file.write_all_at(bytes, self.len)?;
        let end = self.len + bytes.len() as u64;
        if end > self.allocated {
            self.preallocate(end);
        }
        if sync && self.durability == Durability::Fsync {
            self.file.sync_data()?;
        }
        self.len = end;
        Ok(())
    }

    /// Writes [`PREALLOCATE`] zeros after the records ending at `end` (format 6), to be synced
    /// with them: later syncs rewrite blocks already in the file and leave its size alone, so
    /// the disk writes the data alone (ext4 without a journal, as here, otherwise writes the
    /// inode after the data, one I/O after the other: 137 -> 91 us per sync, BENCHMARKS section
    /// 13). Best effort: on a disk too full for them the zeros are cut off again (they must not
    /// take the last free space) and this generation grows by appends, as before format 6.
    fn preallocate(&mut self, end: u64) {
        let zeros = vec![0; usize::try_from(PREALLOCATE).unwrap_or(1 << 20)];
        match self.file.write_all_at(&zeros, end) {
            Ok(()) => self.allocated = end + PREALLOCATE,
            Err(e) => {
                if let Err(e) = self.file.set_len(end) {
                    tracing::debug!(cause = %e, "could not cut off partly written zeros");
                }
                self.allocated = u64::MAX;
                tracing::info!(cause = %e, "cannot preallocate the journal; it grows by appends until the next generation");
            }
        }
    }

    /// Writes (and syncs) `group`, retrying until it works or the daemon stops; then reports
    /// `id` committed. Returns false if it gave up.
    fn commit(&mut self, group: &mut Vec<u8>, id: u64, flush: Flush) -> bool {
        let sync = match flush {
            Flush::Hold => return true,
            Flush::Write => false,
            Flush::Sync => true,
        };
        if group.is_empty() {
            return true;
        }
        let started = Instant::now();
        let mut delay = Duration::from_millis(10);
        let mut last_report: Option<Instant> = None;
        loop {
            match self.write(group, sync) {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!("coordinosaur_journal_write_errors_total").increment(1);
                    if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::error!(
                            journal = %journal_path(&self.store.dir, self.generation).display(),
                            cause = %e,
                            pending_bytes = group.len(),
                            "journal write failed; holding every decision until it succeeds"
                        );
                        last_report = Some(Instant::now());
                    }
                    if self.stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
        if last_report.is_some() {
            tracing::info!(
                failed_for_ms = started.elapsed().as_millis(),
                "journal writes work again"
            );
        }
        self.record_commit(started.elapsed());
        group.clear();
        self.committed.send_replace(id);
        true
    }

    /// The metrics of one committed group that took `took` to write (and sync).
    fn record_commit(&self, took: Duration) {
        metrics::histogram!("coordinosaur_journal_commit_seconds").record(took.as_secs_f64());
        metrics::gauge!("coordinosaur_journal_bytes").set(self.len as f64);
    }

    fn rotate(&mut self, generation: u64, snapshot: &Snapshot) {
        let snapshot = format::encode_snapshot(snapshot);
        self.snapshot_bytes
            .store(snapshot.len() as u64, Ordering::SeqCst);
        let dir = &self.store.dir;
        let result = new_generation(dir, generation, &snapshot);
        self.rotating.store(false, Ordering::SeqCst);
        match result {
            Ok(file) => {
                prune(dir, self.generation);
                // The finished journal keeps its records, not the zeros written ahead of them.
                if let Err(e) = self.file.set_len(self.len) {
                    tracing::debug!(cause = %e, "could not trim the zeros after a finished journal");
                }
                self.file = file;
                self.len = JOURNAL_MAGIC.len() as u64;
                self.allocated = self.len;
                self.generation = generation;
                metrics::gauge!("coordinosaur_journal_bytes").set(self.len as f64);
            }
            Err((what, path, e)) => {
                // The current journal still holds everything; it just keeps growing.
                tracing::warn!(path = %path.display(), cause = %e, "compaction failed: cannot {what}; the journal keeps growing");
                let _ = fs::remove_file(snapshot_path(dir, generation));
            }
        }
    }
}

/// Writes `snapshot.G` durably, then creates an empty `journal.G`; a journal never exists
/// without the snapshot it follows.
fn new_generation(dir: &Path, generation: u64, snapshot: &[u8]) -> Result<File, StartError> {
    let snap = snapshot_path(dir, generation);
    let tmp = snap.with_extension(format!("{generation}.tmp"));
    let fail = |what, path: &Path| {
        let path = path.to_owned();
        move |e| (what, path, e)
    };
    write_synced(&tmp, snapshot).map_err(fail("write", &tmp))?;
    fs::rename(&tmp, &snap).map_err(fail("rename into place", &snap))?;
    sync_dir(dir).map_err(fail("sync", dir))?;
    let path = journal_path(dir, generation);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(fail("create", &path))?;
    file.write_all_at(JOURNAL_MAGIC, 0)
        .and_then(|()| file.sync_all())
        .map_err(fail("write", &path))?;
    sync_dir(dir).map_err(fail("sync", dir))?;
    Ok(file)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file = File::create(path)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes snapshots and journals of generations before `keep_from`, and leftover temp files.
fn prune(dir: &Path, keep_from: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let old = ["snapshot.", "journal."]
            .iter()
            .any(|prefix| super::generation_of(name, prefix).is_some_and(|g| g < keep_from));
        if old || (name.starts_with("snapshot.") && name.ends_with(".tmp")) {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(file = name, cause = %e, "could not delete an old state file");
            }
        }
    }
}
