//! `flashsale-api`: parse configuration, start tracing, build, serve until a signal
//! (and, with `--with-worker`, run the worker's loops in the same process).

use std::{process::ExitCode, time::Duration};

use api::{
    App,
    config::{ApiCommand, Config},
};
use clap::Parser;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if matches!(config.command, Some(ApiCommand::Openapi)) {
        print!("{}", api::http::spec::yaml(config.rules.max_qty_per_hold));
        return ExitCode::SUCCESS;
    }
    service::config::init_tracing(config.log_format);
    match serve(&config).await {
        Ok(()) => ExitCode::SUCCESS,
        // One line naming the cause and what to do, not a backtrace: a failure to start is
        // the operator's to fix.
        Err(e) => {
            eprintln!("flashsale-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the app, serves until SIGINT or SIGTERM, then stops the worker loops and closes
/// the database.
async fn serve(config: &Config) -> anyhow::Result<()> {
    config.check()?;
    if config.webhook_secrets().is_empty() {
        tracing::warn!("WEBHOOK_SECRET is not set: payment webhooks are accepted unsigned");
    }
    let app = App::build(config).await?;
    announce(config, app.local_addr());
    let svc = app.service();
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = config.with_worker.then(|| {
        let mut stop = stop_rx.clone();
        tokio::spawn(worker::run(
            app.service(),
            Duration::from_secs(config.worker.sweep_interval_secs),
            worker::Liveness::default(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    let served = app
        .run(async move {
            listener::shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
        .await;
    let worked = match worker {
        Some(worker) => worker.await.map_err(anyhow::Error::from).and_then(|r| r),
        None => Ok(()),
    };
    // Closed whatever happened above: on SQLite this folds the log into the file.
    svc.db.close().await;
    served?;
    worked?;
    tracing::info!("flashsale-api stopped");
    Ok(())
}

/// Says once, at start, where to go.
fn announce(config: &Config, addr: std::net::SocketAddr) {
    tracing::info!(
        addr = %addr,
        docs = %format_args!("http://{addr}/docs"),
        worker = config.with_worker,
        "flashsale-api listening"
    );
    if config.demo {
        tracing::info!(
            "demo: product 1 is for sale; try `curl http://{addr}/api/products/1`, then the \
             README's \"Try it\" section"
        );
    }
}
