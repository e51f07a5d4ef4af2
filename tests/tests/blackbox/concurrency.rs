//! Real parallel HTTP requests against the real binary: no oversell, one order per hold,
//! one application per payment key — on SQLite, on PostgreSQL, and with two API processes
//! sharing one PostgreSQL.

use std::collections::{BTreeMap, HashSet};

use client::types::{Hold, HoldStatus, Order, OrderStatus, WebhookAnswer};
use futures::future::join_all;
use testkit::{Backend, Reply, TestApp, TestDb, assert_audit, on_both_backends, setup};

on_both_backends!(
    parallel_holds_never_oversell,
    parallel_holds_of_mixed_quantities_never_exceed_the_stock,
    parallel_holds_are_each_handed_their_own_hold,
    parallel_orders_for_one_hold_make_exactly_one_order,
    parallel_holds_with_one_idempotency_key_reserve_once,
    parallel_duplicate_webhooks_apply_exactly_once,
    parallel_conflicting_webhooks_settle_the_order_once,
    orders_webhooks_and_holds_racing_on_one_product_never_fail,
);

/// How many answers had each status.
fn count_statuses(replies: &[Reply]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        *counts.entry(r.status.as_u16()).or_default() += 1;
    }
    counts
}

/// Asserts that every answer has one of `statuses`, showing how many had each if not.
#[track_caller]
fn assert_statuses(replies: &[Reply], statuses: &[u16]) {
    assert!(
        replies
            .iter()
            .all(|r| statuses.contains(&r.status.as_u16())),
        "{:?}",
        count_statuses(replies)
    );
}

async fn parallel_holds_never_oversell(backend: Backend) {
    // Goal: 400 buyers racing for 50 units get exactly 50 holds and 350 refusals.
    // Method: 400 qty-1 POST /api/holds fired at once over separate connections.
    let (db, app) = setup!(backend);
    let product = app.create_product(50, 100).await;
    let replies = join_all((0..400).map(|_| app.hold(product, 1))).await;
    let counts = count_statuses(&replies);
    assert_eq!(counts.get(&201), Some(&50), "{counts:?}");
    assert_eq!(counts.get(&409), Some(&350), "{counts:?}");
    for r in replies.iter().filter(|r| r.status == 409) {
        assert_eq!(r.code(), "insufficient_stock");
    }
    let ids: HashSet<i64> = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.json::<Hold>().hold_id)
        .collect();
    assert_eq!(ids.len(), 50, "every hold is distinct");
    assert_eq!(app.available(product).await, 0);
    assert_audit(&db.url);
}

async fn parallel_holds_of_mixed_quantities_never_exceed_the_stock(backend: Backend) {
    // Goal: with quantities 1..=7 racing for 100 units, the units granted never exceed the
    // stock and exactly match what left `available`.
    // Method: 200 parallel POST /api/holds with qty cycling through 1..=7.
    let (db, app) = setup!(backend);
    let product = app.create_product(100, 100).await;
    let replies = join_all((0..200).map(|i| app.hold(product, i % 7 + 1))).await;
    let granted: i64 = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.json::<Hold>().qty)
        .sum();
    assert!(
        replies
            .iter()
            .all(|r| r.status == 201 || r.code() == "insufficient_stock")
    );
    assert!(granted <= 100, "oversold: {granted} units granted");
    assert!(
        granted > 90,
        "units left unsold while buyers asked: {granted}"
    );
    assert_eq!(app.available(product).await, 100 - granted);
    assert_audit(&db.url);
}

async fn parallel_holds_are_each_handed_their_own_hold(backend: Backend) {
    // Goal: holds reserved together in one transaction are each handed to their own
    // caller: a distinct hold of exactly the product and quantity asked, stored as answered,
    // and the units handed out are exactly what left `available`.
    // Method: 300 parallel POST /api/holds over two products, quantities 1..=5, with stock
    // for about half of them; then GET /api/holds/{id} for every 201.
    let (db, app) = setup!(backend);
    let products = [
        app.create_product(200, 100).await,
        app.create_product(200, 100).await,
    ];
    let asks: Vec<(usize, i64)> = (0..300).map(|i| (i % 2, (i / 2 % 5 + 1) as i64)).collect();
    let replies = join_all(asks.iter().map(|&(p, qty)| app.hold(products[p], qty))).await;
    let mut ids = HashSet::new();
    let mut units = [0_i64; 2];
    for (&(p, qty), r) in asks.iter().zip(&replies) {
        match r.status.as_u16() {
            201 => {
                let hold: Hold = r.json();
                assert_eq!(hold.product_id, products[p], "{:?}", r.body);
                assert_eq!(hold.qty, qty, "{:?}", r.body);
                let id = hold.hold_id;
                assert!(ids.insert(id), "hold {id} handed to two callers");
                let stored = app.get_hold_ok(id).await;
                assert_eq!(stored.product_id, products[p]);
                assert_eq!(stored.qty, qty);
                assert_eq!(stored.status, HoldStatus::Active);
                units[p] += qty;
            }
            409 => assert_eq!(r.code(), "insufficient_stock"),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    for (p, &product) in products.iter().enumerate() {
        assert_eq!(app.available(product).await, 200 - units[p]);
        assert!(
            units[p] > 190,
            "units left unsold while buyers asked: {units:?}"
        );
    }
    assert_audit(&db.url);
}

async fn parallel_orders_for_one_hold_make_exactly_one_order(backend: Backend) {
    // Goal: one hold, at most one order, however many retries race.
    // Method: 30 parallel POST /api/orders for the same hold.
    let (db, app) = setup!(backend);
    let product = app.create_product(5, 100).await;
    let hold = app.hold_ok(product, 2).await.hold_id;
    let replies = join_all((0..30).map(|_| app.order(hold))).await;
    assert_one_order(&replies);
    assert_audit(&db.url);
}

fn assert_one_order(replies: &[Reply]) {
    let counts = count_statuses(replies);
    assert_eq!(counts.get(&201), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&200), Some(&(replies.len() - 1)), "{counts:?}");
    let ids: HashSet<i64> = replies.iter().map(|r| r.json::<Order>().id).collect();
    assert_eq!(ids.len(), 1, "all answers name the same order");
    assert!(
        replies
            .iter()
            .filter(|r| r.status == 200)
            .all(Reply::replayed)
    );
}

async fn parallel_holds_with_one_idempotency_key_reserve_once(backend: Backend) {
    // Goal: a client retrying one request in parallel reserves once.
    // Method: 20 parallel POST /api/holds with the same Idempotency-Key and body.
    let (db, app) = setup!(backend);
    let product = app.create_product(50, 100).await;
    let replies = join_all((0..20).map(|_| app.hold_with_key(product, 3, "same-key"))).await;
    assert_statuses(&replies, &[201]);
    let ids: HashSet<i64> = replies.iter().map(|r| r.json::<Hold>().hold_id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(replies.iter().filter(|r| !r.replayed()).count(), 1);
    assert_eq!(app.available(product).await, 47);

    // The same when the first request takes the last units: the retries are replays, not
    // refusals for lack of stock.
    let scarce = app.create_product(3, 100).await;
    let replies = join_all((0..20).map(|_| app.hold_with_key(scarce, 3, "last-units"))).await;
    assert_statuses(&replies, &[201]);
    assert_eq!(replies.iter().filter(|r| !r.replayed()).count(), 1);
    assert_eq!(app.available(scarce).await, 0);
    assert_audit(&db.url);
}

async fn parallel_duplicate_webhooks_apply_exactly_once(backend: Backend) {
    // Goal: the provider delivering one event many times at once applies it once.
    // Method: 20 parallel identical `failed` webhooks (a failure returns stock, so a double
    // application would show as stock counted twice).
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let hold = app.hold_ok(product, 4).await.hold_id;
    let order = app.order_ok(hold).await.id;
    let replies = join_all((0..20).map(|_| app.webhook("dup-evt", hold, "failed"))).await;
    assert_statuses(&replies, &[200]);
    assert_eq!(
        replies.iter().filter(|r| !r.replayed()).count(),
        1,
        "exactly one is applied"
    );
    assert!(replies.iter().all(|r| r.body == replies[0].body));
    assert_eq!(app.get_order_ok(order).await.status, OrderStatus::Cancelled);
    assert_eq!(app.available(product).await, 10);
    assert_audit(&db.url);
}

async fn parallel_conflicting_webhooks_settle_the_order_once(backend: Backend) {
    // Goal: different events for one order racing each other: exactly one decides the
    // order, every other is ignored or flagged for refund, and stock stays exact.
    // Method: for 10 orders at once, 6 parallel events each (3 paid, 3 failed keys).
    let (db, app) = setup!(backend);
    let product = app.create_product(20, 100).await;
    let mut holds = Vec::new();
    for _ in 0..10 {
        let hold = app.hold_ok(product, 2).await.hold_id;
        assert_eq!(app.order(hold).await.status, 201);
        holds.push(hold);
    }
    let events = holds.iter().flat_map(|&h| {
        (0..6).map(move |i| {
            (
                h,
                format!("h{h}-e{i}"),
                if i % 2 == 0 { "paid" } else { "failed" },
            )
        })
    });
    let replies = join_all(events.map(|(h, key, status)| {
        let app = &app;
        async move { (h, app.webhook(&key, h, status).await) }
    }))
    .await;
    let mut cancelled = 0;
    for &h in &holds {
        let mine: Vec<&Reply> = replies
            .iter()
            .filter(|(hh, _)| *hh == h)
            .map(|(_, r)| r)
            .collect();
        assert!(mine.iter().all(|r| r.status == 200));
        let answers: Vec<WebhookAnswer> = mine.iter().map(|r| r.json()).collect();
        let applied: Vec<&WebhookAnswer> =
            answers.iter().filter(|a| a.state == "applied").collect();
        assert_eq!(
            applied.len(),
            1,
            "hold {h}: exactly one event decides the order"
        );
        let order_id = answers[0].order_id.unwrap();
        let status = app.get_order_ok(order_id).await.status;
        assert_eq!(
            status,
            if applied[0].status == "paid" {
                OrderStatus::Paid
            } else {
                OrderStatus::Cancelled
            }
        );
        cancelled += usize::from(status == OrderStatus::Cancelled);
    }
    assert_eq!(app.available(product).await, 2 * cancelled as i64);
    assert_audit(&db.url);
}

async fn orders_webhooks_and_holds_racing_on_one_product_never_fail(backend: Backend) {
    // Goal: the transactions that lock the same product, hold and order rows in different
    // roles never deadlock or fail: orders (hold lock, then a foreign-key check on the
    // product), webhooks (product, hold, order) and refused holds (product, then overdue
    // holds) all at once.
    // Method: 30 holds on a product that is then sold out; in parallel, an order for every
    // hold, a `paid` webhook for every hold (some land before their order), and 60 more
    // hold requests that find no stock.
    let (db, app) = setup!(backend);
    let product = app.create_product(30, 100).await;
    let holds: Vec<i64> = join_all((0..30).map(|_| app.hold_ok(product, 1)))
        .await
        .iter()
        .map(|h| h.hold_id)
        .collect();
    let orders = join_all(holds.iter().map(|&h| app.order(h)));
    let payments = join_all(holds.iter().map(|&h| {
        let app = &app;
        async move { app.webhook(&format!("race-{h}"), h, "paid").await }
    }));
    let refused = join_all((0..60).map(|_| app.hold(product, 1)));
    let (orders, payments, refused) = tokio::join!(orders, payments, refused);
    assert_statuses(&orders, &[201]);
    assert_statuses(&payments, &[200, 202]);
    assert_statuses(&refused, &[409]);
    assert_eq!(app.available(product).await, 0);
    assert_audit(&db.url);
}

/// Two API processes on one PostgreSQL: the row locks, not process memory, keep the stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_on_one_postgres_never_oversell_or_double_order() {
    // Goal: the guarantees hold across processes.
    // Method: two flashsale-api processes on one database; 400 parallel holds for 50 units
    // and then 30 parallel orders for one hold, alternating between the two processes.
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let a = TestApp::spawn(&db, &[]).await;
    let b = TestApp::spawn(&db, &[]).await;
    let product = a.create_product(50, 100).await;
    let apps = [&a, &b];
    let replies = join_all((0..400).map(|i| apps[i % 2].hold(product, 1))).await;
    let counts = count_statuses(&replies);
    assert_eq!(counts.get(&201), Some(&50), "{counts:?}");
    assert_eq!(counts.get(&409), Some(&350), "{counts:?}");
    assert_eq!(a.available(product).await, 0);
    let hold = replies
        .iter()
        .find(|r| r.status == 201)
        .unwrap()
        .json::<Hold>()
        .hold_id;
    let orders = join_all((0..30).map(|i| apps[i % 2].order(hold))).await;
    assert_one_order(&orders);
    // Within a second, the other process sees the stock the first one changed.
    let product2 = a.create_product(10, 100).await;
    assert_eq!(b.available(product2).await, 10);
    assert_eq!(a.hold(product2, 4).await.status, 201);
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(b.available(product2).await, 6);
    assert_audit(&db.url);
}
