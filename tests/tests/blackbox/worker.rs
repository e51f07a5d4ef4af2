//! The worker as its own process: delayed expiry, payments that came before their order,
//! unpaid orders, the one-shot sweep, a worker killed mid-flight, and a database outage.

use std::time::Duration;

use client::types::Hold;
use futures::future::join_all;
use testkit::{
    Backend, TcpProxy, TestApp, TestWorker, assert_audit, eventually, on_both_backends, setup,
    setup_via_proxy, stored_status, sweep,
};

on_both_backends!(
    paid_webhook_before_the_order_makes_the_order_paid_once_it_exists,
    failed_webhook_before_the_order_cancels_it_and_returns_the_stock_once,
    paid_hold_whose_order_never_comes_gets_its_paid_order_from_the_worker,
    holds_expire_to_expired_with_the_worker_and_with_the_sweep_command,
    unpaid_order_past_its_payment_ttl_is_cancelled_and_its_stock_returned,
    storm_of_buyers_and_duplicated_early_and_late_payments_ends_consistent,
    killed_worker_loses_no_job_and_two_workers_double_nothing,
    worker_ready_answers_200_while_its_job_workers_run,
);

/// The SPEC's bound for an early payment to reach its order with the worker running.
const WITHIN: Duration = Duration::from_secs(2);

/// The order's status as served; empty when it cannot be read.
async fn order_status(app: &TestApp, order: i64) -> String {
    app.get_order(order).await.body["status"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Whether order `order` is served with `status` within `within`.
async fn order_turns(app: &TestApp, order: i64, status: &str, within: Duration) -> bool {
    eventually(within, || async {
        order_status(app, order).await == status
    })
    .await
}

async fn paid_webhook_before_the_order_makes_the_order_paid_once_it_exists(backend: Backend) {
    let (db, app) = setup!(backend);
    let _worker = TestWorker::spawn(&db.url, &[]);
    let product = app.create_product(10, 100).await;
    let hold = app.hold_ok(product, 2).await.hold_id;
    let early = app.webhook("early-paid", hold, "paid").await;
    assert_eq!(early.status, 202);
    let order = app.order_ok(hold).await.id;
    assert!(
        order_turns(&app, order, "paid", WITHIN).await,
        "order not paid within 2 s"
    );
    // The early event still replays its first answer.
    let replay = app.webhook("early-paid", hold, "paid").await;
    assert_eq!(replay.status, 202);
    assert!(replay.replayed());
    assert_eq!(app.available(product).await, 8);
    assert_audit(&db.url);
}

async fn failed_webhook_before_the_order_cancels_it_and_returns_the_stock_once(backend: Backend) {
    let (db, app) = setup!(backend, &[("HOLD_TTL_SECS", "1")]);
    let env = [("HOLD_TTL_SECS", "1")];
    let _worker = TestWorker::spawn(&db.url, &env);
    let product = app.create_product(10, 100).await;
    let hold = app.hold_ok(product, 3).await.hold_id;
    assert_eq!(
        app.webhook("early-failed", hold, "failed").await.status,
        202
    );
    let order = app.order_ok(hold).await.id;
    assert!(
        order_turns(&app, order, "cancelled", WITHIN).await,
        "order not cancelled within 2 s"
    );
    assert_eq!(app.available(product).await, 10);
    // Past the hold's expiry and through more sweeps, the stock stays exactly right.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sweep(&db.url, &env);
    sweep(&db.url, &env);
    assert_eq!(app.available(product).await, 10);
    assert_eq!(order_status(&app, order).await, "cancelled");
    assert_audit(&db.url);
}

/// A payment recorded before any order pins the hold past its TTL; when nobody orders,
/// the worker makes the order, `paid`, and the units stay sold.
async fn paid_hold_whose_order_never_comes_gets_its_paid_order_from_the_worker(backend: Backend) {
    let env = [("HOLD_TTL_SECS", "1")];
    let (db, app) = setup!(backend, &env);
    let _worker = TestWorker::spawn(&db.url, &env);
    let product = app.create_product(4, 100).await;
    let hold = app.hold_ok(product, 4).await.hold_id;
    assert_eq!(app.webhook("paid-first", hold, "paid").await.status, 202);
    let db_url = db.url.clone();
    let ordered = eventually(Duration::from_secs(10), || {
        let url = db_url.clone();
        async move { stored_status(&url, "holds", hold).await == "ordered" }
    });
    assert!(ordered.await, "the worker made no order for the paid hold");
    assert_eq!(app.available(product).await, 0);
    let order = app.order(hold).await;
    assert_eq!(order.status, 200, "{}", order.body);
    assert!(order.replayed());
    assert_eq!(order.body["status"], "paid");
    assert_eq!(order.body["total_cents"], 400);
    assert_audit(&db.url);
}

async fn holds_expire_to_expired_with_the_worker_and_with_the_sweep_command(backend: Backend) {
    let env = [("HOLD_TTL_SECS", "1"), ("SWEEP_INTERVAL_SECS", "3600")];
    let (db, app) = setup!(backend, &env);
    let product = app.create_product(10, 100).await;
    // With the worker running, its ExpireHold jobs do it (the sweep is an hour away).
    let worker = TestWorker::spawn(&db.url, &env);
    let first = app.hold_ok(product, 2).await.hold_id;
    let db_url = db.url.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let url = db_url.clone();
            async move { stored_status(&url, "holds", first).await == "expired" }
        })
        .await,
        "ExpireHold did not run"
    );
    assert!(worker.terminate(), "SIGTERM: the worker exits cleanly");
    // With the worker stopped, the one-shot sweep does it.
    let second = app.hold_ok(product, 3).await.hold_id;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(stored_status(&db.url, "holds", second).await, "active");
    let out = sweep(&db.url, &env);
    assert!(out.contains("3 unit(s) of expired holds returned"), "{out}");
    assert_eq!(stored_status(&db.url, "holds", second).await, "expired");
    let again = sweep(&db.url, &env);
    assert!(
        again.contains("0 unit(s) of expired holds returned"),
        "{again}"
    );
    assert_eq!(app.available(product).await, 10);
    assert_audit(&db.url);
}

async fn unpaid_order_past_its_payment_ttl_is_cancelled_and_its_stock_returned(backend: Backend) {
    let env = [("ORDER_PAYMENT_TTL_SECS", "1")];
    let (db, app) = setup!(backend, &env);
    let _worker = TestWorker::spawn(&db.url, &env);
    let product = app.create_product(5, 100).await;
    let hold = app.hold_ok(product, 5).await.hold_id;
    let order = app.order_ok(hold).await.id;
    assert!(
        order_turns(&app, order, "cancelled", Duration::from_secs(10)).await,
        "unpaid order not cancelled"
    );
    assert_eq!(app.available(product).await, 5);
    // A payment arriving now cannot be honoured.
    let late = app.webhook("too-late", hold, "paid").await;
    assert_eq!(late.body["state"], "refund_required");
    assert!(sweep(&db.url, &env).contains("refund required: 1 payment(s)"));
    assert_eq!(app.available(product).await, 5);
    assert_audit(&db.url);
}

async fn storm_of_buyers_and_duplicated_early_and_late_payments_ends_consistent(backend: Backend) {
    // Goal: the provider's verdict is final for every order, whatever the order of events.
    // Method: 60 parallel buyers race for 40 units; every winner's payment event is sent
    // twice, for half of the winners before the order exists; every fifth payment fails;
    // orders are created in parallel with the events; the worker runs throughout.
    let (db, app) = setup!(backend);
    let _worker = TestWorker::spawn(&db.url, &[]);
    let product = app.create_product(40, 100).await;
    let holds: Vec<i64> = join_all((0..60).map(|_| app.hold(product, 1)))
        .await
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.json::<Hold>().hold_id)
        .collect();
    assert_eq!(holds.len(), 40);
    let verdict = |i: usize| {
        if i.is_multiple_of(5) {
            "failed"
        } else {
            "paid"
        }
    };
    // Every event twice, for the holds at even or at odd positions.
    let deliver = |parity: usize| {
        join_all(
            holds
                .iter()
                .enumerate()
                .filter(move |(i, _)| i % 2 == parity)
                .flat_map(|(i, &h)| {
                    let app = &app;
                    (0..2).map(move |_| async move {
                        app.webhook(&format!("storm-{h}"), h, verdict(i)).await
                    })
                }),
        )
    };
    // Half get their events before their order.
    let early = deliver(0).await;
    assert!(
        early.iter().all(|r| r.status == 202),
        "early events are recorded"
    );
    let orders = join_all(holds.iter().map(|&h| app.order_ok(h))).await;
    let late = deliver(1).await;
    assert!(
        late.iter().all(|r| r.status == 200),
        "late events are applied at once"
    );
    let expected: Vec<(i64, &str)> = orders
        .iter()
        .enumerate()
        .map(|(i, order)| {
            (
                order.id,
                if verdict(i) == "paid" {
                    "paid"
                } else {
                    "cancelled"
                },
            )
        })
        .collect();
    let all_final = eventually(Duration::from_secs(10), || async {
        for (order, want) in &expected {
            if order_status(&app, *order).await != *want {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        all_final,
        "some order did not end in the provider's verdict"
    );
    let failed = expected.iter().filter(|(_, s)| *s == "cancelled").count() as i64;
    assert_eq!(
        app.available(product).await,
        failed,
        "each failed payment returned its unit once"
    );
    assert_audit(&db.url);
}

async fn killed_worker_loses_no_job_and_two_workers_double_nothing(backend: Backend) {
    // Goal: a worker killed with SIGKILL while jobs are due loses none, and two workers at
    // once apply nothing twice.
    // Method: with the worker down, queue ExpireHold and CheckPendingWebhook jobs (holds
    // with a 1 s TTL, early `failed` payments whose orders then exist); start a worker and
    // SIGKILL it at once, then start two workers and wait for every effect.
    let env = [("HOLD_TTL_SECS", "1"), ("SWEEP_INTERVAL_SECS", "3600")];
    let (db, app) = setup!(backend, &env);
    let product = app.create_product(30, 100).await;
    let expiring: Vec<i64> = join_all((0..10).map(|_| app.hold_ok(product, 1)))
        .await
        .iter()
        .map(|h| h.hold_id)
        .collect();
    let mut orders = Vec::new();
    for i in 0..10 {
        let hold = app.hold_ok(product, 2).await.hold_id;
        assert_eq!(
            app.webhook(&format!("kill-{i}"), hold, "failed")
                .await
                .status,
            202
        );
        orders.push(app.order_ok(hold).await.id);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let doomed = TestWorker::spawn(&db.url, &env);
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.kill();
    let _a = TestWorker::spawn(&db.url, &env);
    let _b = TestWorker::spawn(&db.url, &env);
    let db_url = db.url.clone();
    let done = eventually(Duration::from_secs(20), || {
        let (url, expiring, orders, app) = (db_url.clone(), expiring.clone(), orders.clone(), &app);
        async move {
            for h in expiring {
                if stored_status(&url, "holds", h).await != "expired" {
                    return false;
                }
            }
            for o in orders {
                if order_status(app, o).await != "cancelled" {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(done, "a job was lost");
    assert_eq!(
        app.available(product).await,
        30,
        "every unit came back exactly once"
    );
    assert_audit(&db.url);
}

/// Longer than the pool's 10 s acquire timeout plus a heartbeat interval: a worker's wait
/// for a connection that starts just after the cut still times out before the restore.
const OUTAGE: Duration = Duration::from_secs(15);

/// A hold paid before its order exists; whether the order is paid `within` its creation
/// (only the `CheckPendingWebhook` job does that while the sweep is an hour away).
async fn early_payment_is_applied(
    app: &TestApp,
    product: i64,
    key: &str,
    within: Duration,
) -> bool {
    let hold = app.hold_ok(product, 1).await.hold_id;
    assert_eq!(app.webhook(key, hold, "paid").await.status, 202);
    let order = app.order_ok(hold).await.id;
    order_turns(app, order, "paid", within).await
}

async fn worker_ready_answers_200_while_its_job_workers_run(backend: Backend) {
    let (db, app) = setup!(backend);
    let worker = TestWorker::spawn_with_metrics(&db.url, &[("SWEEP_INTERVAL_SECS", "3600")]);
    assert!(
        worker.ready_turns(200, Duration::from_secs(20)).await,
        "the worker's /ready did not answer 200"
    );
    let product = app.create_product(5, 100).await;
    assert!(early_payment_is_applied(&app, product, "ready-1", WITHIN).await);
    assert!(worker.terminate(), "SIGTERM: the worker exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process_runs_jobs_again_after_a_database_outage_longer_than_the_pool_timeout() {
    // Goal: the job workers of `flashsale-worker run` come back by themselves after an
    // outage, `/ready` says when they are down, and SIGTERM still exits 0.
    // Method: the worker reaches PostgreSQL through a proxy (the API does not); cut it for
    // longer than the pool timeout, restore it, then pay a hold before its order.
    let (db, app) = setup!(Backend::Postgres);
    let (proxy, via_proxy) = TcpProxy::in_front_of(&db.url).await;
    let worker = TestWorker::spawn_with_metrics(&via_proxy, &[("SWEEP_INTERVAL_SECS", "3600")]);
    assert!(
        worker.ready_turns(200, Duration::from_secs(20)).await,
        "never ready"
    );
    let product = app.create_product(10, 100).await;
    assert!(early_payment_is_applied(&app, product, "before-outage", WITHIN).await);
    proxy.cut();
    let cut_at = std::time::Instant::now();
    assert!(
        worker.ready_turns(503, Duration::from_secs(10)).await,
        "/ready did not report the workers down"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(cut_at.elapsed())).await;
    proxy.restore();
    assert!(
        worker.ready_turns(200, Duration::from_secs(40)).await,
        "the workers did not come back"
    );
    assert!(
        early_payment_is_applied(&app, product, "after-outage", WITHIN).await,
        "no job ran after the outage"
    );
    assert!(
        worker.terminate(),
        "SIGTERM after a recovered outage exits 0"
    );
    assert_audit(&db.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_worker_runs_jobs_again_after_a_database_outage_longer_than_the_pool_timeout() {
    // Goal: the same for `flashsale-api --with-worker`.
    let (db, proxy, mut app) =
        setup_via_proxy!(&[("WITH_WORKER", "1"), ("SWEEP_INTERVAL_SECS", "3600")]);
    let product = app.create_product(10, 100).await;
    assert!(early_payment_is_applied(&app, product, "before-outage", WITHIN).await);
    proxy.cut();
    tokio::time::sleep(OUTAGE).await;
    proxy.restore();
    assert!(
        app.ready_turns(200, Duration::from_secs(20)).await,
        "the API did not recover"
    );
    // The workers may still be waiting out their restart backoff: give them its ceiling.
    assert!(
        early_payment_is_applied(&app, product, "after-outage", Duration::from_secs(40)).await,
        "no job ran after the outage"
    );
    assert!(app.terminate(), "SIGTERM after a recovered outage exits 0");
    assert_audit(&db.url);
}
