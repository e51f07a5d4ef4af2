//! The edges of the HTTP surface and of start-up: methods nobody serves, labels a client
//! could grow, what `--help` shows, a port already taken, a one-connection pool, and a
//! quiet log on reads.

use std::{
    io::{Read, Write},
    process::Command,
    time::Duration,
};

use reqwest::Method;
use testkit::{Backend, TestDb, bin, on_both_backends, setup};

on_both_backends!(
    docs_and_the_spec_refuse_other_methods_with_405,
    metrics_labels_stay_bounded_whatever_the_client_sends,
    one_database_connection_is_enough_to_start_and_serve,
    reading_a_product_logs_no_warning,
    served_spec_states_the_configured_qty_maximum,
);

async fn docs_and_the_spec_refuse_other_methods_with_405(backend: Backend) {
    let (_db, app) = setup!(backend);
    let brew = Method::from_bytes(b"BREW").unwrap();
    for path in ["/docs", "/openapi.yaml", "/openapi.json"] {
        assert_eq!(app.get(path).await.status, 200, "GET {path}");
        for method in [Method::PUT, Method::DELETE, Method::PATCH, brew.clone()] {
            let r = app.request(method.clone(), path, None, &[]).await;
            r.assert_error(405, "method_not_allowed");
            assert_eq!(
                r.headers.get("allow").map(|v| v.to_str().unwrap()),
                Some("GET"),
                "{method} {path}"
            );
        }
    }
}

/// The `method` label values of every `flashsale_http_*` line, and the number of lines.
fn http_metric_methods(text: &str) -> (Vec<String>, usize) {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("flashsale_http_"))
        .collect();
    let methods = lines
        .iter()
        .filter_map(|l| l.split("method=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    (methods, lines.len())
}

async fn metrics_labels_stay_bounded_whatever_the_client_sends(backend: Backend) {
    let (_db, app) = setup!(backend);
    let hostile_round = |round: u32| {
        let app = &app;
        async move {
            for i in 0..30 {
                let method = Method::from_bytes(format!("BREW{round}X{i}").as_bytes()).unwrap();
                let r = app.request(method, "/api/holds", None, &[]).await;
                assert_eq!(r.status, 405);
                let junk = uuid::Uuid::new_v4().simple().to_string();
                assert_eq!(app.get(&format!("/{junk}")).await.status, 404);
                assert_eq!(
                    app.get(&format!("/api/products/{i}{round}")).await.status,
                    404
                );
                let r = app
                    .request(Method::PATCH, &format!("/docs/{junk}"), None, &[])
                    .await;
                assert!(r.status.is_client_error());
            }
            app.get("/metrics").await.body.as_str().unwrap().to_owned()
        }
    };
    // The scrape counts itself: once before, so both rounds see the same label sets.
    app.get("/metrics").await;
    let first = hostile_round(1).await;
    let second = hostile_round(2).await;
    let (methods, lines_after_first) = http_metric_methods(&first);
    let (methods_after, lines_after_second) = http_metric_methods(&second);
    for m in methods.iter().chain(&methods_after) {
        assert!(
            ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OTHER"].contains(&m.as_str()),
            "method label {m} came from a client:\n{second}"
        );
    }
    assert!(!second.contains("BREW"), "{second}");
    assert!(
        !second.contains("/api/products/1") && !second.contains("/docs/"),
        "raw paths in labels:\n{second}"
    );
    assert_eq!(
        lines_after_first, lines_after_second,
        "more of the same hostile requests grew /metrics"
    );
}

async fn one_database_connection_is_enough_to_start_and_serve(backend: Backend) {
    let (_db, app) = setup!(backend, &[("DB_MAX_CONNECTIONS", "1")]);
    let product = app.create_product(3, 100).await;
    assert_eq!(app.hold(product, 1).await.status, 201);
    assert_eq!(app.available(product).await, 2);
}

async fn reading_a_product_logs_no_warning(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(3, 100).await;
    let warnings = |log: Vec<String>| {
        log.into_iter()
            .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
            .collect::<Vec<_>>()
    };
    let at_start = warnings(app.log()).len();
    for _ in 0..3 {
        assert_eq!(app.available(product).await, 3);
        // Past the cache's freshness, so each read goes to the database.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let after = warnings(app.log());
    assert_eq!(after.len(), at_start, "{after:#?}");
}

async fn served_spec_states_the_configured_qty_maximum(backend: Backend) {
    let committed = include_str!("../../../openapi.yaml");
    let (_db, app) = setup!(backend);
    let served = app.get("/openapi.yaml").await;
    assert_eq!(
        served.body.as_str(),
        Some(committed),
        "a server with default settings serves the committed openapi.yaml"
    );
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = testkit::TestApp::spawn(&db, &[("MAX_QTY_PER_HOLD", "25")]).await;
    let spec = app.get("/openapi.json").await.body;
    let spec: serde_json::Value = match spec {
        serde_json::Value::String(s) => serde_json::from_str(&s).unwrap(),
        v => v,
    };
    let qty = &spec["components"]["schemas"]["CreateHold"]["properties"]["qty"];
    assert_eq!(qty["maximum"].as_f64(), Some(25.0), "{qty}");
    let product = app.create_product(30, 100).await;
    assert_eq!(app.hold(product, 25).await.status, 201);
}

#[test]
fn help_does_not_show_the_database_password_or_any_secret() {
    let out = Command::new(bin("flashsale-api"))
        .env_clear()
        .env(
            "DATABASE_URL",
            "postgres://shop:hunter2-7f3a@db.internal/shop",
        )
        .env("WEBHOOK_SECRET", "whsec-7f3a")
        .env("ADMIN_TOKEN", "admin-7f3a")
        .env(
            "CUSTOMER_JWT_SECRET",
            "customer-secret-7f3a-0123456789abcdef",
        )
        .arg("--help")
        .output()
        .expect("run flashsale-api --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DATABASE_URL"), "{text}");
    assert!(text.contains("CUSTOMER_JWT_SECRET"), "{text}");
    assert!(!text.contains("7f3a"), "{text}");
}

#[test]
fn a_taken_port_fails_with_one_line_and_touches_no_database() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("flashsale-bind-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(bin("flashsale-api"))
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("shop.db").display()),
        )
        .env("BIND", &addr)
        .env("DEMO", "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run flashsale-api");
    let created: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace:\n{stderr}");
    assert!(
        lines[0].contains(&addr) && lines[0].contains("BIND"),
        "{stderr}"
    );
    assert!(
        created.is_empty(),
        "the database was touched: {created:?}\n{stderr}"
    );
}

/// Sends `raw` on a fresh connection and returns the whole answer.
fn raw_exchange(addr: &str, raw: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and the body of a raw HTTP/1.1 answer.
fn status_and_body(answer: &str) -> (u16, serde_json::Value) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uris_and_headers_get_an_error_body() {
    let (_db, app) = setup!(Backend::Sqlite);
    let addr = app.addr.clone();
    let exchange = |raw: Vec<u8>| {
        let addr = addr.clone();
        async move {
            tokio::task::spawn_blocking(move || raw_exchange(&addr, &raw))
                .await
                .unwrap()
        }
    };
    let long_uri = format!("/api/products/1?{}", "a".repeat(20 * 1024));
    let long_headers = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(64 * 1024)
    );
    for (raw, want) in [
        (format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\n\r\n"), 414),
        (long_headers, 431),
    ] {
        let answer = exchange(raw.into_bytes()).await;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, want, "{answer}");
        assert!(
            body["code"].as_str().is_some_and(|c| !c.is_empty())
                && body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no error body:\n{answer}"
        );
    }
    // A request whose framing cannot be trusted is refused by the HTTP stack itself,
    // before any of our code runs (see SECURITY.md): a 400, and nothing else happens.
    for framing in [
        "Content-Length: 2\r\nContent-Length: 3",
        "Content-Length: abc",
    ] {
        let raw = format!(
            "POST /api/holds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n{{}}"
        );
        let (status, _) = status_and_body(&exchange(raw.into_bytes()).await);
        assert_eq!(status, 400, "{framing}");
    }
    assert_eq!(app.get("/health").await.status, 200);
}
