//! A database made by a previous version, upgraded by starting this one: its data kept,
//! its holds' idempotency keys now scoped per customer, and its refunds given reasons.

use migration::{Migrator, MigratorTrait};
use serde_json::json;
use testkit::{
    ADMIN_TOKEN, Backend, CUSTOMER_ENV, TestApp, TestDb, assert_audit, bearer, customer_token,
    execute, on_both_backends, query_i64,
};

on_both_backends!(
    a_database_of_the_previous_version_keeps_its_data_when_upgraded,
    refunds_of_the_previous_version_get_their_reason_and_amount_when_upgraded,
);

async fn a_database_of_the_previous_version_keeps_its_data_when_upgraded(backend: Backend) {
    // Goal: the sales migration (which rebuilds `holds` on SQLite) keeps every row and
    // every reference, and scopes the old keys to anonymous callers.
    // Method: only the first migration applied; a product, a keyed hold, an ordered hold
    // with its order and a payment written as the previous version stored them; then the
    // API started on it, and the data read back through it and checked in the database.
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let conn = sea_orm::Database::connect(&db.url).await.expect("connect");
    Migrator::up(&conn, Some(1))
        .await
        .expect("the first migration");
    conn.close().await.expect("close");
    let far = 4_000_000_000_000_i64;
    for sql in [
        "INSERT INTO products (name, price_cents, total_stock, available, created_at_ms) \
         VALUES ('Old drop', 500, 10, 7, 1)"
            .to_owned(),
        format!(
            "INSERT INTO holds (product_id, qty, status, expires_at_ms, idempotency_key, \
               request_hash, created_at_ms) VALUES (1, 1, 'active', {far}, 'old-key', 'x', 1)"
        ),
        "INSERT INTO holds (product_id, qty, status, expires_at_ms, created_at_ms) \
         VALUES (1, 2, 'ordered', 2, 1)"
            .to_owned(),
        "INSERT INTO orders (hold_id, product_id, qty, total_cents, status, created_at_ms, \
           updated_at_ms) VALUES (2, 1, 2, 1000, 'paid', 1, 1)"
            .to_owned(),
        "INSERT INTO payments (idempotency_key, hold_id, status, request_hash, \
           response_status, response_body, outcome, order_id, applied_at_ms, created_at_ms) \
         VALUES ('evt-1', 2, 'paid', 'y', 200, '{}', 'applied', 1, 1, 1)"
            .to_owned(),
    ] {
        execute(&db.url, &sql).await;
    }
    let app = TestApp::spawn(&db, &CUSTOMER_ENV).await;
    let hold = app.get("/api/holds/1").await;
    assert_eq!(hold.status, 200, "{:?}", hold.body);
    assert_eq!(hold.body["status"], "active");
    let order = app.get("/api/orders/1").await;
    assert_eq!(
        (order.status.as_u16(), order.body["status"].clone()),
        (200, json!("paid"))
    );
    // The old key is an anonymous caller's: another request with it is refused...
    let anonymous = app.hold_as(None, 1, 3, Some("old-key")).await;
    anonymous.assert_error(409, "idempotency_key_reused");
    // ...while a customer's scope is a new one.
    let alice = app
        .hold_as(Some(&customer_token("alice")), 1, 3, Some("old-key"))
        .await;
    assert_eq!(alice.status, 201, "{:?}", alice.body);
    assert!(
        alice.body["hold_id"].as_i64().expect("an id") > 2,
        "ids go on"
    );
    assert_eq!(query_i64(&db.url, "SELECT COUNT(*) FROM holds").await, 3);
    // The references into the rebuilt table still hold.
    let orphan = "SELECT COUNT(*) FROM orders o LEFT JOIN holds h ON h.id = o.hold_id \
                  WHERE h.id IS NULL";
    assert_eq!(query_i64(&db.url, orphan).await, 0);
    assert_audit(&db.url);
}

/// Refunds recorded before refunds had reasons get theirs from the rows they were decided
/// on, with their amounts, when the database is upgraded.
async fn refunds_of_the_previous_version_get_their_reason_and_amount_when_upgraded(
    backend: Backend,
) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let conn = sea_orm::Database::connect(&db.url).await.expect("connect");
    Migrator::up(&conn, Some(2))
        .await
        .expect("the sales migration");
    conn.close().await.expect("close");
    let far = 4_000_000_000_000_i64;
    // Holds 1 to 4: expired, ordered and cancelled, ordered and paid, paid without an order.
    let holds = [
        ("expired", 1, "NULL"),
        ("ordered", 2, "NULL"),
        ("ordered", 3, "NULL"),
        ("active", 4, "5"),
    ];
    let mut statements = vec![
        "INSERT INTO products (name, price_cents, total_stock, available, created_at_ms) \
         VALUES ('Old drop', 500, 20, 13, 1)"
            .to_owned(),
    ];
    for (status, qty, paid_at) in holds {
        statements.push(format!(
            "INSERT INTO holds (product_id, qty, status, expires_at_ms, paid_at_ms, \
               created_at_ms) VALUES (1, {qty}, '{status}', {far}, {paid_at}, 1)"
        ));
    }
    statements.push(
        "INSERT INTO orders (hold_id, product_id, qty, total_cents, status, created_at_ms, \
           updated_at_ms) VALUES (2, 1, 2, 1000, 'cancelled', 1, 1), \
           (3, 1, 3, 1500, 'paid', 1, 1)"
            .to_owned(),
    );
    // (key, hold, order, outcome)
    let payments = [
        ("late", 1, "NULL", "refund_required"),
        ("after-cancel", 2, "1", "refund_required"),
        ("first", 3, "2", "applied"),
        ("second", 3, "2", "refund_required"),
        ("pin", 4, "NULL", "NULL"),
        ("pin-again", 4, "NULL", "refund_required"),
    ];
    for (i, (key, hold, order, outcome)) in payments.into_iter().enumerate() {
        let outcome = if outcome == "NULL" {
            outcome.to_owned()
        } else {
            format!("'{outcome}'")
        };
        statements.push(format!(
            "INSERT INTO payments (idempotency_key, hold_id, status, request_hash, \
               response_status, response_body, outcome, order_id, applied_at_ms, \
               created_at_ms) VALUES ('{key}', {hold}, 'paid', 'h', 200, '{{}}', {outcome}, \
               {order}, {i}, {i})"
        ));
    }
    for sql in &statements {
        execute(&db.url, sql).await;
    }
    let app = TestApp::spawn(&db, &[]).await;
    let refunds = app
        .request(
            reqwest::Method::GET,
            "/api/admin/refunds",
            None,
            &[("Authorization", &bearer(ADMIN_TOKEN))],
        )
        .await;
    assert_eq!(refunds.status, 200, "{}", refunds.body);
    let found: Vec<(String, String, i64)> = refunds.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            let text = |f: &str| r[f].as_str().expect("text").to_owned();
            let amount = r["amount_cents"].as_i64().expect("amount");
            (text("idempotency_key"), text("reason"), amount)
        })
        .collect();
    let expected = [
        ("late", "hold_expired", 500),
        ("after-cancel", "order_cancelled", 1000),
        ("second", "double_charge", 1500),
        ("pin-again", "double_charge", 2000),
    ]
    .map(|(k, r, a)| (k.to_owned(), r.to_owned(), a));
    assert_eq!(found, expected);
    assert_audit(&db.url);
}
