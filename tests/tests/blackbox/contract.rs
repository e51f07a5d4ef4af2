//! Every status and error code of the products, holds and orders endpoints, and bad input
//! that must be refused with a 4xx and change nothing.

use reqwest::Method;
use serde_json::json;
use testkit::{ADMIN_TOKEN, Backend, assert_audit, on_both_backends, setup};

on_both_backends!(
    product_is_served_with_its_stock_and_unknown_ids_are_404,
    admin_product_creation_requires_the_token_and_valid_fields,
    hold_is_created_and_read_back,
    hold_is_rejected_with_409_when_sold_out,
    bad_hold_requests_get_4xx_and_write_nothing,
    idempotency_key_replays_the_same_hold_and_refuses_another_body,
    order_is_created_once_and_retries_return_it,
    order_and_hold_lookups_of_unknown_ids_are_404,
    health_and_ready_answer,
);

async fn product_is_served_with_its_stock_and_unknown_ids_are_404(backend: Backend) {
    let (_db, app) = setup!(backend);
    let id = app.create_product(7, 1999).await;
    // The raw answer: the typed SDK would drop the nulls when turning it back into JSON.
    let r = app.get(&format!("/api/products/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({
            "id": id, "name": "Test sneaker", "price_cents": 1999, "total_stock": 7,
            "available_stock": 7, "sale_starts_at": null, "sale_ends_at": null,
            "max_per_customer": null, "sale_state": "live"
        })
    );
    app.get("/api/products/999999")
        .await
        .assert_error(404, "product_not_found");
    app.get("/api/products/abc")
        .await
        .assert_error(400, "invalid_parameter");
    app.get("/api/products/99999999999999999999999")
        .await
        .assert_error(400, "invalid_parameter");
    app.get("/api/nothing-here")
        .await
        .assert_error(404, "not_found");
}

async fn admin_product_creation_requires_the_token_and_valid_fields(backend: Backend) {
    let (db, app) = setup!(backend);
    let body = json!({"name": "Drop", "price_cents": 500, "total_stock": 3});
    app.request(Method::POST, "/api/admin/products", Some(&body), &[])
        .await
        .assert_error(401, "unauthorized");
    app.request(
        Method::POST,
        "/api/admin/products",
        Some(&body),
        &[("authorization", "Bearer wrong")],
    )
    .await
    .assert_error(401, "unauthorized");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for bad in [
        json!({"name": "", "price_cents": 1, "total_stock": 1}),
        json!({"name": "x", "price_cents": -1, "total_stock": 1}),
        json!({"name": "x", "price_cents": 1, "total_stock": -1}),
        json!({"name": "x", "price_cents": 1, "total_stock": 1_000_000_000_001_i64}),
        json!({"name": "x", "price_cents": "1", "total_stock": 1}),
        json!({"name": "x", "total_stock": 1}),
        json!({"name": "x".repeat(201), "price_cents": 1, "total_stock": 1}),
    ] {
        let r = app
            .request(
                Method::POST,
                "/api/admin/products",
                Some(&bad),
                &[("authorization", &auth)],
            )
            .await;
        r.assert_error(422, "validation_error");
    }
    app.get("/api/products/1")
        .await
        .assert_error(404, "product_not_found");
    let r = app
        .request(
            Method::POST,
            "/api/admin/products",
            Some(&body),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["available_stock"], 3);
    assert_audit(&db.url);
}

async fn hold_is_created_and_read_back(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let r = app.hold(product, 3).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["qty"], 3);
    assert_eq!(r.body["product_id"], product);
    assert!(r.body["expires_at"].as_str().is_some_and(|s| s.len() >= 20));
    assert!(!r.replayed());
    let hold_id = r.body["hold_id"].as_i64().unwrap();
    let got = app.get_hold(hold_id).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, r.body);
    assert_eq!(
        app.available(product).await,
        7,
        "the writer reads its own write at once"
    );
    assert!(r.headers.contains_key("x-request-id"));
}

async fn hold_is_rejected_with_409_when_sold_out(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(5, 100).await;
    assert_eq!(app.hold(product, 4).await.status, 201);
    app.hold(product, 2)
        .await
        .assert_error(409, "insufficient_stock");
    assert_eq!(app.hold(product, 1).await.status, 201);
    app.hold(product, 1)
        .await
        .assert_error(409, "insufficient_stock");
    assert_eq!(app.available(product).await, 0);
    let empty = app.create_product(0, 100).await;
    app.hold(empty, 1)
        .await
        .assert_error(409, "insufficient_stock");
    app.hold(999_999, 1)
        .await
        .assert_error(404, "product_not_found");
    assert_audit(&db.url);
}

async fn bad_hold_requests_get_4xx_and_write_nothing(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let p = product.to_string();
    let with_qty = |qty: &str| format!(r#"{{"product_id": {p}, "qty": {qty}}}"#);
    let invalid_json = [
        "{".to_owned(),
        "not json".to_owned(),
        String::new(),
        format!(r#"{{"product_id": {p}, "qty": 1}} trailing"#),
    ];
    let invalid_fields = [
        with_qty(r#""1""#),
        format!(r#"{{"product_id": "{p}", "qty": 1}}"#),
        format!(r#"{{"product_id": {p}}}"#),
        r#"{"qty": 1}"#.to_owned(),
        with_qty("0"),
        with_qty("-3"),
        with_qty("11"),
        with_qty("1.5"),
        with_qty("99999999999999999999999"),
        with_qty("null"),
        format!(r#"{{"product_id": {p}, "qtty": 2}}"#),
        "[1, 2]".to_owned(),
        "42".to_owned(),
    ];
    let as_json = invalid_json.iter().map(|body| (body, 400, "invalid_json"));
    let as_fields = invalid_fields.iter().map(|b| (b, 422, "validation_error"));
    let cases = as_json.chain(as_fields);
    for (body, status, code) in cases {
        let raw = Some(body.clone().into_bytes());
        let r = app.request_raw(Method::POST, "/api/holds", raw, &[]).await;
        assert_eq!(r.status.as_u16(), status, "{body} -> {}", r.body);
        assert_eq!(r.code(), code, "{body} -> {}", r.body);
    }
    // The message names the field.
    for (body, field) in [
        (with_qty(r#""x""#), "qty"),
        (r#"{"qty": 1}"#.to_owned(), "product_id"),
    ] {
        let raw = Some(body.into_bytes());
        let r = app.request_raw(Method::POST, "/api/holds", raw, &[]).await;
        assert!(
            r.body["message"].as_str().unwrap().contains(field),
            "{}",
            r.body
        );
    }

    // 70 KB: refused before parsing, whether or not the length is announced.
    let mut big = format!(r#"{{"product_id": {p}, "qty": 1, "pad": ""#).into_bytes();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend(b"\"}");
    app.request_raw(Method::POST, "/api/holds", Some(big.clone()), &[])
        .await
        .assert_error(413, "payload_too_large");
    app.assert_chunked_refused_413("/api/holds", &big, &[])
        .await;

    // Bad keys.
    let long_key = "k".repeat(256);
    app.request(
        Method::POST,
        "/api/holds",
        Some(&json!({"product_id": product, "qty": 1})),
        &[("idempotency-key", &long_key)],
    )
    .await
    .assert_error(422, "validation_error");

    // Nothing was written.
    assert_eq!(app.available(product).await, 10);
    app.get_hold(1).await.assert_error(404, "hold_not_found");
    assert_audit(&db.url);
}

async fn idempotency_key_replays_the_same_hold_and_refuses_another_body(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let first = app.hold_with_key(product, 2, "buy-1").await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    let again = app.hold_with_key(product, 2, "buy-1").await;
    assert_eq!(again.status, 201);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(app.available(product).await, 8, "a replay reserves nothing");
    app.hold_with_key(product, 3, "buy-1")
        .await
        .assert_error(409, "idempotency_key_reused");
    assert_eq!(app.available(product).await, 8);
    assert_audit(&db.url);
}

async fn order_is_created_once_and_retries_return_it(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 1250).await;
    let hold = app.hold_ok(product, 3).await.hold_id;
    let created = app.order(hold).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["status"], "pending");
    assert_eq!(created.body["total_cents"], 3750);
    assert_eq!(created.body["qty"], 3);
    assert_eq!(created.body["hold_id"], hold);
    assert!(!created.replayed());
    let again = app.order(hold).await;
    assert_eq!(again.status, 200);
    assert!(again.replayed());
    assert_eq!(again.body, created.body);
    let id = created.body["id"].as_i64().unwrap();
    let got = app.get_order(id).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, created.body);
    assert_eq!(app.get_hold(hold).await.body["status"], "ordered");
    assert_eq!(app.available(product).await, 7);
    assert_audit(&db.url);
}

async fn order_and_hold_lookups_of_unknown_ids_are_404(backend: Backend) {
    let (_db, app) = setup!(backend);
    app.order(424_242).await.assert_error(404, "hold_not_found");
    app.get_order(5).await.assert_error(404, "order_not_found");
    app.get_hold(5).await.assert_error(404, "hold_not_found");
    app.get("/api/orders/x")
        .await
        .assert_error(400, "invalid_parameter");
    app.post("/api/orders", json!({"hold_id": "1"}))
        .await
        .assert_error(422, "validation_error");
    app.post("/api/orders", json!({}))
        .await
        .assert_error(422, "validation_error");
}

async fn health_and_ready_answer(backend: Backend) {
    let (_db, app) = setup!(backend);
    assert_eq!(app.get("/health").await.status, 200);
    assert_eq!(app.get("/ready").await.status, 200);
    let docs = app.get("/docs").await;
    assert_eq!(docs.status, 200);
    let spec = app.get("/openapi.yaml").await;
    assert_eq!(spec.status, 200);
    assert!(spec.body.as_str().unwrap().contains("/api/holds"));
}
