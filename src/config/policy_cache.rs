//! `[policy_cache]`: where compiled policy components are kept between loads.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[policy_cache]`: the on-disk cache of compiled policy components, so that a restart or a
/// swap back to a known version does not recompile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyCacheConfig {
    /// The cache folder, relative to the config file. Absent: `policy-cache` inside `[state]
    /// dir`, or no cache when persistence is off; an empty string turns the cache off.
    pub dir: Option<PathBuf>,
    /// Bytes the cache may hold (512 MiB); the least recently used entries go first.
    pub max_bytes: u64,
}

impl Default for PolicyCacheConfig {
    fn default() -> Self {
        PolicyCacheConfig {
            dir: None,
            max_bytes: 512 << 20,
        }
    }
}

impl PolicyCacheConfig {
    /// Resolves `dir` against the config file's folder `base` and the state folder.
    pub(super) fn resolve(self, base: &Path, state_dir: Option<&Path>) -> PolicyCacheConfig {
        let dir = match self.dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(base.join(dir)),
            None => state_dir.map(|s| s.join("policy-cache")),
        };
        PolicyCacheConfig { dir, ..self }
    }

    /// The cache folder, or `None` when the cache is off.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/coordinosaur/coordinosaur.toml")).expect("valid")
    }

    #[test]
    fn the_cache_defaults_into_the_state_dir_and_follows_it() {
        let c = parse("");
        assert_eq!(
            c.policy_cache.dir(),
            Some(Path::new("/etc/coordinosaur/state/policy-cache"))
        );
        assert_eq!(c.policy_cache.max_bytes, 512 << 20);
        assert_eq!(parse("[state]\ndir = \"\"\n").policy_cache.dir(), None);
        let own = parse("[state]\ndir = \"\"\n[policy_cache]\ndir = \"cache\"\nmax_bytes = 1000\n");
        assert_eq!(
            own.policy_cache.dir(),
            Some(Path::new("/etc/coordinosaur/cache"))
        );
        assert_eq!(own.policy_cache.max_bytes, 1000);
        assert_eq!(
            parse("[policy_cache]\ndir = \"\"\n").policy_cache.dir(),
            None
        );
    }

    #[test]
    fn unknown_cache_keys_are_refused_by_name() {
        let err = Config::parse("[policy_cache]\nsize = 1\n", Path::new("c.toml"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("size"), "{err}");
    }
}
