//! The one-shot operator commands of `flashsale-worker`, which print their result: `sweep`
//! (for cron) and `audit`.

use std::process::ExitCode;

use service::{Service, audit, db::Db};

use crate::sweep::sweep_until_idle;

/// Most refunds listed after a sweep.
const REFUNDS_LISTED: u64 = 100;

/// Sweeps until nothing is left to do, prints what it did and the payments that must be
/// refunded. Fails when an item failed (the next sweep retries it).
pub async fn sweep(svc: &Service) -> anyhow::Result<ExitCode> {
    let total = sweep_until_idle(svc).await?;
    println!(
        "sweep: {} unit(s) of expired holds returned, {} recorded payment(s) settled, {} unpaid order(s) cancelled",
        total.expired_hold_units, total.settled_payments, total.cancelled_orders
    );
    println!("refund required: {} payment(s)", total.refund_required);
    if total.errors > 0 {
        println!(
            "errors: {} item(s) failed (see the log); run the sweep again",
            total.errors
        );
    }
    for p in svc.refunds_required(REFUNDS_LISTED).await? {
        println!(
            "  key={} hold_id={} order_id={} at_ms={}",
            p.idempotency_key,
            p.hold_id,
            p.order_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            p.created_at_ms
        );
    }
    Ok(exit_code(total.errors == 0))
}

/// Prints every product's stock figures and every customer over their limit; fails when
/// the invariant is broken for any product, or a customer is over their limit.
pub async fn audit(db: &Db) -> anyhow::Result<ExitCode> {
    let rows = audit::audit(&db.conn).await?;
    println!(
        "{:>8}  {:>12}  {:>12}  {:>12}  {:>12}  {:<6}  name",
        "product", "total_stock", "available", "held", "ordered", "ok"
    );
    let mut broken = 0;
    for r in &rows {
        let ok = r.holds();
        broken += usize::from(!ok);
        println!(
            "{:>8}  {:>12}  {:>12}  {:>12}  {:>12}  {:<6}  {}",
            r.product_id,
            r.total_stock,
            r.available,
            r.held,
            r.ordered,
            if ok { "ok" } else { "BROKEN" },
            r.name
        );
    }
    println!("audit: {} product(s), {broken} broken", rows.len());
    let breaches = audit::limit_breaches(&db.conn, service::now_ms()).await?;
    for b in &breaches {
        println!(
            "limit breach: product {} customer {:?} has {} unit(s), granted under a limit of {}",
            b.product_id, b.customer_id, b.units, b.limit
        );
    }
    println!("audit: {} customer(s) over their limit", breaches.len());
    Ok(exit_code(broken == 0 && breaches.is_empty()))
}

fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
