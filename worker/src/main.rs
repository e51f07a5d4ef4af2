//! `flashsale-worker`: operator commands over the same service layer as the API.
//!
//! `audit` checks the stock invariant of every product and exits 1 when any breaks it.

use std::process::ExitCode;

use api::{config::DatabaseConfig, db::Db, service::audit};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "flashsale-worker",
    version,
    about = "flashsale worker and operator commands"
)]
struct Cli {
    #[command(flatten)]
    database: DatabaseConfig,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check `total_stock = available + held + ordered` for every product; exit 1 if broken.
    Audit,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    api::config::init_tracing(api::config::LogFormat::Text);
    let db = Db::connect(&cli.database).await?;
    db.migrate().await?;
    match cli.command {
        Command::Audit => run_audit(&db).await,
    }
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
