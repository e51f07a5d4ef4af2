//! The `flashsale-*` binaries under test, built once per test run.

use std::{path::PathBuf, process::Command, sync::OnceLock};

/// Folder holding the `flashsale-*` binaries, built once per test run.
fn bin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let release = !cfg!(debug_assertions);
        // A separate test crate gets no CARGO_BIN_EXE_* for other packages: build them here
        // (a no-op when they are fresh).
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root)
            .args(["build", "--quiet", "-p", "api", "-p", "worker", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the flashsale binaries failed");
        target.join(if release { "release" } else { "debug" })
    })
}

/// Path of binary `name` (`flashsale-api` or `flashsale-worker`).
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}
