//! The state dir on a real file system: generations, recovery and damage.

use std::fs::{self, OpenOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::engine::{Change, Millis, Time};

fn queued(uid: &str, seq: u64) -> Change {
    Change::Queued {
        channel: Arc::from("ch"),
        uid: Arc::from(uid),
        seq,
        priority: 0,
        timeout: Millis(1_000),
        registered_at: Time(5),
        meta: None,
    }
}

fn granted(uid: &str, at: u64) -> Change {
    Change::Granted {
        channel: Arc::from("ch"),
        uid: Arc::from(uid),
        at: Time(at),
        deadline: Time(at + 1_000),
    }
}

/// Opens `dir`, commits `batches`, and closes it again (as a clean stop would).
fn run(dir: &Path, batches: &[Vec<Change>]) -> Snapshot {
    let (mut snap, _, mut journal) = open(dir, Durability::Fsync, |_| usize::MAX).unwrap();
    for b in batches {
        let id = journal.submit(b);
        for c in b.iter().cloned() {
            snap.apply(c);
        }
        assert_eq!(journal.close_wait(id), id);
    }
    journal.close(Duration::from_secs(5));
    snap
}

/// Writes `bytes` where the journal's records end, on the zeros preallocated after them, as a
/// write cut short by a crash leaves them.
pub(super) fn write_at_records_end(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let data = fs::read(path).unwrap();
    let at = format::JOURNAL_MAGIC.len()
        + format::records(&data[format::JOURNAL_MAGIC.len()..]).good_len;
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, at as u64).unwrap();
}

impl FileJournal {
    /// Waits until `id` is committed (tests only), polling for held batches as the driver
    /// does at their deadline.
    fn close_wait(&mut self, id: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.committed() < id && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            self.poll(Instant::now());
        }
        self.committed()
    }

    /// Waits until no compaction is being written (tests only).
    fn rotation_wait(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.is_rotating() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn newest_journal(dir: &Path) -> PathBuf {
    let files = Files::scan(dir).unwrap();
    journal_path(dir, *files.journals.iter().max().unwrap())
}

#[test]
fn what_was_committed_comes_back_and_each_start_begins_a_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let expected = run(
        &dir,
        &[vec![queued("a", 0), queued("b", 1)], vec![granted("a", 10)]],
    );
    let (snap, recovery, journal) = open(&dir, Durability::Os, |_| usize::MAX).unwrap();
    assert_eq!(snap, expected);
    assert_eq!(recovery.changes, 3);
    assert_eq!(recovery.torn_bytes, 0);
    assert!(recovery.warnings.is_empty());
    assert_eq!(journal.describe().2, 1, "second start is generation 1");
    drop(journal);
    // The third start folds generation 1 (a snapshot, an empty journal) and drops generation 0.
    let (snap, recovery, _journal) = open(&dir, Durability::Os, |_| usize::MAX).unwrap();
    assert_eq!(snap, expected);
    assert_eq!(recovery.base, 1);
    assert!(!journal_path(&dir, 0).exists());
    assert!(snapshot_path(&dir, 1).exists());
}

#[test]
fn a_second_open_of_a_locked_dir_is_refused_with_the_holders_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let (_snap, _rec, _journal) = open(tmp.path(), Durability::Os, |_| usize::MAX).unwrap();
    let err = open(tmp.path(), Durability::Os, |_| usize::MAX).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("in use by another coordinosaur"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
}

#[test]
fn a_torn_last_write_is_dropped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = run(tmp.path(), &[vec![queued("a", 0)]]);
    let record = format::encode_batch(&[queued("b", 1)]);
    write_at_records_end(&newest_journal(tmp.path()), &record[..record.len() - 3]);
    let (snap, recovery, _j) = open(tmp.path(), Durability::Os, |_| usize::MAX).unwrap();
    assert_eq!(snap, expected, "the torn record is not applied");
    assert_eq!(recovery.torn_bytes, record.len() as u64 - 3);
    assert!(
        recovery.warnings[0].contains("torn last write"),
        "{:?}",
        recovery.warnings
    );
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_generation_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let first = run(tmp.path(), &[vec![queued("a", 0)]]);
    // Generation 1 starts from a snapshot holding `a`, then journals `b`.
    let expected = {
        let mut s = run(tmp.path(), &[vec![queued("b", 1)]]);
        s.reindex();
        s
    };
    assert_ne!(first, expected);
    let snap1 = snapshot_path(tmp.path(), 1);
    let mut bytes = fs::read(&snap1).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&snap1, bytes).unwrap();
    let (snap, recovery, _j) = open(tmp.path(), Durability::Os, |_| usize::MAX).unwrap();
    assert_eq!(
        snap, expected,
        "journals 0 and 1 replayed over the empty start"
    );
    assert_eq!(recovery.base, 0);
    assert!(
        recovery.warnings[0].contains("damaged"),
        "{:?}",
        recovery.warnings
    );
}

#[test]
fn nothing_usable_refuses_and_leaves_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), &[vec![queued("a", 0)]]);
    fs::write(
        journal_path(tmp.path(), 0),
        b"garbage that is not a journal",
    )
    .unwrap();
    let err = open(tmp.path(), Durability::Os, |_| usize::MAX)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot restore"), "{err}");
    assert!(err.contains("journal.0"), "{err}");
    assert!(journal_path(tmp.path(), 0).exists());
}

#[test]
fn a_state_dir_that_is_a_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = open(&file, Durability::Os, |_| 0).unwrap_err().to_string();
    assert!(err.contains("not-a-dir"), "{err}");
    assert!(err.contains("cannot create the folder"), "{err}");
}

#[test]
fn compaction_starts_a_generation_and_keeps_the_one_before() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut snap, _, mut journal) = open(tmp.path(), Durability::Os, |_| usize::MAX).unwrap();
    for (seq, uid) in ["a", "b", "c"].into_iter().enumerate() {
        let batch = vec![queued(uid, seq as u64)];
        journal.submit(&batch);
        snap.apply(batch[0].clone());
        if seq == 1 {
            journal.compact(snap.clone());
        }
    }
    let last = journal.last_id();
    assert_eq!(journal.close_wait(last), last);
    journal.close(Duration::from_secs(5));
    assert!(snapshot_path(tmp.path(), 1).exists());
    assert!(
        journal_path(tmp.path(), 0).exists(),
        "previous generation kept"
    );
    let (back, recovery, _j) = open(tmp.path(), Durability::Os, |_| usize::MAX).unwrap();
    assert_eq!(recovery.base, 1);
    assert_eq!(back, snap);
}

fn queued_c(uid: &str, seq: u64) -> Change {
    Change::Queued {
        channel: "c".into(),
        uid: uid.into(),
        seq,
        priority: 0,
        timeout: Millis(1000),
        registered_at: Time(seq),
        meta: None,
    }
}

/// Opens `dir`, journals `changes`, and closes it again (as a clean stop would).
fn run_once(dir: &Path, changes: &[Change]) -> (Snapshot, Recovery) {
    let (snapshot, recovery, mut journal) = open(dir, Durability::Os, |_| 0).unwrap();
    let id = if changes.is_empty() {
        0
    } else {
        journal.submit(changes)
    };
    assert_eq!(journal.close(Duration::from_secs(5)), id);
    (snapshot, recovery)
}

fn uids(snapshot: &Snapshot) -> Vec<&str> {
    let ch = &snapshot.channels["c"];
    ch.jobs.values().map(|j| &*j.uid).collect()
}

#[test]
fn a_cut_off_torn_write_does_not_end_a_later_fallback_through_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    run_once(dir.path(), &[queued_c("a", 0)]);
    write_at_records_end(&journal_path(dir.path(), 0), &[0x40, 0, 0, 0, 1, 2, 3]);
    let (snapshot, recovery) = run_once(dir.path(), &[queued_c("b", 1)]);
    assert_eq!(recovery.torn_bytes, 7);
    assert_eq!(uids(&snapshot), ["a"]);

    // Generation 1's snapshot is damaged: generation 0 and both journals rebuild it all.
    let snap1 = snapshot_path(dir.path(), 1);
    let mut bytes = fs::read(&snap1).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&snap1, bytes).unwrap();
    let (snapshot, recovery) = run_once(dir.path(), &[]);
    assert_eq!(recovery.base, 0, "{:?}", recovery.warnings);
    assert_eq!(uids(&snapshot), ["a", "b"], "{:?}", recovery.warnings);
}

#[test]
fn a_journal_with_half_its_magic_becomes_an_empty_journal() {
    let dir = tempfile::tempdir().unwrap();
    run_once(dir.path(), &[queued_c("a", 0)]);
    // A crash while generation 1 was being created: its journal holds half a magic.
    fs::write(journal_path(dir.path(), 1), &format::JOURNAL_MAGIC[..3]).unwrap();
    let (snapshot, recovery) = run_once(dir.path(), &[]);
    assert_eq!(recovery.torn_bytes, 3);
    assert_eq!(uids(&snapshot), ["a"]);
    assert_eq!(
        fs::read(journal_path(dir.path(), 1)).unwrap(),
        format::JOURNAL_MAGIC
    );
}

/// A state dir written by a newer coordinosaur (a downgrade): refused by name, and never read
/// as damage, which would fall back to an older generation and lose what the newer one decided.
#[test]
fn a_newer_format_is_refused_by_name_not_fallen_back_from() {
    for newer in ["snapshot", "journal"] {
        let tmp = tempfile::tempdir().unwrap();
        run_once(tmp.path(), &[queued_c("a", 0)]);
        run_once(tmp.path(), &[queued_c("b", 1)]);
        let (path, magic) = match newer {
            "snapshot" => (snapshot_path(tmp.path(), 1), b"CDSNAP7\n"),
            _ => (journal_path(tmp.path(), 1), b"CDJRNL7\n"),
        };
        let mut bytes = fs::read(&path).unwrap();
        bytes[..8].copy_from_slice(magic);
        fs::write(&path, bytes).unwrap();
        let err = open(tmp.path(), Durability::Os, |_| 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer coordinosaur"), "{newer}: {err}");
        assert!(err.contains(&format!("{newer}.1")), "{newer}: {err}");
    }
}

/// A state dir of format 1 (the previous release) is restored, and the next generation is
/// written in the current format.
#[test]
fn a_format_1_journal_is_restored_and_the_next_generation_is_current() {
    let tmp = tempfile::tempdir().unwrap();
    run_once(tmp.path(), &[queued_c("a", 0)]);
    // Rewrite generation 0 as format 1 wrote it: same records, older magic (a journal of
    // `Queued` changes encodes the same in both formats).
    let path = journal_path(tmp.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(b"CDJRNL1\n");
    fs::write(&path, bytes).unwrap();
    for g in 1..=5 {
        let _ = fs::remove_file(journal_path(tmp.path(), g));
        let _ = fs::remove_file(snapshot_path(tmp.path(), g));
    }
    let (snapshot, recovery) = run_once(tmp.path(), &[]);
    assert_eq!(uids(&snapshot), ["a"], "{:?}", recovery.warnings);
    let newest = newest_journal(tmp.path());
    assert_eq!(&fs::read(newest).unwrap()[..8], format::JOURNAL_MAGIC);
}

/// With `durability = "os"` writes are inline, but a compaction's snapshot encode, writes and
/// syncs happen on a thread; once they and every batch before are written, the writer comes
/// back inline, and what was written on either side restores.
#[test]
fn an_os_compaction_is_written_off_the_caller_and_writes_come_back_inline() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut snap, _, mut journal) = open(tmp.path(), Durability::Os, |_| usize::MAX).unwrap();
    assert!(journal.writes_inline());
    let batch = vec![queued("a", 0)];
    journal.submit(&batch);
    snap.apply(batch[0].clone());
    journal.compact(snap.clone());
    assert!(
        !journal.writes_inline(),
        "the rotation runs on the writer thread"
    );
    assert!(
        !journal.wants_compaction(),
        "no second compaction while one is written"
    );
    let batch = vec![queued("b", 1)];
    let id = journal.submit(&batch);
    snap.apply(batch[0].clone());
    assert_eq!(journal.close_wait(id), id);
    journal.rotation_wait();
    let batch = vec![queued("c", 2)];
    let id = journal.submit(&batch);
    snap.apply(batch[0].clone());
    assert!(journal.writes_inline(), "writes are inline again");
    assert_eq!(journal.committed(), id);
    journal.close(Duration::from_secs(5));
    let (back, recovery, _j) = open(tmp.path(), Durability::Os, |_| usize::MAX).unwrap();
    assert_eq!(recovery.base, 1, "{:?}", recovery.warnings);
    assert_eq!(back, snap);
}

/// With `fsync` the snapshot is encoded and written by the writer thread between batches.
#[test]
fn an_fsync_compaction_keeps_every_batch_around_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut snap, _, mut journal) = open(tmp.path(), Durability::Fsync, |_| usize::MAX).unwrap();
    let mut last = 0;
    for (seq, uid) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let batch = vec![queued(uid, seq as u64)];
        last = journal.submit(&batch);
        snap.apply(batch[0].clone());
        if seq == 1 {
            journal.compact(snap.clone());
        }
    }
    assert_eq!(journal.close_wait(last), last);
    journal.close(Duration::from_secs(5));
    // The finished generation keeps its records, not the zeros preallocated after them.
    let old = fs::read(journal_path(tmp.path(), 0)).unwrap();
    let magic = format::JOURNAL_MAGIC.len();
    assert_eq!(magic + format::records(&old[magic..]).good_len, old.len());
    let (back, recovery, _j) = open(tmp.path(), Durability::Fsync, |_| usize::MAX).unwrap();
    assert_eq!(recovery.base, 1, "{:?}", recovery.warnings);
    assert_eq!(back, snap);
}

/// Recovery hands over the registrations the journal applied (for the broker's redeliveries),
/// the ones of jobs that have ended since included.
#[test]
fn recovery_lists_the_registrations_the_journal_applied() {
    let tmp = tempfile::tempdir().unwrap();
    run_once(
        tmp.path(),
        &[
            queued_c("a", 0),
            queued_c("b", 1),
            Change::Removed {
                channel: "c".into(),
                uid: "a".into(),
            },
        ],
    );
    let (snapshot, recovery) = run_once(tmp.path(), &[]);
    assert_eq!(uids(&snapshot), ["b"]);
    let recent: Vec<&str> = recovery
        .recent_registrations
        .iter()
        .map(|r| &*r.uid)
        .collect();
    assert_eq!(recent, ["a", "b"]);
}

/// A state dir of format 2 whose journal holds a grant of the time before fencing tokens: the
/// job comes back running with token 0 (it never had one), and the next generation is the current format.
#[test]
fn a_format_2_journal_is_restored_with_untokened_grants() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run(dir, &[vec![queued("a", 0)], vec![granted("a", 10)]]);
    let path = journal_path(dir, 0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(b"CDJRNL2\n");
    fs::write(&path, bytes).unwrap();
    for g in 1..=5 {
        let _ = fs::remove_file(journal_path(dir, g));
        let _ = fs::remove_file(snapshot_path(dir, g));
    }
    let (snap, recovery, journal) = open(dir, Durability::Os, |_| usize::MAX).unwrap();
    assert!(recovery.warnings.is_empty(), "{:?}", recovery.warnings);
    let ch = &snap.channels["ch"];
    let job = &ch.jobs[&0];
    assert_eq!(
        (job.deadline, job.token, ch.last_token),
        (Some(Time(1_010)), 0, 0)
    );
    drop(journal);
    assert_eq!(
        &fs::read(newest_journal(dir)).unwrap()[..8],
        format::JOURNAL_MAGIC
    );
    assert_eq!(&format::JOURNAL_MAGIC[..], b"CDJRNL6\n");
}

/// A batch of only acknowledgements is committed without a sync of its own, and is durable
/// with the next synced batch: both come back after a restart.
#[test]
fn lazy_acknowledgement_batches_ride_along_with_the_next_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, mut journal) = open(tmp.path(), Durability::Fsync, |_| usize::MAX).unwrap();
    journal.submit(&[queued_c("a", 0)]);
    let delivered = Change::Delivered {
        channel: "c".into(),
        uid: "a".into(),
        seq: 0,
    };
    let lazy = journal.submit(std::slice::from_ref(&delivered));
    assert_eq!(journal.close_wait(lazy), lazy);
    let last = journal.submit(&[queued_c("b", 1)]);
    assert_eq!(journal.close_wait(last), last);
    journal.close(Duration::from_secs(5));
    let (snapshot, recovery) = run_once(tmp.path(), &[]);
    assert_eq!(recovery.changes, 3, "{:?}", recovery.warnings);
    assert_eq!(uids(&snapshot), ["a", "b"]);
}

/// A batch that only acknowledgements wait for is held for the next batch's sync, and synced on
/// its own once [`DEFER_MAX`] has passed; both are durable after a restart, and a batch behind
/// a held one is committed after it, never before.
#[test]
fn a_soon_batch_shares_the_next_sync_or_is_synced_at_its_deadline() {
    use super::group::{Urgency, DEFER_MAX};
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, mut journal) = open(tmp.path(), Durability::Fsync, |_| usize::MAX).unwrap();
    let started = std::time::Instant::now();
    let alone = journal.submit_with(&[queued_c("a", 0)], Urgency::Soon, Instant::now());
    assert_eq!(journal.close_wait(alone), alone);
    assert!(started.elapsed() >= DEFER_MAX, "synced before its deadline");
    let soon = journal.submit_with(&[queued_c("b", 1)], Urgency::Soon, Instant::now());
    let now = journal.submit(&[queued_c("c", 2)]);
    assert!(now > soon);
    assert_eq!(journal.close_wait(now), now);
    // Held at close: still written and synced.
    let last = journal.submit_with(&[queued_c("d", 3)], Urgency::Soon, Instant::now());
    assert_eq!(journal.close(Duration::from_secs(5)), last);
    let (snapshot, recovery) = run_once(tmp.path(), &[]);
    assert_eq!(recovery.changes, 4, "{:?}", recovery.warnings);
    assert_eq!(uids(&snapshot), ["a", "b", "c", "d"]);
}

/// With `fsync` the driver's thread writes and syncs (no writer thread while the disk is
/// healthy), and group commit holds as on the thread: a batch only acknowledgements wait for is
/// held until its deadline (time injected) or until a batch with outputs syncs it too.
#[test]
fn inline_fsync_holds_a_soon_batch_until_its_deadline_or_the_next_now_batch() {
    use super::group::{Urgency, DEFER_MAX};
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, mut journal) = open(tmp.path(), Durability::Fsync, |_| usize::MAX).unwrap();
    assert!(
        journal.writes_inline(),
        "no thread while the disk is healthy"
    );
    let t0 = Instant::now();
    let a = journal.submit_with(&[queued_c("a", 0)], Urgency::Soon, t0);
    assert_eq!(journal.committed(), a - 1, "held for company");
    assert_eq!(journal.deadline(), Some(t0 + DEFER_MAX));
    journal.poll(t0 + DEFER_MAX - Duration::from_micros(1));
    assert_eq!(journal.committed(), a - 1, "not before its deadline");
    journal.poll(t0 + DEFER_MAX);
    assert_eq!(journal.committed(), a, "synced alone at its deadline");
    assert_eq!(journal.deadline(), None);

    let t1 = t0 + Duration::from_millis(10);
    let b = journal.submit_with(&[queued_c("b", 1)], Urgency::Soon, t1);
    assert_eq!(journal.committed(), a);
    let c = journal.submit_with(&[queued_c("c", 2)], Urgency::Now, t1);
    assert_eq!(journal.committed(), c, "one sync for both");
    assert!(c > b);
    // Held at close: still written and synced.
    let d = journal.submit_with(&[queued_c("d", 3)], Urgency::Soon, t1);
    assert_eq!(journal.close(Duration::from_secs(5)), d);

    // Preallocated (format 6): the file runs on in zeros past its records, which read as a
    // clean end.
    let path = journal_path(tmp.path(), 0);
    assert!(fs::metadata(&path).unwrap().len() >= 1 << 20);
    let (snapshot, recovery) = run_once(tmp.path(), &[]);
    assert!(recovery.warnings.is_empty(), "{:?}", recovery.warnings);
    assert_eq!(recovery.torn_bytes, 0);
    assert_eq!(uids(&snapshot), ["a", "b", "c", "d"]);
}

/// A sync slower than the threshold moves the writer to its thread for good (a slow or
/// stalled disk must not hold up the driver); what was and is submitted is committed by the
/// thread, with its held batch, and comes back after a restart.
#[test]
fn a_slow_inline_sync_hands_the_journal_to_the_writer_thread() {
    use super::group::Urgency;
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, mut journal) = open(tmp.path(), Durability::Fsync, |_| usize::MAX).unwrap();
    journal.set_inline_sync_max(Duration::ZERO);
    let a = journal.submit(&[queued_c("a", 0)]);
    assert_eq!(journal.committed(), a, "committed inline, then handed over");
    assert!(!journal.writes_inline(), "the slow sync moved the writer");
    let b = journal.submit_with(&[queued_c("b", 1)], Urgency::Soon, Instant::now());
    let c = journal.submit(&[queued_c("c", 2)]);
    assert!(c > b);
    assert_eq!(journal.close_wait(c), c);
    assert!(!journal.writes_inline(), "for good");
    assert_eq!(journal.close(Duration::from_secs(5)), c);
    let (snapshot, recovery) = run_once(tmp.path(), &[]);
    assert!(recovery.warnings.is_empty(), "{:?}", recovery.warnings);
    assert_eq!(uids(&snapshot), ["a", "b", "c"]);
}
