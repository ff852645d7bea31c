//! On-disk framing shared by journals and snapshots: a file starts with an 8-byte magic, then
//! records `[len: u32 LE][crc32: u32 LE][payload: len bytes]`. A record whose length runs past
//! the end of the file or whose checksum does not match ends the readable part: after a crash
//! that is the torn last write, and it is dropped rather than misread.

use crate::engine::{Change, Snapshot};

/// First bytes of a journal file (format version 1).
pub(crate) const JOURNAL_MAGIC: &[u8; 8] = b"CDJRNL1\n";
/// First bytes of a snapshot file (format version 1).
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"CDSNAP1\n";
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

/// Splits `body` into records, stopping at the first torn or damaged one.
pub(crate) fn records(body: &[u8]) -> Records<'_> {
    let mut payloads = Vec::new();
    let mut at = 0;
    let damage = loop {
        let rest = &body[at..];
        if rest.is_empty() {
            break None;
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

/// Decodes a snapshot file.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let body = bytes
        .strip_prefix(SNAPSHOT_MAGIC.as_slice())
        .ok_or("not a coordinosaur snapshot (wrong magic bytes)")?;
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
    let mut snapshot: Snapshot =
        postcard::from_bytes(payload).map_err(|e| format!("undecodable snapshot: {e}"))?;
    snapshot.reindex();
    Ok(snapshot)
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
        let b = body(&[b"one", b"", b"three"]);
        let r = records(&b);
        assert_eq!(r.payloads, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(r.good_len, b.len());
        assert!(r.damage.is_none());
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
        assert!(decode_snapshot(&damaged).unwrap_err().contains("checksum"));
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_snapshot(b"CDJRNL1\nxx")
            .unwrap_err()
            .contains("magic"));
    }
}
