//! Starting and stopping as an operator sees it: start-up failures that name the setting
//! and what to do, in one line; a clean stop that leaves the SQLite file complete.

use std::process::Command;

use testkit::{Backend, TestApp, TestDb, bin, query_i64};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clean_stop_the_database_file_alone_holds_the_data() {
    // Goal: the file a user copies (`flashsale.db`) holds every committed change once the
    // service has stopped cleanly, without its write-ahead log beside it.
    // Method: write, SIGTERM, then copy the database file alone and read the copy.
    let db = TestDb::new(Backend::Sqlite).await.expect("SQLite");
    let mut app = TestApp::spawn(&db, &[("WITH_WORKER", "1")]).await;
    let product = app.create_product(10, 100).await;
    assert_eq!(app.hold(product, 3).await.status, 201);
    assert!(app.terminate(), "a clean stop exits 0");
    let file = db
        .url
        .trim_start_matches("sqlite://")
        .trim_end_matches("?mode=rwc")
        .to_owned();
    let copy_dir = std::env::temp_dir().join(format!("flashsale-copy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&copy_dir).expect("mkdir");
    let copy = copy_dir.join("copy.db");
    std::fs::copy(&file, &copy).expect("copy the database file");
    let copy_url = format!("sqlite://{}?mode=ro", copy.display());
    let holds = query_i64(&copy_url, "SELECT COUNT(*) FROM holds").await;
    let available = query_i64(&copy_url, "SELECT available FROM products").await;
    let _ = std::fs::remove_dir_all(&copy_dir);
    assert_eq!(
        (holds, available),
        (1, 7),
        "the copy misses committed changes"
    );
}

/// Runs `binary args` with only `env` and returns (exit success, the non-empty lines of
/// standard error).
fn start(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<String>) {
    let out = Command::new(bin(binary))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    (out.status.success(), lines)
}

#[test]
fn an_unreachable_database_fails_at_once_in_one_line_naming_it_without_its_password() {
    // Port 1 on loopback refuses connections. "refused" can only come from a connection
    // attempt of its own: the pool would only say that it timed out.
    let url = "postgres://shop:hunter2pw@127.0.0.1:1/flashsale";
    for (binary, args) in [
        ("flashsale-api", &[][..]),
        ("flashsale-worker", &["sweep"][..]),
    ] {
        let (ok, lines) = start(binary, args, &[("DATABASE_URL", url), ("DEV_MODE", "1")]);
        assert!(!ok, "{binary} started");
        assert_eq!(
            lines.len(),
            1,
            "{binary}: one line, no backtrace: {lines:?}"
        );
        let line = &lines[0];
        for part in ["DATABASE_URL", "127.0.0.1:1", "refused"] {
            assert!(line.contains(part), "{binary}: no {part:?} in {line}");
        }
        assert!(
            !line.contains("hunter2pw"),
            "{binary} printed the password: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_exist_is_named_with_what_to_do() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    // A sibling of the test database that nobody created.
    let missing = format!("{}_missing", db.url);
    for (binary, args) in [
        ("flashsale-api", &[][..]),
        ("flashsale-worker", &["sweep"][..]),
    ] {
        let (ok, lines) = start(
            binary,
            args,
            &[("DATABASE_URL", &missing), ("DEV_MODE", "1")],
        );
        assert!(!ok, "{binary} started");
        assert_eq!(lines.len(), 1, "{binary}: one line: {lines:?}");
        assert!(
            lines[0].contains("does not exist") && lines[0].contains("createdb"),
            "{binary}: {}",
            lines[0]
        );
    }
}

#[test]
fn a_taken_metrics_address_stops_the_worker_in_one_line_before_the_database_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = std::env::temp_dir().join(format!("flashsale-metrics-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("shop.db").display());
    let (ok, lines) = start(
        "flashsale-worker",
        &["run"],
        &[("DATABASE_URL", &url), ("METRICS_BIND", &addr)],
    );
    let created: Vec<_> = std::fs::read_dir(&dir).expect("read dir").collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "the worker started");
    assert_eq!(lines.len(), 1, "one line, no backtrace: {lines:?}");
    assert!(
        lines[0].contains(&addr) && lines[0].contains("METRICS_BIND"),
        "{}",
        lines[0]
    );
    assert!(created.is_empty(), "the database was touched: {created:?}");
}
