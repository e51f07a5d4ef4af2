//! Configuration: command-line flag > environment variable > default.

use clap::{Args, ValueEnum};

/// Default database: an SQLite file in the working folder, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://flashsale.db?mode=rwc";

/// Largest quantity one hold may reserve unless `MAX_QTY_PER_HOLD` says otherwise; the
/// committed `openapi.yaml` states it.
pub const DEFAULT_MAX_QTY_PER_HOLD: i64 = 10;

/// Where the data lives; shared by the API and the worker.
#[derive(Args, Clone, Debug)]
pub struct DatabaseConfig {
    /// Database URL: `sqlite://FILE?mode=rwc` (embedded) or `postgres://…` (production).
    /// Its value is never shown by `--help`: it may hold a password.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,

    /// Most connections this process opens to the database.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// Longest a request waits on the database before it is answered 503: for a pool
    /// connection, for a locked row (PostgreSQL `lock_timeout`), for SQLite's write lock,
    /// and for its place in a hold group.
    #[arg(long, env = "DB_WAIT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub db_wait_secs: u64,
}

/// The business rules both processes apply.
#[derive(Args, Clone, Debug)]
pub struct RulesConfig {
    /// Seconds a hold reserves its stock before it expires.
    #[arg(long, env = "HOLD_TTL_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hold_ttl_secs: u64,

    /// Seconds a pending order may wait for its payment before the sweep cancels it.
    #[arg(long, env = "ORDER_PAYMENT_TTL_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub order_payment_ttl_secs: u64,

    /// Seconds an Idempotency-Key of a hold is remembered before the sweep forgets it
    /// (default and sensible minimum: 24 h).
    #[arg(long, env = "IDEMPOTENCY_KEY_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idempotency_key_ttl_secs: u64,

    /// Largest quantity one hold may reserve.
    #[arg(long, env = "MAX_QTY_PER_HOLD", default_value_t = DEFAULT_MAX_QTY_PER_HOLD, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub max_qty_per_hold: i64,
}

impl RulesConfig {
    /// Refuses rules that contradict each other.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.idempotency_key_ttl_secs < self.hold_ttl_secs {
            anyhow::bail!(
                "IDEMPOTENCY_KEY_TTL_SECS ({}) is shorter than HOLD_TTL_SECS ({}): a retry of a \
                 live hold whose key was already forgotten would reserve a second time. Set \
                 IDEMPOTENCY_KEY_TTL_SECS to at least HOLD_TTL_SECS",
                self.idempotency_key_ttl_secs,
                self.hold_ttl_secs
            );
        }
        Ok(())
    }
}

/// The worker's schedule.
#[derive(Args, Clone, Debug)]
pub struct WorkerConfig {
    /// Seconds between two periodic sweeps.
    #[arg(long, env = "SWEEP_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sweep_interval_secs: u64,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global `tracing` subscriber (`RUST_LOG` filters, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // poem announces its listener too: ours says it once, with where to go.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,sqlx=warn,sea_orm=warn,poem::server=warn")
        });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
