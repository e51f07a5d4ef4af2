//! The baselines: pgbench on bare PostgreSQL, one hot row, at the same client counts as the
//! scenarios: one conditional `UPDATE`, and the naive hold transaction (`SELECT … FOR
//! UPDATE`, `INSERT`, `UPDATE`).

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context, bail};
use sea_orm::ConnectionTrait;
use testkit::{Backend, TestDb};

use crate::CLIENT_COUNTS;

/// What pgbench measured.
#[derive(Clone, Copy)]
pub struct PgRun {
    /// Transactions per second.
    pub tps: f64,
    /// Average transaction latency, in milliseconds.
    pub latency_avg_ms: f64,
}

/// Baselines of bare PostgreSQL on one hot row, by client count: every count unless the
/// run was narrowed with `--only`.
pub struct PgBaselines {
    /// The conditional `UPDATE` of the hot row.
    pub update: BTreeMap<usize, PgRun>,
    /// The naive hold transaction on the hot row.
    pub naive_hold: BTreeMap<usize, PgRun>,
}

/// The two pgbench scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// The conditional `UPDATE` of the hot row.
    Update,
    /// The naive hold transaction on the hot row.
    NaiveHold,
}

/// Runs each pgbench script at each client count that `needed` asks for, `seconds` each,
/// on a fresh database; touches no database when it asks for none.
pub async fn baselines(
    seconds: u64,
    needed: impl Fn(Script, usize) -> bool,
) -> anyhow::Result<PgBaselines> {
    let mut b = PgBaselines {
        update: BTreeMap::new(),
        naive_hold: BTreeMap::new(),
    };
    let any = CLIENT_COUNTS
        .iter()
        .any(|&c| needed(Script::Update, c) || needed(Script::NaiveHold, c));
    if !any {
        return Ok(b);
    }
    let db = TestDb::new(Backend::Postgres)
        .await
        .context("PostgreSQL is needed for the baselines")?;
    prepare(&db.url).await?;
    let update = "UPDATE products SET available = available - 1 WHERE id = 1 AND available >= 1;\n";
    let naive = "BEGIN;\nSELECT available FROM products WHERE id = 1 FOR UPDATE;\n\
                 INSERT INTO holds (product_id, qty) VALUES (1, 1);\n\
                 UPDATE products SET available = available - 1 WHERE id = 1;\nCOMMIT;\n";
    for c in CLIENT_COUNTS {
        if needed(Script::Update, c) {
            eprintln!("baseline: pgbench hot-row UPDATE, {c} clients");
            b.update.insert(c, pgbench(&db.url, update, c, seconds)?);
        }
        if needed(Script::NaiveHold, c) {
            eprintln!("baseline: pgbench naive hold transaction, {c} clients");
            b.naive_hold.insert(c, pgbench(&db.url, naive, c, seconds)?);
        }
    }
    Ok(b)
}

/// Checks that PostgreSQL allows enough connections, then creates the hot row and the
/// holds table the scripts use.
async fn prepare(url: &str) -> anyhow::Result<()> {
    let conn = sea_orm::Database::connect(url).await?;
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
    Ok(())
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
