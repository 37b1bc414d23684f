//! The example topic programs of `wasm-examples/`, built from source for
//! `wasm32-unknown-unknown` on first use (no prebuilt `.wasm` is committed).
//!
//! [`module`] runs `cargo build --release --target wasm32-unknown-unknown` on the examples'
//! own workspace once per process, into `target/wasm-examples`, and returns a module's bytes.
//! Cargo's lock on that target directory serializes concurrent test binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The examples, by crate name.
pub const EXAMPLES: &[&str] = &["counter", "validator", "dedupe", "window-sum", "nothing"];
/// Test fixtures: `hostile` misbehaves on purpose, `counter-v2` is an upgrade of `counter`.
pub const FIXTURES: &[&str] = &["hostile", "counter-v2"];

#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    #[error("could not run cargo to build wasm-examples: {0}")]
    Spawn(String),
    #[error(
        "building wasm-examples failed (is the wasm32-unknown-unknown target installed? \
         `rustup target add wasm32-unknown-unknown`):\n{0}"
    )]
    Failed(String),
    #[error("unknown example {0:?} (known: {EXAMPLES:?} and {FIXTURES:?})")]
    Unknown(String),
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/weir-wasm-examples sits two levels below the repository root")
        .to_path_buf()
}

/// Builds every example (once per process) and returns the directory holding the `.wasm` files.
pub fn build_all() -> Result<PathBuf, BuildError> {
    static BUILT: OnceLock<Result<PathBuf, BuildError>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = repo_root();
            let target_dir = root.join("target").join("wasm-examples");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let output = Command::new(cargo)
                .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
                .arg("--manifest-path")
                .arg(root.join("wasm-examples").join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir)
                // The examples have their own lockfile; keep the caller's flags out of them.
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .map_err(|e| BuildError::Spawn(e.to_string()))?;
            if !output.status.success() {
                return Err(BuildError::Failed(
                    String::from_utf8_lossy(&output.stderr).into_owned(),
                ));
            }
            Ok(target_dir.join("wasm32-unknown-unknown").join("release"))
        })
        .clone()
}

/// The path of the built module of `name` (an entry of [`EXAMPLES`] or [`FIXTURES`]).
pub fn path(name: &str) -> Result<PathBuf, BuildError> {
    if !EXAMPLES.contains(&name) && !FIXTURES.contains(&name) {
        return Err(BuildError::Unknown(name.to_owned()));
    }
    Ok(build_all()?.join(format!("{}.wasm", name.replace('-', "_"))))
}

/// The bytes of the built module of `name`.
pub fn module(name: &str) -> Result<Vec<u8>, BuildError> {
    let path = path(name)?;
    std::fs::read(&path).map_err(|e| BuildError::Read {
        path,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_builds_to_a_wasm_module() {
        for name in EXAMPLES.iter().chain(FIXTURES) {
            let bytes = module(name).unwrap();
            assert_eq!(&bytes[..4], b"\0asm", "{name} is not a Wasm module");
        }
        assert!(matches!(module("nope"), Err(BuildError::Unknown(_))));
    }
}
