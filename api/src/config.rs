//! Configuration: command-line flag > environment variable > default.

use clap::{Args, Parser, Subcommand, ValueEnum, builder::BoolishValueParser};

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
    Text,
    Json,
}

/// `flashsale-api` configuration.
/// What `flashsale-api` does.
#[derive(Subcommand, Clone, Debug)]
pub enum ApiCommand {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI document (YAML) generated from the code, and exit.
    Openapi,
}

#[derive(Parser, Clone, Debug)]
#[command(name = "flashsale-api", version, about = "flashsale checkout HTTP API")]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<ApiCommand>,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub rules: RulesConfig,

    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8000")]
    pub bind: String,

    /// Shared secret(s) for `X-Signature` on the payment webhook, comma-separated to allow
    /// rotation. Required, unless `--dev` (or `--demo`) accepts unsigned webhooks.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Bearer token for `/api/admin/*`. Unset: the admin API refuses every request.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub worker: WorkerConfig,

    /// Seconds a connection may stay silent (before its first request, or between two)
    /// before the server closes it.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", default_value_t = crate::listener::DEFAULT_IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_idle_timeout_secs: u64,

    /// Seconds from a request's first byte until its answer starts: a client that sends
    /// its head or body slower is cut off. Must be longer than five times `DB_WAIT_SECS`,
    /// the longest a hold request may wait for the database.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_SECS", default_value_t = crate::listener::DEFAULT_REQUEST_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_request_timeout_secs: u64,

    /// Also run the worker's jobs and sweep in this process (one-process development setup).
    #[arg(long, env = "WITH_WORKER", value_parser = BoolishValueParser::new())]
    pub with_worker: bool,

    /// Create a demo product at start when the database has no product yet (implies
    /// `--dev`).
    #[arg(long, env = "DEMO", value_parser = BoolishValueParser::new())]
    pub demo: bool,

    /// Development mode: allows running without `WEBHOOK_SECRET` (unsigned webhooks).
    #[arg(long, env = "DEV_MODE", value_parser = BoolishValueParser::new())]
    pub dev: bool,
}

impl Config {
    /// Refuses settings that are unsafe outside development.
    pub fn check(&self) -> anyhow::Result<()> {
        self.rules.check()?;
        if self.webhook_secrets().is_empty() && !(self.dev || self.demo) {
            anyhow::bail!(
                "WEBHOOK_SECRET is not set: anyone could mark orders paid. Set it (comma-separated \
                 secrets allow rotation), or pass --dev / DEV_MODE=1 for development"
            );
        }
        let longest_hold =
            crate::service::hold_groups::longest_hold_wait_secs(self.database.db_wait_secs);
        if self.http_request_timeout_secs <= longest_hold {
            anyhow::bail!(
                "HTTP_REQUEST_TIMEOUT_SECS ({}) is not longer than a hold request may wait for \
                 the database ({longest_hold} s, five times DB_WAIT_SECS): its connection could be \
                 cut while its hold is still being made. Raise HTTP_REQUEST_TIMEOUT_SECS or \
                 lower DB_WAIT_SECS",
                self.http_request_timeout_secs,
            );
        }
        Ok(())
    }

    /// The HTTP connection timeouts.
    pub fn connection_timeouts(&self) -> crate::listener::ConnectionTimeouts {
        crate::listener::ConnectionTimeouts {
            idle: std::time::Duration::from_secs(self.http_idle_timeout_secs),
            request: std::time::Duration::from_secs(self.http_request_timeout_secs),
        }
    }

    /// Webhook secrets, in the order given; empty when signatures are off.
    pub fn webhook_secrets(&self) -> Vec<String> {
        self.webhook_secret
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Config;

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["flashsale-api", "--dev"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn the_defaults_pass_the_checks() {
        config(&[]).check().expect("defaults are consistent");
    }

    #[test]
    fn a_request_timeout_within_the_database_wait_is_refused() {
        let err = config(&["--http-request-timeout-secs", "25", "--db-wait-secs", "5"])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP_REQUEST_TIMEOUT_SECS") && err.contains("DB_WAIT_SECS"));
    }

    #[test]
    fn a_key_retention_shorter_than_the_hold_ttl_is_refused() {
        let err = config(&["--idempotency-key-ttl-secs", "60", "--hold-ttl-secs", "120"])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("IDEMPOTENCY_KEY_TTL_SECS") && err.contains("HOLD_TTL_SECS"));
    }
}
