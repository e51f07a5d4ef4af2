//! Every scenario against one back end, in the order the table shows them: the HTTP
//! ceiling, hot-holds at each client count, the sellout, product reads and the full flow.
//! The full flow goes through the generated SDK (but for the signed webhook); the hot loops
//! that measure the server's ceiling send raw requests and leave the answers unread (see
//! [`hold`]).

mod full_flow;
mod health;
mod hot_holds;
mod product_read;
mod sellout;

use std::{future::Future, time::Duration};

use anyhow::Context;
use testkit::{Backend, TestApp, TestDb};

use crate::{
    load::{Load, load},
    pgbench::PgBaselines,
    probes::{CpuShare, Probe},
    report::{HotCurve, Row},
};

/// The secret the API checks webhook signatures with.
const WEBHOOK_SECRET: &str = "bench-secret";

/// Runs every scenario on a fresh `backend` database, `seconds` each: the table rows and
/// the hot-holds curve for the chart.
pub async fn run(
    backend: Backend,
    pg: &PgBaselines,
    seconds: u64,
) -> anyhow::Result<(Vec<Row>, HotCurve)> {
    let bench = Bench::start(backend, seconds).await?;
    let health = health::run(&bench).await;
    let ceiling = health.load.rate();
    let mut rows = vec![health];
    let hot = hot_holds::run(&bench, pg, &mut rows).await;
    let (sellout, product) = sellout::run(&bench, ceiling).await;
    rows.push(sellout);
    rows.push(product_read::run(&bench, ceiling, product).await);
    rows.push(full_flow::run(&bench, pg).await?);
    Ok((rows, hot))
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
        let env = [
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("WITH_WORKER", "1"),
            ("HOLD_TTL_SECS", "3600"),
            ("MAX_QTY_PER_HOLD", "10"),
            ("RUST_LOG", "warn,flashsale_api=info"),
            ("DB_MAX_CONNECTIONS", "32"),
        ];
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

/// `GET url`; the HTTP status, the answer left unread (see [`hold`]).
async fn get(http: reqwest::Client, url: String) -> reqwest::Result<u16> {
    Ok(http.get(url).send().await?.status().as_u16())
}
