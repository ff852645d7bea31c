//! What WASI gives a policy: nothing of the host. No files, environment, arguments, stdio or
//! network (the builder's defaults: stdin closed, stdout and stderr discarded, every socket
//! address denied); clocks that read the engine time of the current call; and every
//! `wasi:random` source (`random`, `insecure`, `insecure-seed`) from a generator seeded by the
//! channel's name. A channel's instance therefore draws the same sequence after every rebuild
//! and restart, and its decisions replay from its inputs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// Largest `get-random-bytes` / `get-insecure-random-bytes` request (wasmtime allows 64 MiB,
/// allocated on the host outside the instance's memory cap).
const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// The WASI context of `channel`'s instance; its clocks read `now_ms`, the engine time (ms since
/// the Unix epoch) of the current call.
pub(crate) fn context(channel: &str, now_ms: &Arc<AtomicU64>) -> WasiCtx {
    let clock = EngineClock(now_ms.clone());
    let mut seed = seeded(channel, "insecure-seed");
    let insecure_seed = (u128::from(seed.next_u64()) << 64) | u128::from(seed.next_u64());
    WasiCtxBuilder::new()
        .wall_clock(clock.clone())
        .monotonic_clock(clock)
        .secure_random(seeded(channel, "random"))
        .insecure_random(seeded(channel, "insecure"))
        .insecure_random_seed(insecure_seed)
        .max_random_size(MAX_RANDOM_BYTES)
        .build()
}

/// The generator behind one `wasi:random` interface of `channel`. "Secure" only in name:
/// anyone who knows the channel can compute it, which is the point.
///
/// `StdRng` may change between versions of `rand`: a sequence replays on the same build.
fn seeded(channel: &str, source: &str) -> StdRng {
    StdRng::seed_from_u64(fnv1a([source.as_bytes(), b"\0", channel.as_bytes()]))
}

/// 64-bit FNV-1a: a hash fixed by its definition (std's hashers may change between releases).
fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    parts
        .into_iter()
        .flatten()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Engine time for guests: WASI clocks read the time of the current call, so policies stay
/// deterministic and learn nothing about the host.
#[derive(Clone)]
struct EngineClock(Arc<AtomicU64>);

impl HostWallClock for EngineClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

impl HostMonotonicClock for EngineClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed).saturating_mul(1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_its_reference_values() {
        // From the FNV reference test vectors.
        assert_eq!(fnv1a([&b""[..]]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a([&b"a"[..]]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a([&b"foo"[..]]), 0xdcb2_7518_fed9_d577);
    }

    #[test]
    fn each_channel_and_source_has_its_own_stream() {
        let first = |channel, source| seeded(channel, source).next_u64();
        assert_eq!(first("a", "random"), first("a", "random"));
        assert_ne!(first("a", "random"), first("b", "random"));
        assert_ne!(first("a", "random"), first("a", "insecure"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(first("c", "ab"), first("bc", "a"));
    }
}
