//! full-flow at 64 clients: hold one unit, order it, pay it with a signed webhook; beside
//! pgbench's naive hold transaction. Every flow must end paid and the audit must pass.

use anyhow::Context;
use futures::TryStreamExt;

use super::{Bench, WEBHOOK_SECRET, status};
use crate::{pgbench::PgBaselines, report::Row};

/// Closed-loop clients, each running one purchase after another.
pub(super) const CLIENTS: usize = 64;

/// Runs the flow; the check counts the paid orders and runs the audit.
pub(super) async fn run(bench: &Bench, pg: &PgBaselines) -> anyhow::Result<Row> {
    let product = bench.app.create_product(1_000_000_000, 100).await;
    let (sdk, http) = (bench.sdk.clone(), bench.http.clone());
    let webhook_url = bench.app.url("/api/payments/webhook");
    let flow = bench
        .measure("full-flow, 64 clients", CLIENTS, move |client, seq| {
            let (sdk, http, url) = (sdk.clone(), http.clone(), webhook_url.clone());
            pay(sdk, http, url, product, format!("bench-{client}-{seq}"))
        })
        .await;
    let (audit_ok, _) = testkit::audit(&bench.db.url);
    let paid = paid_orders(&bench.sdk).await?;
    let all_paid = paid == flow.load.statuses.get(&200).copied();
    let note = format!(
        "{} paid orders, {}; audit {}",
        paid.unwrap_or(0),
        if all_paid {
            "every flow paid"
        } else {
            "NOT EVERY FLOW PAID"
        },
        if audit_ok { "passes" } else { "FAILS" }
    );
    Ok(bench.row(
        flow,
        "full-flow (hold → order → signed paid webhook), 64 clients",
        "pgbench naive hold ×64",
        pg.naive_hold[&CLIENTS].tps,
        note,
    ))
}

/// One flow: holds a unit of `product_id`, orders it, and sends the paid webhook with
/// idempotency key `key` to `webhook_url`; the webhook's HTTP status.
async fn pay(
    sdk: client::Client,
    http: reqwest::Client,
    webhook_url: String,
    product_id: i64,
    key: String,
) -> anyhow::Result<u16> {
    let hold = client::types::CreateHold {
        product_id,
        qty: std::num::NonZeroU64::MIN,
    };
    let hold_id = match sdk.create_hold().body(hold).send().await {
        Ok(hold) => hold.hold_id,
        // A refused hold still runs the flow, which then ends unpaid, as a client's would.
        Err(e) if e.status().is_some() => 0,
        Err(e) => return Err(e.into()),
    };
    let order = client::types::CreateOrder { hold_id };
    status(sdk.create_order().body(order).send().await)?;
    let body = serde_json::to_vec(&client::types::PaymentWebhook {
        idempotency_key: Some(key.parse()?),
        hold_id,
        status: client::types::PaymentStatus::Paid,
    })?;
    let sig = testkit::sign(WEBHOOK_SECRET, testkit::unix_now(), &body);
    // reqwest, not the SDK: the signature covers the exact body bytes the SDK would make itself.
    let answer = http
        .post(webhook_url)
        .header("content-type", "application/json")
        .header("x-signature", sig)
        .body(body)
        .send()
        .await?;
    Ok(answer.status().as_u16())
}

/// The `flashsale_orders{status="paid"}` gauge of `/metrics`, if the server reports it.
async fn paid_orders(sdk: &client::Client) -> anyhow::Result<Option<u64>> {
    let mut stream = sdk
        .metrics()
        .send()
        .await
        .context("GET /metrics")?
        .into_inner()
        .into_inner();
    let mut text = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        text.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&text).lines().find_map(|l| {
        l.strip_prefix(r#"flashsale_orders{status="paid"} "#)?
            .parse::<u64>()
            .ok()
    }))
}
