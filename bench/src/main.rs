//! `flashsale-bench`: drives a live `flashsale-api` (release build, fresh database) with
//! closed-loop clients and reports throughput, latency percentiles, status counts and the
//! server's peak RSS, each beside a baseline measured in the same run:
//!
//! - pgbench on PostgreSQL: one conditional `UPDATE` of one hot row, and the naive hold
//!   transaction (`SELECT … FOR UPDATE`, `INSERT`, `UPDATE`), at the same client counts;
//! - `GET /health` of the same server: the HTTP ceiling.
//!
//! `cargo run --release -p bench -- --write` reproduces BENCHMARKS.md;
//! `--only limited-sale --only pre-sale` measures just those scenarios and the baselines
//! they are divided by, and prints them.

mod load;
mod pgbench;
mod probes;
mod report;
mod scenarios;

use clap::Parser;
use testkit::Backend;

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
    /// Run only this scenario (repeatable), with the baselines it is compared with and
    /// what it needs; the rows are printed, never written.
    #[arg(long, value_enum, conflicts_with = "write")]
    only: Vec<scenarios::Scenario>,
}

/// The client counts of hot-holds and of the pgbench baselines.
const CLIENT_COUNTS: [usize; 3] = [16, 64, 256];

/// Baselines first, then every scenario (or those `--only` names) on PostgreSQL, then on
/// SQLite; prints the table and, with `--write`, writes it and the chart.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let only = scenarios::Selection::new(cli.only);
    let pg = pgbench::baselines(cli.seconds, |script, c| only.needs(script, c)).await?;
    let (mut rows, postgres) = scenarios::run(Backend::Postgres, &pg, cli.seconds, &only).await?;
    let (sqlite_rows, sqlite) = scenarios::run(Backend::Sqlite, &pg, cli.seconds, &only).await?;
    rows.extend(sqlite_rows);
    let table = report::table(&rows, &pg);
    println!("{table}");
    if cli.write {
        let svg = report::chart(&pg, &postgres, &sqlite)?;
        report::write(&table, svg, cli.seconds)?;
    }
    Ok(())
}
