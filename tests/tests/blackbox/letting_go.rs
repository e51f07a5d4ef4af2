//! Letting go and the operator during a sale: a buyer releases a hold or cancels an
//! order, the operator restocks, edits and lists products and settles refunds, no paid
//! hold is left without its order, and a payment deadline holds with no worker running.
//!
//! The endpoints are called with raw JSON: the answers carry statuses (`released`) and
//! fields the tests assert as served.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{
    ADMIN_TOKEN, Backend, CUSTOMER_ENV, Reply, TestApp, TestWorker, assert_audit, bearer,
    customer_token, eventually, hold_id, on_both_backends, order_id, query_i64, rfc3339,
    rfc3339_millis, setup, sweep, unix_now,
};

on_both_backends!(
    a_released_hold_frees_its_units_at_once_and_answers_the_same_again,
    a_released_hold_cannot_be_ordered_and_a_late_payment_for_it_is_refunded,
    ordered_and_paid_holds_cannot_be_released,
    a_failed_payment_recorded_before_a_release_is_settled_ignored_by_it,
    releasing_an_expired_hold_answers_200_expired_and_returns_nothing_twice,
    only_the_owner_may_release_a_customers_hold,
    release_racing_order_for_one_hold_never_both_succeed,
    a_cancelled_order_frees_its_units_at_once_and_a_late_payment_is_refunded,
    paid_orders_cannot_be_cancelled,
    only_the_owner_may_cancel_a_customers_order,
    a_restock_during_a_hold_storm_is_sold_exactly_once,
    a_stock_reduction_counts_expired_holds_as_free_and_paid_ones_as_committed,
    patch_changes_only_the_fields_it_names_and_null_clears_a_setting,
    patch_refuses_bad_fields_strangers_and_unknown_products,
    a_new_price_applies_to_orders_made_after_the_change,
    sale_settings_changed_by_patch_apply_at_once,
    products_are_listed_in_id_order_page_by_page,
    a_payment_after_expiry_is_a_refund_listed_until_resolved,
    refunds_say_why_the_payment_could_not_be_honoured_oldest_first,
    a_paid_hold_without_an_order_gets_a_paid_order_from_the_running_worker,
    a_paid_hold_without_an_order_gets_a_paid_order_from_the_sweep,
    an_unpaid_order_past_its_deadline_is_cancelled_with_no_worker_running,
    metrics_count_releases_cancellations_and_restocks,
);

/// Bound for what the worker does after a hold's expiry (its job runs about 1 s after).
const WORKER_WITHIN: Duration = Duration::from_secs(10);

/// `method path` without a body, as the holder of `token` (anonymous for `None`).
async fn send_as(app: &TestApp, token: Option<&str>, method: Method, path: &str) -> Reply {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|b| ("authorization", b.as_str())).collect();
    app.request(method, path, None, &headers).await
}

/// `DELETE /api/holds/{hold}` as the holder of `token`.
async fn release(app: &TestApp, token: Option<&str>, hold: i64) -> Reply {
    send_as(app, token, Method::DELETE, &format!("/api/holds/{hold}")).await
}

/// `POST /api/orders/{order}/cancel` as the holder of `token`.
async fn cancel(app: &TestApp, token: Option<&str>, order: i64) -> Reply {
    let path = format!("/api/orders/{order}/cancel");
    send_as(app, token, Method::POST, &path).await
}

/// `method path` without a body, with the admin token.
async fn as_admin(app: &TestApp, method: Method, path: &str) -> Reply {
    send_as(app, Some(ADMIN_TOKEN), method, path).await
}

/// An anonymous hold of `qty` on `product`, asserting 201.
async fn new_hold(app: &TestApp, product: i64, qty: i64) -> i64 {
    hold_id(&app.hold_as(None, product, qty, None).await)
}

/// A pending order of an anonymous hold of `qty` on `product`: `(hold, order)`.
async fn new_order(app: &TestApp, product: i64, qty: i64) -> (i64, i64) {
    let hold = new_hold(app, product, qty).await;
    (hold, order_id(&app.order_as(None, hold).await))
}

/// `available_stock` of `product` as served.
async fn available(app: &TestApp, product: i64) -> i64 {
    app.product_json(product).await["available_stock"]
        .as_i64()
        .expect("available_stock")
}

/// The `status` of hold `hold` as served to an anonymous reader.
async fn hold_status(app: &TestApp, hold: i64) -> String {
    let r = app.get(&format!("/api/holds/{hold}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["status"].as_str().expect("status").to_owned()
}

/// The `status` of order `order` as served to an anonymous reader.
async fn order_status(app: &TestApp, order: i64) -> String {
    let r = app.get(&format!("/api/orders/{order}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["status"].as_str().expect("status").to_owned()
}

/// Asserts a webhook answer: 200 with `state`.
#[track_caller]
fn assert_webhook(r: &Reply, state: &str) {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], state, "{}", r.body);
}

/// Every unresolved refund on the first page of `GET /api/admin/refunds?limit=500`.
async fn refunds(app: &TestApp) -> Vec<Value> {
    let r = as_admin(app, Method::GET, "/api/admin/refunds?limit=500").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"].as_array().expect("items").clone()
}

/// The listed refund of payment `key`, if it is listed.
async fn listed_refund(app: &TestApp, key: &str) -> Option<Value> {
    refunds(app)
        .await
        .into_iter()
        .find(|r| r["idempotency_key"] == key)
}

/// The path of the page of one refund after the opaque `cursor`, which is escaped.
fn refunds_page_after(cursor: &str) -> String {
    let mut url = reqwest::Url::parse("http://host/api/admin/refunds").expect("a URL");
    url.query_pairs_mut()
        .append_pair("limit", "1")
        .append_pair("after", cursor);
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

/// `POST /api/admin/refunds/{key}/resolve` with the admin token.
async fn resolve(app: &TestApp, key: &str) -> Reply {
    let path = format!("/api/admin/refunds/{key}/resolve");
    as_admin(app, Method::POST, &path).await
}

/// Waits until hold `hold` is served as `expired` (its 1 s TTL passed).
async fn wait_until_expired(app: &TestApp, hold: i64) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            hold_status(app, hold).await == "expired"
        })
        .await,
        "hold {hold} never expired"
    );
}

async fn a_released_hold_frees_its_units_at_once_and_answers_the_same_again(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(5, 100).await;
    let hold = new_hold(&app, product, 3).await;
    let other = new_hold(&app, product, 2).await;
    assert_eq!(available(&app, product).await, 0);

    let released = release(&app, None, hold).await;
    assert_eq!(released.status, 200, "{}", released.body);
    assert_eq!(released.body["hold_id"], hold);
    assert_eq!(released.body["product_id"], product);
    assert_eq!(released.body["qty"], 3);
    assert_eq!(released.body["status"], "released");
    assert!(released.body["expires_at"].is_string(), "{}", released.body);
    assert_eq!(
        available(&app, product).await,
        3,
        "the units are back at once"
    );
    assert_eq!(hold_status(&app, hold).await, "released");

    let again = release(&app, None, hold).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.body, released.body,
        "releasing again answers the same"
    );
    assert_eq!(available(&app, product).await, 3, "returned exactly once");
    // The freed units sell at once; the other hold is untouched.
    new_hold(&app, product, 3).await;
    assert_eq!(hold_status(&app, other).await, "active");
    release(&app, None, 999_999)
        .await
        .assert_error(404, "hold_not_found");
    assert_eq!(available(&app, product).await, 0);
    assert_audit(&db.url);
}

async fn a_released_hold_cannot_be_ordered_and_a_late_payment_for_it_is_refunded(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(4, 100).await;
    let hold = new_hold(&app, product, 4).await;
    assert_eq!(release(&app, None, hold).await.status, 200);
    app.order_as(None, hold)
        .await
        .assert_error(409, "hold_released");
    assert_eq!(
        query_i64(&db.url, "SELECT COUNT(*) FROM orders").await,
        0,
        "no order was made"
    );
    let paid = app.webhook("late-paid", hold, "paid").await;
    assert_webhook(&paid, "refund_required");
    assert_eq!(paid.body["order_id"], Value::Null);
    assert_webhook(&app.webhook("late-failed", hold, "failed").await, "ignored");
    assert_eq!(hold_status(&app, hold).await, "released", "not revived");
    assert_eq!(available(&app, product).await, 4);
    app.order_as(None, hold)
        .await
        .assert_error(409, "hold_released");
    assert_audit(&db.url);
}

/// A `failed` recorded for a live hold waits for its order; the release settles it at
/// once: the hold never has an order, so it is ignored, and nothing is left to settle.
async fn a_failed_payment_recorded_before_a_release_is_settled_ignored_by_it(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(4, 100).await;
    let hold = new_hold(&app, product, 2).await;
    assert_eq!(
        app.webhook("early-failed", hold, "failed").await.status,
        202
    );
    assert_eq!(release(&app, None, hold).await.status, 200);
    let unsettled = "SELECT COUNT(*) FROM payments WHERE outcome IS NULL";
    assert_eq!(query_i64(&db.url, unsettled).await, 0);
    let ignored =
        "SELECT COUNT(*) FROM payments WHERE outcome = 'ignored' AND refund_reason IS NULL";
    assert_eq!(query_i64(&db.url, ignored).await, 1);
    assert!(
        refunds(&app).await.is_empty(),
        "a failed payment is no refund"
    );
    assert_eq!(available(&app, product).await, 4);
    assert_audit(&db.url);
}

async fn ordered_and_paid_holds_cannot_be_released(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let (ordered, order) = new_order(&app, product, 2).await;
    release(&app, None, ordered)
        .await
        .assert_error(409, "hold_ordered");
    assert_eq!(order_status(&app, order).await, "pending");
    assert_eq!(hold_status(&app, ordered).await, "ordered");

    let paid = new_hold(&app, product, 3).await;
    assert_eq!(app.webhook("paid-early", paid, "paid").await.status, 202);
    release(&app, None, paid)
        .await
        .assert_error(409, "hold_paid");
    assert_eq!(hold_status(&app, paid).await, "active");
    assert_eq!(available(&app, product).await, 5, "nothing came back");
    let paid_order = order_id(&app.order_as(None, paid).await);
    // The payment wins: the order it finally gets is paid.
    cancel(&app, None, paid_order)
        .await
        .assert_error(409, "order_paid");
    assert_audit(&db.url);
}

async fn releasing_an_expired_hold_answers_200_expired_and_returns_nothing_twice(backend: Backend) {
    let (db, app) = setup!(backend, &[("HOLD_TTL_SECS", "1")]);
    let product = app.create_product(3, 100).await;
    let hold = new_hold(&app, product, 3).await;
    wait_until_expired(&app, hold).await;
    let r = release(&app, None, hold).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "expired");
    assert_eq!(r.body["hold_id"], hold);
    assert_eq!(hold_status(&app, hold).await, "expired");
    assert_eq!(
        available(&app, product).await,
        3,
        "returned once, by expiry"
    );
    app.order_as(None, hold)
        .await
        .assert_error(409, "hold_expired");
    assert_audit(&db.url);
}

async fn only_the_owner_may_release_a_customers_hold(backend: Backend) {
    // Goal: another customer, an anonymous caller and an unknown id all get the same 404,
    // and none of them frees the owner's units; the owner, and anyone for an anonymous
    // hold, may release.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let alice = customer_token("alice");
    let bob = customer_token("bob");
    let product = app.create_product(5, 100).await;
    let hold = hold_id(&app.hold_as(Some(&alice), product, 2, None).await);
    for (who, caller) in [("bob", Some(bob.as_str())), ("anonymous", None)] {
        let r = release(&app, caller, hold).await;
        r.assert_error(404, "hold_not_found");
        assert_eq!(available(&app, product).await, 3, "{who} freed nothing");
    }
    release(&app, Some(&alice), 999_999)
        .await
        .assert_error(404, "hold_not_found");
    let own = release(&app, Some(&alice), hold).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["status"], "released");
    assert_eq!(available(&app, product).await, 5);
    // Even released, alice's hold stays invisible to bob.
    release(&app, Some(&bob), hold)
        .await
        .assert_error(404, "hold_not_found");

    let anonymous = new_hold(&app, product, 1).await;
    let by_bob = release(&app, Some(&bob), anonymous).await;
    assert_eq!(by_bob.status, 200, "{}", by_bob.body);
    assert_eq!(available(&app, product).await, 5);
    assert_audit(&db.url);
}

async fn release_racing_order_for_one_hold_never_both_succeed(backend: Backend) {
    // Goal: a buyer letting go of a hold while ordering it (two tabs) ends one way only:
    // released and unorderable, or ordered and unreleasable, with the stock adding up.
    // Method: 15 rounds, each a fresh hold of 2 whose DELETE /holds/{id} and
    // POST /orders {hold_id} are sent at once over two connections.
    let (db, app) = setup!(backend);
    let product = app.create_product(30, 100).await;
    let mut ordered = 0;
    for round in 0..15 {
        let hold = new_hold(&app, product, 2).await;
        let (released, order) = tokio::join!(release(&app, None, hold), app.order_as(None, hold));
        let outcome = (released.status.as_u16(), order.status.as_u16());
        match outcome {
            (200, 409) => {
                assert_eq!(released.body["status"], "released", "{}", released.body);
                order.assert_error(409, "hold_released");
                assert_eq!(hold_status(&app, hold).await, "released");
            }
            (409, 201) => {
                released.assert_error(409, "hold_ordered");
                assert_eq!(order.body["status"], "pending", "{}", order.body);
                assert_eq!(hold_status(&app, hold).await, "ordered");
                ordered += 1;
            }
            _ => panic!(
                "round {round}: release {} {}, order {} {}",
                released.status, released.body, order.status, order.body
            ),
        }
    }
    assert_eq!(
        query_i64(&db.url, "SELECT COUNT(*) FROM orders").await,
        ordered
    );
    assert_eq!(available(&app, product).await, 30 - 2 * ordered);
    assert_audit(&db.url);
}

async fn a_cancelled_order_frees_its_units_at_once_and_a_late_payment_is_refunded(
    backend: Backend,
) {
    let (db, app) = setup!(backend);
    let product = app.create_product(5, 100).await;
    let (hold, order) = new_order(&app, product, 5).await;
    assert_eq!(available(&app, product).await, 0);
    let cancelled = cancel(&app, None, order).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["id"], order);
    assert_eq!(cancelled.body["hold_id"], hold);
    assert_eq!(cancelled.body["qty"], 5);
    assert_eq!(cancelled.body["total_cents"], 500);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(
        available(&app, product).await,
        5,
        "the units are back at once"
    );
    assert_eq!(order_status(&app, order).await, "cancelled");

    let again = cancel(&app, None, order).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.body, cancelled.body,
        "cancelling again answers the same"
    );
    assert_eq!(available(&app, product).await, 5, "returned exactly once");

    let paid = app.webhook("after-cancel", hold, "paid").await;
    assert_webhook(&paid, "refund_required");
    assert_eq!(paid.body["order_id"], order);
    let failed = app.webhook("failed-after-cancel", hold, "failed").await;
    assert_webhook(&failed, "ignored");
    assert_eq!(failed.body["status"], "cancelled");
    assert_eq!(order_status(&app, order).await, "cancelled");
    cancel(&app, None, 999_999)
        .await
        .assert_error(404, "order_not_found");
    assert_eq!(available(&app, product).await, 5);
    assert_audit(&db.url);
}

async fn paid_orders_cannot_be_cancelled(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let (hold, order) = new_order(&app, product, 2).await;
    assert_webhook(&app.webhook("pay", hold, "paid").await, "applied");
    cancel(&app, None, order)
        .await
        .assert_error(409, "order_paid");
    assert_eq!(order_status(&app, order).await, "paid");

    // Paid before the order existed: the recorded payment wins over the cancel.
    let early = new_hold(&app, product, 3).await;
    assert_eq!(app.webhook("pay-early", early, "paid").await.status, 202);
    let early_order = order_id(&app.order_as(None, early).await);
    cancel(&app, None, early_order)
        .await
        .assert_error(409, "order_paid");
    assert_ne!(order_status(&app, early_order).await, "cancelled");
    assert_eq!(available(&app, product).await, 5, "nothing came back");
    assert_audit(&db.url);
}

async fn only_the_owner_may_cancel_a_customers_order(backend: Backend) {
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let alice = customer_token("alice");
    let bob = customer_token("bob");
    let product = app.create_product(5, 100).await;
    let hold = hold_id(&app.hold_as(Some(&alice), product, 2, None).await);
    let order = order_id(&app.order_as(Some(&alice), hold).await);
    for caller in [Some(bob.as_str()), None] {
        cancel(&app, caller, order)
            .await
            .assert_error(404, "order_not_found");
    }
    cancel(&app, Some(&alice), 999_999)
        .await
        .assert_error(404, "order_not_found");
    assert_eq!(
        available(&app, product).await,
        3,
        "nobody else cancelled it"
    );
    let own = cancel(&app, Some(&alice), order).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["status"], "cancelled");
    assert_eq!(available(&app, product).await, 5);
    assert_audit(&db.url);
}

async fn a_restock_during_a_hold_storm_is_sold_exactly_once(backend: Backend) {
    // Goal: units added while a crowd is buying are sold exactly once, unit for unit: what
    // the crowd was granted is exactly what left the stock, and nothing is lost or doubled.
    // Method: 60 units; a crowd of 300 qty-1 holds, each request its own task and
    // connection, arriving 3 ms apart, so that hold transactions commit all the time;
    // while units are still left, total_stock is raised to 120 in five steps of 12, one
    // after every 15 answers, each while the crowd's transactions take units. (A restock
    // that read `available` without the row lock sold 131 units of 120 here.)
    let (db, app) = setup!(backend);
    let app = Arc::new(app);
    let product = app.create_product(60, 100).await;
    let (sent, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tasks: Vec<_> = (0..300_u64)
        .map(|i| {
            let (app, sent, answered) = (app.clone(), sent.clone(), answered.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                sent.fetch_add(1, Ordering::SeqCst);
                let r = app.hold_as(None, product, 1, None).await;
                answered.fetch_add(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    for (step, total) in [72, 84, 96, 108, 120].into_iter().enumerate() {
        while answered.load(Ordering::SeqCst) < (step + 1) * 15 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let restocked = app
            .patch_product(product, &json!({ "total_stock": total }))
            .await;
        assert_eq!(restocked.status, 200, "{}", restocked.body);
        assert_eq!(restocked.body["total_stock"], total);
    }
    let after_restock = 300 - sent.load(Ordering::SeqCst);
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("hold task"));
    }
    let granted = replies.iter().filter(|r| r.status == 201).count() as i64;
    for r in replies.iter().filter(|r| r.status != 201) {
        r.assert_error(409, "insufficient_stock");
    }
    let served = app.product_json(product).await;
    let (total, left) = (
        served["total_stock"].as_i64().expect("total_stock"),
        served["available_stock"].as_i64().expect("available_stock"),
    );
    assert_eq!(total, 120);
    assert_eq!(granted, total - left, "units granted = units taken");
    assert_eq!(left, 120 - granted);
    // Every request sent after the restock was answered sees it: while units last, each
    // of them gets one, on top of the 60 the crowd got at least before.
    assert!(after_restock > 0, "the restock did not land mid-storm");
    assert!(
        granted >= (60 + after_restock as i64).min(120),
        "granted {granted} with {after_restock} requests after the restock"
    );
    assert_audit(&db.url);

    // Units held or sold cannot be taken back: one more than is free is refused whole.
    let too_many = app
        .patch_product(product, &json!({"total_stock": total - left - 1}))
        .await;
    too_many.assert_error(409, "stock_committed");
    let message = too_many.body["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("at most {left} unit(s) can be removed")),
        "{message}"
    );
    assert_eq!(app.product_json(product).await, served, "nothing changed");
    // Exactly what is free may go.
    let emptied = app
        .patch_product(product, &json!({"total_stock": total - left}))
        .await;
    assert_eq!(emptied.status, 200, "{}", emptied.body);
    assert_eq!(emptied.body["available_stock"], 0);
    assert_audit(&db.url);
}

async fn a_stock_reduction_counts_expired_holds_as_free_and_paid_ones_as_committed(
    backend: Backend,
) {
    // Nothing tidied the expired hold: the reduction itself must see its units as free.
    let (db, app) = setup!(backend, &[("HOLD_TTL_SECS", "1")]);
    let product = app.create_product(6, 100).await;
    let paid = new_hold(&app, product, 2).await;
    assert_eq!(app.webhook("pinned", paid, "paid").await.status, 202);
    let expiring = new_hold(&app, product, 3).await;
    wait_until_expired(&app, expiring).await;
    let r = app.patch_product(product, &json!({"total_stock": 1})).await;
    r.assert_error(409, "stock_committed");
    let message = r.body["message"].as_str().unwrap_or("");
    assert!(
        message.contains("at most 4 unit(s) can be removed"),
        "{message}"
    );
    let r = app.patch_product(product, &json!({"total_stock": 2})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["available_stock"], 0);
    assert_eq!(available(&app, product).await, 0);
    assert_audit(&db.url);
}

async fn patch_changes_only_the_fields_it_names_and_null_clears_a_setting(backend: Backend) {
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let start = unix_now() - 3600;
    let end = unix_now() + 3600;
    let product = app
        .create_sale_product(json!({
            "name": "Drop", "price_cents": 700, "total_stock": 10,
            "sale_starts_at": rfc3339(start), "sale_ends_at": rfc3339(end),
            "max_per_customer": 4,
        }))
        .await;
    let alice = customer_token("alice");
    hold_id(&app.hold_as(Some(&alice), product, 3, None).await);
    let before = app.product_json(product).await;

    let same = app.patch_product(product, &json!({})).await;
    assert_eq!(same.status, 200, "{}", same.body);
    assert_eq!(same.body, before, "{{}} changes nothing");

    let renamed = app
        .patch_product(product, &json!({"name": "Drop II"}))
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    let mut want = before.clone();
    want["name"] = json!("Drop II");
    assert_eq!(renamed.body, want, "only the name changed");
    assert_eq!(app.product_json(product).await, want);

    let restocked = app
        .patch_product(product, &json!({"total_stock": 15}))
        .await;
    assert_eq!(restocked.status, 200, "{}", restocked.body);
    assert_eq!(restocked.body["total_stock"], 15);
    assert_eq!(restocked.body["available_stock"], 12, "7 free + 5 added");

    let cleared = app
        .patch_product(
            product,
            &json!({"sale_ends_at": null, "max_per_customer": null}),
        )
        .await;
    assert_eq!(cleared.status, 200, "{}", cleared.body);
    assert_eq!(cleared.body["sale_ends_at"], Value::Null);
    assert_eq!(cleared.body["max_per_customer"], Value::Null);
    assert_eq!(
        cleared.body["sale_starts_at"], before["sale_starts_at"],
        "an absent setting is kept"
    );
    assert_eq!(cleared.body["name"], "Drop II");
    assert_eq!(cleared.body["price_cents"], 700);
    assert_eq!(app.product_json(product).await, cleared.body);
    // The limit is gone: an anonymous shopper may hold again.
    hold_id(&app.hold_as(None, product, 1, None).await);
    assert_audit(&db.url);
}

async fn patch_refuses_bad_fields_strangers_and_unknown_products(backend: Backend) {
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let start = unix_now() + 3600;
    let product = app
        .create_sale_product(json!({"sale_starts_at": rfc3339(start)}))
        .await;
    let before = app.product_json(product).await;
    let cases = [
        (json!({"name": null}), "name"),
        (json!({"price_cents": null}), "price_cents"),
        (json!({"total_stock": null}), "total_stock"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"price_cents": -1}), "price_cents"),
        (json!({"price_cents": "5"}), "price_cents"),
        (json!({"total_stock": -1}), "total_stock"),
        (json!({"total_stock": 1_000_000_000_001_i64}), "total_stock"),
        (json!({"max_per_customer": 0}), "max_per_customer"),
        (json!({"max_per_customer": 1_000_001}), "max_per_customer"),
        (json!({"sale_starts_at": "tomorrow"}), "sale_starts_at"),
        // The end must come after the start it keeps.
        (json!({"sale_ends_at": rfc3339(start - 1)}), "sale_ends_at"),
        (
            json!({"sale_starts_at": rfc3339(start), "sale_ends_at": rfc3339(start)}),
            "sale_ends_at",
        ),
    ];
    for (body, field) in cases {
        let r = app.patch_product(product, &body).await;
        r.assert_error(422, "validation_error");
        let message = r.body["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{body}: names {field}: {message}");
    }
    assert_eq!(app.product_json(product).await, before, "nothing changed");

    let body = json!({"price_cents": 1});
    let path = format!("/api/admin/products/{product}");
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        app.request(Method::PATCH, &path, Some(&body), &headers)
            .await
            .assert_error(401, "unauthorized");
    }
    app.patch_product(999_999, &body)
        .await
        .assert_error(404, "product_not_found");
    assert_eq!(app.product_json(product).await, before, "nothing changed");

    // A server that cannot tell customers apart cannot promise a limit per customer.
    let keyless = TestApp::spawn(&db, &[]).await;
    let r = keyless
        .patch_product(product, &json!({"max_per_customer": 2}))
        .await;
    r.assert_error(422, "validation_error");
    assert_eq!(app.product_json(product).await, before, "nothing changed");
}

async fn a_new_price_applies_to_orders_made_after_the_change(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let (_, before) = new_order(&app, product, 2).await;
    let repriced = app
        .patch_product(product, &json!({"price_cents": 250}))
        .await;
    assert_eq!(repriced.status, 200, "{}", repriced.body);
    assert_eq!(repriced.body["price_cents"], 250);
    let hold = new_hold(&app, product, 2).await;
    let after = app.order_as(None, hold).await;
    assert_eq!(after.status, 201, "{}", after.body);
    assert_eq!(after.body["total_cents"], 500, "2 x the new price");
    let old = app.get(&format!("/api/orders/{before}")).await;
    assert_eq!(
        old.body["total_cents"], 200,
        "an earlier order keeps its price"
    );
    assert_audit(&db.url);
}

async fn sale_settings_changed_by_patch_apply_at_once(backend: Backend) {
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app.create_product(10, 100).await;
    new_hold(&app, product, 1).await;

    let later = app
        .patch_product(
            product,
            &json!({"sale_starts_at": rfc3339(unix_now() + 3600)}),
        )
        .await;
    assert_eq!(later.status, 200, "{}", later.body);
    assert_eq!(later.body["sale_state"], "upcoming");
    app.hold_as(None, product, 1, None)
        .await
        .assert_error(409, "sale_not_started");

    let ended = app
        .patch_product(
            product,
            &json!({"sale_starts_at": null, "sale_ends_at": rfc3339(unix_now() - 60)}),
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.body["sale_starts_at"], Value::Null);
    app.hold_as(None, product, 1, None)
        .await
        .assert_error(409, "sale_ended");

    let limited = app
        .patch_product(
            product,
            &json!({"sale_ends_at": null, "max_per_customer": 1}),
        )
        .await;
    assert_eq!(limited.status, 200, "{}", limited.body);
    assert_eq!(limited.body["sale_state"], "live");
    app.hold_as(None, product, 1, None)
        .await
        .assert_error(401, "customer_token_required");
    let alice = customer_token("alice");
    hold_id(&app.hold_as(Some(&alice), product, 1, None).await);
    app.hold_as(Some(&alice), product, 1, None)
        .await
        .assert_error(409, "customer_limit_reached");

    assert_eq!(
        app.patch_product(product, &json!({"max_per_customer": null}))
            .await
            .status,
        200
    );
    new_hold(&app, product, 1).await;
    assert_eq!(available(&app, product).await, 7);
    assert_audit(&db.url);
}

async fn products_are_listed_in_id_order_page_by_page(backend: Backend) {
    let (_db, app) = setup!(backend);
    let mut ids = Vec::new();
    for stock in 1..=5 {
        ids.push(app.create_product(stock, 100).await);
    }
    let page = |query: String| {
        let app = &app;
        async move {
            let r = app.get(&format!("/api/products{query}")).await;
            assert_eq!(r.status, 200, "{query}: {}", r.body);
            let items: Vec<i64> = r.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|p| p["id"].as_i64().expect("id"))
                .collect();
            (items, r.body["next_after"].clone(), r.body)
        }
    };
    let (first, next, body) = page("?limit=2".to_owned()).await;
    assert_eq!(first, ids[..2]);
    assert_eq!(next, ids[1]);
    assert_eq!(
        body["items"][0],
        app.product_json(ids[0]).await,
        "items are products as GET /products/{{id}} serves them"
    );
    let (second, next, _) = page(format!("?after={}&limit=2", ids[1])).await;
    assert_eq!(second, ids[2..4]);
    assert_eq!(next, ids[3]);
    let (last, next, _) = page(format!("?after={}&limit=2", ids[3])).await;
    assert_eq!(last, ids[4..]);
    assert_eq!(next, Value::Null, "the last page");

    let (all, next, _) = page(String::new()).await;
    assert_eq!(all, ids, "defaults: from the start, up to 20");
    assert_eq!(next, Value::Null);
    let (full, next, _) = page("?limit=5".to_owned()).await;
    assert_eq!(full, ids);
    assert_eq!(
        next,
        Value::Null,
        "a full page with nothing after it is the last"
    );
    let (none, next, _) = page(format!("?after={}", ids[4])).await;
    assert!(none.is_empty());
    assert_eq!(next, Value::Null);
    assert_eq!(page("?limit=100".to_owned()).await.0, ids);

    for bad in ["?limit=0", "?limit=101", "?after=-1"] {
        app.get(&format!("/api/products{bad}"))
            .await
            .assert_error(422, "validation_error");
    }
}

async fn a_payment_after_expiry_is_a_refund_listed_until_resolved(backend: Backend) {
    let (db, app) = setup!(backend, &[("HOLD_TTL_SECS", "1")]);
    let product = app.create_product(5, 300).await;
    let hold = new_hold(&app, product, 2).await;
    wait_until_expired(&app, hold).await;
    assert_webhook(
        &app.webhook("late-pay", hold, "paid").await,
        "refund_required",
    );

    let refund = listed_refund(&app, "late-pay")
        .await
        .expect("the refund is listed");
    assert_eq!(refund["hold_id"], hold);
    assert_eq!(refund["order_id"], Value::Null);
    assert_eq!(refund["product_id"], product);
    assert_eq!(refund["qty"], 2);
    assert_eq!(refund["amount_cents"], 600, "qty x price");
    assert_eq!(refund["reason"], "hold_expired");
    assert_eq!(refund["resolved_at"], Value::Null);
    let recorded = refund["recorded_at"].as_str().unwrap_or("");
    assert!(rfc3339_millis(recorded).is_some(), "{refund}");

    let resolved = resolve(&app, "late-pay").await;
    assert_eq!(resolved.status, 200, "{}", resolved.body);
    assert_eq!(resolved.body["idempotency_key"], "late-pay");
    assert_eq!(resolved.body["amount_cents"], 600);
    let resolved_at = resolved.body["resolved_at"].as_str().unwrap_or("");
    assert!(rfc3339_millis(resolved_at).is_some(), "{}", resolved.body);
    let again = resolve(&app, "late-pay").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["resolved_at"], resolved.body["resolved_at"]);
    assert!(
        listed_refund(&app, "late-pay").await.is_none(),
        "a resolved refund leaves the list"
    );

    resolve(&app, "no-such-key")
        .await
        .assert_error(404, "refund_not_found");
    // A payment that was applied is no refund.
    let (paid_hold, _) = new_order(&app, product, 1).await;
    assert_webhook(&app.webhook("applied", paid_hold, "paid").await, "applied");
    resolve(&app, "applied")
        .await
        .assert_error(404, "refund_not_found");

    for (method, path) in [
        (Method::GET, "/api/admin/refunds"),
        (Method::POST, "/api/admin/refunds/late-pay/resolve"),
    ] {
        app.request(method.clone(), path, None, &[])
            .await
            .assert_error(401, "unauthorized");
        send_as(&app, Some("wrong"), method, path)
            .await
            .assert_error(401, "unauthorized");
    }
    assert_audit(&db.url);
}

async fn refunds_say_why_the_payment_could_not_be_honoured_oldest_first(backend: Backend) {
    let (db, app) = setup!(backend);
    let product = app.create_product(20, 150).await;

    let released = new_hold(&app, product, 3).await;
    assert_eq!(release(&app, None, released).await.status, 200);
    let r = app.webhook("r-released", released, "paid").await;
    assert_webhook(&r, "refund_required");

    let (cancelled_hold, cancelled) = new_order(&app, product, 2).await;
    assert_eq!(cancel(&app, None, cancelled).await.status, 200);
    let r = app.webhook("r-cancelled", cancelled_hold, "paid").await;
    assert_webhook(&r, "refund_required");

    let (twice_hold, twice) = new_order(&app, product, 4).await;
    assert_webhook(&app.webhook("r-first", twice_hold, "paid").await, "applied");
    let r = app.webhook("r-double", twice_hold, "paid").await;
    assert_webhook(&r, "refund_required");

    let listed = refunds(&app).await;
    let summary: Vec<(Value, Value, Value, Value)> = listed
        .iter()
        .map(|r| {
            (
                r["idempotency_key"].clone(),
                r["reason"].clone(),
                r["order_id"].clone(),
                r["amount_cents"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                json!("r-released"),
                json!("hold_released"),
                Value::Null,
                json!(450)
            ),
            (
                json!("r-cancelled"),
                json!("order_cancelled"),
                json!(cancelled),
                json!(300)
            ),
            (
                json!("r-double"),
                json!("double_charge"),
                json!(twice),
                json!(600)
            ),
        ],
        "oldest first, each with its reason and amount"
    );

    // One at a time, the cursor walks the same list.
    let mut walked = Vec::new();
    let mut path = "/api/admin/refunds?limit=1".to_owned();
    for _ in 0..10 {
        let r = as_admin(&app, Method::GET, &path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        walked.extend(r.body["items"].as_array().expect("items").iter().cloned());
        match r.body["next_after"].as_str() {
            Some(cursor) => path = refunds_page_after(cursor),
            None => break,
        }
    }
    assert_eq!(walked, listed);

    let out = sweep(&db.url, &[]);
    for reason in ["hold_released", "order_cancelled", "double_charge"] {
        assert!(
            out.contains(&format!("reason={reason}")),
            "{reason}:\n{out}"
        );
    }
    assert_eq!(resolve(&app, "r-released").await.status, 200);
    assert_eq!(resolve(&app, "r-released").await.status, 200);
    let out = sweep(&db.url, &[]);
    assert!(!out.contains("reason=hold_released"), "resolved:\n{out}");
    assert!(out.contains("reason=double_charge"), "{out}");
    let series = r#"flashsale_refunds_total{event="resolved"}"#;
    assert_eq!(app.metric(series).await, 1.0, "the first resolve counts");

    for bad in ["?limit=0", "?limit=501", "?after=not-a-cursor"] {
        as_admin(&app, Method::GET, &format!("/api/admin/refunds{bad}"))
            .await
            .assert_error(422, "validation_error");
    }
    assert_audit(&db.url);
}

async fn a_paid_hold_without_an_order_gets_a_paid_order_from_the_running_worker(backend: Backend) {
    // Goal: a customer who paid but never ordered is not left behind: the worker makes
    // the paid order once the hold would have expired, and the units stay sold.
    let env = [("HOLD_TTL_SECS", "2")];
    let (db, app) = setup!(backend, &env);
    let _worker = TestWorker::spawn(&db.url, &env);
    let product = app.create_product(5, 100).await;
    let hold = new_hold(&app, product, 3).await;
    assert_eq!(app.webhook("paid-only", hold, "paid").await.status, 202);
    assert!(
        eventually(WORKER_WITHIN, || async {
            hold_status(&app, hold).await == "ordered"
        })
        .await,
        "no order was made for the paid hold"
    );
    assert_paid_order_replayed(&app, hold, product, 2).await;
    assert_audit(&db.url);
}

async fn a_paid_hold_without_an_order_gets_a_paid_order_from_the_sweep(backend: Backend) {
    let env = [("HOLD_TTL_SECS", "2")];
    let (db, app) = setup!(backend, &env);
    let product = app.create_product(5, 100).await;
    let hold = new_hold(&app, product, 3).await;
    assert_eq!(app.webhook("paid-only", hold, "paid").await.status, 202);
    // While the hold lives, the customer may still order it themselves.
    sweep(&db.url, &env);
    assert_eq!(hold_status(&app, hold).await, "active");
    let hold_body = app.get(&format!("/api/holds/{hold}")).await.body;
    let expires_at = rfc3339_millis(hold_body["expires_at"].as_str().unwrap_or(""))
        .unwrap_or_else(|| panic!("{hold_body}"));
    // No worker runs: nothing to poll until the sweep, which must come after the expiry
    // (with the second of grace the worker's own job gets).
    let wait_ms = expires_at + 1500 - now_millis();
    tokio::time::sleep(Duration::from_millis(wait_ms.max(0) as u64)).await;
    sweep(&db.url, &env);
    assert_eq!(hold_status(&app, hold).await, "ordered");
    assert_paid_order_replayed(&app, hold, product, 2).await;
    sweep(&db.url, &env);
    assert_eq!(
        query_i64(&db.url, "SELECT COUNT(*) FROM orders").await,
        1,
        "one order, however often the sweep runs"
    );
    assert_audit(&db.url);
}

/// Now in Unix milliseconds.
fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Asserts that `POST /orders {hold}` replays a paid order and that `product` still has
/// only `left` units free.
async fn assert_paid_order_replayed(app: &TestApp, hold: i64, product: i64, left: i64) {
    let r = app.order_as(None, hold).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.replayed(), "the worker's order is replayed");
    assert_eq!(r.body["status"], "paid", "{}", r.body);
    assert_eq!(r.body["hold_id"], hold);
    let order = r.body["id"].as_i64().expect("order id");
    assert_eq!(order_status(app, order).await, "paid");
    assert_eq!(available(app, product).await, left, "the units stay sold");
}

async fn an_unpaid_order_past_its_deadline_is_cancelled_with_no_worker_running(backend: Backend) {
    // Goal: the payment deadline is a rule, not a job: with no worker, an overdue unpaid
    // order reads as cancelled, its late payment is refunded, and its units sell again;
    // an order whose payment came early never lapses.
    let env = [("ORDER_PAYMENT_TTL_SECS", "1")];
    let (db, app) = setup!(backend, &env);
    let paid_product = app.create_product(2, 100).await;
    let paid_hold = new_hold(&app, paid_product, 2).await;
    assert_eq!(app.webhook("early", paid_hold, "paid").await.status, 202);
    let paid_order = order_id(&app.order_as(None, paid_hold).await);

    let product = app.create_product(3, 100).await;
    let (hold, order) = new_order(&app, product, 3).await;
    app.hold_as(None, product, 1, None)
        .await
        .assert_error(409, "insufficient_stock");
    assert!(
        eventually(Duration::from_secs(5), || async {
            available(&app, product).await == 3
        })
        .await,
        "the overdue order's units are never shown free"
    );
    // Nothing has tidied the order: the hold request itself reclaims its units.
    hold_id(&app.hold_as(None, product, 3, None).await);
    assert_eq!(order_status(&app, order).await, "cancelled");
    assert_eq!(available(&app, product).await, 0, "reclaimed exactly once");
    let late = app.webhook("late", hold, "paid").await;
    assert_webhook(&late, "refund_required");
    assert_eq!(late.body["order_id"], order);
    assert_webhook(&app.webhook("late-failed", hold, "failed").await, "ignored");
    let r = cancel(&app, None, order).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(available(&app, product).await, 0, "still reclaimed once");
    let refund = listed_refund(&app, "late").await.expect("listed");
    assert_eq!(refund["reason"], "order_cancelled");

    // Older than the deadline too, but paid early: it stands.
    assert_ne!(order_status(&app, paid_order).await, "cancelled");
    cancel(&app, None, paid_order)
        .await
        .assert_error(409, "order_paid");
    app.hold_as(None, paid_product, 1, None)
        .await
        .assert_error(409, "insufficient_stock");
    assert_audit(&db.url);
}

async fn metrics_count_releases_cancellations_and_restocks(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let hold = new_hold(&app, product, 1).await;
    assert_eq!(release(&app, None, hold).await.status, 200);
    let (_, order) = new_order(&app, product, 1).await;
    assert_eq!(cancel(&app, None, order).await.status, 200);
    assert_eq!(
        app.patch_product(product, &json!({"total_stock": 12}))
            .await
            .status,
        200
    );
    assert_eq!(
        app.patch_product(product, &json!({"total_stock": 11}))
            .await
            .status,
        200
    );
    for (series, want) in [
        (r#"flashsale_holds_total{outcome="released"}"#, 1.0),
        (
            r#"flashsale_order_events_total{event="cancelled_by_buyer"}"#,
            1.0,
        ),
        (r#"flashsale_order_events_total{event="cancelled"}"#, 1.0),
        (r#"flashsale_restocks_total{direction="up"}"#, 1.0),
        (r#"flashsale_restocks_total{direction="down"}"#, 1.0),
    ] {
        assert_eq!(app.metric(series).await, want, "{series}");
    }
}
