//! `flashsale-api` configuration: command-line flag > environment variable > default. The
//! groups both binaries read live in [`service::config`].

use clap::{Parser, Subcommand, builder::BoolishValueParser};
use service::config::{DatabaseConfig, LogFormat, RulesConfig, WorkerConfig};

/// What `flashsale-api` does.
#[derive(Subcommand, Clone, Debug)]
pub enum ApiCommand {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI document (YAML) generated from the code, and exit.
    Openapi,
}

/// `flashsale-api` configuration.
#[derive(Parser, Clone, Debug)]
#[command(name = "flashsale-api", version, about = "flashsale checkout HTTP API")]
pub struct Config {
    /// What to do; serving is the default.
    #[command(subcommand)]
    pub command: Option<ApiCommand>,

    /// Where the data lives.
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// The business rules.
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

    /// How customer tokens are verified.
    #[command(flatten)]
    pub customers: crate::customers::CustomerTokenConfig,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The worker's schedule, for `--with-worker`.
    #[command(flatten)]
    pub worker: WorkerConfig,

    /// Seconds a connection may stay silent (before its first request, or between two)
    /// before the server closes it.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", default_value_t = listener::DEFAULT_IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_idle_timeout_secs: u64,

    /// Seconds from a request's first byte until its answer starts: a client that sends
    /// its head or body slower is cut off. Must be longer than five times `DB_WAIT_SECS`,
    /// the longest a hold request may wait for the database.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_SECS", default_value_t = listener::DEFAULT_REQUEST_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_request_timeout_secs: u64,

    /// Most live stock streams (`GET /api/products/{id}/stream`) served at once; more are
    /// refused 503 `too_many_subscribers`. Keep it under the open-file limit, less what the
    /// other connections and the database pool need.
    #[arg(long, env = "LIVE_MAX_SUBSCRIBERS", default_value_t = service::live::DEFAULT_MAX_SUBSCRIBERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub live_max_subscribers: usize,

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
        let longest = service::groups::longest_grouped_wait_secs(self.database.db_wait_secs);
        if self.http_request_timeout_secs <= longest {
            anyhow::bail!(
                "HTTP_REQUEST_TIMEOUT_SECS ({}) is not longer than a grouped request (a hold, an \
                 order, a payment) may wait for the database ({longest} s, five times \
                 DB_WAIT_SECS): its connection could be cut while its change is still being made. Raise HTTP_REQUEST_TIMEOUT_SECS or \
                 lower DB_WAIT_SECS",
                self.http_request_timeout_secs,
            );
        }
        Ok(())
    }

    /// The HTTP connection timeouts.
    pub fn connection_timeouts(&self) -> listener::ConnectionTimeouts {
        listener::ConnectionTimeouts {
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
