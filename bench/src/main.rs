//! `flashsale-bench`: drives a live `flashsale-api` (release build, fresh database) with
//! closed-loop clients and reports throughput, latency percentiles, status counts and the
//! server's peak RSS, each beside a baseline measured in the same run:
//!
//! - pgbench on PostgreSQL: one conditional `UPDATE` of one hot row, and the naive hold
//!   transaction (`SELECT … FOR UPDATE`, `INSERT`, `UPDATE`), at the same client counts;
//! - `GET /health` of the same server: the HTTP ceiling.
//!
//! live-stock holds 10,000 event streams open on one server while holds run, and reports
//! the delay from a change to its event and the server's memory with and without them.
//!
//! `cargo run --release -p bench -- --write` reproduces BENCHMARKS.md;
//! `--only limited-sale --only pre-sale` measures just those scenarios and the baselines
//! they are divided by, and prints them.

mod fd_limit;
mod load;
mod pgbench;
mod probes;
mod report;
mod scenarios;
mod sse;

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
    // Before any server starts: each inherits the limit.
    fd_limit::raise(only.open_files())?;
    let pg = pgbench::baselines(cli.seconds, |script, c| only.needs(script, c)).await?;
    let postgres = scenarios::run(Backend::Postgres, &pg, cli.seconds, &only).await?;
    let sqlite = scenarios::run(Backend::Sqlite, &pg, cli.seconds, &only).await?;
    let live: Vec<_> = [&postgres.live, &sqlite.live]
        .into_iter()
        .flatten()
        .collect();
    let rows: Vec<_> = postgres.rows.iter().chain(&sqlite.rows).collect();
    let table = report::table(&rows, &live, &pg);
    println!("{table}");
    report::check_live(&live)?;
    if cli.write {
        let svg = report::chart(&pg, &postgres.hot, &sqlite.hot)?;
        report::write(&table, svg, cli.seconds)?;
    }
    Ok(())
}
