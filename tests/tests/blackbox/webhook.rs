//! The payment webhook: every row of the SPEC's table that needs no worker.

use client::types::{Hold, OrderStatus};
use reqwest::Method;
use serde_json::json;
use testkit::{Backend, TestApp, assert_audit, on_both_backends, setup, sign, unix_now};

on_both_backends!(
    paid_webhook_marks_a_pending_order_paid,
    failed_webhook_cancels_the_order_and_returns_its_stock,
    replay_with_the_same_key_returns_the_identical_answer,
    same_key_with_a_different_body_is_409_and_changes_nothing,
    a_new_key_cannot_change_a_final_order,
    webhook_for_an_unknown_hold_is_404_and_records_nothing,
    webhook_before_the_order_is_recorded_with_202,
    webhook_key_may_come_in_the_header_and_must_agree_with_the_body,
    webhook_input_errors_are_4xx,
    signed_webhooks_require_a_valid_fresh_signature,
    signature_headers_over_their_caps_are_refused_before_any_hashing,
);

/// A product with 10 units, a hold of `qty` on it, and its pending order.
async fn pending_order(app: &TestApp, qty: i64) -> (i64, i64, i64) {
    let product = app.create_product(10, 500).await;
    let hold = app.hold_ok(product, qty).await.hold_id;
    let order = app.order_ok(hold).await.id;
    (product, hold, order)
}

async fn paid_webhook_marks_a_pending_order_paid(backend: Backend) {
    let (db, app) = setup!(backend);
    let (product, hold, order) = pending_order(&app, 2).await;
    let r = app.webhook("evt-1", hold, "paid").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"idempotency_key": "evt-1", "hold_id": hold, "order_id": order, "status": "paid", "state": "applied"})
    );
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Paid);
    assert_eq!(app.available(product).await, 8);
    assert_audit(&db.url);
}

async fn failed_webhook_cancels_the_order_and_returns_its_stock(backend: Backend) {
    let (db, app) = setup!(backend);
    let (product, hold, order) = pending_order(&app, 3).await;
    assert_eq!(app.available(product).await, 7);
    // Too little left: the refusal is remembered, but only until stock comes back here.
    app.hold(product, 8)
        .await
        .assert_error(409, "insufficient_stock");
    app.hold(product, 8)
        .await
        .assert_error(409, "insufficient_stock");
    let r = app.webhook("evt-f", hold, "failed").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "applied");
    assert_eq!(r.body["status"], "failed");
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Cancelled);
    assert_eq!(app.available(product).await, 10, "stock is back at once");
    let again = app.hold(product, 8).await;
    assert_eq!(
        again.status, 201,
        "the returned stock sells at once: {}",
        again.body
    );
    let again_id = again.json::<Hold>().hold_id;
    app.order(again_id).await;
    app.webhook("evt-f-again", again_id, "failed").await;
    // Returned exactly once: a replay and another failed event give nothing back again.
    app.webhook("evt-f", hold, "failed").await;
    app.webhook("evt-f2", hold, "failed").await;
    assert_eq!(app.available(product).await, 10);
    assert_audit(&db.url);
}

async fn replay_with_the_same_key_returns_the_identical_answer(backend: Backend) {
    let (db, app) = setup!(backend);
    let (_, hold, _) = pending_order(&app, 1).await;
    let first = app.webhook("evt-r", hold, "paid").await;
    assert!(!first.replayed());
    for _ in 0..3 {
        let again = app.webhook("evt-r", hold, "paid").await;
        assert_eq!(again.status, first.status);
        assert_eq!(again.body, first.body);
        assert!(again.replayed());
    }
    // An early event replays its 202.
    let product = app.create_product(5, 100).await;
    let early_hold = app.hold_ok(product, 1).await.hold_id;
    let early = app.webhook("evt-early", early_hold, "paid").await;
    assert_eq!(early.status, 202);
    let again = app.webhook("evt-early", early_hold, "paid").await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body, early.body);
    assert!(again.replayed());
    assert_audit(&db.url);
}

async fn same_key_with_a_different_body_is_409_and_changes_nothing(backend: Backend) {
    let (db, app) = setup!(backend);
    let (product, hold, order) = pending_order(&app, 1).await;
    assert_eq!(app.webhook("evt-x", hold, "paid").await.status, 200);
    app.webhook("evt-x", hold, "failed")
        .await
        .assert_error(409, "idempotency_key_reused");
    let (_, other_hold, _) = pending_order(&app, 1).await;
    app.webhook("evt-x", other_hold, "paid")
        .await
        .assert_error(409, "idempotency_key_reused");
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Paid);
    assert_eq!(app.available(product).await, 9);
    assert_audit(&db.url);
}

async fn a_new_key_cannot_change_a_final_order(backend: Backend) {
    let (db, app) = setup!(backend);
    let (product, hold, order) = pending_order(&app, 2).await;
    assert_eq!(
        app.webhook("evt-1", hold, "paid").await.body["state"],
        "applied"
    );
    let failed = app.webhook("evt-2", hold, "failed").await;
    assert_eq!(failed.status, 200);
    assert_eq!(failed.body["state"], "ignored");
    assert_eq!(
        failed.body["status"], "paid",
        "ignored shows the order's current status"
    );
    let double = app.webhook("evt-3", hold, "paid").await;
    assert_eq!(double.status, 200);
    assert_eq!(double.body["state"], "refund_required");
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Paid);
    assert_eq!(app.available(product).await, 8);

    // A cancelled order stays cancelled: a late `paid` must be refunded.
    let (product2, hold2, order2) = pending_order(&app, 1).await;
    assert_eq!(
        app.webhook("evt-4", hold2, "failed").await.body["state"],
        "applied"
    );
    let late = app.webhook("evt-5", hold2, "paid").await;
    assert_eq!(late.status, 200);
    assert_eq!(late.body["state"], "refund_required");
    assert_eq!(late.body["order_id"], order2);
    let ignored = app.webhook("evt-6", hold2, "failed").await;
    assert_eq!(ignored.body["state"], "ignored");
    assert_eq!(ignored.body["status"], "cancelled");
    assert_eq!(
        app.get_order_ok(order2).await.status,
        OrderStatus::Cancelled
    );
    assert_eq!(app.available(product2).await, 10);
    assert_audit(&db.url);
}

async fn webhook_for_an_unknown_hold_is_404_and_records_nothing(backend: Backend) {
    let (db, app) = setup!(backend);
    let (_, hold, _) = pending_order(&app, 1).await;
    app.webhook("evt-u", 987_654, "paid")
        .await
        .assert_error(404, "hold_not_found");
    // Nothing was recorded: the key is still free.
    let r = app.webhook("evt-u", hold, "paid").await;
    assert_eq!(r.status, 200);
    assert!(!r.replayed());
    assert_audit(&db.url);
}

async fn webhook_before_the_order_is_recorded_with_202(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let hold = app.hold_ok(product, 2).await.hold_id;
    let r = app.webhook("evt-e", hold, "paid").await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.body,
        json!({"idempotency_key": "evt-e", "hold_id": hold, "status": "paid", "state": "awaiting_order"})
    );
    // A second, different `paid` for the same hold is a double charge.
    let second = app.webhook("evt-e2", hold, "paid").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body["state"], "refund_required");
    // The order can still be made and the recorded payment wins over a later `failed`.
    let order = app.order_ok(hold).await;
    let failed = app.webhook("evt-e3", hold, "failed").await;
    assert_eq!(failed.status, 200);
    assert_eq!(failed.body["state"], "ignored");
    assert_eq!(failed.body["status"], "paid");
    assert_eq!(app.get_order_ok(order.id).await.status, OrderStatus::Paid);
    assert_eq!(app.available(product).await, 8);
    assert_audit(&db.url);
}

async fn webhook_key_may_come_in_the_header_and_must_agree_with_the_body(backend: Backend) {
    let (db, app) = setup!(backend);
    let (_, hold, order) = pending_order(&app, 1).await;
    let body = json!({"hold_id": hold, "status": "paid"});
    let r = app
        .request(
            Method::POST,
            "/api/payments/webhook",
            Some(&body),
            &[("idempotency-key", "hdr-1")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["idempotency_key"], "hdr-1");
    assert_eq!(r.body["order_id"], order);
    let both = json!({"idempotency_key": "body-key", "hold_id": hold, "status": "paid"});
    app.request(
        Method::POST,
        "/api/payments/webhook",
        Some(&both),
        &[("idempotency-key", "other")],
    )
    .await
    .assert_error(422, "validation_error");
    app.post("/api/payments/webhook", body)
        .await
        .assert_error(422, "validation_error");
    assert_audit(&db.url);
}

async fn webhook_input_errors_are_4xx(backend: Backend) {
    let (db, app) = setup!(backend);
    let (product, hold, order) = pending_order(&app, 1).await;
    let cases = [
        (
            json!({"idempotency_key": "k", "hold_id": hold, "status": "refunded"}),
            422,
        ),
        (
            json!({"idempotency_key": "k", "hold_id": "1", "status": "paid"}),
            422,
        ),
        (
            json!({"idempotency_key": 5, "hold_id": hold, "status": "paid"}),
            422,
        ),
        (json!({"idempotency_key": "k", "status": "paid"}), 422),
        (
            json!({"idempotency_key": "", "hold_id": hold, "status": "paid"}),
            422,
        ),
        (
            json!({"idempotency_key": "k".repeat(256), "hold_id": hold, "status": "paid"}),
            422,
        ),
    ];
    for (body, status) in cases {
        let r = app.post("/api/payments/webhook", body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body} -> {}", r.body);
        assert_eq!(r.code(), "validation_error");
    }
    let r = app
        .request_raw(
            Method::POST,
            "/api/payments/webhook",
            Some(b"{\"hold_id\":".to_vec()),
            &[],
        )
        .await;
    r.assert_error(400, "invalid_json");
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Pending);
    assert_eq!(app.available(product).await, 9);
    assert_audit(&db.url);
}

async fn signed_webhooks_require_a_valid_fresh_signature(backend: Backend) {
    let (db, app) = setup!(backend, &[("WEBHOOK_SECRET", "old-secret,new-secret")]);
    let (_, hold, order) = pending_order(&app, 1).await;
    let body = json!({"idempotency_key": "sig-1", "hold_id": hold, "status": "paid"}).to_string();
    let post = |sig: Option<String>| {
        let body = body.clone().into_bytes();
        let app = &app;
        async move {
            let headers: Vec<(&str, String)> =
                sig.into_iter().map(|s| ("x-signature", s)).collect();
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.request_raw(Method::POST, "/api/payments/webhook", Some(body), &headers)
                .await
        }
    };
    let now = unix_now();
    post(None).await.assert_error(401, "invalid_signature");
    post(Some("garbage".into()))
        .await
        .assert_error(401, "invalid_signature");
    post(Some(sign("wrong", now, body.as_bytes())))
        .await
        .assert_error(401, "invalid_signature");
    post(Some(sign("new-secret", now - 301, body.as_bytes())))
        .await
        .assert_error(401, "invalid_signature");
    post(Some(sign("new-secret", now, b"{}")))
        .await
        .assert_error(401, "invalid_signature");
    assert_eq!(
        app.get_order_ok(order).await.status,
        OrderStatus::Pending,
        "refused events change nothing"
    );
    let ok = post(Some(sign("old-secret", now, body.as_bytes()))).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["state"], "applied");
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Paid);
    assert_audit(&db.url);
}

async fn signature_headers_over_their_caps_are_refused_before_any_hashing(backend: Backend) {
    let (db, app) = setup!(backend, &[("WEBHOOK_SECRET", "cap-secret")]);
    let (_, hold, order) = pending_order(&app, 1).await;
    let body = json!({"idempotency_key": "cap-1", "hold_id": hold, "status": "paid"}).to_string();
    let post = |sig: String| {
        let body = body.clone().into_bytes();
        let app = &app;
        async move {
            app.request_raw(
                Method::POST,
                "/api/payments/webhook",
                Some(body),
                &[("x-signature", &sig)],
            )
            .await
        }
    };
    let valid = sign("cap-secret", unix_now(), body.as_bytes());
    // Nine v1= values, the last one right: more than a sender rotating secrets needs.
    let too_many = format!("{valid}{}", ",v1=00".repeat(8));
    let r = post(too_many).await;
    r.assert_error(401, "invalid_signature");
    assert!(
        r.body["message"].as_str().unwrap().contains("v1"),
        "{}",
        r.body
    );
    // A header over 1 KiB, even though its one v1= value is right.
    let too_long = format!("{valid},pad={}", "x".repeat(1024));
    post(too_long).await.assert_error(401, "invalid_signature");
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Pending);
    // Within the caps, the right value among wrong ones is accepted.
    let ok = post(format!("{valid}{}", ",v1=00".repeat(7))).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Paid);
    assert_audit(&db.url);
}
