//! A stalled database: a product row held by a stuck transaction, sessions terminated by
//! the server, a database that is down. Whatever is answered with an error leaves nothing
//! behind, and the answers say "retry later" (503), never "internal error".

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::json;
use testkit::{
    Backend, StuckWriter, TestApp, TestDb, assert_audit, bin, eventually, on_both_backends,
    query_i64, setup, setup_via_proxy,
};

on_both_backends!(
    a_grouped_hold_answered_503_leaves_nothing_behind,
    a_keyed_hold_on_a_sold_out_product_is_refused_without_waiting_for_the_row,
);

/// How long the API may wait on the database in these tests (`DB_WAIT_SECS`).
const WAIT_SECS: u64 = 2;

async fn a_grouped_hold_answered_503_leaves_nothing_behind(backend: Backend) {
    // Goal: a hold request that is answered 503 because its product is stuck reserves
    // nothing, now or later, and the product serves again once the stuck writer is gone.
    // Method: a second session holds the product (row lock, or SQLite's write lock) for
    // twice the API's wait; an unkeyed hold (the grouped path) is sent meanwhile.
    let wait = WAIT_SECS.to_string();
    let (db, app) = setup!(backend, &[("DB_WAIT_SECS", wait.as_str())]);
    let product = app.create_product(5, 100).await;
    let stuck = StuckWriter::lock_product(&db.url, product).await;
    let request = hold_in_background(&app, product, 2, None);
    tokio::time::sleep(Duration::from_secs(2 * WAIT_SECS)).await;
    stuck.release().await;
    let (status, body) = request.await.expect("join");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "database_unavailable", "{body}");
    // A group committed after its callers were answered would show up by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(query_i64(&db.url, "SELECT COUNT(*) FROM holds").await, 0);
    assert_eq!(app.available(product).await, 5, "the 503 reserved nothing");
    assert_eq!(
        app.hold(product, 2).await.status,
        201,
        "the product serves again"
    );
    assert_audit(&db.url);
}

async fn a_keyed_hold_on_a_sold_out_product_is_refused_without_waiting_for_the_row(
    backend: Backend,
) {
    // Goal: once this process knows a product is sold out, a keyed hold request is refused
    // from that memory (after looking its key up), not queued behind the product's row.
    // Method: sell out, let an unkeyed request be refused (the process notes it), then hold
    // the product from a second session and send a keyed request: it must be answered
    // while the product is still held.
    let (db, app) = setup!(backend);
    let product = app.create_product(1, 100).await;
    assert_eq!(app.hold(product, 1).await.status, 201);
    app.hold(product, 1)
        .await
        .assert_error(409, "insufficient_stock");
    let stuck = StuckWriter::lock_product(&db.url, product).await;
    let keyed = tokio::time::timeout(
        Duration::from_secs(5),
        app.hold_with_key(product, 1, "late-cart"),
    )
    .await;
    stuck.release().await;
    keyed
        .expect("a keyed request on a sold-out product waited for the row")
        .assert_error(409, "insufficient_stock");
    assert_audit(&db.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_terminated_by_the_database_is_answered_503_and_writes_nothing() {
    // Goal: a PostgreSQL restart (SQLSTATE 57P01, "terminating connection due to
    // administrator command") is "retry later", not an internal error.
    // Method: a keyed hold waits on a product row held by a second session; the server then
    // terminates the API's waiting session, as a restart would.
    let (db, app) = setup!(Backend::Postgres);
    let product = app.create_product(5, 100).await;
    let stuck = StuckWriter::lock_product(&db.url, product).await;
    let request = hold_in_background(&app, product, 2, Some("cart-57"));
    let name = until_a_session_waits_on_a_lock(&db.url, "the hold never waited on the row").await;
    query_i64(
        &db.url,
        &format!(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{name}' AND wait_event_type = 'Lock'"
        ),
    )
    .await;
    let (status, body) = request.await.expect("join");
    stuck.release().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "database_unavailable", "{body}");
    assert_eq!(app.available(product).await, 5, "the 503 reserved nothing");
    assert_eq!(
        app.hold_with_key(product, 2, "cart-57").await.status,
        201,
        "the retry is a first attempt"
    );
    assert_audit(&db.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_requests_are_answered_503_without_waiting_out_the_pool() {
    // Goal: once the process knows its database is down, requests are refused at once with
    // 503 instead of each waiting for a connection until the pool gives up.
    // Method: the database is reached through a proxy; the API waits up to 30 s for a
    // connection; the proxy then refuses connections, as a stopped or restarting server
    // does (the pool keeps retrying those until its wait runs out); once /ready says so,
    // every request must be answered well inside those 30 s.
    let env = [("DB_WAIT_SECS", "30"), ("HTTP_REQUEST_TIMEOUT_SECS", "200")];
    let (db, proxy, app) = setup_via_proxy!(&env);
    let product = app.create_product(10, 100).await;
    proxy.refuse();
    assert!(
        app.ready_turns(503, Duration::from_secs(10)).await,
        "/ready did not turn 503"
    );
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(10), app.hold(product, 1))
            .await
            .expect("the request waited for the pool although the database is known down");
        r.assert_error(503, "database_unavailable");
    }
    proxy.restore();
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.hold(product, 1).await.status == 201
        })
        .await,
        "the API did not recover"
    );
    assert_eq!(app.available(product).await, 9, "the 503s wrote nothing");
    assert_audit(&db.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_committed_after_its_hold_was_due_is_never_served_from_a_stale_cache() {
    // Goal: a process that changed a product never serves an older value of it afterwards,
    // even when a read cached the product between the order's decision and its commit.
    // Method: a one-second hold; its order is decided in time, then its INSERT waits on the
    // product row (held by a second session) until the hold is past due; a read meanwhile
    // counts the hold's unit as free and caches it. Once the order commits, a read must
    // show the unit taken.
    let (db, app) = setup!(Backend::Postgres, &[("HOLD_TTL_SECS", "1")]);
    let product = app.create_product(1, 100).await;
    let hold_id = app.hold_ok(product, 1).await.hold_id;
    let stuck = StuckWriter::lock_product(&db.url, product).await;
    let order = post_in_background(&app, "/api/orders", json!({"hold_id": hold_id}), None);
    until_a_session_waits_on_a_lock(&db.url, "the order never waited on the product row").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.available(product).await,
        1,
        "the due hold reads as free"
    );
    stuck.release().await;
    let (status, body) = order.await.expect("join");
    assert_eq!(status, 201, "decided before the hold was due: {body}");
    assert_eq!(
        app.available(product).await,
        0,
        "served a value older than the order"
    );
    assert_audit(&db.url);
}

/// Sends `body` to `path` (with `key` as its `Idempotency-Key`) in the background; the
/// task ends with the answer's status and JSON body.
fn post_in_background(
    app: &TestApp,
    path: &str,
    body: serde_json::Value,
    key: Option<&str>,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let mut request = app.client.post(app.url(path)).json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    tokio::spawn(async move {
        let r = request.send().await.expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json"))
    })
}

/// Asks for a hold of `qty` units of `product` (with `key` as its `Idempotency-Key`) in
/// the background, as [`post_in_background`] does.
fn hold_in_background(
    app: &TestApp,
    product: i64,
    qty: i64,
    key: Option<&str>,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let body = json!({"product_id": product, "qty": qty});
    post_in_background(app, "/api/holds", body, key)
}

/// Waits until a session of the PostgreSQL test database `db_url` waits on a lock, and
/// returns the database's name; fails with `what` after 10 s.
async fn until_a_session_waits_on_a_lock(db_url: &str, what: &str) -> String {
    let name = db_url.rsplit_once('/').expect("name").1.to_owned();
    let waiting = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{name}' \
         AND wait_event_type = 'Lock'"
    );
    let found = eventually(Duration::from_secs(10), || async {
        query_i64(db_url, &waiting).await > 0
    })
    .await;
    assert!(found, "{what}");
    name
}

#[test]
fn a_key_retention_shorter_than_the_hold_ttl_is_refused_at_start() {
    // A retry of a live keyed hold whose key was already forgotten would reserve twice.
    for (binary, args) in [
        ("flashsale-api", &[][..]),
        ("flashsale-worker", &["sweep"][..]),
    ] {
        let mut child = Command::new(bin(binary))
            .args(args)
            .env_clear()
            .env("DATABASE_URL", "sqlite::memory:")
            .env("BIND", "127.0.0.1:0")
            .env("DEV_MODE", "1")
            .env("HOLD_TTL_SECS", "120")
            .env("IDEMPOTENCY_KEY_TTL_SECS", "60")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        let exited = (0..300).find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            child.try_wait().expect("wait")
        });
        let _ = child.kill();
        let status = exited.unwrap_or_else(|| panic!("{binary} started and kept running"));
        assert!(!status.success(), "{binary} succeeded");
        let mut text = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut text)
            .expect("read stderr");
        assert!(
            text.contains("IDEMPOTENCY_KEY_TTL_SECS") && text.contains("HOLD_TTL_SECS"),
            "{binary}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_old_idempotency_keys_locks_the_product_before_its_holds() {
    // Goal: the sweep's key pruning, which updates several holds, keeps the global lock
    // order (product, then holds), so it cannot deadlock with a reclaim that holds the
    // product and waits for those holds.
    // Method: an ordered keyed hold past its key retention; with its product row held by a
    // second session, a sweep cannot prune the key (it waits for the product, then gives
    // up after DB_WAIT_SECS); once the row is free, it can.
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let rules = [("HOLD_TTL_SECS", "1"), ("IDEMPOTENCY_KEY_TTL_SECS", "1")];
    let app = TestApp::spawn(&db, &rules).await;
    let product = app.create_product(5, 100).await;
    let hold_id = app.hold_with_key_ok(product, 1, "cart-prune").await.hold_id;
    assert_eq!(app.order(hold_id).await.status, 201);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let keys = "SELECT COUNT(*) FROM holds WHERE scoped_idempotency_key IS NOT NULL";
    let db_url = db.url.clone();
    let sweep = move || {
        Command::new(bin("flashsale-worker"))
            .env("DATABASE_URL", &db_url)
            .env("RUST_LOG", "error")
            .env("DB_WAIT_SECS", "1")
            .envs(rules)
            .arg("sweep")
            .output()
            .expect("run flashsale-worker sweep")
    };
    let stuck = StuckWriter::lock_product(&db.url, product).await;
    let blocked = tokio::task::spawn_blocking(sweep.clone())
        .await
        .expect("join");
    stuck.release().await;
    assert!(
        !blocked.status.success(),
        "the prune did not wait for the product"
    );
    assert_eq!(
        query_i64(&db.url, keys).await,
        1,
        "pruned without the product lock"
    );
    let free = tokio::task::spawn_blocking(sweep).await.expect("join");
    assert!(
        free.status.success(),
        "{}",
        String::from_utf8_lossy(&free.stdout)
    );
    assert_eq!(
        query_i64(&db.url, keys).await,
        0,
        "pruned once the product was free"
    );
    assert_audit(&db.url);
}
