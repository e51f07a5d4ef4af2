//! Expiry needs no worker: an expired hold's stock is free as soon as `expires_at` passes,
//! and the hold can never become an order.

use std::time::Duration;

use client::types::HoldStatus;
use testkit::{Backend, assert_audit, on_both_backends, setup};

on_both_backends!(
    expired_hold_stock_is_available_at_once_and_it_cannot_be_ordered,
    paid_hold_outlives_its_ttl_and_can_still_be_ordered,
    paid_webhook_for_an_expired_hold_requires_a_refund,
);

/// Past a 1-second TTL, plus the cache's half second for other readers.
const PAST_TTL: Duration = Duration::from_millis(1700);

async fn expired_hold_stock_is_available_at_once_and_it_cannot_be_ordered(backend: Backend) {
    let (db, app) = setup!(backend, &[("HOLD_TTL_SECS", "1")]);
    let product = app.create_product(3, 100).await;
    let hold = app.hold_ok(product, 3).await.hold_id;
    app.hold(product, 1)
        .await
        .assert_error(409, "insufficient_stock");
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(
        app.available(product).await,
        3,
        "expired stock is shown as available"
    );
    assert_eq!(app.get_hold_ok(hold).await.status, HoldStatus::Expired);
    app.order(hold).await.assert_error(409, "hold_expired");
    // Nothing swept it, yet its stock sells again.
    let again = app.hold(product, 3).await;
    assert_eq!(again.status, 201, "{}", again.body);
    app.order(hold).await.assert_error(409, "hold_expired");
    assert_eq!(app.available(product).await, 0);
    assert_audit(&db.url);
}

async fn paid_hold_outlives_its_ttl_and_can_still_be_ordered(backend: Backend) {
    let (db, app) = setup!(backend, &[("HOLD_TTL_SECS", "1")]);
    let product = app.create_product(2, 100).await;
    let hold = app.hold_ok(product, 2).await.hold_id;
    assert_eq!(app.webhook("pay-early", hold, "paid").await.status, 202);
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(
        app.available(product).await,
        0,
        "a paid hold keeps its stock"
    );
    app.hold(product, 1)
        .await
        .assert_error(409, "insufficient_stock");
    assert_eq!(app.get_hold_ok(hold).await.status, HoldStatus::Active);
    let order = app.order(hold).await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_audit(&db.url);
}

async fn paid_webhook_for_an_expired_hold_requires_a_refund(backend: Backend) {
    let (db, app) = setup!(backend, &[("HOLD_TTL_SECS", "1")]);
    let product = app.create_product(2, 100).await;
    let hold = app.hold_ok(product, 2).await.hold_id;
    tokio::time::sleep(PAST_TTL).await;
    let late = app.webhook("pay-late", hold, "paid").await;
    assert_eq!(late.status, 200);
    assert_eq!(late.body["state"], "refund_required");
    assert_eq!(late.body["order_id"], serde_json::Value::Null);
    app.order(hold).await.assert_error(409, "hold_expired");
    assert_eq!(app.available(product).await, 2, "the hold is not revived");
    let failed = app.webhook("fail-late", hold, "failed").await;
    assert_eq!(failed.status, 200);
    assert_eq!(failed.body["state"], "ignored");
    assert_audit(&db.url);
}
