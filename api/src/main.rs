//! `flashsale-api`: parse configuration, start tracing, build, serve until a signal.

use api::{App, config::Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    api::config::init_tracing(config.log_format);
    if config.webhook_secrets().is_empty() {
        tracing::warn!("WEBHOOK_SECRET is not set: payment webhooks are accepted unsigned");
    }
    let app = App::build(&config).await?;
    tracing::info!(addr = %app.local_addr(), "flashsale-api listening");
    app.run(api::shutdown_signal()).await?;
    tracing::info!("flashsale-api stopped");
    Ok(())
}
