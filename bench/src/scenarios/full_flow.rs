//! full-flow at 64 and 256 clients: hold one unit, order it, pay it with a signed webhook;
//! beside pgbench's naive hold transaction at as many clients. Every flow must end paid and
//! the audit must pass.

use anyhow::Context;
use futures::TryStreamExt;

use super::{Bench, WEBHOOK_SECRET, status};
use crate::{pgbench::PgBaselines, report::Row};

/// Closed-loop clients, each running one purchase after another: one row per count.
pub(super) const CLIENTS: [usize; 2] = [64, 256];

/// Runs the flow at `clients`; the check counts the paid orders and runs the audit.
pub(super) async fn run(bench: &Bench, pg: &PgBaselines, clients: usize) -> anyhow::Result<Row> {
    let product = bench.app.create_product(1_000_000_000, 100).await;
    let before = Counts::read(&bench.sdk).await?;
    let (sdk, http) = (bench.sdk.clone(), bench.http.clone());
    let webhook_url = bench.app.url("/api/payments/webhook");
    let flow = bench
        .measure(
            &format!("full-flow, {clients} clients"),
            clients,
            move |client, seq| {
                let (sdk, http, url) = (sdk.clone(), http.clone(), webhook_url.clone());
                pay(
                    sdk,
                    http,
                    url,
                    product,
                    format!("bench-{clients}-{client}-{seq}"),
                )
            },
        )
        .await;
    let (audit_ok, _) = testkit::audit(&bench.db.url);
    let after = Counts::read(&bench.sdk).await?;
    let paid = after.paid.map(|n| n - before.paid.unwrap_or(0));
    let all_paid = paid == flow.load.statuses.get(&200).copied();
    let note = format!(
        "{} paid orders, {}; audit {}; requests per transaction: {}",
        paid.unwrap_or(0),
        if all_paid {
            "every flow paid"
        } else {
            "NOT EVERY FLOW PAID"
        },
        if audit_ok { "passes" } else { "FAILS" },
        after.mean_groups(&before),
    );
    Ok(bench.row(
        flow,
        &format!("full-flow (hold → order → signed paid webhook), {clients} clients"),
        &format!("pgbench naive hold ×{clients}"),
        pg.naive_hold[&clients].tps,
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

/// The text of `/metrics`.
async fn metrics_text(sdk: &client::Client) -> anyhow::Result<String> {
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
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The value of the series `series` (name and labels, as `/metrics` writes them) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The server's counts: paid orders, and per kind of group the requests and the groups.
#[derive(Clone, Copy, Default)]
struct Counts {
    paid: Option<u64>,
    grouped: [(f64, f64); 3],
}

/// The kinds of group, as the `flashsale_group_size` metric labels them.
const KINDS: [&str; 3] = ["hold", "order", "payment"];

impl Counts {
    async fn read(sdk: &client::Client) -> anyhow::Result<Self> {
        let text = metrics_text(sdk).await?;
        let count = |kind: &str, part: &str| {
            sample(
                &text,
                &format!(r#"flashsale_group_size_{part}{{kind="{kind}"}}"#),
            )
            .unwrap_or(0.0)
        };
        Ok(Self {
            paid: sample(&text, r#"flashsale_orders{status="paid"}"#).map(|n| n as u64),
            grouped: KINDS.map(|kind| (count(kind, "sum"), count(kind, "count"))),
        })
    }

    /// The mean requests per group of each kind since `before`, e.g. "hold 12.1".
    fn mean_groups(&self, before: &Self) -> String {
        let means: Vec<String> = KINDS
            .iter()
            .zip(self.grouped.iter().zip(before.grouped))
            .map(|(kind, ((sum, n), (sum0, n0)))| {
                format!("{kind} {:.1}", (sum - sum0) / (n - n0).max(1.0))
            })
            .collect();
        means.join(", ")
    }
}
