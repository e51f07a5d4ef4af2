//! Waiting for and probing another process from outside: polling until a check holds,
//! the status of a URL, a free port to hand a process that binds it itself.

use std::time::{Duration, Instant};

use crate::TestApp;

/// Polls `check` every 100 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status of `GET url`; 0 when nothing answers.
pub async fn status_of(url: &str) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    client
        .get(url)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// A loopback port that was free a moment ago (for a process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl TestApp {
    /// Whether `GET /ready` answers `status` within `within`.
    pub async fn ready_turns(&self, status: u16, within: Duration) -> bool {
        eventually(within, || async {
            self.get("/ready").await.status == status
        })
        .await
    }
}
