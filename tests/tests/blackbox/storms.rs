//! Storms of every kind of request on one product at once: orders for live, expired and
//! already ordered holds, duplicated and double-charging payments for ordered holds, early
//! payments for holds not yet ordered, payments for holds that do not exist. However the
//! server batches concurrent requests into shared transactions, every answer and the final
//! state must be exactly what the same requests sent one at a time give.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use client::types::{HoldStatus, Order, OrderStatus, WebhookAnswer};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{
    ADMIN_TOKEN, Backend, Reply, TestApp, TestDb, TestWorker, assert_audit, bearer, eventually,
    on_both_backends, query_i64,
};

on_both_backends!(a_storm_of_orders_and_payments_answers_exactly_as_one_request_at_a_time);

/// The storm's product: enough stock for every hold, with room to spare.
const TOTAL_STOCK: i64 = 100;
const PRICE_CENTS: i64 = 250;
/// Parallel `POST /api/orders` per live hold, and per expired hold.
const ORDERS_PER_LIVE_HOLD: usize = 5;
const ORDERS_PER_EXPIRED_HOLD: usize = 3;
/// Parallel deliveries of one `paid` event per ordered hold, and per hold not yet ordered.
const DELIVERIES_PER_ORDERED_HOLD: usize = 4;
const DELIVERIES_PER_EARLY_HOLD: usize = 2;
/// The ordered holds (the first few) whose customer is also charged under other keys.
const DOUBLE_CHARGED: usize = 3;
const OTHER_KEYS: usize = 2;
/// A hold id no hold has.
const UNKNOWN_HOLD: i64 = 9_000_000;
/// Past the short hold TTL of 1 s, plus the cache's half second for other readers.
const PAST_TTL: Duration = Duration::from_millis(1700);
/// Bound for the worker to apply an early payment once its order exists (the SPEC's 2 s,
/// plus the worker's start).
const WORKER_WITHIN: Duration = Duration::from_secs(10);

/// A hold the test made: its id and units.
#[derive(Clone, Copy, Debug)]
struct Held {
    id: i64,
    qty: i64,
}

/// The holds of every kind, prepared one request at a time before the storm.
struct Scene {
    product: i64,
    /// Active and unordered: the storm orders them.
    live: Vec<Held>,
    /// Expired before the storm: the storm tries to order them.
    expired: Vec<Held>,
    /// Ordered before the storm, with their pending orders: the storm pays for them.
    ordered: Vec<(Held, i64)>,
    /// Active and unordered: the storm pays for them, and nobody orders them.
    paid_early: Vec<Held>,
}

impl Scene {
    /// Units that stay taken: everything but the expired holds.
    fn taken_units(&self) -> i64 {
        let ordered = self.ordered.iter().map(|(h, _)| h);
        self.live
            .iter()
            .chain(ordered)
            .chain(&self.paid_early)
            .map(|h| h.qty)
            .sum()
    }
}

/// A webhook answer exactly as sent: compared byte for byte, since a replay must repeat
/// the first answer, not merely an equivalent one (the SDK would decode and re-encode).
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    replayed: bool,
    bytes: Vec<u8>,
}

impl RawAnswer {
    /// The body as the SDK's answer type.
    #[track_caller]
    fn answer(&self) -> WebhookAnswer {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "not a webhook answer ({e}): {}",
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }
}

/// An unsigned `POST /api/payments/webhook`, answered as sent.
async fn webhook_raw(app: &TestApp, key: &str, hold: i64, status: &str) -> RawAnswer {
    let body = json!({ "idempotency_key": key, "hold_id": hold, "status": status });
    let resp = app
        .client
        .post(app.url("/api/payments/webhook"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let bytes = resp.bytes().await.expect("body read").to_vec();
    RawAnswer {
        status,
        replayed,
        bytes,
    }
}

/// The key every delivery of ordered hold `hold`'s one event carries.
fn same_key(hold: i64) -> String {
    format!("o{hold}-same")
}

/// The keys under which ordered hold `hold` is charged again (a double charge), if it is
/// one of the double-charged ones.
fn other_keys(hold: i64) -> Vec<String> {
    (0..OTHER_KEYS)
        .map(|i| format!("o{hold}-other-{i}"))
        .collect()
}

/// The key of the early payment of hold `hold`.
fn early_key(hold: i64) -> String {
    format!("n{hold}-same")
}

/// Makes the holds: the expired ones on an API started with a 1 s hold TTL, the others,
/// afterwards, on the API the storm hits, with the default TTL of minutes; returns that API
/// once the expired ones are due.
async fn prepare(db: &TestDb) -> (Scene, TestApp) {
    let short = TestApp::spawn(db, &[("HOLD_TTL_SECS", "1")]).await;
    let product = short.create_product(TOTAL_STOCK, PRICE_CENTS).await;
    let mut expired = Vec::new();
    for _ in 0..4 {
        let qty = 2;
        expired.push(Held {
            id: short.hold_ok(product, qty).await.hold_id,
            qty,
        });
    }
    let due = Instant::now() + PAST_TTL;
    // One API process at a time: SQLite is one file.
    drop(short);

    let app = TestApp::spawn(db, &[]).await;
    let mut live = Vec::new();
    for i in 0..8 {
        live.push(new_hold(&app, product, i).await);
    }
    let mut ordered = Vec::new();
    for i in 0..6 {
        let h = new_hold(&app, product, i).await;
        ordered.push((h, app.order_ok(h.id).await.id));
    }
    let mut paid_early = Vec::new();
    for i in 0..4 {
        paid_early.push(new_hold(&app, product, i).await);
    }
    tokio::time::sleep_until(due.into()).await;
    for h in &expired {
        assert_eq!(app.get_hold_ok(h.id).await.status, HoldStatus::Expired);
    }
    let scene = Scene {
        product,
        live,
        expired,
        ordered,
        paid_early,
    };
    (scene, app)
}

/// The `i`-th new hold of its kind on `product`: 1 or 2 units, alternately.
async fn new_hold(app: &TestApp, product: i64, i: usize) -> Held {
    let qty = (i % 2 + 1) as i64;
    Held {
        id: app.hold_ok(product, qty).await.hold_id,
        qty,
    }
}

/// Every answer of the storm, grouped as the requests were.
struct Storm {
    /// Per live hold, its parallel orders.
    live_orders: Vec<Vec<Reply>>,
    /// Per expired hold, its parallel orders.
    expired_orders: Vec<Vec<Reply>>,
    /// Per ordered hold, its payments: `(key, answer)`.
    payments: Vec<Vec<(String, RawAnswer)>>,
    /// Per hold paid early, its deliveries.
    early_payments: Vec<Vec<RawAnswer>>,
    /// Payments for a hold that does not exist.
    unknown: Vec<Reply>,
}

/// Fires every request of the storm at once and waits for all the answers.
async fn storm(app: &TestApp, scene: &Scene) -> Storm {
    let orders_of = |holds: &[Held], n: usize| {
        let ids: Vec<i64> = holds.iter().flat_map(|h| [h.id].repeat(n)).collect();
        join_all(ids.into_iter().map(|id| app.order(id)))
    };
    let payments: Vec<(usize, String, i64)> = scene
        .ordered
        .iter()
        .enumerate()
        .flat_map(|(i, (h, _))| {
            let mut keys = vec![same_key(h.id); DELIVERIES_PER_ORDERED_HOLD];
            if i < DOUBLE_CHARGED {
                keys.extend(other_keys(h.id));
            }
            keys.into_iter().map(move |key| (i, key, h.id))
        })
        .collect();
    let early: Vec<i64> = scene
        .paid_early
        .iter()
        .flat_map(|h| [h.id].repeat(DELIVERIES_PER_EARLY_HOLD))
        .collect();
    let (live, expired, paid, early_paid, unknown) = tokio::join!(
        orders_of(&scene.live, ORDERS_PER_LIVE_HOLD),
        orders_of(&scene.expired, ORDERS_PER_EXPIRED_HOLD),
        join_all(payments.iter().map(|(i, key, hold)| async move {
            (*i, key.clone(), webhook_raw(app, key, *hold, "paid").await)
        })),
        join_all(
            early
                .iter()
                .map(|&h| async move { webhook_raw(app, &early_key(h), h, "paid").await })
        ),
        join_all((0..2).map(|i| async move {
            app.webhook(&format!("ghost-{i}"), UNKNOWN_HOLD, "paid")
                .await
        })),
    );
    let mut by_hold: Vec<Vec<(String, RawAnswer)>> = scene.ordered.iter().map(|_| vec![]).collect();
    for (i, key, answer) in paid {
        by_hold[i].push((key, answer));
    }
    Storm {
        live_orders: chunked(live, ORDERS_PER_LIVE_HOLD),
        expired_orders: chunked(expired, ORDERS_PER_EXPIRED_HOLD),
        payments: by_hold,
        early_payments: chunked(early_paid, DELIVERIES_PER_EARLY_HOLD),
        unknown,
    }
}

/// `items` in consecutive groups of `n` (the answers of one hold's parallel requests).
fn chunked<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut groups = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        groups.push(items.by_ref().take(n).collect());
    }
    groups
}

async fn a_storm_of_orders_and_payments_answers_exactly_as_one_request_at_a_time(backend: Backend) {
    // Goal: concurrent orders and concurrent payments, whether each runs in a transaction
    // of its own or shares one with the others, answer and end exactly as if they had come
    // one at a time: one order per hold (one 201, the rest replays of it), no order for an
    // expired hold, one applied payment per order (a replay of it for every retry of its
    // key, a refund for every other key), an early payment recorded once and applied
    // when the order comes, nothing recorded for an unknown hold, and stock exact.
    // Method: on one product, prepared one at a time: 8 live holds, 4 expired ones (made
    // on an API with a 1 s hold TTL), 6 ordered ones with pending orders, 4 live ones to be
    // paid early. Then 92 requests at once: 5 orders per live hold, 3 per expired hold, 4
    // deliveries of one `paid` event per ordered hold plus 2 `paid` events under other keys
    // for 3 of them, 2 deliveries of one `paid` event per hold paid early, and 2 `paid`
    // events for an unknown hold. Afterwards, one request at a time: the stored answers,
    // the refunds list, a conflicting reuse of a key, and, with the worker running, the
    // orders of the early-paid holds.
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (scene, app) = prepare(&db).await;
    let free = TOTAL_STOCK - scene.taken_units();
    assert_eq!(app.available(scene.product).await, free);

    let answers = storm(&app, &scene).await;

    assert_live_holds_ordered_once(&app, &scene, &answers.live_orders).await;
    assert_expired_holds_never_ordered(&app, &scene, &answers.expired_orders).await;
    let refunds = assert_one_payment_applied_per_order(&app, &scene, &answers.payments).await;
    assert_early_payments_recorded_once(&app, &scene, &answers.early_payments).await;
    for r in &answers.unknown {
        r.assert_error(404, "hold_not_found");
    }
    let payments = scene.ordered.len() + DOUBLE_CHARGED * OTHER_KEYS + scene.paid_early.len();
    assert_eq!(
        query_i64(&db.url, "SELECT COUNT(*) FROM payments").await,
        payments as i64,
        "one payment per key, none for the unknown hold"
    );
    assert_eq!(
        query_i64(&db.url, "SELECT COUNT(*) FROM orders").await,
        (scene.live.len() + scene.ordered.len()) as i64,
        "one order per live or ordered hold, none for the others"
    );
    assert_eq!(app.available(scene.product).await, free);
    assert_audit(&db.url);

    assert_refunds_listed(&app, &refunds).await;
    // The same key with another event is refused, and changes nothing.
    let (first, order) = scene.ordered[0];
    let conflict = app.webhook(&same_key(first.id), first.id, "failed").await;
    conflict.assert_error(409, "idempotency_key_reused");
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Paid);

    assert_early_payments_applied_to_their_orders(&db, &app, &scene, &answers.early_payments).await;
    assert_eq!(app.available(scene.product).await, free);
    assert_refunds_listed(&app, &refunds).await;
    assert_audit(&db.url);
}

/// Per live hold: one 201 and replays (200, `Idempotent-Replayed: true`) of the same
/// pending order; the hold is ordered.
async fn assert_live_holds_ordered_once(app: &TestApp, scene: &Scene, answers: &[Vec<Reply>]) {
    assert_eq!(answers.len(), scene.live.len());
    for (h, replies) in scene.live.iter().zip(answers) {
        let statuses: Vec<(u16, bool)> = replies
            .iter()
            .map(|r| (r.status.as_u16(), r.replayed()))
            .collect();
        let created = statuses.iter().filter(|s| **s == (201, false)).count();
        let replays = statuses.iter().filter(|s| **s == (200, true)).count();
        assert_eq!(
            (created, replays),
            (1, ORDERS_PER_LIVE_HOLD - 1),
            "hold {}: {statuses:?}",
            h.id
        );
        let first = &replies[0].body;
        assert!(
            replies.iter().all(|r| r.body == *first),
            "hold {}: the replays repeat the order as created: {replies:?}",
            h.id
        );
        let order: Order = replies[0].json();
        assert_eq!(order.hold_id, h.id);
        assert_eq!(order.product_id, scene.product);
        assert_eq!(order.qty, h.qty);
        assert_eq!(order.total_cents, h.qty * PRICE_CENTS);
        assert_eq!(order.status, OrderStatus::Pending);
        assert_eq!(
            app.get_order_ok(order.id).await.status,
            OrderStatus::Pending
        );
        assert_eq!(app.get_hold_ok(h.id).await.status, HoldStatus::Ordered);
    }
}

/// Per expired hold: every order refused 409 `hold_expired`, and the hold stays expired.
async fn assert_expired_holds_never_ordered(app: &TestApp, scene: &Scene, answers: &[Vec<Reply>]) {
    assert_eq!(answers.len(), scene.expired.len());
    for (h, replies) in scene.expired.iter().zip(answers) {
        assert_eq!(replies.len(), ORDERS_PER_EXPIRED_HOLD);
        for r in replies {
            r.assert_error(409, "hold_expired");
        }
        assert_eq!(app.get_hold_ok(h.id).await.status, HoldStatus::Expired);
    }
}

/// Per ordered hold: each key's deliveries are one first answer and byte-identical
/// replays of it; across its keys exactly one payment is applied and every other is a
/// double charge to refund; the order is paid. Returns the refunds owed, by key: `(hold,
/// order, qty)`.
async fn assert_one_payment_applied_per_order(
    app: &TestApp,
    scene: &Scene,
    answers: &[Vec<(String, RawAnswer)>],
) -> BTreeMap<String, (i64, i64, i64)> {
    assert_eq!(answers.len(), scene.ordered.len());
    let mut refunds = BTreeMap::new();
    for (i, ((h, order), deliveries)) in scene.ordered.iter().zip(answers).enumerate() {
        let mut by_key: BTreeMap<&str, Vec<&RawAnswer>> = BTreeMap::new();
        for (key, answer) in deliveries {
            by_key.entry(key).or_default().push(answer);
        }
        let mut keys = vec![same_key(h.id)];
        if i < DOUBLE_CHARGED {
            keys.extend(other_keys(h.id));
        }
        assert_eq!(
            by_key.keys().copied().collect::<BTreeSet<_>>(),
            keys.iter().map(String::as_str).collect(),
        );
        let mut applied = 0;
        for (key, deliveries) in &by_key {
            let first = deliveries[0];
            assert_eq!(first.status, 200, "{key}: {first:?}");
            assert_eq!(
                deliveries.iter().filter(|a| !a.replayed).count(),
                1,
                "{key}: exactly one delivery is not a replay: {deliveries:?}"
            );
            assert!(
                deliveries
                    .iter()
                    .all(|a| a.status == first.status && a.bytes == first.bytes),
                "{key}: every delivery gets the same answer: {deliveries:?}"
            );
            let answer = first.answer();
            assert_eq!(answer.idempotency_key, *key);
            assert_eq!(answer.hold_id, h.id);
            assert_eq!(answer.order_id, Some(*order), "{key}");
            assert_eq!(answer.status, "paid", "{key}");
            match answer.state.as_str() {
                "applied" => applied += 1,
                "refund_required" => {
                    refunds.insert((*key).to_owned(), (h.id, *order, h.qty));
                }
                other => panic!("{key}: state {other}"),
            }
            // A later delivery, one at a time, repeats the answer the storm got.
            let later = webhook_raw(app, key, h.id, "paid").await;
            assert!(later.replayed, "{key}: {later:?}");
            assert_eq!((later.status, &later.bytes), (first.status, &first.bytes));
        }
        assert_eq!(applied, 1, "hold {}: exactly one payment is applied", h.id);
        assert_eq!(app.get_order_ok(*order).await.status, OrderStatus::Paid);
        assert_eq!(app.get_hold_ok(h.id).await.status, HoldStatus::Ordered);
    }
    refunds
}

/// Per hold paid early: both deliveries answered 202 `awaiting_order`, one a replay of
/// the other; the hold stays active and unordered.
async fn assert_early_payments_recorded_once(
    app: &TestApp,
    scene: &Scene,
    answers: &[Vec<RawAnswer>],
) {
    assert_eq!(answers.len(), scene.paid_early.len());
    for (h, deliveries) in scene.paid_early.iter().zip(answers) {
        assert_early_answers(h, deliveries);
        assert_eq!(app.get_hold_ok(h.id).await.status, HoldStatus::Active);
    }
}

/// Asserts the deliveries of hold `h`'s early payment: all 202 `awaiting_order`,
/// byte-identical, exactly one not a replay.
#[track_caller]
fn assert_early_answers(h: &Held, deliveries: &[RawAnswer]) {
    let first = &deliveries[0];
    assert!(
        deliveries
            .iter()
            .all(|a| a.status == 202 && a.bytes == first.bytes),
        "hold {}: {deliveries:?}",
        h.id
    );
    assert_eq!(
        deliveries.iter().filter(|a| !a.replayed).count(),
        1,
        "hold {}: {deliveries:?}",
        h.id
    );
    let answer = first.answer();
    assert_eq!(answer.idempotency_key, early_key(h.id));
    assert_eq!(answer.hold_id, h.id);
    assert_eq!(answer.order_id, None);
    assert_eq!(answer.status, "paid");
    assert_eq!(answer.state, "awaiting_order");
}

/// The refunds list holds exactly the double charges `expected`, by key: `(hold, order,
/// qty)`.
async fn assert_refunds_listed(app: &TestApp, expected: &BTreeMap<String, (i64, i64, i64)>) {
    let admin = bearer(ADMIN_TOKEN);
    let r = app
        .request(
            Method::GET,
            "/api/admin/refunds?limit=500",
            None,
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let listed: BTreeMap<String, Value> = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            let key = item["idempotency_key"].as_str().expect("key").to_owned();
            let summary = json!([
                item["hold_id"],
                item["order_id"],
                item["qty"],
                item["amount_cents"],
                item["reason"]
            ]);
            (key, summary)
        })
        .collect();
    let wanted: BTreeMap<String, Value> = expected
        .iter()
        .map(|(key, &(hold, order, qty))| {
            let summary = json!([hold, order, qty, qty * PRICE_CENTS, "double_charge"]);
            (key.clone(), summary)
        })
        .collect();
    assert_eq!(listed, wanted);
}

/// With the worker running, orders made now (in parallel) for the holds paid early are
/// created pending and become paid; the early payments still replay their 202, byte for
/// byte the storm's `answers`.
async fn assert_early_payments_applied_to_their_orders(
    db: &TestDb,
    app: &TestApp,
    scene: &Scene,
    answers: &[Vec<RawAnswer>],
) {
    let _worker = TestWorker::spawn(&db.url, &[]);
    let orders = join_all(scene.paid_early.iter().map(|h| app.order(h.id))).await;
    for ((h, r), deliveries) in scene.paid_early.iter().zip(&orders).zip(answers) {
        assert_eq!(
            (r.status.as_u16(), r.replayed()),
            (201, false),
            "{}",
            r.body
        );
        let order: Order = r.json();
        assert_eq!((order.hold_id, order.qty), (h.id, h.qty));
        let paid = eventually(WORKER_WITHIN, || async {
            app.get_order_ok(order.id).await.status == OrderStatus::Paid
        })
        .await;
        assert!(paid, "hold {}: the early payment was never applied", h.id);
        let again = webhook_raw(app, &early_key(h.id), h.id, "paid").await;
        assert!(again.replayed, "{again:?}");
        assert_eq!((again.status, &again.bytes), (202, &deliveries[0].bytes));
    }
}
