//! Helpers for the black-box tests: a fresh database per test (a temporary SQLite file, or
//! `CREATE DATABASE t_<uuid>` on the PostgreSQL at `TEST_DATABASE_URL`), the real
//! `flashsale-api` and `flashsale-worker` binaries as processes, a TCP proxy to take the
//! database away, calls through the generated SDK: typed where they must succeed
//! (`hold_ok`), a [`Reply`] where a test asserts the error (`hold`), and, with the
//! `browser` feature, a headless Chromium to use the demo storefront with.

mod app;
mod bins;
#[cfg(feature = "browser")]
mod browser;
mod customers;
mod db;
mod faults;
mod macros;
mod processes;
mod proxy;
mod reply;
mod sdk;
mod signing;
mod stream;
mod tokens;
mod wait;

pub use app::{ADMIN_TOKEN, TestApp};
pub use bins::bin;
#[cfg(feature = "browser")]
pub use browser::{Browser, Page};
pub use customers::{bearer, rfc3339, rfc3339_millis};
pub use db::{Backend, DEFAULT_PG_URL, TestDb};
pub use faults::{StuckWriter, execute, query_i64, stored_status};
pub use processes::{TestWorker, assert_audit, audit, sweep};
pub use proxy::TcpProxy;
pub use reply::{Reply, hold_id, order_id};
pub use signing::{sign, unix_now};
pub use stream::{ProductStream, SseEvent};
pub use tokens::{
    CUSTOMER_ENV, CUSTOMER_SECRET, EC_PRIVATE_PEM, EC_PUBLIC_KEY_FILE, EC_PUBLIC_PEM,
    RSA_PRIVATE_PEM, RSA_PUBLIC_KEY_FILE, RSA_PUBLIC_PEM, TOKEN_LIFETIME_SECS, TokenKey,
    customer_claims, customer_token, token, unsigned_token,
};
pub use wait::{eventually, free_port, status_of};
