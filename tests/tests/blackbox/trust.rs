//! Faults and hostile input: a killed or stopped API, a database that goes away, bots
//! sending garbage, a service started without its webhook secret. Each ends with the
//! stock audit passing.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use client::types::OrderStatus;
use futures::future::join_all;
use rand::{Rng, SeedableRng, rngs::StdRng};
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{
    Backend, TestApp, assert_audit, bin, on_both_backends, setup, setup_via_proxy, sweep,
};

on_both_backends!(
    api_killed_in_a_hold_storm_loses_nothing_and_keeps_every_answered_payment,
    sigterm_lets_every_accepted_request_finish,
    hostile_input_gets_4xx_error_bodies_and_changes_nothing,
    idempotency_keys_are_forgotten_after_their_retention,
    metrics_count_requests_and_checkout_events,
);

async fn api_killed_in_a_hold_storm_loses_nothing_and_keeps_every_answered_payment(
    backend: Backend,
) {
    // Goal: SIGKILL at any instant loses nothing: the stock adds up after a restart and
    // every payment event that was answered 2xx is applied.
    // Method: 20 pending orders; then 256 parallel hold requests plus a `paid` webhook per
    // order; SIGKILL the API 150 ms in; restart it on the same database.
    let (db, mut app) = setup!(backend);
    let product = app.create_product(500, 100).await;
    let mut orders = Vec::new();
    for _ in 0..20 {
        let hold = app.hold_ok(product, 1).await.hold_id;
        orders.push((hold, app.order_ok(hold).await.id));
    }
    let url = app.url("/api");
    let client = app.client.clone();
    let storm = tokio::spawn({
        let (url, client) = (url.clone(), client.clone());
        async move {
            join_all((0..256).map(|_| {
                client
                    .post(format!("{url}/holds"))
                    .json(&json!({"product_id": product, "qty": 1}))
                    .send()
            }))
            .await
        }
    });
    let payments = tokio::spawn({
        let orders = orders.clone();
        async move {
            join_all(orders.iter().map(|&(hold, order)| {
                let (url, client) = (url.clone(), client.clone());
                async move {
                    let r = client
                        .post(format!("{url}/payments/webhook"))
                        .json(&json!({"idempotency_key": format!("kill-{hold}"), "hold_id": hold, "status": "paid"}))
                        .send()
                        .await;
                    (order, r.map(|r| r.status().is_success()).unwrap_or(false))
                }
            }))
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.kill();
    let _ = storm.await;
    let answered: Vec<i64> = payments
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(order, ok)| ok.then_some(order))
        .collect();
    assert_audit(&db.url);
    let app = TestApp::spawn(&db, &[]).await;
    for order in answered {
        assert_eq!(
            app.get_order_ok(order).await.status,
            OrderStatus::Paid,
            "order {order}: answered payment lost"
        );
    }
    assert!(
        app.hold(product, 1).await.status.is_success(),
        "the restarted API sells"
    );
    assert_audit(&db.url);
}

async fn sigterm_lets_every_accepted_request_finish(backend: Backend) {
    // Goal: SIGTERM stops accepting but finishes what it accepted: every request the API
    // took up is answered in full, so every hold in the database was answered 201.
    // Method: 200 parallel holds; SIGTERM as soon as the first of them has committed, so
    // the rest are in flight. Requests still in the kernel's queue when the listener closes
    // fail (they were never taken up); the holds in the database must match the 201s
    // exactly.
    let (db, mut app) = setup!(backend);
    let product = app.create_product(1000, 100).await;
    let url = app.url("/api/holds");
    let client = reqwest::Client::new();
    let storm = tokio::spawn(async move {
        join_all((0..200).map(|_| {
            client
                .post(&url)
                .json(&json!({"product_id": product, "qty": 1}))
                .send()
        }))
        .await
    });
    let first_commit = Instant::now();
    while app.available(product).await == 1000 {
        assert!(
            first_commit.elapsed() < Duration::from_secs(20),
            "no hold committed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(app.terminate(), "the API exits cleanly on SIGTERM");
    let (mut created, mut answered) = (0, 0);
    for r in storm.await.unwrap().into_iter().flatten() {
        assert!(r.status() == 201 || r.status() == 409, "{}", r.status());
        let body: Value = r.json().await.expect("an answer is complete");
        created += i64::from(body["hold_id"].is_i64());
        answered += 1;
    }
    assert!(
        answered > 0,
        "nothing was in flight: the test proves nothing"
    );
    let app = TestApp::spawn(&db, &[]).await;
    assert_eq!(
        app.available(product).await,
        1000 - created,
        "every committed hold was answered"
    );
    assert_audit(&db.url);
}

/// A random malformed body: broken syntax, wrong types, huge or negative numbers, deep
/// nesting, binary noise, or a valid shape with hostile values.
fn hostile_body(rng: &mut StdRng, product: i64) -> Vec<u8> {
    let huge = [
        "1e400",
        "-1e400",
        "99999999999999999999999",
        "-9223372036854775809",
        "1.5",
        "-0",
        "NaN",
        "true",
        "null",
        "\"1\"",
        "[]",
        "{}",
    ];
    match rng.random_range(0..9) {
        0 => (0..rng.random_range(0..200))
            .map(|_| rng.random())
            .collect(),
        1 => format!(
            r#"{{"product_id": {product}, "qty": {}}}"#,
            huge[rng.random_range(0..huge.len())]
        )
        .into_bytes(),
        2 => format!(
            r#"{{"product_id": {}, "qty": 1}}"#,
            huge[rng.random_range(0..huge.len())]
        )
        .into_bytes(),
        3 => format!(
            "{}1{}",
            "[".repeat(rng.random_range(1..2000)),
            "]".repeat(rng.random_range(0..3))
        )
        .into_bytes(),
        4 => format!(
            r#"{{"product_id": {product}, "qty": {}}}"#,
            rng.random_range(-1_000_000..=0)
        )
        .into_bytes(),
        5 => format!(
            r#"{{"product_id": {product}, "qty": {}}}"#,
            rng.random_range(11..i64::MAX)
        )
        .into_bytes(),
        6 => {
            let s = format!(r#"{{"product_id": {product}, "qty": 1}}"#);
            let cut = rng.random_range(0..s.len());
            s.as_bytes()[..cut].to_vec()
        }
        7 => {
            json!({"hold_id": "x".repeat(rng.random_range(0..300)), "status": rng.random::<u32>()})
                .to_string()
                .into_bytes()
        }
        _ => format!(
            r#"{{"product_id": {product}, "qty": 1, "qty": "{}"}}"#,
            "\u{0}"
        )
        .into_bytes(),
    }
}

async fn hostile_input_gets_4xx_error_bodies_and_changes_nothing(backend: Backend) {
    // Goal: no input gets a 5xx, every refusal has the error body, nothing is written.
    // Method: 1,500 seeded random malformed requests spread over every POST endpoint, and
    // random path ids on every GET; then the product's stock and the audit.
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let mut rng = StdRng::seed_from_u64(20_261_121);
    let paths = [
        "/api/holds",
        "/api/orders",
        "/api/payments/webhook",
        "/api/admin/products",
    ];
    let mut requests = Vec::new();
    for i in 0..1500 {
        requests.push((paths[i % paths.len()], hostile_body(&mut rng, product)));
    }
    let mut statuses = BTreeMap::new();
    for chunk in requests.chunks(50) {
        let replies = join_all(chunk.iter().map(|(path, body)| {
            app.request_raw(
                Method::POST,
                path,
                Some(body.clone()),
                &[("authorization", "Bearer nope")],
            )
        }))
        .await;
        for ((path, body), r) in chunk.iter().zip(replies) {
            let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
            assert!(
                r.status.is_client_error(),
                "{path} {shown:?} -> {} {}",
                r.status,
                r.body
            );
            assert!(
                r.body["code"].as_str().is_some_and(|c| !c.is_empty())
                    && r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{path} {shown:?} -> no error body: {}",
                r.body
            );
            *statuses.entry(r.status.as_u16()).or_insert(0) += 1;
        }
    }
    for id in [
        "-1",
        "0",
        "9223372036854775807",
        "9223372036854775808",
        "1e3",
        "%00",
        "..%2f..",
        "x".repeat(5000).as_str(),
    ] {
        for base in ["/api/products/", "/api/holds/", "/api/orders/"] {
            let r = app.get(&format!("{base}{id}")).await;
            assert!(r.status.is_client_error(), "{base}{id} -> {}", r.status);
        }
    }
    assert_eq!(
        app.available(product).await,
        10,
        "statuses seen: {statuses:?}"
    );
    app.get_hold(1).await.assert_error(404, "hold_not_found");
    assert_audit(&db.url);
}

async fn idempotency_keys_are_forgotten_after_their_retention(backend: Backend) {
    let env = [("IDEMPOTENCY_KEY_TTL_SECS", "1"), ("HOLD_TTL_SECS", "1")];
    let (db, app) = setup!(backend, &env);
    let product = app.create_product(10, 100).await;
    let first = app.hold_with_key(product, 2, "cart-7").await;
    assert_eq!(first.status, 201);
    app.hold_with_key(product, 3, "cart-7")
        .await
        .assert_error(409, "idempotency_key_reused");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sweep(&db.url, &env);
    let reused = app.hold_with_key(product, 3, "cart-7").await;
    assert_eq!(reused.status, 201, "{}", reused.body);
    assert!(!reused.replayed());
    assert_ne!(reused.body["hold_id"], first.body["hold_id"]);
    assert_audit(&db.url);
}

async fn metrics_count_requests_and_checkout_events(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(1, 100).await;
    let hold = app.hold_ok(product, 1).await.hold_id;
    app.hold(product, 1)
        .await
        .assert_error(409, "insufficient_stock");
    app.order(hold).await;
    app.webhook("m-1", hold, "paid").await;
    app.webhook("m-1", hold, "paid").await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.body.as_str().expect("text");
    for line in [
        r#"flashsale_holds_total{outcome="created"} 1"#,
        r#"flashsale_holds_total{outcome="rejected"} 1"#,
        r#"flashsale_order_events_total{event="created"} 1"#,
        r#"flashsale_order_events_total{event="paid"} 1"#,
        r#"flashsale_webhooks_total{state="applied"} 1"#,
        r#"flashsale_replays_total{kind="webhook"} 1"#,
        r#"flashsale_orders{status="paid"} 1"#,
        r#"flashsale_http_requests_total{method="POST",route="/api/holds",status="201"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert!(text.contains("flashsale_http_request_duration_seconds_bucket"));
    // The client's request id comes back.
    let r = app
        .request(
            Method::GET,
            "/health",
            None,
            &[("x-request-id", "trace-4711")],
        )
        .await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "trace-4711");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_gives_clean_503s_and_the_api_recovers_by_itself() {
    // Goal: when PostgreSQL goes away, /ready says so, requests fail with a clean 503 and
    // write nothing, and the API recovers without a restart.
    // Method: the API reaches its database through a proxy; cut it, send requests, restore.
    let (db, proxy, app) = setup_via_proxy!(&[]);
    let product = app.create_product(10, 100).await;
    assert_eq!(app.hold(product, 1).await.status, 201);
    proxy.cut();
    assert!(
        app.ready_turns(503, Duration::from_secs(10)).await,
        "/ready did not turn 503"
    );
    for _ in 0..5 {
        app.hold(product, 1)
            .await
            .assert_error(503, "database_unavailable");
    }
    proxy.restore();
    assert!(
        app.ready_turns(200, Duration::from_secs(15)).await,
        "the API did not recover"
    );
    assert_eq!(app.hold(product, 1).await.status, 201);
    assert_eq!(
        app.available(product).await,
        8,
        "the refused requests wrote nothing"
    );
    assert_audit(&db.url);
}

#[test]
fn without_a_webhook_secret_the_api_refuses_to_start_outside_development() {
    let out = Command::new(bin("flashsale-api"))
        .env_clear()
        .env("DATABASE_URL", "sqlite::memory:")
        .env("BIND", "127.0.0.1:0")
        .output()
        .expect("run flashsale-api");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("WEBHOOK_SECRET"), "{text}");
}
