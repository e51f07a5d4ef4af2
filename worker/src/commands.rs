//! The one-shot operator commands of `flashsale-worker`, which print their result: `sweep`
//! (for cron) and `audit`.

use std::process::ExitCode;

use sea_orm::ActiveEnum;
use service::{Service, audit};

use crate::sweep::sweep_until_idle;

/// Most refunds listed after a sweep, the oldest unresolved first.
const REFUNDS_LISTED: u64 = 100;

/// Sweeps until nothing is left to do, prints what it did and the payments that must be
/// refunded. Fails when an item failed (the next sweep retries it).
pub async fn sweep(svc: &Service) -> anyhow::Result<ExitCode> {
    let total = sweep_until_idle(svc).await?;
    println!(
        "sweep: {} unit(s) of expired holds returned, {} recorded payment(s) settled, {} unpaid order(s) cancelled",
        total.expired_hold_units, total.settled_payments, total.cancelled_orders
    );
    println!(
        "refund required: {} payment(s) in all",
        total.refund_required
    );
    if total.errors > 0 {
        println!(
            "errors: {} item(s) failed (see the log); run the sweep again",
            total.errors
        );
    }
    let open = svc.refunds(None, REFUNDS_LISTED).await?;
    println!(
        "refunds to make: {}{}",
        open.items.len(),
        if open.next_after.is_some() {
            " (the oldest; see GET /api/admin/refunds)"
        } else {
            ""
        }
    );
    for r in open.items {
        println!(
            "  key={} hold_id={} order_id={} reason={} amount_cents={} recorded_at={}",
            r.idempotency_key,
            r.hold_id,
            r.order_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            r.reason.to_value(),
            r.amount_cents,
            service::to_datetime(r.recorded_at_ms).to_rfc3339()
        );
    }
    Ok(exit_code(total.errors == 0))
}

/// Prints every product's stock figures and every customer over their limit; fails when
/// the invariant is broken for any product, or a customer is over their limit.
pub async fn audit(svc: &Service) -> anyhow::Result<ExitCode> {
    let rows = audit::audit(&svc.db.conn).await?;
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
    let order_ttl_ms = i64::try_from(svc.rules.order_payment_ttl_secs)? * 1000;
    let breaches = audit::limit_breaches(&svc.db.conn, service::now_ms(), order_ttl_ms).await?;
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
