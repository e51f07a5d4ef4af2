//! `flashsale-worker` as the tests run it: the long-running `run` as a child process, and
//! the one-shot `sweep` and `audit` commands.

use std::{
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::{bin, eventually, free_port, status_of};

/// A running `flashsale-worker run`, killed (SIGKILL) on drop.
pub struct TestWorker {
    child: Child,
    /// Where its metrics server listens (`METRICS_BIND`), when the test gave it one.
    metrics_bind: Option<String>,
}

impl TestWorker {
    /// Starts `flashsale-worker run` on `db_url` with extra environment `env`.
    pub fn spawn(db_url: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = worker_command(db_url, "run");
        cmd.env("SWEEP_INTERVAL_SECS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd.envs(env.iter().copied());
        Self {
            child: cmd.spawn().expect("spawn flashsale-worker"),
            metrics_bind: None,
        }
    }

    /// Like [`spawn`](Self::spawn), with its metrics server (and `/ready`) on a free
    /// loopback port, for [`ready_turns`](Self::ready_turns).
    pub fn spawn_with_metrics(db_url: &str, env: &[(&str, &str)]) -> Self {
        let bind = format!("127.0.0.1:{}", free_port());
        let mut env = env.to_vec();
        env.push(("METRICS_BIND", &bind));
        let mut worker = Self::spawn(db_url, &env);
        worker.metrics_bind = Some(bind);
        worker
    }

    /// Whether the worker's `GET /ready` answers `status` within `within`.
    pub async fn ready_turns(&self, status: u16, within: Duration) -> bool {
        let bind = self
            .metrics_bind
            .as_ref()
            .expect("a worker started with spawn_with_metrics");
        let ready = format!("http://{bind}/ready");
        eventually(within, || async { status_of(&ready).await == status }).await
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        crate::app::terminate(&mut self.child)
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flashsale-worker <subcommand>` on `db_url`, logging warnings only.
fn worker_command(db_url: &str, subcommand: &str) -> Command {
    let mut cmd = Command::new(bin("flashsale-worker"));
    cmd.env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .arg(subcommand);
    cmd
}

/// Whether the command exited cleanly, and everything it printed.
fn outcome(out: &Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `flashsale-worker sweep` on `db_url`; returns what it printed.
pub fn sweep(db_url: &str, env: &[(&str, &str)]) -> String {
    let out = worker_command(db_url, "sweep")
        .envs(env.iter().copied())
        .output()
        .expect("run flashsale-worker sweep");
    let (ok, text) = outcome(&out);
    assert!(ok, "sweep failed:\n{text}");
    text
}

/// Runs `flashsale-worker audit` on `db_url`: whether it passed, and what it printed.
pub fn audit(db_url: &str) -> (bool, String) {
    let out = worker_command(db_url, "audit")
        .output()
        .expect("run flashsale-worker audit");
    outcome(&out)
}

/// Asserts that the stock audit passes.
#[track_caller]
pub fn assert_audit(db_url: &str) {
    let (ok, text) = audit(db_url);
    assert!(ok, "audit failed:\n{text}");
}
