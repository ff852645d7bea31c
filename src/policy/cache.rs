//! Compiled policy components on disk, so that a restart or a swap back to a known version loads
//! in a fraction of a millisecond instead of recompiling (tens of ms for a Rust policy, seconds
//! for one embedding a JavaScript or Python runtime).
//!
//! An entry is named by a SHA-256 over wasmtime's precompile compatibility hash (target, compiler
//! flags, tunables, features, wasmtime version) and the SHA-256 of the policy file, so a changed
//! file or engine simply misses. Loading machine code is `unsafe` in wasmtime: the bytes are
//! trusted to be its own output. So an entry is only deserialized when an HMAC-SHA256 over its
//! name and bytes, keyed by a random key kept in the cache folder (mode 0600, folder 0700), is
//! right: a truncated, corrupted, renamed, or foreign file (another host's, another user's, a
//! copy from elsewhere) fails the check, is logged, and is rebuilt. wasmtime then checks its own
//! header and engine configuration again.
//!
//! The folder is bounded by `max_bytes`: after each write the least recently used entries (by
//! modification time, refreshed on every hit) are removed until the rest fits.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// First bytes of every entry: format and version.
const MAGIC: &[u8; 16] = b"coordinosaur-pc1";
/// Length of the HMAC tag after the magic.
const TAG_LEN: usize = 32;
/// Length of the key file.
const KEY_LEN: usize = 32;
/// Extension of entries (other files in the folder are left alone).
const EXT: &str = "cwasm";

/// Distinguishes temporary files of concurrent writes in one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The cache folder and the key that authenticates its entries.
#[derive(Clone)]
pub struct PolicyCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
    max_bytes: u64,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("PolicyCache")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A verified entry, deserialized.
    Hit(Component),
    /// No entry for this file and engine.
    Miss,
    /// An entry that failed a check (it will be overwritten by a fresh compile); the reason.
    Rejected(String),
}

impl PolicyCache {
    /// Opens (creating if needed) the cache in `dir`, with its key. Fails when the folder or
    /// its key cannot be created or read.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<PolicyCache> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let key = load_or_create_key(dir)?;
        Ok(PolicyCache {
            dir: dir.to_owned(),
            key,
            max_bytes,
        })
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry file for `wasm` compiled by `engine`.
    #[cfg(test)]
    fn entry_path(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.{EXT}", entry_name(engine, wasm)))
    }

    /// Looks up `wasm` compiled by `engine`.
    pub(crate) fn load(&self, engine: &Engine, wasm: &[u8]) -> Lookup {
        let name = entry_name(engine, wasm);
        let path = self.dir.join(format!("{name}.{EXT}"));
        let bytes = match read_bounded(&path, self.max_bytes) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Lookup::Miss,
            Err(e) => return Lookup::Rejected(format!("cannot read {}: {e}", path.display())),
        };
        let Some(payload) = self.verified(&name, &bytes) else {
            return Lookup::Rejected(format!(
                "{} is not an entry this host wrote (truncated, corrupted or foreign)",
                path.display()
            ));
        };
        match deserialize(engine, payload) {
            Ok(component) => {
                // Refresh its age for the least-recently-used pruning; failing that is harmless.
                let _ = File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Lookup::Hit(component)
            }
            Err(e) => Lookup::Rejected(format!("{}: {e:#}", path.display())),
        }
    }

    /// Writes the compiled `component` of `wasm` (atomically: a temporary file renamed into
    /// place), then prunes the folder to `max_bytes`.
    pub(crate) fn store(
        &self,
        engine: &Engine,
        wasm: &[u8],
        component: &Component,
    ) -> io::Result<()> {
        let name = entry_name(engine, wasm);
        let payload = component.serialize().map_err(io::Error::other)?;
        let size = (MAGIC.len() + TAG_LEN + payload.len()) as u64;
        if size > self.max_bytes {
            return Err(io::Error::other(format!(
                "the compiled policy ({size} bytes) is larger than [policy_cache] max_bytes ({})",
                self.max_bytes
            )));
        }
        let tag = self.tag(&name, &payload);
        let temp = self.dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(MAGIC)?;
            file.write_all(&tag)?;
            file.write_all(&payload)?;
            // Not synced: an entry torn by a crash fails its tag and is rebuilt.
            fs::rename(&temp, self.dir.join(format!("{name}.{EXT}")))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written?;
        self.prune()
    }

    /// The payload of an entry file if its magic and tag are right.
    fn verified<'a>(&self, name: &str, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < TAG_LEN {
            return None;
        }
        let (tag, payload) = rest.split_at(TAG_LEN);
        let mut mac = self.mac(name);
        mac.update(payload);
        // Constant-time comparison.
        mac.verify_slice(tag).ok().map(|()| payload)
    }

    fn tag(&self, name: &str, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac(name);
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// The MAC state after the entry's name: an entry renamed to another name fails.
    fn mac(&self, name: &str) -> Hmac<Sha256> {
        // Any key length is valid for HMAC; `new_from_slice` cannot fail here.
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac
    }

    /// Removes the least recently used entries until the folder's entries fit `max_bytes`.
    fn prune(&self) -> io::Result<()> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != EXT) {
                continue;
            }
            let meta = entry.metadata()?;
            entries.push((
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
                path,
            ));
        }
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

/// Deserializes a verified entry.
#[allow(
    unsafe_code,
    reason = "wasmtime's deserialize is unsafe; only entries authenticated by this host's key reach it"
)]
fn deserialize(engine: &Engine, payload: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` requires bytes produced by wasmtime's own `serialize` /
    // `precompile_component` (it maps them as machine code). `payload` reaches this function
    // only through `PolicyCache::load`, after `verified` checked an HMAC-SHA256 over the entry's
    // name and these exact bytes with the cache's key: 32 random bytes in a 0600 file in a 0700
    // folder, which only this host (as its user) can read. `store` computes that tag only over
    // the output of `Component::serialize`, so a verified payload is one this host serialized.
    // The name includes wasmtime's compatibility hash of the engine that wrote it, and wasmtime
    // checks its header and configuration again and fails cleanly on a mismatch. Someone able
    // to forge the tag can read the key as our user and could as well replace our binary.
    unsafe { Component::deserialize(engine, payload) }
}

/// The entry name of `wasm` compiled by `engine`: hex SHA-256 over the engine's compatibility
/// hash and the file's own SHA-256.
fn entry_name(engine: &Engine, wasm: &[u8]) -> String {
    let mut engine_hash = ShaHasher(Sha256::new());
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let mut name = Sha256::new();
    name.update(MAGIC);
    name.update(engine_hash.0.finalize());
    name.update(Sha256::digest(wasm));
    name.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `Hash` output into SHA-256: unlike std's hashers, stable across Rust releases.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        // Only the digest is used (see `entry_name`).
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Reads `path` if it exists and is at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > max {
        return Err(io::Error::other(format!("{len} bytes, over max_bytes")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    (&mut file).take(max).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Reads the cache's key, creating it (random, mode 0600) if there is none or it is damaged.
fn load_or_create_key(dir: &Path) -> io::Result<[u8; KEY_LEN]> {
    let path = dir.join("key");
    match fs::read(&path) {
        Ok(bytes) if bytes.len() == KEY_LEN => {
            let mut key = [0; KEY_LEN];
            key.copy_from_slice(&bytes);
            return Ok(key);
        }
        // A damaged key: replaced below, which invalidates every entry (they are rebuilt).
        Ok(_) => fs::remove_file(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut key = [0; KEY_LEN];
    File::open("/dev/urandom")?.read_exact(&mut key)?;
    // Written in full under a temporary name, then linked into place: a concurrent opener sees
    // either no key or a whole one; if it linked first, its key wins and is read back.
    let temp = dir.join(format!(
        ".key.{}.{}.tmp",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(&key)?;
    // Not synced (start-up need not wait for the disk): a key lost or torn by a crash is
    // replaced, which only makes every entry miss once.
    let linked = fs::hard_link(&temp, &path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let bytes = fs::read(&path)?;
            bytes.try_into().map_err(|_| {
                io::Error::other(format!("{}: not a {KEY_LEN}-byte key", path.display()))
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: compiles in well under a second even unoptimised.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).expect("engine")
    }

    #[test]
    fn a_stored_entry_loads_and_any_damage_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PolicyCache::open(dir.path(), 1 << 30).expect("open");
        let engine = engine();
        assert!(matches!(cache.load(&engine, EMPTY_COMPONENT), Lookup::Miss));
        let component = Component::from_binary(&engine, EMPTY_COMPONENT).expect("compile");
        cache
            .store(&engine, EMPTY_COMPONENT, &component)
            .expect("store");
        assert!(matches!(
            cache.load(&engine, EMPTY_COMPONENT),
            Lookup::Hit(_)
        ));
        let path = cache.entry_path(&engine, EMPTY_COMPONENT);
        let good = fs::read(&path).expect("entry");
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        for damaged in [&good[..good.len() / 2], &good[..10], &flipped[..], b""] {
            fs::write(&path, damaged).expect("write");
            assert!(matches!(
                cache.load(&engine, EMPTY_COMPONENT),
                Lookup::Rejected(_)
            ));
        }
    }

    #[test]
    fn another_key_or_another_name_is_foreign() {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let (ours, theirs) = (
            PolicyCache::open(a.path(), 1 << 30).expect("ours"),
            PolicyCache::open(b.path(), 1 << 30).expect("theirs"),
        );
        assert_ne!(ours.key, theirs.key);
        let engine = engine();
        let component = Component::from_binary(&engine, EMPTY_COMPONENT).expect("compile");
        theirs
            .store(&engine, EMPTY_COMPONENT, &component)
            .expect("store");
        let entry = theirs.entry_path(&engine, EMPTY_COMPONENT);
        fs::copy(&entry, ours.entry_path(&engine, EMPTY_COMPONENT)).expect("copy");
        assert!(matches!(
            ours.load(&engine, EMPTY_COMPONENT),
            Lookup::Rejected(_)
        ));
        // Our own entry, renamed to the name of another file, fails too.
        ours.store(&engine, EMPTY_COMPONENT, &component)
            .expect("store");
        let other: &[u8] = b"\0asm\x0d\0\x01\0\0\x01\0";
        fs::copy(
            ours.entry_path(&engine, EMPTY_COMPONENT),
            ours.entry_path(&engine, other),
        )
        .expect("rename");
        assert!(matches!(ours.load(&engine, other), Lookup::Rejected(_)));
    }

    #[test]
    fn the_key_survives_reopening_and_a_damaged_key_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = PolicyCache::open(dir.path(), 1).expect("open").key;
        assert_eq!(PolicyCache::open(dir.path(), 1).expect("reopen").key, first);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.path().join("key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(dir.path().join("key"), b"short").expect("damage");
        let replaced = PolicyCache::open(dir.path(), 1).expect("reopen").key;
        assert_ne!(replaced, first);
    }

    #[test]
    fn pruning_keeps_the_most_recent_entries_within_max_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine();
        let component = Component::from_binary(&engine, EMPTY_COMPONENT).expect("compile");
        let size = {
            let probe = PolicyCache::open(dir.path(), 1 << 30).expect("open");
            probe
                .store(&engine, EMPTY_COMPONENT, &component)
                .expect("store");
            let size = fs::metadata(probe.entry_path(&engine, EMPTY_COMPONENT))
                .expect("entry")
                .len();
            fs::remove_file(probe.entry_path(&engine, EMPTY_COMPONENT)).expect("rm");
            size
        };
        // Room for two entries of this size; the files differ (trailing custom sections) but
        // serialize to entries of the same size give or take a few bytes.
        let cache = PolicyCache::open(dir.path(), size * 2 + size / 2).expect("open");
        let files: Vec<Vec<u8>> = (0u8..4)
            .map(|i| [EMPTY_COMPONENT, &[0, 2, 1, b'x' + i]].concat())
            .collect();
        for (i, wasm) in files.iter().enumerate() {
            let component = Component::from_binary(&engine, wasm).expect("compile");
            cache.store(&engine, wasm, &component).expect("store");
            // Distinct modification times, whatever the file system's resolution.
            let age = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
            File::options()
                .write(true)
                .open(cache.entry_path(&engine, wasm))
                .and_then(|f| f.set_modified(age))
                .expect("age");
        }
        let kept: Vec<bool> = files
            .iter()
            .map(|w| cache.entry_path(&engine, w).exists())
            .collect();
        assert_eq!(kept, [false, false, true, true]);
    }
}
