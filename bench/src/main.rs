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
use clap::Parser;
use hdrhistogram::Histogram;
use sea_orm::ConnectionTrait;
use serde_json::json;
use tests::{Backend, TestApp, TestDb};

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
/// and reports the HTTP status.
async fn load<F, Fut>(clients: usize, duration: Duration, request: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u16, reqwest::Error>> + Send,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let request = request.clone();
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

/// pgbench transactions per second of `script` at `clients` on the database at `url`.
fn pgbench(url: &str, script: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
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
            "-f",
        ])
        .arg(&file)
        .arg(url)
        .output()
        .context("run pgbench")?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
        })
        .with_context(|| {
            format!(
                "pgbench printed no tps: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Baselines of bare PostgreSQL on one hot row.
struct PgBaselines {
    update: BTreeMap<usize, f64>,
    naive_hold: BTreeMap<usize, f64>,
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

/// Every scenario against one back end.
async fn scenarios(backend: Backend, pg: &PgBaselines, seconds: u64) -> anyhow::Result<Vec<Row>> {
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
    let base = app.url("");
    let http = client();
    let name = match backend {
        Backend::Postgres => "PostgreSQL",
        Backend::Sqlite => "SQLite",
    };
    let mut rows = Vec::new();

    eprintln!("{name}: GET /health, 256 clients");
    let health = {
        let (http, url) = (http.clone(), format!("{base}/health"));
        load(256, duration, move |_, _| {
            let (http, url) = (http.clone(), url.clone());
            async move { Ok(http.get(url).send().await?.status().as_u16()) }
        })
        .await
    };
    let ceiling = health.rate();
    rows.push(Row {
        scenario: format!("{name} GET /health (HTTP ceiling), 256 clients"),
        baseline_name: "—".into(),
        baseline_rate: ceiling,
        rss_mib: peak_rss_mib(pid),
        note: String::new(),
        load: health,
    });

    for c in CLIENT_COUNTS {
        eprintln!("{name}: hot-holds, {c} clients");
        let product = app.create_product(1_000_000_000, 100).await;
        let (http, url) = (http.clone(), format!("{base}/api/holds"));
        let l = load(c, duration, move |_, _| {
            post_hold(http.clone(), url.clone(), product)
        })
        .await;
        let granted = *l.statuses.get(&201).unwrap_or(&0) as i64;
        let left = app.available(product).await;
        let note = if left == 1_000_000_000 - granted {
            "stock exact".to_owned()
        } else {
            format!("STOCK MISMATCH: {left} left")
        };
        rows.push(Row {
            scenario: format!("{name} hot-holds, {c} clients"),
            baseline_name: format!("pgbench UPDATE ×{c}"),
            baseline_rate: pg.update[&c],
            rss_mib: peak_rss_mib(pid),
            note,
            load: l,
        });
    }

    eprintln!("{name}: sellout, 256 clients on 1,000 units");
    let product = app.create_product(1000, 100).await;
    let started = Instant::now();
    let last_grant_us = Arc::new(AtomicU64::new(0));
    let (http2, url, last) = (
        http.clone(),
        format!("{base}/api/holds"),
        last_grant_us.clone(),
    );
    let selling = load(256, duration, move |_, _| {
        let (http, url, last) = (http2.clone(), url.clone(), last.clone());
        async move {
            let status = post_hold(http, url, product).await?;
            if status == 201 {
                last.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            Ok(status)
        }
    })
    .await;
    let granted = *selling.statuses.get(&201).unwrap_or(&0);
    let sold_out_s = last_grant_us.load(Ordering::Relaxed) as f64 / 1e6;
    // Sold out now: what remains is the rejection rate.
    let (http2, url) = (http.clone(), format!("{base}/api/holds"));
    let rejecting = load(256, duration, move |_, _| {
        post_hold(http2.clone(), url.clone(), product)
    })
    .await;
    rows.push(Row {
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

    eprintln!("{name}: product-read, 256 clients");
    let (http2, url) = (http.clone(), format!("{base}/api/products/{product}"));
    let read = load(256, duration, move |_, _| {
        let (http, url) = (http2.clone(), url.clone());
        async move { Ok(http.get(url).send().await?.status().as_u16()) }
    })
    .await;
    rows.push(Row {
        scenario: format!("{name} product-read, 256 clients"),
        baseline_name: "GET /health ×256".into(),
        baseline_rate: ceiling,
        rss_mib: peak_rss_mib(pid),
        note: String::new(),
        load: read,
    });

    eprintln!("{name}: full-flow, 64 clients");
    let product = app.create_product(1_000_000_000, 100).await;
    let (http2, base2) = (http.clone(), base.clone());
    let flow = load(64, duration, move |client, seq| {
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
            let sig = tests::sign(WEBHOOK_SECRET, tests::unix_now(), body.as_bytes());
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
    let (audit_ok, _) = tests::audit(&db.url);
    let paid = app.get("/metrics").await.body.as_str().and_then(|m| {
        m.lines().find_map(|l| {
            l.strip_prefix(r#"flashsale_orders{status="paid"} "#)?
                .parse::<u64>()
                .ok()
        })
    });
    let all_paid = paid == flow.statuses.get(&200).copied();
    rows.push(Row {
        scenario: format!("{name} full-flow (hold → order → signed paid webhook), 64 clients"),
        baseline_name: "pgbench naive hold ×64".into(),
        baseline_rate: pg.naive_hold[&64],
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
    Ok(rows)
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
    let _ = writeln!(t, "\npgbench baselines (transactions/s):\n");
    let _ = writeln!(
        t,
        "| clients | hot-row UPDATE | naive hold transaction |\n|---|---|---|"
    );
    for c in CLIENT_COUNTS {
        let _ = writeln!(
            t,
            "| {c} | {:.0} | {:.0} |",
            pg.update[&c], pg.naive_hold[&c]
        );
    }
    t
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pg = pg_baselines(cli.seconds).await?;
    let mut rows = scenarios(Backend::Postgres, &pg, cli.seconds).await?;
    rows.extend(scenarios(Backend::Sqlite, &pg, cli.seconds).await?);
    let table = table(&rows, &pg);
    println!("{table}");
    if cli.write {
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
