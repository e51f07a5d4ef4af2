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
        // Cargo gives this test process its package's CARGO_MANIFEST_DIR and CARGO_PKG_*;
        // build scripts that watch those (ring's) would see them change from a build run
        // from a shell, and rebuild the TLS stack and everything above it each time.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
            {
                cmd.env_remove(&*name);
            }
        }
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
