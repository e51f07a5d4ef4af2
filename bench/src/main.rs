//! `flashsale-bench`: drives a live `flashsale-api` (release build, fresh database) with
//! closed-loop clients and reports throughput, latency percentiles, status counts and the
//! server's peak RSS, each beside a baseline measured in the same run:
//!
//! - pgbench on PostgreSQL: one conditional `UPDATE` of one hot row, and the naive hold
//!   transaction (`SELECT … FOR UPDATE`, `INSERT`, `UPDATE`), at the same client counts;
//! - `GET /health` of the same server: the HTTP ceiling.
//!
//! `cargo run --release -p bench -- --write` reproduces BENCHMARKS.md.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use charts_rs::{AxisScale, LineChart, Series};
use clap::Parser;
use hdrhistogram::Histogram;
use sea_orm::ConnectionTrait;
use serde_json::json;
use testkit::{Backend, TestApp, TestDb};

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "flashsale-bench",
    about = "flashsale load generator and benchmarks"
)]
struct Cli {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Write the results into BENCHMARKS.md (between its result markers).
    #[arg(long)]
    write: bool,
}

const WEBHOOK_SECRET: &str = "bench-secret";
const CLIENT_COUNTS: [usize; 3] = [16, 64, 256];

/// What one load run measured.
struct Load {
    requests: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn pct_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    fn statuses(&self) -> String {
        let mut s: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        if self.errors > 0 {
            s.push(format!("err×{}", self.errors));
        }
        s.join(" ")
    }
}

/// Runs `clients` closed-loop clients for `duration`; each calls `request(client, seq)`
/// and reports the HTTP status. Prints the rate of the last second, every second.
async fn load<F, Fut>(label: &str, clients: usize, duration: Duration, request: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u16, reqwest::Error>> + Send,
{
    eprintln!("{label}");
    let request = Arc::new(request);
    let started = Instant::now();
    let deadline = started + duration;
    let done = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn({
        let done = done.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            for second in 1.. {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                eprintln!("  {second:>3} s  {:>7} req/s", now - last);
                last = now;
            }
        }
    });
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (request, done) = (request.clone(), done.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let mut statuses = BTreeMap::new();
                let (mut n, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match request(client, n).await {
                        Ok(status) => *statuses.entry(status).or_insert(0) += 1,
                        Err(_) => errors += 1,
                    }
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                (hist, statuses, n, errors)
            })
        })
        .collect();
    let mut total = Load {
        requests: 0,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        statuses: BTreeMap::new(),
        errors: 0,
    };
    for task in tasks {
        let (hist, statuses, n, errors) = task.await.expect("client task");
        total.latency_us.add(hist).expect("same bounds");
        for (k, v) in statuses {
            *total.statuses.entry(k).or_insert(0) += v;
        }
        total.requests += n;
        total.errors += errors;
    }
    total.elapsed = started.elapsed();
    progress.abort();
    total
}

/// Peak resident memory of process `pid` so far, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What pgbench measured.
#[derive(Clone, Copy)]
struct PgRun {
    tps: f64,
    latency_avg_ms: f64,
}

/// CPU used during one measurement, in percent of one core (this machine has two).
#[derive(Clone, Copy, Default)]
struct CpuShare {
    api: f64,
    postgres: f64,
    bench: f64,
}

/// CPU ticks (user + system) of a process so far; 0 once it is gone.
fn cpu_ticks(process: &procfs::process::Process) -> u64 {
    process.stat().map_or(0, |s| s.utime + s.stime)
}

/// CPU ticks of every PostgreSQL process so far.
fn postgres_ticks() -> u64 {
    procfs::process::all_processes().map_or(0, |all| {
        all.flatten()
            .filter_map(|p| p.stat().ok())
            .filter(|s| s.comm == "postgres")
            .map(|s| s.utime + s.stime)
            .sum()
    })
}

/// Watches where the time goes while a scenario runs: CPU of the server, PostgreSQL and
/// the load generator, and what PostgreSQL's busy backends wait on (sampled from
/// `pg_stat_activity` every 20 ms).
struct Probe {
    api: procfs::process::Process,
    /// The scenario database, when it is PostgreSQL.
    pg_url: Option<String>,
}

/// A measurement in progress.
struct Probing {
    at: Instant,
    ticks: (u64, u64, u64),
    stop: Arc<std::sync::atomic::AtomicBool>,
    waits: Option<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
}

impl Probe {
    fn ticks(&self) -> (u64, u64, u64) {
        let me = procfs::process::Process::myself().expect("own /proc entry");
        (cpu_ticks(&self.api), postgres_ticks(), cpu_ticks(&me))
    }

    async fn start(&self) -> Probing {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waits = match &self.pg_url {
            Some(url) => {
                let conn = sea_orm::Database::connect(url.as_str())
                    .await
                    .expect("probe connection");
                let stop = stop.clone();
                Some(tokio::spawn(async move {
                    let mut counts = BTreeMap::new();
                    while !stop.load(Ordering::Relaxed) {
                        let rows = conn
                            .query_all_raw(sea_orm::Statement::from_string(
                                conn.get_database_backend(),
                                "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w \
                                 FROM pg_stat_activity WHERE datname = current_database() \
                                 AND pid <> pg_backend_pid() AND state <> 'idle'",
                            ))
                            .await
                            .unwrap_or_default();
                        for row in rows {
                            if let Ok(w) = row.try_get::<String>("", "w") {
                                *counts.entry(w).or_insert(0) += 1;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = conn.close().await;
                    counts
                }))
            }
            None => None,
        };
        Probing {
            at: Instant::now(),
            ticks: self.ticks(),
            stop,
            waits,
        }
    }

    /// CPU shares since `start`, and the commonest waits of busy PostgreSQL backends.
    async fn finish(&self, probing: Probing) -> (CpuShare, String) {
        let (api, postgres, bench) = self.ticks();
        let per_s = procfs::ticks_per_second() as f64 * probing.at.elapsed().as_secs_f64();
        let pct = |now: u64, then: u64| now.saturating_sub(then) as f64 / per_s * 100.0;
        let cpu = CpuShare {
            api: pct(api, probing.ticks.0),
            postgres: pct(postgres, probing.ticks.1),
            bench: pct(bench, probing.ticks.2),
        };
        probing.stop.store(true, Ordering::Relaxed);
        let waits = match probing.waits {
            Some(task) => {
                let counts = task.await.unwrap_or_default();
                let total: u64 = counts.values().sum();
                let mut top: Vec<(String, u64)> = counts.into_iter().collect();
                top.sort_by_key(|w| std::cmp::Reverse(w.1));
                top.iter()
                    .take(4)
                    .map(|(w, n)| format!("{w} {:.0} %", *n as f64 * 100.0 / total.max(1) as f64))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            None => "—".to_owned(),
        };
        (cpu, waits)
    }
}

/// pgbench on `script` at `clients` on the database at `url`; its per-second progress goes
/// to stderr.
fn pgbench(url: &str, script: &str, clients: usize, seconds: u64) -> anyhow::Result<PgRun> {
    let file = std::env::temp_dir().join(format!(
        "flashsale-bench-{}.sql",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&file, script)?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-P",
            "1",
            "-f",
        ])
        .arg(&file)
        .arg(url)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run pgbench")?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(prefix)
                    .and_then(|r| r.split_whitespace().next()?.parse().ok())
            })
            .with_context(|| format!("pgbench printed no `{prefix}`: {text}"))
    };
    Ok(PgRun {
        tps: value("tps = ")?,
        latency_avg_ms: value("latency average = ")?,
    })
}

/// Baselines of bare PostgreSQL on one hot row.
struct PgBaselines {
    update: BTreeMap<usize, PgRun>,
    naive_hold: BTreeMap<usize, PgRun>,
}

async fn pg_baselines(seconds: u64) -> anyhow::Result<PgBaselines> {
    let db = TestDb::new(Backend::Postgres)
        .await
        .context("PostgreSQL is needed for the baselines")?;
    let conn = sea_orm::Database::connect(db.url.as_str()).await?;
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT current_setting('max_connections')::int AS n",
        ))
        .await?
        .context("max_connections")?;
    let max: i32 = row.try_get("", "n")?;
    if max < 300 {
        bail!(
            "PostgreSQL allows {max} connections; pgbench at 256 clients plus the API need 300: \
             run `ALTER SYSTEM SET max_connections = 300` and restart PostgreSQL"
        );
    }
    conn.execute_unprepared(
        "CREATE TABLE products (id int PRIMARY KEY, available bigint NOT NULL);
         INSERT INTO products VALUES (1, 1000000000000);
         CREATE TABLE holds (id bigserial PRIMARY KEY, product_id int NOT NULL REFERENCES products, qty int NOT NULL);",
    )
    .await?;
    conn.close().await?;
    let update = "UPDATE products SET available = available - 1 WHERE id = 1 AND available >= 1;\n";
    let naive = "BEGIN;\nSELECT available FROM products WHERE id = 1 FOR UPDATE;\n\
                 INSERT INTO holds (product_id, qty) VALUES (1, 1);\n\
                 UPDATE products SET available = available - 1 WHERE id = 1;\nCOMMIT;\n";
    let mut b = PgBaselines {
        update: BTreeMap::new(),
        naive_hold: BTreeMap::new(),
    };
    for c in CLIENT_COUNTS {
        eprintln!("baseline: pgbench hot-row UPDATE, {c} clients");
        b.update.insert(c, pgbench(&db.url, update, c, seconds)?);
        eprintln!("baseline: pgbench naive hold transaction, {c} clients");
        b.naive_hold.insert(c, pgbench(&db.url, naive, c, seconds)?);
    }
    Ok(b)
}

/// One row of the results table.
struct Row {
    scenario: String,
    load: Load,
    cpu: CpuShare,
    waits: String,
    baseline_name: String,
    baseline_rate: f64,
    rss_mib: f64,
    note: String,
}

/// `POST /api/holds` of one unit; the HTTP status.
async fn post_hold(
    http: reqwest::Client,
    url: String,
    product: i64,
) -> Result<u16, reqwest::Error> {
    let r = http
        .post(url)
        .json(&json!({"product_id": product, "qty": 1}))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// hot-holds at each client count: (holds/s, p99 ms).
type HotCurve = BTreeMap<usize, (f64, f64)>;

/// Every scenario against one back end.
async fn scenarios(
    backend: Backend,
    pg: &PgBaselines,
    seconds: u64,
) -> anyhow::Result<(Vec<Row>, HotCurve)> {
    let duration = Duration::from_secs(seconds);
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
    let pid = app.pid();
    let probe = Probe {
        api: procfs::process::Process::new(i32::try_from(pid)?)?,
        pg_url: (backend == Backend::Postgres).then(|| db.url.clone()),
    };
    let base = app.url("");
    let http = client();
    let name = match backend {
        Backend::Postgres => "PostgreSQL",
        Backend::Sqlite => "SQLite",
    };
    let mut rows = Vec::new();
    let mut hot = HotCurve::new();

    let probing = probe.start().await;
    let health = {
        let (http, url) = (http.clone(), format!("{base}/health"));
        load(
            &format!("{name}: GET /health, 256 clients"),
            256,
            duration,
            move |_, _| {
                let (http, url) = (http.clone(), url.clone());
                async move { Ok(http.get(url).send().await?.status().as_u16()) }
            },
        )
        .await
    };
    let (cpu, waits) = probe.finish(probing).await;
    let ceiling = health.rate();
    rows.push(Row {
        cpu,
        waits,
        scenario: format!("{name} GET /health (HTTP ceiling), 256 clients"),
        baseline_name: "—".into(),
        baseline_rate: ceiling,
        rss_mib: peak_rss_mib(pid),
        note: String::new(),
        load: health,
    });

    for c in CLIENT_COUNTS {
        let product = app.create_product(1_000_000_000, 100).await;
        let (http, url) = (http.clone(), format!("{base}/api/holds"));
        let probing = probe.start().await;
        let l = load(
            &format!("{name}: hot-holds, {c} clients"),
            c,
            duration,
            move |_, _| post_hold(http.clone(), url.clone(), product),
        )
        .await;
        let granted = *l.statuses.get(&201).unwrap_or(&0) as i64;
        let left = app.available(product).await;
        let note = if left == 1_000_000_000 - granted {
            "stock exact".to_owned()
        } else {
            format!("STOCK MISMATCH: {left} left")
        };
        let (cpu, waits) = probe.finish(probing).await;
        hot.insert(c, (l.rate(), l.pct_ms(0.99)));
        rows.push(Row {
            cpu,
            waits,
            scenario: format!("{name} hot-holds, {c} clients"),
            baseline_name: format!("pgbench UPDATE ×{c}"),
            baseline_rate: pg.update[&c].tps,
            rss_mib: peak_rss_mib(pid),
            note,
            load: l,
        });
    }

    let product = app.create_product(1000, 100).await;
    let started = Instant::now();
    let last_grant_us = Arc::new(AtomicU64::new(0));
    let (http2, url, last) = (
        http.clone(),
        format!("{base}/api/holds"),
        last_grant_us.clone(),
    );
    let selling = load(
        &format!("{name}: sellout, 256 clients on 1,000 units"),
        256,
        duration,
        move |_, _| {
            let (http, url, last) = (http2.clone(), url.clone(), last.clone());
            async move {
                let status = post_hold(http, url, product).await?;
                if status == 201 {
                    last.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Ok(status)
            }
        },
    )
    .await;
    let granted = *selling.statuses.get(&201).unwrap_or(&0);
    let sold_out_s = last_grant_us.load(Ordering::Relaxed) as f64 / 1e6;
    // Sold out now: what remains is the rejection rate.
    let (http2, url) = (http.clone(), format!("{base}/api/holds"));
    let probing = probe.start().await;
    let rejecting = load(
        &format!("{name}: sold out, 256 clients"),
        256,
        duration,
        move |_, _| post_hold(http2.clone(), url.clone(), product),
    )
    .await;
    let (cpu, waits) = probe.finish(probing).await;
    rows.push(Row {
        cpu,
        waits,
        scenario: format!("{name} sellout: 1,000 units, 256 clients, then 409s"),
        baseline_name: "GET /health ×256".into(),
        baseline_rate: ceiling,
        rss_mib: peak_rss_mib(pid),
        note: format!(
            "{granted} granted{}; sold out in {sold_out_s:.2} s",
            if granted == 1000 {
                " (exactly the stock)"
            } else {
                " WRONG: must be 1000"
            },
        ),
        load: rejecting,
    });

    let (http2, url) = (http.clone(), format!("{base}/api/products/{product}"));
    let probing = probe.start().await;
    let read = load(
        &format!("{name}: product-read, 256 clients"),
        256,
        duration,
        move |_, _| {
            let (http, url) = (http2.clone(), url.clone());
            async move { Ok(http.get(url).send().await?.status().as_u16()) }
        },
    )
    .await;
    let (cpu, waits) = probe.finish(probing).await;
    rows.push(Row {
        cpu,
        waits,
        scenario: format!("{name} product-read, 256 clients"),
        baseline_name: "GET /health ×256".into(),
        baseline_rate: ceiling,
        rss_mib: peak_rss_mib(pid),
        note: String::new(),
        load: read,
    });

    let product = app.create_product(1_000_000_000, 100).await;
    let (http2, base2) = (http.clone(), base.clone());
    let probing = probe.start().await;
    let flow = load(&format!("{name}: full-flow, 64 clients"), 64, duration, move |client, seq| {
        let (http, base) = (http2.clone(), base2.clone());
        async move {
            let hold: serde_json::Value = http
                .post(format!("{base}/api/holds"))
                .json(&json!({"product_id": product, "qty": 1}))
                .send()
                .await?
                .json()
                .await?;
            let hold_id = hold["hold_id"].as_i64().unwrap_or(0);
            http.post(format!("{base}/api/orders")).json(&json!({"hold_id": hold_id})).send().await?;
            let body = json!({"idempotency_key": format!("bench-{client}-{seq}"), "hold_id": hold_id, "status": "paid"})
                .to_string();
            let sig = testkit::sign(WEBHOOK_SECRET, testkit::unix_now(), body.as_bytes());
            let r = http
                .post(format!("{base}/api/payments/webhook"))
                .header("content-type", "application/json")
                .header("x-signature", sig)
                .body(body)
                .send()
                .await?;
            Ok(r.status().as_u16())
        }
    })
    .await;
    let (cpu, waits) = probe.finish(probing).await;
    let (audit_ok, _) = testkit::audit(&db.url);
    let paid = app.get("/metrics").await.body.as_str().and_then(|m| {
        m.lines().find_map(|l| {
            l.strip_prefix(r#"flashsale_orders{status="paid"} "#)?
                .parse::<u64>()
                .ok()
        })
    });
    let all_paid = paid == flow.statuses.get(&200).copied();
    rows.push(Row {
        cpu,
        waits,
        scenario: format!("{name} full-flow (hold → order → signed paid webhook), 64 clients"),
        baseline_name: "pgbench naive hold ×64".into(),
        baseline_rate: pg.naive_hold[&64].tps,
        rss_mib: peak_rss_mib(pid),
        note: format!(
            "{} paid orders, {}; audit {}",
            paid.unwrap_or(0),
            if all_paid {
                "every flow paid"
            } else {
                "NOT EVERY FLOW PAID"
            },
            if audit_ok { "passes" } else { "FAILS" }
        ),
        load: flow,
    });
    Ok((rows, hot))
}

/// The chart BENCHMARKS.md embeds: hot-holds throughput and p99 latency against client
/// count, flashsale on both back ends beside the pgbench baselines.
fn chart(pg: &PgBaselines, postgres: &HotCurve, sqlite: &HotCurve) -> anyhow::Result<String> {
    const WIDTH: f32 = 760.0;
    const HEIGHT: f32 = 420.0;
    let x: Vec<String> = CLIENT_COUNTS
        .iter()
        .map(|c| format!("{c} clients"))
        .collect();
    let line = |name: &str, values: Vec<f64>| -> Series {
        (
            name,
            values.into_iter().map(|v| v as f32).collect::<Vec<f32>>(),
        )
            .into()
    };
    let per_clients = |f: &dyn Fn(usize) -> f64| CLIENT_COUNTS.iter().map(|&c| f(c)).collect();
    let draw = |title: &str, axis: &str, series: Vec<Series>| -> anyhow::Result<String> {
        let mut chart = LineChart::new(series, x.clone());
        chart.title.text = title.to_owned();
        chart.width = WIDTH;
        chart.height = HEIGHT;
        chart.legend.margin = Some(charts_rs::Box {
            top: 30.0,
            ..Default::default()
        });
        let y = &mut chart.y_axis_configs[0];
        y.scale = AxisScale::Log(10.0);
        y.title = Some(axis.to_owned());
        chart.svg().map_err(|e| anyhow::anyhow!("chart: {e:?}"))
    };
    let throughput = draw(
        "hot-holds: holds/s on one product, higher is better",
        "per second, log scale",
        vec![
            line("flashsale, PostgreSQL", per_clients(&|c| postgres[&c].0)),
            line("flashsale, SQLite", per_clients(&|c| sqlite[&c].0)),
            line(
                "pgbench hot-row UPDATE",
                per_clients(&|c| pg.update[&c].tps),
            ),
            line(
                "pgbench naive hold",
                per_clients(&|c| pg.naive_hold[&c].tps),
            ),
        ],
    )?;
    let latency = draw(
        "hot-holds: latency in ms, lower is better",
        "ms, log scale",
        vec![
            line("flashsale PostgreSQL p99", per_clients(&|c| postgres[&c].1)),
            line("flashsale SQLite p99", per_clients(&|c| sqlite[&c].1)),
            line(
                "pgbench UPDATE avg",
                per_clients(&|c| pg.update[&c].latency_avg_ms),
            ),
            line(
                "pgbench naive hold avg",
                per_clients(&|c| pg.naive_hold[&c].latency_avg_ms),
            ),
        ],
    )?;
    Ok(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" viewBox="0 0 {WIDTH} {h}">
<g>{throughput}</g>
<g transform="translate(0 {HEIGHT})">{latency}</g>
</svg>
"#,
        h = 2.0 * HEIGHT
    ))
}

fn table(rows: &[Row], pg: &PgBaselines) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| scenario | req/s | baseline | baseline/s | ratio | p50 ms | p90 ms | p99 ms | max ms | statuses | peak RSS MiB | check |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = if r.baseline_name == "—" {
            "—".to_owned()
        } else {
            format!("{:.2}×", r.load.rate() / r.baseline_rate)
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {} |",
            r.scenario,
            r.load.rate(),
            r.baseline_name,
            r.baseline_rate,
            ratio,
            r.load.pct_ms(0.50),
            r.load.pct_ms(0.90),
            r.load.pct_ms(0.99),
            r.load.latency_us.max() as f64 / 1000.0,
            r.load.statuses(),
            r.rss_mib,
            r.note
        );
    }
    let _ = writeln!(
        t,
        "\nWhere the time goes: CPU in % of one core (the machine has two), and what \
         PostgreSQL's busy backends were doing (share of 20 ms samples of `pg_stat_activity`; \
         `CPU`: running, `IO:WALSync`: waiting for the commit's fsync, `Lock:…`: waiting for a \
         row lock, `Client:ClientRead`: waiting for the API's next statement inside a \
         transaction).\n"
    );
    let _ = writeln!(
        t,
        "| scenario | API | PostgreSQL | load generator | PostgreSQL backends busy with |\n|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {:.0} | {} |",
            r.scenario, r.cpu.api, r.cpu.postgres, r.cpu.bench, r.waits
        );
    }
    let _ = writeln!(t, "\npgbench baselines (transactions/s):\n");
    let _ = writeln!(
        t,
        "| clients | hot-row UPDATE | naive hold transaction |\n|---|---|---|"
    );
    for c in CLIENT_COUNTS {
        let _ = writeln!(
            t,
            "| {c} | {:.0} | {:.0} |",
            pg.update[&c].tps, pg.naive_hold[&c].tps
        );
    }
    t
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pg = pg_baselines(cli.seconds).await?;
    let (mut rows, postgres) = scenarios(Backend::Postgres, &pg, cli.seconds).await?;
    let (sqlite_rows, sqlite) = scenarios(Backend::Sqlite, &pg, cli.seconds).await?;
    rows.extend(sqlite_rows);
    let table = table(&rows, &pg);
    println!("{table}");
    if cli.write {
        let svg = chart(&pg, &postgres, &sqlite)?;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benchmarks.svg");
        std::fs::write(&path, svg).context("write benchmarks.svg")?;
        eprintln!("wrote {}", path.display());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path).context("read BENCHMARKS.md")?;
        let (start, end) = ("<!-- results:start -->", "<!-- results:end -->");
        let (Some(a), Some(b)) = (doc.find(start), doc.find(end)) else {
            bail!("BENCHMARKS.md has no result markers");
        };
        let when = chrono::Utc::now().format("%Y-%m-%d");
        let new = format!(
            "{}{start}\n\nMeasured {when} with `--seconds {}`.\n\n{table}\n{}",
            &doc[..a],
            cli.seconds,
            &doc[b..]
        );
        std::fs::write(&path, new)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
