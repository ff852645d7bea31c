//! The policy components of `policies/`, built for their wasm targets once per test process.
//!
//! [`policy_wasm`] and [`policy_wasm_wasip2`] build the whole `policies/` workspace the first time
//! either is called (`OnceLock`), for `wasm32-unknown-unknown` and `wasm32-wasip2`, into
//! `policies/target` (the place `policies/README.md` documents), and return the path of one
//! component. Test binaries run in parallel may build at the same time: cargo's lock on the target
//! folder serialises them, and the second build finds everything fresh.
//!
//! [`POLICY_CRATES`] lists every policy crate (examples and fixtures); `tests/policy_host.rs`
//! checks that it matches the crates on disk and that each has a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The policy crates under `policies/` (package names; `sdk` is a library, not a policy).
pub const POLICY_CRATES: &[&str] = &[
    "priority",
    "fair-share",
    "deny",
    "spin",
    "grow",
    "trap",
    "wrong-interface",
    "random",
    "world-0-1",
];

/// Targets every policy is built for.
const TARGETS: [&str; 2] = ["wasm32-unknown-unknown", "wasm32-wasip2"];

/// Environment that would redirect or alter the nested build (it is inherited from the outer
/// `cargo test`, which may build the daemon with its own target folder or flags).
const SCRUBBED_ENV: [&str; 5] = [
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
];

/// The `policies/` workspace of this repository.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// The `wasm32-unknown-unknown` component of policy crate `name` (e.g. `"fair-share"`).
pub fn policy_wasm(name: &str) -> PathBuf {
    artifact(name, "wasm32-unknown-unknown")
}

/// The `wasm32-wasip2` component of policy crate `name`.
pub fn policy_wasm_wasip2(name: &str) -> PathBuf {
    artifact(name, "wasm32-wasip2")
}

fn artifact(name: &str, target: &str) -> PathBuf {
    assert!(
        POLICY_CRATES.contains(&name),
        "{name:?} is not a policy crate; known: {POLICY_CRATES:?}"
    );
    build_once();
    let file = policies_dir()
        .join("target")
        .join(target)
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        file.is_file(),
        "cargo built policies/ but {} is missing",
        file.display()
    );
    file
}

/// Builds every policy for every target, once per process; panics with cargo's output on failure.
fn build_once() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(build);
}

fn build() {
    let dir = policies_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // From the folder, so that policies/.cargo/config.toml applies; the linker is also passed
    // explicitly so that a build started from elsewhere gets components too.
    command
        .current_dir(&dir)
        .args(["build", "--release", "--workspace"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(dir.join("target"))
        .args([
            "--config",
            r#"target.wasm32-unknown-unknown.linker="wasm-component-ld""#,
        ]);
    for target in TARGETS {
        command.args(["--target", target]);
    }
    for var in SCRUBBED_ENV {
        command.env_remove(var);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run cargo to build the policies in {}: {e}",
            dir.display()
        )
    });
    if output.status.success() {
        return;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let missing_target = stderr.contains("target may not be installed")
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`");
    let hint = if missing_target {
        "a wasm target is missing: run scripts/test.sh (it sets the machine up), or \
         `rustup toolchain install` in the project (installs what rust-toolchain.toml names)"
    } else {
        "see cargo's output below"
    };
    panic!(
        "building the policies in {} failed ({}): {hint}\n--- cargo stderr ---\n{stderr}",
        dir.display(),
        output.status
    );
}

/// Package names of the policy crates on disk: `policies/*/Cargo.toml` and
/// `policies/fixtures/*/Cargo.toml`, without the SDK.
pub fn policy_crates_on_disk() -> Vec<String> {
    let root = policies_dir();
    let mut names = Vec::new();
    for folder in [root.clone(), root.join("fixtures")] {
        let entries =
            std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("read {}: {e}", folder.display()));
        for entry in entries {
            let manifest = entry
                .expect("read a policies/ entry")
                .path()
                .join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let name = package_name(&text)
                .unwrap_or_else(|| panic!("no package name in {}", manifest.display()));
            if name != "coordinosaur-policy" {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}

/// `name` of the `[package]` table of a Cargo.toml.
fn package_name(manifest: &str) -> Option<String> {
    let package = manifest.split("[package]").nth(1)?;
    package.lines().find_map(|line| {
        let value = line.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// A policy written in another language, built into a component by its own toolchain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `policies/js`: ComponentizeJS through `jco componentize` (npm).
    JavaScript,
    /// `policies/python`: `componentize-py` (PyPI).
    Python,
}

impl Language {
    /// Both languages.
    pub const ALL: [Language; 2] = [Language::JavaScript, Language::Python];

    /// The policy's folder under `policies/`.
    pub fn dir(self) -> PathBuf {
        policies_dir().join(match self {
            Language::JavaScript => "js",
            Language::Python => "python",
        })
    }

    /// The toolchain's command, present once it is installed (by `build.sh`).
    fn toolchain(self) -> PathBuf {
        self.dir().join(match self {
            Language::JavaScript => "node_modules/.bin/jco",
            Language::Python => ".venv/bin/componentize-py",
        })
    }
}

/// The component of the `language` policy (`policies/{js,python}/policy.wasm`).
///
/// `scripts/test.sh` installs both toolchains and builds both components before the tests. Here,
/// under a file lock shared by parallel test processes, `build.sh` runs again when the toolchain
/// is present: it rebuilds only a component older than its sources, so an edit to the policy is
/// picked up and an up-to-date one costs a shell start. Without the toolchain, an existing
/// component is used as it is; a missing one fails the test, naming `scripts/test.sh`, so that
/// these tests never skip silently.
pub fn language_policy_wasm(language: Language) -> PathBuf {
    let dir = language.dir();
    let wasm = dir.join("policy.wasm");
    if language.toolchain().is_file() {
        let lock_path = dir.join(".build.lock");
        let lock = std::fs::File::create(&lock_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
        lock.lock()
            .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
        let output = Command::new(dir.join("build.sh"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}/build.sh: {e}", dir.display()));
        assert!(
            output.status.success(),
            "{}/build.sh failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
    assert!(
        wasm.is_file(),
        "{} is missing and its toolchain ({}) is not installed: run scripts/test.sh, which \
         installs the toolchain and builds it (or {}/build.sh alone)",
        wasm.display(),
        language.toolchain().display(),
        dir.display(),
    );
    wasm
}
