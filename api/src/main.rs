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
        print!("{}", api::http::openapi().spec_yaml());
        return Ok(());
    }
    api::config::init_tracing(config.log_format);
    config.check()?;
    if config.webhook_secrets().is_empty() {
        tracing::warn!("WEBHOOK_SECRET is not set: payment webhooks are accepted unsigned");
    }
    let app = App::build(&config).await?;
    tracing::info!(addr = %app.local_addr(), "flashsale-api listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = config.with_worker.then(|| {
        let mut stop = stop_rx.clone();
        tokio::spawn(api::worker::run(
            app.service(),
            Duration::from_secs(config.worker.sweep_interval_secs),
            api::worker::Liveness::default(),
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
