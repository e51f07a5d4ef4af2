//! `flashsale-api`: parse configuration, start tracing, build, serve until a signal
//! (and, with `--with-worker`, run the worker's loops in the same process).

use std::time::Duration;

use api::{
    App,
    config::{ApiCommand, Config},
};
use clap::Parser;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if matches!(config.command, Some(ApiCommand::Openapi)) {
        print!("{}", api::http::spec::yaml(config.rules.max_qty_per_hold));
        return Ok(());
    }
    api::config::init_tracing(config.log_format);
    config.check()?;
    if config.webhook_secrets().is_empty() {
        tracing::warn!("WEBHOOK_SECRET is not set: payment webhooks are accepted unsigned");
    }
    let app = match App::build(&config).await {
        Ok(app) => app,
        // One line naming the cause, not a backtrace: this is the operator's mistake to fix.
        Err(e) => {
            eprintln!("flashsale-api: {e:#}");
            std::process::exit(1);
        }
    };
    tracing::info!(addr = %app.local_addr(), "flashsale-api listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = config.with_worker.then(|| {
        let mut stop = stop_rx.clone();
        tokio::spawn(api::worker::run(
            app.service(),
            Duration::from_secs(config.worker.sweep_interval_secs),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    app.run(async move {
        api::shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await?;
    if let Some(worker) = worker {
        worker.await??;
    }
    tracing::info!("flashsale-api stopped");
    Ok(())
}
