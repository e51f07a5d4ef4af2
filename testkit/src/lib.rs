//! Helpers for the black-box tests: a fresh database per test (a temporary SQLite file, or
//! `CREATE DATABASE t_<uuid>` on the PostgreSQL at `TEST_DATABASE_URL`), the real
//! `flashsale-api` binary on port 0, and typed HTTP calls.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use sha2::Sha256;

/// Where PostgreSQL tests create their databases, unless `TEST_DATABASE_URL` says otherwise.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The database back end a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test only.
pub struct TestDb {
    pub url: String,
    pg_admin: Option<(String, String)>,
    _dir: Option<TempDir>,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestDb {
    /// A fresh, empty database; `None` when PostgreSQL is unreachable and `CI` is unset
    /// (the test is then skipped with a note). With `CI` set, unreachable is a failure.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir()
                    .join(format!("flashsale-test-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).expect("create temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.join("test.db").display());
                Some(Self {
                    url,
                    pg_admin: None,
                    _dir: Some(TempDir(dir)),
                })
            }
            Backend::Postgres => {
                let admin = std::env::var("TEST_DATABASE_URL")
                    .unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
                let conn = match sea_orm::Database::connect(admin.as_str()).await {
                    Ok(c) => c,
                    Err(e) if std::env::var_os("CI").is_none() => {
                        eprintln!(
                            "SKIPPED: PostgreSQL at {admin} is unreachable ({e}); set CI=1 to make this a failure"
                        );
                        return None;
                    }
                    Err(e) => panic!("PostgreSQL at {admin} is unreachable and CI is set: {e}"),
                };
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                use sea_orm::ConnectionTrait;
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                conn.close().await.ok();
                let (base, _) = admin
                    .rsplit_once('/')
                    .expect("TEST_DATABASE_URL has a database name");
                Some(Self {
                    url: format!("{base}/{name}"),
                    pg_admin: Some((admin.clone(), name)),
                    _dir: None,
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_admin.take() {
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    use sea_orm::ConnectionTrait;
                    if let Ok(conn) = sea_orm::Database::connect(admin.as_str()).await {
                        let _ = conn
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
                        let _ = conn.close().await;
                    }
                });
                Ok::<_, std::io::Error>(())
            })
            .join();
        }
    }
}

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

/// A running `flashsale-api`, killed on drop.
pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    /// The SDK generated from `openapi.yaml`: every well-formed request goes through it,
    /// so every test run exercises the spec.
    pub sdk: client::Client,
    admin_sdk: client::Client,
    pub db_url: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `code` of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// Asserts an error answer: `status`, `code` and a non-empty message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            self.body
        );
    }
}

/// The environment every test app gets unless overridden.
pub const ADMIN_TOKEN: &str = "test-admin-token";

impl TestApp {
    /// Starts `flashsale-api` on `db` with extra environment `env`.
    pub async fn spawn(db: &TestDb, env: &[(&str, &str)]) -> Self {
        Self::spawn_url(&db.url, env).await
    }

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
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .expect("join")
            .unwrap_or_else(|_| {
                panic!(
                    "flashsale-api did not start; log:\n{}",
                    log.lock().expect("log").join("\n")
                )
            });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(512)
            .build()
            .expect("client");
        let base = format!("http://{addr}");
        let sdk = client::Client::new_with_client(&base, client.clone());
        let mut admin_headers = reqwest::header::HeaderMap::new();
        admin_headers.insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}")
                .parse()
                .expect("header value"),
        );
        let admin_client = reqwest::Client::builder()
            .default_headers(admin_headers)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let admin_sdk = client::Client::new_with_client(&base, admin_client);
        Self {
            addr,
            client,
            sdk,
            admin_sdk,
            db_url: db_url.to_owned(),
            child,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request with an optional JSON body and extra headers.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let raw = body.map(|b| b.to_string().into_bytes());
        self.request_raw(method, path, raw, headers).await
    }

    /// Sends raw body bytes as `application/json`.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(&body), &[]).await
    }

    /// Creates a product through the admin API and returns its id.
    pub async fn create_product(&self, stock: i64, price_cents: i64) -> i64 {
        let body = client::types::CreateProduct {
            name: "Test sneaker".parse().expect("a valid name"),
            price_cents,
            total_stock: stock,
        };
        let r = sdk_reply(self.admin_sdk.create_product().body(body).send().await);
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_i64().expect("product id")
    }

    /// `GET /api/products/{id}`.
    pub async fn get_product(&self, id: i64) -> Reply {
        sdk_reply(self.sdk.get_product().id(id).send().await)
    }

    /// `POST /api/holds`.
    pub async fn hold(&self, product_id: i64, qty: i64) -> Reply {
        let body = client::types::CreateHold {
            product_id,
            qty: sdk_qty(qty),
        };
        sdk_reply(self.sdk.create_hold().body(body).send().await)
    }

    /// `POST /api/holds` with an `Idempotency-Key`.
    pub async fn hold_with_key(&self, product_id: i64, qty: i64, key: &str) -> Reply {
        let body = client::types::CreateHold {
            product_id,
            qty: sdk_qty(qty),
        };
        sdk_reply(
            self.sdk
                .create_hold()
                .idempotency_key(key)
                .body(body)
                .send()
                .await,
        )
    }

    /// `GET /api/holds/{id}`.
    pub async fn get_hold(&self, id: i64) -> Reply {
        sdk_reply(self.sdk.get_hold().id(id).send().await)
    }

    /// `POST /api/orders`.
    pub async fn order(&self, hold_id: i64) -> Reply {
        let body = client::types::CreateOrder { hold_id };
        sdk_reply(self.sdk.create_order().body(body).send().await)
    }

    /// `GET /api/orders/{id}`.
    pub async fn get_order(&self, id: i64) -> Reply {
        sdk_reply(self.sdk.get_order().id(id).send().await)
    }

    /// `POST /api/payments/webhook` without a signature.
    pub async fn webhook(&self, key: &str, hold_id: i64, status: &str) -> Reply {
        let status = match status {
            "paid" => client::types::PaymentStatus::Paid,
            "failed" => client::types::PaymentStatus::Failed,
            other => panic!("no payment status {other}"),
        };
        let body = client::types::PaymentWebhook {
            idempotency_key: Some(key.parse().expect("a valid key")),
            hold_id,
            status,
        };
        sdk_reply(self.sdk.payment_webhook().body(body).send().await)
    }

    /// `available_stock` of a product, as served.
    pub async fn available(&self, product_id: i64) -> i64 {
        let r = self.get_product(product_id).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["available_stock"].as_i64().expect("available_stock")
    }

    /// SIGTERM; waits for the process to exit and returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().is_ok_and(|s| s.success())
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

    /// The log lines the process printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- flashsale-api log ({}) ---\n{}",
                self.addr,
                self.log().join("\n")
            );
        }
    }
}

/// The SDK types `qty` as it is specified: a positive integer.
fn sdk_qty(qty: i64) -> std::num::NonZeroU64 {
    u64::try_from(qty)
        .ok()
        .and_then(std::num::NonZeroU64::new)
        .expect("helpers send valid quantities; bad ones go through request_raw")
}

/// Turns an SDK result, success or documented error, into a [`Reply`].
fn sdk_reply<T: serde::Serialize>(
    result: Result<client::ResponseValue<T>, client::Error<client::types::ErrorBody>>,
) -> Reply {
    fn reply<B: serde::Serialize>(rv: client::ResponseValue<B>) -> Reply {
        let status = rv.status();
        let headers = rv.headers().clone();
        let body = serde_json::to_value(rv.into_inner()).expect("serialisable");
        Reply {
            status,
            headers,
            body,
        }
    }
    match result {
        Ok(rv) => reply(rv),
        Err(client::Error::ErrorResponse(rv)) => reply(rv),
        Err(e) => panic!("the response does not match openapi.yaml: {e}"),
    }
}

fn listening_addr(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    (v["message"] == "flashsale-api listening").then(|| v["addr"].as_str().map(str::to_owned))?
}

/// A running `flashsale-worker run`, killed (SIGKILL) on drop.
pub struct TestWorker {
    child: Child,
}

impl TestWorker {
    /// Starts `flashsale-worker run` on `db_url` with extra environment `env`.
    pub fn spawn(db_url: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin("flashsale-worker"));
        cmd.env("DATABASE_URL", db_url)
            .env("RUST_LOG", "warn")
            .env("SWEEP_INTERVAL_SECS", "1")
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("spawn flashsale-worker"),
        }
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `flashsale-worker sweep` on `db_url`; returns what it printed.
pub fn sweep(db_url: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin("flashsale-worker"));
    cmd.env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .arg("sweep");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run flashsale-worker sweep");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sweep failed:\n{text}");
    text
}

/// The stored `status` column of row `id` of `table` (what the worker keeps true).
pub async fn stored_status(db_url: &str, table: &str, id: i64) -> String {
    use sea_orm::{ConnectionTrait, Statement};
    let conn = sea_orm::Database::connect(db_url).await.expect("connect");
    let stmt = Statement::from_string(
        conn.get_database_backend(),
        format!("SELECT status FROM {table} WHERE id = {id}"),
    );
    let row = conn
        .query_one_raw(stmt)
        .await
        .expect("query")
        .expect("row exists");
    let status: String = row.try_get("", "status").expect("status column");
    conn.close().await.ok();
    status
}

/// Polls `check` every 100 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP proxy in front of PostgreSQL whose connections can be cut, to take the database
/// away from a process without touching the database server other tests share.
pub struct TcpProxy {
    pub port: u16,
    target: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let proxy = Self {
            port,
            target,
            cut: Arc::default(),
            links: Arc::default(),
            accept: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    /// Forwards every connection `listener` accepts while the proxy is not cut.
    fn serve(&self, listener: std::net::TcpListener) {
        use std::sync::atomic::Ordering;
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let (cut, links, target) = (self.cut.clone(), self.links.clone(), self.target.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links.lock().expect("links").push(link);
            }
        });
        *self.accept.lock().expect("accept") = Some(accept);
    }

    /// A proxy in front of the PostgreSQL database `db_url`, and the URL that reaches the
    /// same database through it.
    pub async fn in_front_of(db_url: &str) -> (Self, String) {
        let (server, name) = db_url.rsplit_once('/').expect("URL names a database");
        let (user, host) = server
            .trim_start_matches("postgres://")
            .rsplit_once('@')
            .expect("URL names a user");
        let proxy = Self::start(host.to_owned()).await;
        let via_proxy = format!("postgres://{user}@127.0.0.1:{}/{name}", proxy.port);
        (proxy, via_proxy)
    }

    /// Drops every open connection and closes new ones as soon as they are accepted.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    /// Like [`cut`](Self::cut), and stops listening too, so that connecting is refused
    /// (`ECONNREFUSED`), as when the database server is stopped or restarting.
    pub fn refuse(&self) {
        self.cut();
        if let Some(accept) = self.accept.lock().expect("accept").take() {
            accept.abort();
        }
    }

    /// Lets connections through again (listening again on the same port if it stopped).
    pub fn restore(&self) {
        if self.accept.lock().expect("accept").is_none() {
            let listener =
                std::net::TcpListener::bind(("127.0.0.1", self.port)).expect("bind proxy again");
            self.serve(listener);
        }
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.refuse();
    }
}

/// Runs `flashsale-worker audit` on `db_url`: whether it passed, and what it printed.
pub fn audit(db_url: &str) -> (bool, String) {
    let out = Command::new(bin("flashsale-worker"))
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .arg("audit")
        .output()
        .expect("run flashsale-worker audit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Asserts that the stock audit passes.
#[track_caller]
pub fn assert_audit(db_url: &str) {
    let (ok, text) = audit(db_url);
    assert!(ok, "audit failed:\n{text}");
}

/// An `X-Signature` header value for `body` signed with `secret` at `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Now in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Declares each listed `async fn name(backend: Backend)` as a test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Opens a fresh database for `backend` and starts the API on it, or returns from the test
/// (skipping it) when PostgreSQL is unreachable outside CI.
#[macro_export]
macro_rules! setup {
    ($backend:expr) => {
        $crate::setup!($backend, &[])
    };
    ($backend:expr, $env:expr) => {{
        let Some(db) = $crate::TestDb::new($backend).await else {
            return;
        };
        let app = $crate::TestApp::spawn(&db, $env).await;
        (db, app)
    }};
}

/// A second session that holds what every writer of a product needs: on PostgreSQL the
/// product's row lock (`SELECT … FOR UPDATE`), on SQLite the database's write lock
/// (`BEGIN IMMEDIATE`). It stands for a stuck transaction; dropped or released, it lets go.
pub struct StuckWriter {
    txn: Option<sea_orm::DatabaseTransaction>,
    conn: sea_orm::DatabaseConnection,
}

impl StuckWriter {
    /// Takes the lock on product `product_id` of the database at `db_url`.
    pub async fn lock_product(db_url: &str, product_id: i64) -> Self {
        use sea_orm::{
            ConnectionTrait, DbBackend, SqliteTransactionMode, TransactionOptions, TransactionTrait,
        };
        let conn = sea_orm::Database::connect(db_url).await.expect("connect");
        let txn = conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
            .expect("begin");
        if conn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!(
                "SELECT id FROM products WHERE id = {product_id} FOR UPDATE"
            ))
            .await
            .expect("lock the product row");
        }
        Self {
            txn: Some(txn),
            conn,
        }
    }

    /// Ends the stuck transaction (rolled back: it wrote nothing).
    pub async fn release(mut self) {
        if let Some(txn) = self.txn.take() {
            txn.rollback().await.expect("rollback");
        }
        let _ = self.conn.clone().close().await;
    }
}

/// Runs one `SELECT` that yields a single integer on the database at `db_url`.
pub async fn query_i64(db_url: &str, sql: &str) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let conn = sea_orm::Database::connect(db_url).await.expect("connect");
    let stmt = Statement::from_string(conn.get_database_backend(), sql.to_owned());
    let row = conn
        .query_one_raw(stmt)
        .await
        .expect("query")
        .expect("one row");
    let n: i64 = row.try_get_by_index(0).expect("an integer");
    conn.close().await.ok();
    n
}

/// A loopback port that was free a moment ago (for a process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The status of `GET url`; 0 when nothing answers.
pub async fn status_of(url: &str) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    client
        .get(url)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}
