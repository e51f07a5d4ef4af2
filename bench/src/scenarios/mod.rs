//! Every scenario against one back end, in the order the table shows them: the HTTP
//! ceiling, hot-holds at each client count, the sellout, product reads, the full flow, the
//! limited sale (customers with tokens, at most 2 units each), the crowd before a sale
//! starts, and live stock (10,000 event streams beside holds). `--only` narrows a run to
//! some of them ([`Selection`]).
//! The full flow goes through the generated SDK (but for the signed webhook); the hot loops
//! that measure the server's ceiling send raw requests and leave the answers unread (see
//! [`hold`]), but for the error code of a 409 where a scenario must tell refusals apart
//! (see [`hold_as`]).

mod full_flow;
mod health;
mod hot_holds;
mod limited_sale;
mod live_stock;
mod pre_sale;
mod product_read;
mod sellout;

use std::{future::Future, time::Duration};

use anyhow::Context;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use testkit::{Backend, TestApp, TestDb};

use crate::{
    load::{Load, load},
    pgbench::{PgBaselines, Script},
    probes::{CpuShare, Probe},
    report::{HotCurve, Results, Row},
};

/// The secret the API checks webhook signatures with.
const WEBHOOK_SECRET: &str = "bench-secret";

/// A scenario, as `--only` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `GET /health` at 256 clients: the HTTP ceiling.
    Health,
    /// Holds on one product with unlimited stock, at 16, 64 and 256 clients.
    HotHolds,
    /// 1,000 units to 256 clients, then the 409s of the sold-out product.
    Sellout,
    /// Cached `GET /products/{id}` of the sold-out product (brings `sellout` along).
    ProductRead,
    /// Hold → order → signed `paid` webhook at 64 and 256 clients.
    FullFlow,
    /// 256 customers with tokens on a product limited to 2 units each.
    LimitedSale,
    /// 256 clients holding before the sale starts: every answer 409 `sale_not_started`.
    PreSale,
    /// 10,000 subscribers to one product's live stock while holds run on it at 64 clients.
    LiveStock,
}

/// The scenarios a run measures: every one when none was picked, else the picked ones and
/// what they are compared with (the HTTP ceiling, the pgbench runs) or need (the sold-out
/// product that `product-read` reads).
pub struct Selection {
    /// What `--only` named; empty for everything.
    picked: Vec<Scenario>,
}

impl Selection {
    /// The scenarios `--only` named (every one if `picked` is empty).
    pub fn new(picked: Vec<Scenario>) -> Self {
        Self { picked }
    }

    /// Whether `scenario` was picked.
    fn picked(&self, scenario: Scenario) -> bool {
        self.picked.is_empty() || self.picked.contains(&scenario)
    }

    /// Whether `scenario` runs: picked, or needed by one that was.
    fn runs(&self, scenario: Scenario) -> bool {
        use Scenario::*;
        match scenario {
            Health => [Health, Sellout, ProductRead, PreSale]
                .into_iter()
                .any(|s| self.picked(s)),
            Sellout => self.picked(Sellout) || self.picked(ProductRead),
            other => self.picked(other),
        }
    }

    /// Open files the bench and the server each need: live-stock's streams, one
    /// descriptor each at both ends, and room for the rest.
    pub fn open_files(&self) -> u64 {
        if self.runs(Scenario::LiveStock) {
            live_stock::OPEN_FILES
        } else {
            0
        }
    }

    /// Whether pgbench must run `script` at `clients`: with everything, every baseline at
    /// every client count (the table and the chart show them all); else those a picked row
    /// is divided by.
    pub fn needs(&self, script: Script, clients: usize) -> bool {
        if self.picked.is_empty() {
            return true;
        }
        match script {
            Script::Update => {
                self.picked(Scenario::HotHolds)
                    || (self.picked(Scenario::LimitedSale) && clients == limited_sale::CLIENTS)
            }
            Script::NaiveHold => {
                self.picked(Scenario::FullFlow) && full_flow::CLIENTS.contains(&clients)
            }
        }
    }
}

/// Runs the scenarios `only` selects on a fresh `backend` database, `seconds` each: the
/// table rows, the hot-holds curve for the chart (empty without hot-holds) and
/// live-stock's figures.
pub async fn run(
    backend: Backend,
    pg: &PgBaselines,
    seconds: u64,
    only: &Selection,
) -> anyhow::Result<Results> {
    let bench = Bench::start(backend, seconds).await?;
    let mut rows = Vec::new();
    // Only the rows compared with the ceiling read it, and the ceiling runs with each of them.
    let mut ceiling = f64::NAN;
    if only.runs(Scenario::Health) {
        let health = health::run(&bench).await;
        ceiling = health.load.rate();
        rows.push(health);
    }
    let mut hot = HotCurve::new();
    if only.runs(Scenario::HotHolds) {
        hot = hot_holds::run(&bench, pg, &mut rows).await;
    }
    if only.runs(Scenario::Sellout) {
        let (sellout, product) = sellout::run(&bench, ceiling).await;
        rows.push(sellout);
        if only.runs(Scenario::ProductRead) {
            rows.push(product_read::run(&bench, ceiling, product).await);
        }
    }
    if only.runs(Scenario::FullFlow) {
        for clients in full_flow::CLIENTS {
            rows.push(full_flow::run(&bench, pg, clients).await?);
        }
    }
    if only.runs(Scenario::LimitedSale) {
        rows.push(limited_sale::run(&bench, pg).await?);
    }
    if only.runs(Scenario::PreSale) {
        rows.push(pre_sale::run(&bench, ceiling).await);
    }
    // Last: every later row reports the server's peak RSS so far, which its streams raise.
    let mut live = None;
    if only.runs(Scenario::LiveStock) {
        let (live_rows, figures) = live_stock::run(&bench).await?;
        rows.extend(live_rows);
        live = Some(figures);
    }
    Ok(Results { rows, hot, live })
}

/// One back end under test: its database, the server on it, the probe watching them and
/// the clients that load them.
struct Bench {
    /// The back end's name as the table shows it.
    name: &'static str,
    /// How long each measurement runs.
    duration: Duration,
    // Dropped in this order: the server stops before its database goes.
    /// The server under load.
    app: TestApp,
    /// Its fresh database.
    db: TestDb,
    /// Watches the server and the database.
    probe: Probe,
    /// The HTTP client every request goes through, with a pool for the largest load.
    http: reqwest::Client,
    /// The generated SDK over `http`.
    sdk: client::Client,
}

/// A load measured under the probe, before its row is written.
struct Measured {
    /// What the clients measured.
    load: Load,
    /// CPU used meanwhile.
    cpu: CpuShare,
    /// What PostgreSQL's busy backends waited on, or `—`.
    waits: String,
}

impl Bench {
    /// Starts the release `flashsale-api` with its worker loops on a fresh `backend` database.
    async fn start(backend: Backend, seconds: u64) -> anyhow::Result<Self> {
        let db = TestDb::new(backend).await.context("database")?;
        // The customer key lets limited-sale's customers present tokens; anonymous holds,
        // which every other scenario sends, never look at it.
        let env: Vec<(&str, &str)> = [
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("WITH_WORKER", "1"),
            ("HOLD_TTL_SECS", "3600"),
            ("MAX_QTY_PER_HOLD", "10"),
            ("RUST_LOG", "warn,flashsale_api=info"),
            ("DB_MAX_CONNECTIONS", "32"),
        ]
        .into_iter()
        .chain(testkit::CUSTOMER_ENV)
        .collect();
        let app = TestApp::spawn(&db, &env).await;
        let probe = Probe::new(
            app.pid(),
            (backend == Backend::Postgres).then(|| db.url.clone()),
        )?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")?;
        let sdk = client::Client::new_with_client(&app.url(""), http.clone());
        let name = match backend {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        };
        Ok(Self {
            name,
            duration: Duration::from_secs(seconds),
            app,
            db,
            probe,
            http,
            sdk,
        })
    }

    /// Runs `request` on `clients` closed-loop clients for the bench's duration under the
    /// probe; `label` names the run in the progress output.
    async fn measure<F, Fut, E>(&self, label: &str, clients: usize, request: F) -> Measured
    where
        F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<u16, E>> + Send,
        E: Send,
    {
        let probing = self.probe.start().await;
        let label = format!("{}: {label}", self.name);
        let load = load(&label, clients, self.duration, request).await;
        let (cpu, waits) = self.probe.finish(probing).await;
        Measured { load, cpu, waits }
    }

    /// The table row of `measured`: `scenario` (after the back end's name) beside the
    /// baseline `baseline_name` at `baseline_rate` per second, with the server's peak RSS
    /// so far and the scenario's check `note`.
    fn row(
        &self,
        measured: Measured,
        scenario: &str,
        baseline_name: &str,
        baseline_rate: f64,
        note: String,
    ) -> Row {
        Row {
            scenario: format!("{} {scenario}", self.name),
            load: measured.load,
            cpu: measured.cpu,
            waits: measured.waits,
            baseline_name: baseline_name.to_owned(),
            baseline_rate,
            rss_mib: self.probe.peak_rss_mib(),
            note,
        }
    }
}

/// The HTTP status of an SDK answer, documented or not; an error only when none came.
fn status<T, E>(
    answer: Result<client::ResponseValue<T>, client::Error<E>>,
) -> Result<u16, Box<client::Error<E>>> {
    match answer {
        Ok(value) => Ok(value.status().as_u16()),
        Err(e) => e.status().map(|s| s.as_u16()).ok_or_else(|| Box::new(e)),
    }
}

/// `POST /api/holds` of one unit of `product_id`; the HTTP status.
// reqwest, not the SDK: the SDK reads and decodes every answer, and on a machine where the
// load generator shares the cores with the server that costs the server a tenth of its rate.
async fn hold(http: reqwest::Client, url: String, product_id: i64) -> reqwest::Result<u16> {
    let body = serde_json::json!({"product_id": product_id, "qty": 1});
    Ok(http.post(url).json(&body).send().await?.status().as_u16())
}

/// `POST /api/holds` of one unit of `product_id` as the holder of `bearer` (an
/// `Authorization` value; anonymous for `None`): the HTTP status, and the `code` of a 409's
/// error body. Any other answer is left unread (see [`hold`]).
async fn hold_as(
    http: reqwest::Client,
    url: String,
    product_id: i64,
    bearer: Option<HeaderValue>,
) -> reqwest::Result<(u16, Option<String>)> {
    let body = serde_json::json!({"product_id": product_id, "qty": 1});
    let mut request = http.post(url).json(&body);
    if let Some(bearer) = bearer {
        request = request.header(AUTHORIZATION, bearer);
    }
    let answer = request.send().await?;
    let status = answer.status().as_u16();
    if status != 409 {
        return Ok((status, None));
    }
    let body = answer.bytes().await?;
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    Ok((status, code))
}

/// `GET url`; the HTTP status, the answer left unread (see [`hold`]).
async fn get(http: reqwest::Client, url: String) -> reqwest::Result<u16> {
    Ok(http.get(url).send().await?.status().as_u16())
}
