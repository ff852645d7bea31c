//! On-disk framing shared by journals and snapshots: a file starts with an 8-byte magic, then
//! records `[len: u32 LE][crc32: u32 LE][payload: len bytes]`. A record whose length runs past
//! the end of the file or whose checksum does not match ends the readable part: after a crash
//! that is the torn last write, and it is dropped rather than misread.
//!
//! Payloads are postcard encodings of the engine's [`Change`]s and [`Snapshot`]: positional,
//! so the magic carries a format version and the golden-bytes tests below pin the encoding.
//! - Format 1: the first release.
//! - Format 2: `Change::Delivered` (appended, so format-1 journal records decode unchanged) and
//!   each job's `granted_at` and `delivered` in snapshots (format-1 snapshots are read through
//!   [`v1`] and converted: their running jobs count as not delivered, as format 1 behaved).
//! - Format 3: fencing tokens. `Change::GrantedWithToken` (written instead of `Granted`) and
//!   `Change::Reply`, both appended, so format-1 and -2 journal records decode unchanged (their
//!   `Granted` folds into a job with token 0); in snapshots each job's `token` and `reply`, each
//!   channel's `last_token` and `next_seq`, and the snapshot's `token_floor` (format-2
//!   snapshots are read through [`v2`]: tokens 0, plain replies, `next_seq` past their jobs). The magic changes too, so that a format-2 build refuses a
//!   format-3 journal by name instead of taking its new records for damage.
//!
//! - Format 4: what `replay` needs to re-run the recorded period. `Change::Clock` (the engine
//!   time of the changes after it), `Change::Started` (the daemon restored its state),
//!   `Change::Left` (written instead of `Removed`: how a job
//!   left, finished, aborted, cancelled, expired or rejected) and `Change::Limits` (a channel's
//!   limits when created, restored or reloaded), all appended, so older journal records decode
//!   unchanged. Snapshots are as in format 3; only their magic changes.
//! - Format 5: job cost and progress. `Change::JobOptions` (appended, written right after a
//!   `Queued` whose job costs more than one unit or asked for progress, so journal records of
//!   formats 1 to 4 decode unchanged and their jobs cost 1 without progress); in snapshots each
//!   job's `cost` and `progress`, and each grant in a channel's `grants` is `(time, units)`
//!   (format-3 and -4 snapshots, alike, are read through [`v3`]: cost 1, one unit a grant).
//! - Format 6: journal files are preallocated: the writer extends a journal with zeros ahead of
//!   its records ([`super::writer`]), so a sync writes the records alone and not the file's size
//!   too, and the part after the last record reads as zeros (a clean end; [`records`]). A
//!   format-5 build would take those zeros for an empty, undecodable record, hence the new
//!   number. Records and snapshots are as in format 5; only the magics change.
//!
//! This build writes format 6 and reads 1 to 6; a file of a newer format is refused with an
//! error naming both, never read as damage (which would fall back to older state).

use std::collections::BTreeMap;

use crate::engine::{Change, ChannelSnapshot, JobSnapshot, Reply, Snapshot};

/// The format this build writes.
pub(crate) const FORMAT: u8 = 6;
/// First bytes of a journal file (the digit is the format).
pub(crate) const JOURNAL_MAGIC: &[u8; 8] = b"CDJRNL6\n";
/// First bytes of a snapshot file (the digit is the format).
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"CDSNAP6\n";
/// Magic prefixes, before the format digit.
const JOURNAL_KIND: &[u8; 6] = b"CDJRNL";
const SNAPSHOT_KIND: &[u8; 6] = b"CDSNAP";
/// Bytes before each payload.
const HEADER: usize = 8;
/// No record is this large; a length field above it is damage, not data.
const MAX_RECORD: usize = 1 << 30;

/// Appends one framed record holding `payload` to `out` (tests build damaged files with it).
#[cfg(test)]
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A batch of changes as one framed record, serialized straight after its header (no
/// intermediate buffer: this runs for every event that changes state).
pub(crate) fn encode_batch(changes: &[Change]) -> Vec<u8> {
    let out = Vec::with_capacity(HEADER + 48 * changes.len());
    framed_after(out, &changes).unwrap_or_else(|e| {
        // Serializing plain data into a Vec cannot fail; if it ever did, the batch would be
        // missing from the journal, so say so loudly rather than write something unreadable.
        tracing::error!(cause = %e, "journal batch not encoded");
        Vec::new()
    })
}

/// A whole snapshot file, serialized straight after its magic and record header: a snapshot is
/// as large as the state (up to `[limits] max_waiting_bytes` of waiting jobs and more), so a
/// second copy during a compaction would double the daemon's peak memory.
pub(crate) fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    framed_after(SNAPSHOT_MAGIC.to_vec(), snapshot).unwrap_or_else(|e| {
        tracing::error!(cause = %e, "snapshot not encoded");
        SNAPSHOT_MAGIC.to_vec()
    })
}

/// Appends one framed record holding `value` to `out`, serializing in place.
fn framed_after(
    mut out: Vec<u8>,
    value: &impl serde::Serialize,
) -> Result<Vec<u8>, postcard::Error> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    let mut out = postcard::to_extend(value, out)?;
    let payload = &out[start + HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The records of a file body (after its magic), and where the readable part ends.
#[derive(Debug)]
pub(crate) struct Records<'a> {
    /// Payloads of the intact records, in order.
    pub(crate) payloads: Vec<&'a [u8]>,
    /// Length of the intact prefix of the body.
    pub(crate) good_len: usize,
    /// Why reading stopped before the end, if it did.
    pub(crate) damage: Option<String>,
}

/// Splits `body` into records, stopping at the first torn or damaged one. Zeros from a record
/// boundary to the end are a preallocated journal's unwritten part, and end it cleanly (no
/// record is empty, so a zero length is never a record's).
pub(crate) fn records(body: &[u8]) -> Records<'_> {
    let mut payloads = Vec::new();
    let mut at = 0;
    let damage = loop {
        let rest = &body[at..];
        if rest.iter().take(HEADER).all(|&b| b == 0) {
            if rest.iter().all(|&b| b == 0) {
                break None;
            }
            break Some(format!(
                "an empty record header before {} more bytes",
                rest.len() - HEADER.min(rest.len())
            ));
        }
        let Some((len, crc)) = rest
            .get(..HEADER)
            .map(|h| (le_u32(&h[..4]) as usize, le_u32(&h[4..])))
        else {
            break Some(format!(
                "{} stray bytes where a record header should be",
                rest.len()
            ));
        };
        if len > MAX_RECORD {
            break Some(format!("record length {len} is not plausible"));
        }
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            break Some(format!(
                "record of {len} bytes cut short ({} present)",
                rest.len() - HEADER
            ));
        };
        if crc32fast::hash(payload) != crc {
            break Some(format!("checksum mismatch in a record of {len} bytes"));
        }
        payloads.push(payload);
        at += HEADER + len;
    };
    Records {
        payloads,
        good_len: at,
        damage,
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormatError {
    /// Not ours, or damaged: an older generation may still serve.
    Damaged(String),
    /// Written by a newer coordinosaur: never fall back past it to older state.
    Newer(String),
}

/// The format of a file that starts with `kind` + a digit + `\n`: `Ok(None)` if it does not
/// start like that at all, an error if the format is newer than this build reads.
fn format_of(bytes: &[u8], kind: &[u8; 6], what: &str) -> Result<Option<u8>, FormatError> {
    let Some(rest) = bytes.strip_prefix(kind.as_slice()) else {
        return Ok(None);
    };
    match rest {
        [digit @ b'1'..=b'9', b'\n', ..] => {
            let format = digit - b'0';
            if format > FORMAT {
                return Err(FormatError::Newer(format!(
                    "{what} format {format} was written by a newer coordinosaur; this build \
                     reads formats 1 to {FORMAT}: run the newer version, or move the state dir \
                     away to start empty"
                )));
            }
            Ok(Some(format))
        }
        _ => Ok(None),
    }
}

/// The body of a journal file after its magic, and its format; `Ok(None)` if it is not a
/// journal (or its magic is torn).
pub(crate) fn journal_body(bytes: &[u8]) -> Result<Option<&[u8]>, FormatError> {
    Ok(format_of(bytes, JOURNAL_KIND, "journal")?.map(|_| &bytes[JOURNAL_MAGIC.len()..]))
}

/// Decodes a snapshot file.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, FormatError> {
    let damaged = |e: String| FormatError::Damaged(e);
    let format = format_of(bytes, SNAPSHOT_KIND, "snapshot")?
        .ok_or_else(|| damaged("not a coordinosaur snapshot (wrong magic bytes)".into()))?;
    let body = &bytes[SNAPSHOT_MAGIC.len()..];
    decode_snapshot_body(body, format).map_err(damaged)
}

fn decode_snapshot_body(body: &[u8], format: u8) -> Result<Snapshot, String> {
    let recs = records(body);
    if let Some(damage) = recs.damage {
        return Err(damage);
    }
    let [payload] = recs.payloads.as_slice() else {
        return Err(format!(
            "expected one record, found {}",
            recs.payloads.len()
        ));
    };
    let undecodable = |e: postcard::Error| format!("undecodable snapshot: {e}");
    let mut snapshot: Snapshot = match format {
        1 => postcard::from_bytes::<v1::Snapshot>(payload)
            .map_err(undecodable)?
            .into(),
        2 => postcard::from_bytes::<v2::Snapshot>(payload)
            .map_err(undecodable)?
            .into(),
        3 | 4 => postcard::from_bytes::<v3::Snapshot>(payload)
            .map_err(undecodable)?
            .into(),
        _ => postcard::from_bytes(payload).map_err(undecodable)?,
    };
    snapshot.reindex();
    Ok(snapshot)
}

/// Format 1 snapshots, as they were written, and their conversion.
mod v1 {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde::Deserialize;

    use crate::engine::{Millis, Time};

    #[derive(Deserialize)]
    pub(super) struct Snapshot {
        pub(super) channels: BTreeMap<Arc<str>, ChannelSnapshot>,
    }

    #[derive(Deserialize)]
    pub(super) struct ChannelSnapshot {
        pub(super) concurrency: Option<(u32, u32)>,
        pub(super) jobs: BTreeMap<u64, JobSnapshot>,
        pub(super) grants: Vec<Time>,
    }

    #[derive(Deserialize)]
    pub(super) struct JobSnapshot {
        pub(super) uid: Arc<str>,
        pub(super) priority: i64,
        pub(super) timeout: Millis,
        pub(super) registered_at: Time,
        pub(super) deadline: Option<Time>,
        pub(super) meta: Option<Box<str>>,
    }
}

impl From<v1::Snapshot> for Snapshot {
    fn from(old: v1::Snapshot) -> Snapshot {
        let channels = old
            .channels
            .into_iter()
            .map(|(name, ch)| {
                let jobs: BTreeMap<u64, JobSnapshot> = ch
                    .jobs
                    .into_iter()
                    .map(|(seq, j)| {
                        let job = JobSnapshot {
                            uid: j.uid,
                            priority: j.priority,
                            timeout: j.timeout,
                            registered_at: j.registered_at,
                            deadline: j.deadline,
                            meta: j.meta.map(std::sync::Arc::from),
                            granted_at: None,
                            delivered: false,
                            token: 0,
                            reply: Reply::Plain,
                            cost: 1,
                            progress: false,
                        };
                        (seq, job)
                    })
                    .collect();
                (
                    name,
                    ChannelSnapshot::new(ch.concurrency, jobs, one_unit_each(ch.grants)),
                )
            })
            .collect();
        Snapshot {
            channels,
            token_floor: 0,
        }
    }
}

/// Format 2 snapshots, as they were written, and their conversion.
mod v2 {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde::Deserialize;

    use crate::engine::{Millis, Time};

    #[derive(Deserialize)]
    pub(super) struct Snapshot {
        pub(super) channels: BTreeMap<Arc<str>, ChannelSnapshot>,
    }

    #[derive(Deserialize)]
    pub(super) struct ChannelSnapshot {
        pub(super) concurrency: Option<(u32, u32)>,
        pub(super) jobs: BTreeMap<u64, JobSnapshot>,
        pub(super) grants: Vec<Time>,
    }

    #[derive(Deserialize)]
    pub(super) struct JobSnapshot {
        pub(super) uid: Arc<str>,
        pub(super) priority: i64,
        pub(super) timeout: Millis,
        pub(super) registered_at: Time,
        pub(super) deadline: Option<Time>,
        pub(super) meta: Option<Box<str>>,
        pub(super) granted_at: Option<Time>,
        pub(super) delivered: bool,
    }
}

/// Jobs of a format-2 snapshot had no fencing token (0) and a plain `go`; no channel had
/// handed out a token, so every floor is 0.
impl From<v2::Snapshot> for Snapshot {
    fn from(old: v2::Snapshot) -> Snapshot {
        let channels = old
            .channels
            .into_iter()
            .map(|(name, ch)| {
                let jobs: BTreeMap<u64, JobSnapshot> = ch
                    .jobs
                    .into_iter()
                    .map(|(seq, j)| {
                        let job = JobSnapshot {
                            uid: j.uid,
                            priority: j.priority,
                            timeout: j.timeout,
                            registered_at: j.registered_at,
                            deadline: j.deadline,
                            meta: j.meta.map(std::sync::Arc::from),
                            granted_at: j.granted_at,
                            delivered: j.delivered,
                            token: 0,
                            reply: Reply::Plain,
                            cost: 1,
                            progress: false,
                        };
                        (seq, job)
                    })
                    .collect();
                (
                    name,
                    ChannelSnapshot::new(ch.concurrency, jobs, one_unit_each(ch.grants)),
                )
            })
            .collect();
        Snapshot {
            channels,
            token_floor: 0,
        }
    }
}

/// Grants of a format before 4: each counted one unit.
fn one_unit_each(grants: Vec<crate::engine::Time>) -> Vec<(crate::engine::Time, u32)> {
    grants.into_iter().map(|t| (t, 1)).collect()
}

/// Format 3 snapshots, as they were written, and their conversion.
mod v3 {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde::Deserialize;

    use crate::engine::{Millis, Reply, Time};

    #[derive(Deserialize)]
    pub(super) struct Snapshot {
        pub(super) channels: BTreeMap<Arc<str>, ChannelSnapshot>,
        pub(super) token_floor: u64,
    }

    #[derive(Deserialize)]
    pub(super) struct ChannelSnapshot {
        pub(super) concurrency: Option<(u32, u32)>,
        pub(super) jobs: BTreeMap<u64, JobSnapshot>,
        pub(super) grants: Vec<Time>,
        pub(super) last_token: u64,
        pub(super) next_seq: u64,
    }

    #[derive(Deserialize)]
    pub(super) struct JobSnapshot {
        pub(super) uid: Arc<str>,
        pub(super) priority: i64,
        pub(super) timeout: Millis,
        pub(super) registered_at: Time,
        pub(super) deadline: Option<Time>,
        pub(super) meta: Option<Box<str>>,
        pub(super) granted_at: Option<Time>,
        pub(super) delivered: bool,
        pub(super) token: u64,
        pub(super) reply: Reply,
    }
}

/// Jobs of a format-3 snapshot cost one unit, and so did each of its grants.
impl From<v3::Snapshot> for Snapshot {
    fn from(old: v3::Snapshot) -> Snapshot {
        let channels = old
            .channels
            .into_iter()
            .map(|(name, ch)| {
                let jobs: BTreeMap<u64, JobSnapshot> = ch
                    .jobs
                    .into_iter()
                    .map(|(seq, j)| {
                        let job = JobSnapshot {
                            uid: j.uid,
                            priority: j.priority,
                            timeout: j.timeout,
                            registered_at: j.registered_at,
                            deadline: j.deadline,
                            meta: j.meta.map(std::sync::Arc::from),
                            granted_at: j.granted_at,
                            delivered: j.delivered,
                            token: j.token,
                            reply: j.reply,
                            cost: 1,
                            progress: false,
                        };
                        (seq, job)
                    })
                    .collect();
                let mut snap = ChannelSnapshot::new(ch.concurrency, jobs, one_unit_each(ch.grants))
                    .with_last_token(ch.last_token);
                snap.next_seq = ch.next_seq;
                (name, snap)
            })
            .collect();
        Snapshot {
            channels,
            token_floor: old.token_floor,
        }
    }
}

/// Decodes one journal record.
pub(crate) fn decode_batch(payload: &[u8]) -> Result<Vec<Change>, String> {
    postcard::from_bytes(payload).map_err(|e| format!("undecodable journal record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            frame(p, &mut out);
        }
        out
    }

    #[test]
    fn reads_back_what_it_framed() {
        let b = body(&[b"one", b"2", b"three"]);
        let r = records(&b);
        assert_eq!(r.payloads, vec![&b"one"[..], b"2", b"three"]);
        assert_eq!(r.good_len, b.len());
        assert!(r.damage.is_none());
    }

    /// A preallocated journal: zeros after the last record end it cleanly, whatever their
    /// length; zeros where a header should be, followed by anything else, are damage.
    #[test]
    fn a_zero_tail_ends_the_records_cleanly() {
        let b = body(&[b"one", b"two"]);
        for zeros in [1, 7, 8, 9, 4096] {
            let mut padded = b.clone();
            padded.resize(b.len() + zeros, 0);
            let r = records(&padded);
            assert_eq!(r.payloads, vec![&b"one"[..], b"two"], "{zeros} zeros");
            assert_eq!(r.good_len, b.len(), "{zeros} zeros");
            assert!(r.damage.is_none(), "{zeros} zeros: {:?}", r.damage);
        }
        let mut torn = b.clone();
        torn.resize(b.len() + 64, 0);
        torn[b.len() + 20] = 1;
        let r = records(&torn);
        assert_eq!(r.payloads.len(), 2);
        assert_eq!(r.good_len, b.len());
        assert!(r.damage.unwrap().contains("empty record header"));
        // An empty payload frames as eight zero bytes: never written, never read as a record.
        assert_eq!(body(&[b""]), [0; 8]);
    }

    #[test]
    fn every_torn_tail_is_dropped_never_misread() {
        let b = body(&[b"first record", b"second record"]);
        let first_len = 8 + b"first record".len();
        for cut in 0..b.len() {
            let r = records(&b[..cut]);
            let whole = if cut >= first_len { 1 } else { 0 };
            assert_eq!(r.payloads.len(), whole, "cut at {cut}");
            assert_eq!(r.good_len, whole * first_len, "cut at {cut}");
            assert_eq!(
                r.damage.is_some(),
                cut != 0 && cut != first_len,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let b = body(&[b"first record", b"second record"]);
        for byte in 0..b.len() {
            let mut damaged = b.clone();
            damaged[byte] ^= 0x10;
            let r = records(&damaged);
            assert!(r.damage.is_some(), "flip in byte {byte} went unnoticed");
            assert!(r.payloads.len() <= 1);
            if let Some(p) = r.payloads.first() {
                assert_eq!(*p, b"first record");
            }
        }
    }

    #[test]
    fn implausible_length_is_damage() {
        let mut b = Vec::new();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 12]);
        assert!(records(&b).damage.unwrap().contains("not plausible"));
    }

    #[test]
    fn snapshot_round_trips_and_rejects_damage() {
        let mut snap = Snapshot::default();
        snap.apply(Change::Queued {
            channel: "c".into(),
            uid: "u".into(),
            seq: 3,
            priority: -2,
            timeout: crate::engine::Millis(500),
            registered_at: crate::engine::Time(7),
            meta: Some("{\"a\":1}".into()),
        });
        let bytes = encode_snapshot(&snap);
        let back = decode_snapshot(&bytes).unwrap();
        assert_eq!(back, snap);
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let damage = |bytes: &[u8]| match decode_snapshot(bytes) {
            Err(FormatError::Damaged(e)) => e,
            other => panic!("expected damage, got {other:?}"),
        };
        assert!(damage(&damaged).contains("checksum"));
        damage(&bytes[..bytes.len() - 1]);
        assert!(damage(b"CDJRNL1\nxx").contains("magic"));
    }
}

#[cfg(test)]
mod golden {
    //! The on-disk encoding, pinned: a change to these bytes is a new format version.
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Millis, Time};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Every change format 2 knew, in the order of its golden batch.
    fn format_2_changes() -> Vec<Change> {
        let (channel, uid): (Arc<str>, Arc<str>) = ("ch".into(), "u1".into());
        vec![
            Change::Queued {
                channel: channel.clone(),
                uid: uid.clone(),
                seq: 7,
                priority: -3,
                timeout: Millis(60_000),
                registered_at: Time(1_700_000_000_000),
                meta: Some("{\"t\":1}".into()),
            },
            Change::Reprioritized {
                channel: channel.clone(),
                uid: uid.clone(),
                priority: 5,
            },
            Change::Granted {
                channel: channel.clone(),
                uid: uid.clone(),
                at: Time(1_700_000_000_100),
                deadline: Time(1_700_000_060_100),
            },
            Change::Renewed {
                channel: channel.clone(),
                uid: uid.clone(),
                timeout: Millis(1_000),
                deadline: Some(Time(1_700_000_001_200)),
            },
            Change::Delivered {
                channel: channel.clone(),
                uid: uid.clone(),
                seq: 7,
            },
            Change::Concurrency {
                channel: channel.clone(),
                configured: 2,
                max: 0,
            },
            Change::Removed { channel, uid },
        ]
    }

    /// Format 2's changes, then the two format 3 appended. Format 3 writes
    /// `GrantedWithToken` where format 2 wrote `Granted`; both are pinned.
    fn format_3_changes() -> Vec<Change> {
        let (channel, uid): (Arc<str>, Arc<str>) = ("ch".into(), "u1".into());
        let mut all = format_2_changes();
        all.extend([
            Change::GrantedWithToken {
                channel: channel.clone(),
                uid: uid.clone(),
                at: Time(1_700_000_000_300),
                deadline: Time(1_700_000_060_300),
                token: 300,
            },
            Change::Reply {
                channel,
                uid,
                reply: Reply::Json,
            },
        ]);
        all
    }

    /// Format 3's changes, then the four format 4 appended. Format 4 writes `Left` where older
    /// formats wrote `Removed`; both are pinned.
    fn format_4_changes() -> Vec<Change> {
        let (channel, uid): (Arc<str>, Arc<str>) = ("ch".into(), "u1".into());
        let mut all = format_3_changes();
        all.extend([
            Change::Clock {
                at: Time(1_700_000_000_400),
            },
            Change::Started,
            Change::Left {
                channel: channel.clone(),
                uid,
                why: crate::engine::Exit::Expired,
            },
            Change::Limits {
                channel,
                max_concurrent_jobs: 2,
                timeout_offset: Millis(1_000),
                quotas: vec![("minute".into(), Millis(60_000), 15)],
                policy: true,
            },
        ]);
        all
    }

    /// Every change: format 4's, then the one format 5 appended.
    fn every_change() -> Vec<Change> {
        let mut all = format_4_changes();
        all.push(Change::JobOptions {
            channel: "ch".into(),
            uid: "u1".into(),
            cost: 3,
            progress: true,
        });
        all
    }

    /// A snapshot with every format-3 field set: a job queued with a JSON reply, granted with
    /// token 300, renewed and delivered; a floor from a dropped channel.
    fn a_format_3_snapshot() -> Snapshot {
        let changes = format_3_changes();
        let mut snap = Snapshot::default();
        snap.apply(changes[0].clone()); // Queued
        snap.apply(changes[8].clone()); // Reply
        snap.apply(changes[1].clone()); // Reprioritized
        snap.apply(changes[7].clone()); // GrantedWithToken
        snap.apply(changes[3].clone()); // Renewed
        snap.apply(changes[4].clone()); // Delivered
        snap.token_floor = 4_000;
        snap
    }

    /// A snapshot with every format-5 field set: as format 3's, the job costing 3 units (so its
    /// grant counts 3) and asking for progress.
    fn a_snapshot() -> Snapshot {
        let changes = every_change();
        let mut snap = Snapshot::default();
        snap.apply(changes[0].clone()); // Queued
        snap.apply(changes[8].clone()); // Reply
        snap.apply(changes[13].clone()); // JobOptions
        snap.apply(changes[1].clone()); // Reprioritized
        snap.apply(changes[7].clone()); // GrantedWithToken
        snap.apply(changes[3].clone()); // Renewed
        snap.apply(changes[4].clone()); // Delivered
        snap.token_floor = 4_000;
        snap
    }

    /// What format 2 folded its first five changes into: what its golden snapshot holds.
    fn a_format_2_snapshot() -> Snapshot {
        let mut snap = Snapshot::default();
        for c in format_2_changes().into_iter().take(5) {
            snap.apply(c);
        }
        snap
    }

    /// `format_2_changes()`, encoded as one journal batch by format 2 (and still by format 3).
    const BATCH_2: &str = "5c00000094a3b08407000263680275310705e0d40380d095ffbc3101077b2274223a317d010263680275310a02026368027531e4d095ffbc31c4a599ffbc3103026368027531e80701b0d995ffbc31060263680275310705026368020004026368027531";
    /// `format_3_changes()` as one format-3 journal batch (and still format 4's encoding).
    const BATCH_3: &str = "79000000ce07541f09000263680275310705e0d40380d095ffbc3101077b2274223a317d010263680275310a02026368027531e4d095ffbc31c4a599ffbc3103026368027531e80701b0d995ffbc3106026368027531070502636802000402636802753107026368027531acd295ffbc318ca799ffbc31ac020802636802753101";
    /// `a_format_2_snapshot()` as a format-2 snapshot file.
    const SNAPSHOT_2: &str = "4344534e4150320a32000000239096e8010263680001070275310ae80780d095ffbc3101b0d995ffbc3101077b2274223a317d01e4d095ffbc310101e4d095ffbc31";
    /// `a_format_3_snapshot()` as a format-3 snapshot file.
    const SNAPSHOT_3: &str = "4344534e4150330a3a0000004aa58ec4010263680001070275310ae80780d095ffbc3101b0d995ffbc3101077b2274223a317d01acd295ffbc3101ac020101acd295ffbc31ac0208a01f";
    /// `format_4_changes()` as one format-4 journal batch (and still format 5's encoding).
    const BATCH_4: &str = "9d000000f838f8500d000263680275310705e0d40380d095ffbc3101077b2274223a317d010263680275310a02026368027531e4d095ffbc31c4a599ffbc3103026368027531e80701b0d995ffbc3106026368027531070502636802000402636802753107026368027531acd295ffbc318ca799ffbc31ac0208026368027531010990d395ffbc310a0b026368027531030c02636802e80701066d696e757465e0d4030f01";
    /// `a_format_3_snapshot()` as a format-4 snapshot file: format 3's, with the new magic.
    const SNAPSHOT_4: &str = "4344534e4150340a3a0000004aa58ec4010263680001070275310ae80780d095ffbc3101b0d995ffbc3101077b2274223a317d01acd295ffbc3101ac020101acd295ffbc31ac0208a01f";
    /// `every_change()` as one format-5 journal batch (format 6's encoding too).
    const BATCH: &str = "a6000000df39a3050e000263680275310705e0d40380d095ffbc3101077b2274223a317d010263680275310a02026368027531e4d095ffbc31c4a599ffbc3103026368027531e80701b0d995ffbc3106026368027531070502636802000402636802753107026368027531acd295ffbc318ca799ffbc31ac0208026368027531010990d395ffbc310a0b026368027531030c02636802e80701066d696e757465e0d4030f010d0263680275310301";
    /// `a_snapshot()` as a format-6 snapshot file.
    const SNAPSHOT: &str = "4344534e4150360a3d00000056ddd0dc010263680001070275310ae80780d095ffbc3101b0d995ffbc3101077b2274223a317d01acd295ffbc3101ac0201030101acd295ffbc3103ac0208a01f";
    /// `a_snapshot()` as a format-5 snapshot file: format 6's, with the older magic.
    const SNAPSHOT_5: &str = "4344534e4150350a3d00000056ddd0dc010263680001070275310ae80780d095ffbc3101b0d995ffbc3101077b2274223a317d01acd295ffbc3101ac0201030101acd295ffbc3103ac0208a01f";

    #[test]
    fn a_journal_batch_is_encoded_as_format_5_says() {
        let bytes = encode_batch(&every_change());
        assert_eq!(hex(&bytes), BATCH);
        let recs = records(&bytes);
        assert_eq!(decode_batch(recs.payloads[0]).unwrap(), every_change());
    }

    /// Formats 4 and 5 only appended variants: a format-3 batch decodes to the same changes, and
    /// its jobs cost one unit.
    #[test]
    fn a_format_3_journal_batch_still_decodes() {
        assert_eq!(hex(&encode_batch(&format_3_changes())), BATCH_3);
        let bytes = unhex(BATCH_3);
        let changes = decode_batch(records(&bytes).payloads[0]).unwrap();
        assert_eq!(changes, format_3_changes());
        let ch = &a_format_3_snapshot().channels["ch"];
        assert_eq!(ch.jobs[&7].cost, 1);
        assert_eq!(ch.grants, [(Time(1_700_000_000_300), 1)]);
    }

    /// A format-4 `Left` folds as `Removed` did; `Clock` and `Limits` fold into nothing.
    #[test]
    fn format_4_changes_fold_like_removed() {
        let mut snap = a_format_3_snapshot();
        for c in format_4_changes().into_iter().skip(9) {
            snap.apply(c);
        }
        assert!(snap.channels["ch"].jobs.is_empty());
        assert_eq!(snap.channels["ch"].grants.len(), 1);
    }

    /// Format 5 only appended `JobOptions`: a format-4 batch decodes to the same changes.
    #[test]
    fn a_format_4_journal_batch_still_decodes() {
        assert_eq!(hex(&encode_batch(&format_4_changes())), BATCH_4);
        let bytes = unhex(BATCH_4);
        let changes = decode_batch(records(&bytes).payloads[0]).unwrap();
        assert_eq!(changes, format_4_changes());
    }

    /// A format-4 snapshot (format 3's layout, with its own magic) reads as format 3's does:
    /// every job and grant one unit.
    #[test]
    fn a_format_4_snapshot_is_read_and_converted() {
        assert_eq!(
            decode_snapshot(&unhex(SNAPSHOT_4)).unwrap(),
            a_format_3_snapshot()
        );
    }

    /// Format 3 only appended variants: a format-2 batch decodes to the same changes, and its
    /// `Granted` folds into a job without a token.
    #[test]
    fn a_format_2_journal_batch_still_decodes() {
        assert_eq!(hex(&encode_batch(&format_2_changes())), BATCH_2);
        let bytes = unhex(BATCH_2);
        let changes = decode_batch(records(&bytes).payloads[0]).unwrap();
        assert_eq!(changes, format_2_changes());
        let job = &a_format_2_snapshot().channels["ch"].jobs[&7];
        assert_eq!((job.token, job.reply), (0, Reply::Plain));
    }

    /// Format 6 changed only the file journal's tail: a format-5 snapshot reads the same.
    #[test]
    fn a_format_5_snapshot_still_reads() {
        assert_eq!(decode_snapshot(&unhex(SNAPSHOT_5)).unwrap(), a_snapshot());
    }

    #[test]
    fn a_snapshot_is_encoded_as_format_6_says() {
        let bytes = encode_snapshot(&a_snapshot());
        assert_eq!(hex(&bytes), SNAPSHOT);
        assert_eq!(decode_snapshot(&bytes).unwrap(), a_snapshot());
        let ch = &a_snapshot().channels["ch"];
        assert_eq!(
            (ch.last_token, ch.jobs[&7].token, ch.next_seq),
            (300, 300, 8)
        );
        assert_eq!(ch.jobs[&7].reply, Reply::Json);
        assert_eq!((ch.jobs[&7].cost, ch.jobs[&7].progress), (3, true));
        assert_eq!(ch.grants, [(Time(1_700_000_000_300), 3)]);
    }

    /// A format-3 snapshot (jobs without cost, grants without units) reads as format 4 with
    /// every job and grant one unit, tokens and sequence numbers as they were.
    #[test]
    fn a_format_3_snapshot_is_read_and_converted() {
        assert_eq!(
            decode_snapshot(&unhex(SNAPSHOT_3)).unwrap(),
            a_format_3_snapshot()
        );
    }

    /// A format-2 snapshot (jobs without token and reply, channels without a last token) reads
    /// as format 3 with tokens 0, plain replies and a floor of 0.
    #[test]
    fn a_format_2_snapshot_is_read_and_converted() {
        assert_eq!(
            decode_snapshot(&unhex(SNAPSHOT_2)).unwrap(),
            a_format_2_snapshot()
        );
    }

    /// A format-1 snapshot (jobs without grant time and delivery) reads as format 2 with every
    /// job undelivered, so a restart says `go` again to its running jobs as format 1 did.
    #[test]
    fn a_format_1_snapshot_is_read_and_converted() {
        #[derive(serde::Serialize)]
        struct Job<'a> {
            uid: &'a str,
            priority: i64,
            timeout: Millis,
            registered_at: Time,
            deadline: Option<Time>,
            meta: Option<&'a str>,
        }
        #[derive(serde::Serialize)]
        struct Channel<'a> {
            concurrency: Option<(u32, u32)>,
            jobs: std::collections::BTreeMap<u64, Job<'a>>,
            grants: Vec<Time>,
        }
        let job = Job {
            uid: "u1",
            priority: 5,
            timeout: Millis(1_000),
            registered_at: Time(1_700_000_000_000),
            deadline: Some(Time(1_700_000_001_200)),
            meta: Some("{\"t\":1}"),
        };
        let channel = Channel {
            concurrency: None,
            jobs: [(7, job)].into(),
            grants: vec![Time(1_700_000_000_100)],
        };
        let channels: std::collections::BTreeMap<&str, Channel> = [("ch", channel)].into();
        let mut file = b"CDSNAP1\n".to_vec();
        frame(&postcard::to_stdvec(&(channels,)).unwrap(), &mut file);
        let read = decode_snapshot(&file).unwrap();
        let mut expected = a_format_2_snapshot();
        for job in expected.channels.get_mut("ch").unwrap().jobs.values_mut() {
            job.granted_at = None;
            job.delivered = false;
        }
        assert_eq!(read, expected);
    }

    #[test]
    fn files_of_a_newer_format_are_refused_by_name_not_taken_for_damage() {
        for bytes in [&b"CDSNAP7\n"[..], b"CDSNAP9\nanything"] {
            match decode_snapshot(bytes) {
                Err(FormatError::Newer(e)) => assert!(e.contains("newer coordinosaur"), "{e}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            journal_body(b"CDJRNL7\n"),
            Err(FormatError::Newer(_))
        ));
        assert_eq!(journal_body(b"CDJRNL6\n"), Ok(Some(&b""[..])));
        assert_eq!(journal_body(b"CDJRNL5\n"), Ok(Some(&b""[..])));
        assert_eq!(journal_body(b"CDJRNL1\nbody"), Ok(Some(&b"body"[..])));
        assert_eq!(journal_body(b"CDJRNL2\n"), Ok(Some(&b""[..])));
        assert_eq!(journal_body(b"CDJRNL3\n"), Ok(Some(&b""[..])));
        assert_eq!(journal_body(b"CDJRNL4\n"), Ok(Some(&b""[..])));
        assert_eq!(journal_body(b"CDJR"), Ok(None));
        assert_eq!(journal_body(b"something else"), Ok(None));
    }
}
