//! `flashsale-worker`: the background process, and one-shot commands for operators.
//!
//! - `run` (the default): apalis workers for `ExpireHold` and `CheckPendingWebhook`, and a
//!   sweep every `SWEEP_INTERVAL_SECS`, until SIGINT/SIGTERM.
//! - `sweep`: one sweep until nothing is left to do (for cron), then a list of payments
//!   that must be refunded.
//! - `audit`: checks the stock invariant of every product; exit status 1 when it is broken.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use listener::{ConnectionTimeouts, TimedAcceptor};
use poem::listener::TcpAcceptor;
use service::{
    Service, audit,
    config::{DatabaseConfig, LogFormat, RulesConfig, WorkerConfig},
    db::Db,
};
use worker::Liveness;

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

/// Bound on the passes of one `sweep` command.
const MAX_SWEEP_PASSES: usize = 1000;

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
        (Command::Run, Some(addr)) => Some(bind_metrics(addr).await?),
        _ => None,
    };
    let db = Db::connect(&cli.database).await?;
    db.migrate().await?;
    let svc = Service::new(db.clone(), cli.rules);
    let code = match command {
        Command::Run => {
            let liveness = Liveness::default();
            if let Some(acceptor) = metrics {
                serve_metrics(acceptor, liveness.clone());
            }
            let interval = Duration::from_secs(cli.worker.sweep_interval_secs);
            worker::run(svc, interval, liveness, listener::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep => sweep(&svc).await,
        Command::Audit => run_audit(&svc.db).await,
    };
    db.close().await;
    code
}

/// Listens on `METRICS_BIND`, or says in one line why it cannot.
async fn bind_metrics(addr: &str) -> anyhow::Result<TcpAcceptor> {
    use anyhow::Context;
    use poem::listener::{Acceptor, Listener, TcpListener};
    let acceptor = TcpListener::bind(addr.to_owned())
        .into_acceptor()
        .await
        .with_context(|| {
            format!(
                "cannot listen on {addr} (METRICS_BIND / --metrics-bind; set it to a free \
                 address of this host)"
            )
        })?;
    let bound = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().map(ToString::to_string))
        .unwrap_or_else(|| addr.to_owned());
    tracing::info!(addr = %bound, "worker metrics listening");
    Ok(acceptor)
}

/// Serves `GET /metrics` and `GET /ready` on `acceptor` in the background.
fn serve_metrics(acceptor: TcpAcceptor, liveness: Liveness) {
    use poem::{EndpointExt, Route, Server, get, handler, http::StatusCode, web::Data};

    #[handler]
    fn metrics() -> String {
        service::metrics::metrics().render()
    }

    #[handler]
    fn ready(liveness: Data<&Liveness>) -> (StatusCode, &'static str) {
        if liveness.is_up() {
            (StatusCode::OK, "ready")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "job workers down")
        }
    }

    let routes = Route::new()
        .at("/metrics", get(metrics))
        .at("/ready", get(ready))
        .data(liveness);
    // The API's default timeouts: a scraper needs far less.
    let acceptor = TimedAcceptor::new(acceptor, ConnectionTimeouts::default());
    tokio::spawn(Server::new_with_acceptor(acceptor).run(routes));
}

async fn sweep(svc: &Service) -> anyhow::Result<ExitCode> {
    let mut total = service::upkeep::SweepReport::default();
    for _ in 0..MAX_SWEEP_PASSES {
        let report = svc.sweep_once().await?;
        total.expired_hold_units += report.expired_hold_units;
        total.settled_payments += report.settled_payments;
        total.cancelled_orders += report.cancelled_orders;
        total.refund_required = report.refund_required;
        total.errors += report.errors;
        if report.is_idle() {
            break;
        }
    }
    println!(
        "sweep: {} unit(s) of expired holds returned, {} recorded payment(s) settled, {} unpaid order(s) cancelled",
        total.expired_hold_units, total.settled_payments, total.cancelled_orders
    );
    println!("refund required: {} payment(s)", total.refund_required);
    if total.errors > 0 {
        println!(
            "errors: {} item(s) failed (see the log); run the sweep again",
            total.errors
        );
    }
    for p in svc.refunds_required(100).await? {
        println!(
            "  key={} hold_id={} order_id={} at_ms={}",
            p.idempotency_key,
            p.hold_id,
            p.order_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            p.created_at_ms
        );
    }
    Ok(if total.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_audit(db: &Db) -> anyhow::Result<ExitCode> {
    let rows = audit::audit(&db.conn).await?;
    println!(
        "{:>8}  {:>12}  {:>12}  {:>12}  {:>12}  {:<6}  name",
        "product", "total_stock", "available", "held", "ordered", "ok"
    );
    let mut broken = 0;
    for r in &rows {
        let ok = r.holds();
        broken += usize::from(!ok);
        println!(
            "{:>8}  {:>12}  {:>12}  {:>12}  {:>12}  {:<6}  {}",
            r.product_id,
            r.total_stock,
            r.available,
            r.held,
            r.ordered,
            if ok { "ok" } else { "BROKEN" },
            r.name
        );
    }
    println!("audit: {} product(s), {broken} broken", rows.len());
    Ok(if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
