//! The closed-loop load generator: a fixed number of clients, each sending its next request
//! as soon as the last one is answered, and what they measured together.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// What one load run measured.
pub struct Load {
    /// Requests answered or failed, all clients together.
    pub requests: u64,
    /// Wall-clock time from the first request to the last answer.
    pub elapsed: Duration,
    /// Latency of every request, in microseconds.
    pub latency_us: Histogram<u64>,
    /// How many answers came with each HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer.
    pub errors: u64,
}

impl Load {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q`, in milliseconds.
    pub fn pct_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// How many answers came with `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// The status counts as the table shows them: `201×12672 409×3 err×1`.
    pub fn statuses(&self) -> String {
        let mut s: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        if self.errors > 0 {
            s.push(format!("err×{}", self.errors));
        }
        s.join(" ")
    }

    /// Nothing measured yet.
    fn empty() -> Self {
        Self {
            requests: 0,
            elapsed: Duration::ZERO,
            latency_us: histogram(),
            statuses: BTreeMap::new(),
            errors: 0,
        }
    }

    /// Adds one client's figures.
    fn add(&mut self, client: Load) {
        self.latency_us.add(client.latency_us).expect("same bounds");
        for (k, v) in client.statuses {
            *self.statuses.entry(k).or_insert(0) += v;
        }
        self.requests += client.requests;
        self.errors += client.errors;
    }
}

/// A latency histogram from 1 µs to 60 s, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

/// Runs `clients` closed-loop clients for `duration`; each calls `request(client, seq)`
/// and reports the HTTP status, or an error when no answer came. Prints the rate of the
/// last second, every second.
pub async fn load<F, Fut, E>(label: &str, clients: usize, duration: Duration, request: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u16, E>> + Send,
    E: Send,
{
    eprintln!("{label}");
    let request = Arc::new(request);
    let started = Instant::now();
    let deadline = started + duration;
    let done = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(progress(done.clone()));
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (request, done) = (request.clone(), done.clone());
            tokio::spawn(async move {
                let mut own = Load::empty();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match request(client, own.requests).await {
                        Ok(status) => *own.statuses.entry(status).or_insert(0) += 1,
                        Err(_) => own.errors += 1,
                    }
                    own.latency_us
                        .saturating_record(t.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                    own.requests += 1;
                }
                own
            })
        })
        .collect();
    let mut total = Load::empty();
    for task in tasks {
        total.add(task.await.expect("client task"));
    }
    total.elapsed = started.elapsed();
    progress.abort();
    total
}

/// Prints, every second, how many requests were answered in the last one.
async fn progress(done: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    for second in 1.. {
        tick.tick().await;
        let now = done.load(Ordering::Relaxed);
        eprintln!("  {second:>3} s  {:>7} req/s", now - last);
        last = now;
    }
}
