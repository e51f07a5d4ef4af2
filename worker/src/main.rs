//! `flashsale-worker`: the background process, and one-shot commands for operators.
//!
//! - `run` (the default): apalis workers for `ExpireHold` and `CheckPendingWebhook`, and a
//!   sweep every `SWEEP_INTERVAL_SECS`, until SIGINT/SIGTERM.
//! - `sweep`: one sweep until nothing is left to do (for cron), then a list of payments
//!   that must be refunded.
//! - `audit`: checks the stock invariant of every product; exit status 1 when it is broken.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use service::{
    Service,
    config::{DatabaseConfig, LogFormat, RulesConfig, WorkerConfig},
    db::Db,
};
use worker::{Liveness, commands, metrics_server};

#[derive(Parser, Debug)]
#[command(
    name = "flashsale-worker",
    version,
    about = "flashsale worker and operator commands"
)]
struct Cli {
    #[command(flatten)]
    database: DatabaseConfig,

    #[command(flatten)]
    rules: RulesConfig,

    #[command(flatten)]
    worker: WorkerConfig,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// With `run`: serve Prometheus metrics (job runs and failures) at `GET /metrics`, and
    /// `GET /ready` (200 while the job workers run, 503 while they are down), on this
    /// address. Unset: no HTTP server.
    #[arg(long, env = "METRICS_BIND")]
    metrics_bind: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the job workers and the periodic sweep until SIGINT/SIGTERM (the default).
    Run,
    /// Sweep once until nothing is left: expire overdue holds, apply recorded payments,
    /// cancel unpaid orders; then list payments that must be refunded.
    Sweep,
    /// Check `total_stock = available + held + ordered` for every product; exit 1 if broken.
    Audit,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    service::config::init_tracing(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        // One line naming the cause and what to do, not a backtrace.
        Err(e) => {
            eprintln!("flashsale-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command, then closes the database (on SQLite, folding its log into the file).
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.rules.check()?;
    let command = cli.command.unwrap_or(Command::Run);
    // Bound before the database is touched: a taken address fails at once, changing nothing.
    let metrics = match (&command, &cli.metrics_bind) {
        (Command::Run, Some(addr)) => Some(metrics_server::bind(addr).await?),
        _ => None,
    };
    let db = Db::connect(&cli.database).await?;
    db.migrate().await?;
    let svc = Service::new(db.clone(), cli.rules);
    let code = match command {
        Command::Run => {
            let liveness = Liveness::default();
            if let Some(acceptor) = metrics {
                metrics_server::serve(acceptor, liveness.clone());
            }
            let interval = Duration::from_secs(cli.worker.sweep_interval_secs);
            worker::run(svc, interval, liveness, listener::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep => commands::sweep(&svc).await,
        Command::Audit => commands::audit(&svc).await,
    };
    db.close().await;
    code
}
