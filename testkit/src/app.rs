//! The real `flashsale-api` as a child process on port 0: started with a test's
//! environment, its address read from its JSON log, stopped with SIGTERM or SIGKILL.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

use crate::{TestDb, bin};

/// The admin token every test app is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// How long a test waits for the process to start, and for any one answer.
const PATIENCE: Duration = Duration::from_secs(60);

/// The lines a process printed, shared with the thread that reads them.
type Log = Arc<Mutex<Vec<String>>>;

/// A running `flashsale-api`, killed on drop.
pub struct TestApp {
    /// The address it listens on (`127.0.0.1:<port>`).
    pub addr: String,
    /// A plain HTTP client, for requests the SDK cannot send.
    pub client: reqwest::Client,
    /// The SDK generated from `openapi.yaml`: every well-formed request goes through it,
    /// so every test run exercises the spec.
    pub sdk: client::Client,
    /// The same SDK sending the admin token.
    pub(crate) admin_sdk: client::Client,
    /// The database it was started on.
    pub db_url: String,
    child: Child,
    log: Log,
}

impl TestApp {
    /// Starts `flashsale-api` on `db` with extra environment `env`.
    pub async fn spawn(db: &TestDb, env: &[(&str, &str)]) -> Self {
        Self::spawn_url(&db.url, env).await
    }

    /// Starts `flashsale-api` on the database at `db_url` with extra environment `env`.
    pub async fn spawn_url(db_url: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_command(Command::new(bin("flashsale-api")), db_url, env).await
    }

    /// Starts `flashsale-api` on `db` with at most `max_fds` open file descriptors.
    pub async fn spawn_with_fd_limit(db: &TestDb, env: &[(&str, &str)], max_fds: u32) -> Self {
        // prlimit sets the limit, then execs the binary: the process id stays the same.
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={max_fds}:{max_fds}"))
            .arg("--")
            .arg(bin("flashsale-api"));
        Self::spawn_command(cmd, &db.url, env).await
    }

    /// Runs `cmd` with the test environment and waits until it says where it listens.
    async fn spawn_command(mut cmd: Command, db_url: &str, env: &[(&str, &str)]) -> Self {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("BIND", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info,sqlx=warn")
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("DEV_MODE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn flashsale-api");
        let log = Log::default();
        let addr = listening_addr(child.stdout.take().expect("stdout"), &log).await;
        let client = reqwest::Client::builder()
            .timeout(PATIENCE)
            .pool_max_idle_per_host(512)
            .build()
            .expect("client");
        let base = format!("http://{addr}");
        Self {
            sdk: client::Client::new_with_client(&base, client.clone()),
            admin_sdk: admin_sdk(&base),
            addr,
            client,
            db_url: db_url.to_owned(),
            child,
            log,
        }
    }

    /// The URL of `path` on this process.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM; waits for the process to exit and returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        terminate(&mut self.child)
    }

    /// The process id of the running binary.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The SDK sending a customer's token with every request.
    pub fn sdk_as(&self, token: &str) -> client::Client {
        bearer_sdk(&format!("http://{}", self.addr), token)
    }

    /// The log lines the process printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- flashsale-api log ({}) ---\n{}",
                self.addr,
                self.log().join("\n")
            );
        }
    }
}

/// SIGTERM to `child`, then waits for it to exit; returns whether it exited cleanly.
pub(crate) fn terminate(child: &mut Child) -> bool {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    child.wait().is_ok_and(|s| s.success())
}

/// Copies every line of `stdout` into `log` on a thread of its own, and returns the
/// address the process logs that it listens on.
async fn listening_addr(stdout: ChildStdout, log: &Log) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = addr_in(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
            sink.lock().expect("log lock").push(line);
        }
    });
    let log = log.clone();
    tokio::task::spawn_blocking(move || rx.recv_timeout(PATIENCE))
        .await
        .expect("join")
        .unwrap_or_else(|_| {
            panic!(
                "flashsale-api did not start; log:\n{}",
                log.lock().expect("log").join("\n")
            )
        })
}

/// The address in the log line `flashsale-api listening`, if `line` is that line.
fn addr_in(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    (v["message"] == "flashsale-api listening").then(|| v["addr"].as_str().map(str::to_owned))?
}

/// An SDK for `base` that sends the admin token with every request.
fn admin_sdk(base: &str) -> client::Client {
    bearer_sdk(base, ADMIN_TOKEN)
}

/// An SDK for `base` that sends `Authorization: Bearer <token>` with every request.
fn bearer_sdk(base: &str, token: &str) -> client::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    let with_token = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(PATIENCE)
        .build()
        .expect("client");
    client::Client::new_with_client(base, with_token)
}
