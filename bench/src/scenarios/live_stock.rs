//! live-stock: 10,000 subscribers to one product's live stock stream on one server while
//! holds run on that product at 64 clients, in three steps on one product:
//!
//! 1. holds at 64 clients without subscribers: the hold rate and the memory to compare with;
//! 2. the streams open, [`CONNECTING`] at a time, each until its first event; the server's
//!    `flashsale_live_subscribers` must count them all; its memory with them idle;
//! 3. the same holds with the streams open, while the bench renames the product
//!    `probe-1`, `probe-2`, … every [`RENAME_EVERY`]. Each subscriber notes when it reads
//!    each name, so the delay from a change to its event is known for every (subscriber,
//!    rename) pair. The commit falls between the rename's sending and its answer, so the
//!    delay counted from the sending is an upper bound of the one from the commit, and
//!    the delay from the answer a lower bound. Every subscriber must see every rename,
//!    else the bench fails.
//!
//! A last rename, `probe-end`, ends every subscriber through its own stream.

use std::{
    net::SocketAddr,
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use hdrhistogram::Histogram;
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};

use super::{Bench, Measured, hold};
use crate::{
    load::histogram,
    probes,
    report::{LiveStock, Row},
    sse::{SseStream, find},
};

/// Streams held open.
const SUBSCRIBERS: usize = 10_000;

/// Open files the bench and the server each need: a descriptor per stream at both ends,
/// and room for the hold clients, the database pools and the rest.
pub(super) const OPEN_FILES: u64 = SUBSCRIBERS as u64 + 2_048;

/// Closed-loop hold clients, in both hold steps.
const CLIENTS: usize = 64;

/// Streams being opened at once: a crowd that arrives over a few seconds, not one SYN
/// flood that overflows the server's accept backlog.
const CONNECTING: usize = 256;

/// How long opening every stream may take.
const OPEN_PATIENCE: Duration = Duration::from_secs(120);

/// Time between a rename's answer and the next rename. Well above the 200 ms the server
/// coalesces changes over, so that each rename is an event of its own.
const RENAME_EVERY: Duration = Duration::from_millis(500);

/// How long the last rename may take to reach every subscriber before it counts as missed.
const GRACE: Duration = Duration::from_secs(3);

/// How long after the end rename every subscriber must have read it.
const END_PATIENCE: Duration = Duration::from_secs(30);

/// The prefix of every rename; `probe-end` ends the subscribers.
const PREFIX: &str = "probe-";

/// How a rename starts in an event's JSON: the name field and [`PREFIX`].
const NAME_KEY: &[u8] = br#""name":"probe-"#;

/// Stock enough that no run sells out.
const STOCK: i64 = 1_000_000_000;

/// Runs the three steps; the rows of both hold steps and the figures of the streams.
pub(super) async fn run(bench: &Bench) -> anyhow::Result<(Vec<Row>, LiveStock)> {
    let product = bench.app.create_product(STOCK, 100).await;
    let without = holds(bench, product, "no subscribers").await;
    let rss_without_mib = bench.probe.rss_mib();
    let clock = Clock::new();
    let idle = Idle::open(bench, product, clock).await?;
    let loaded = Loaded::measure(bench, product, clock, &idle.subscribers).await?;
    tokio::time::sleep(GRACE).await;
    let seen = idle.subscribers.finish(bench, product).await?;
    let figures = Figures::of(&seen, &loaded.renames);
    let left = bench.app.available(product).await;
    let granted = (without.load.count(201) + loaded.holds.load.count(201)) as i64;
    let stock = if left == STOCK - granted {
        "stock exact".to_owned()
    } else {
        format!("STOCK MISMATCH: {left} left")
    };
    let live = LiveStock {
        backend: bench.name,
        subscribers: SUBSCRIBERS,
        connect_secs: idle.connect_secs,
        rss_without_mib,
        rss_idle_mib: idle.rss_mib,
        rss_loaded_mib: loaded.rss_mib,
        peak_rss_mib: bench.probe.peak_rss_mib(),
        delay_us: figures.after_sending_us,
        after_answer_us: figures.after_answer_us,
        change_us: figures.round_trip_us,
        changes: loaded.renames.len() as u64,
        missed: figures.missed,
        lost: figures.lost,
        first_lost: figures.first_lost,
        published_per_s: loaded.published_per_s,
        delivered_per_s: loaded.delivered_per_s,
        holds_per_s: (without.load.rate(), loaded.holds.load.rate()),
        bench_rss_mib: probes::own_peak_rss_mib(),
    };
    let rows = rows(bench, without, loaded.holds, &live, &stock);
    Ok((rows, live))
}

/// Step 2: every stream open, nothing changing.
struct Idle {
    /// The open streams.
    subscribers: Subscribers,
    /// How long opening them took, in seconds.
    connect_secs: f64,
    /// The server's resident memory with them open, in MiB.
    rss_mib: f64,
}

impl Idle {
    /// Opens the streams of `product`, checks the server counts them all, and reads its
    /// memory.
    async fn open(bench: &Bench, product: i64, clock: Clock) -> anyhow::Result<Self> {
        let opening = Instant::now();
        let subscribers = Subscribers::open(bench, product, clock).await?;
        let connect_secs = opening.elapsed().as_secs_f64();
        all_counted(bench).await?;
        // Lets what the opening allocated settle before the memory is read.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(Self {
            subscribers,
            connect_secs,
            rss_mib: bench.probe.rss_mib(),
        })
    }
}

/// Step 3: the holds beside the open streams, and the renames they must see.
struct Loaded {
    /// The holds.
    holds: Measured,
    /// The renames made meanwhile.
    renames: Vec<Rename>,
    /// Live stock events the server published meanwhile, per second.
    published_per_s: f64,
    /// Events the subscribers read meanwhile, all together, per second.
    delivered_per_s: f64,
    /// The server's resident memory at the end, in MiB.
    rss_mib: f64,
}

impl Loaded {
    /// Runs the holds on `product` while renaming it, with `subscribers` open.
    async fn measure(
        bench: &Bench,
        product: i64,
        clock: Clock,
        subscribers: &Subscribers,
    ) -> anyhow::Result<Self> {
        let (published, read) = (live_events(bench).await?, subscribers.read());
        let started = Instant::now();
        let renamer = tokio::spawn(rename_every(
            bench.http.clone(),
            bench.app.url(&format!("/api/admin/products/{product}")),
            clock,
            bench.duration,
        ));
        let holds = holds(bench, product, &format!("{SUBSCRIBERS} subscribers")).await;
        let window = started.elapsed().as_secs_f64();
        let published_per_s = (live_events(bench).await? - published) / window;
        let delivered_per_s = (subscribers.read() - read) as f64 / window;
        let rss_mib = bench.probe.rss_mib();
        let renames = renamer.await.context("renamer")??;
        Ok(Self {
            holds,
            renames,
            published_per_s,
            delivered_per_s,
            rss_mib,
        })
    }
}

/// The rows of both hold steps, the second compared with the first.
fn rows(
    bench: &Bench,
    without: Measured,
    with: Measured,
    live: &LiveStock,
    stock: &str,
) -> Vec<Row> {
    let rate = without.load.rate();
    let p99_ms = live.delay_us.value_at_quantile(0.99) as f64 / 1000.0;
    vec![
        bench.row(
            without,
            &format!("live-stock: holds, {CLIENTS} clients, no subscribers"),
            "—",
            rate,
            format!("the baseline of the row below; {stock}"),
        ),
        bench.row(
            with,
            &format!("live-stock: holds, {CLIENTS} clients, {SUBSCRIBERS} subscribers"),
            &format!("holds ×{CLIENTS} without subscribers"),
            rate,
            format!(
                "{} renames: {}, p99 {p99_ms:.0} ms after sending (see Live stock); {stock}",
                live.changes,
                if live.missed == 0 && live.lost == 0 {
                    "every subscriber saw each".to_owned()
                } else {
                    format!(
                        "{} (subscriber, rename) pairs MISSED, {} streams LOST",
                        live.missed, live.lost
                    )
                }
            ),
        ),
    ]
}

/// Holds of one unit of `product` at [`CLIENTS`] clients for the bench's duration, `with`
/// naming what else is open.
async fn holds(bench: &Bench, product: i64, with: &str) -> Measured {
    let (http, url) = (bench.http.clone(), bench.app.url("/api/holds"));
    bench
        .measure(
            &format!("live-stock: holds, {CLIENTS} clients, {with}"),
            CLIENTS,
            move |_, _| hold(http.clone(), url.clone(), product),
        )
        .await
}

/// The value of the sample `series` in the server's `/metrics`.
async fn metric(bench: &Bench, series: &str) -> anyhow::Result<f64> {
    let text = bench
        .http
        .get(bench.app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no sample {series} in /metrics"))
}

/// Live stock events the server published so far (one per change of a watched product,
/// whatever the subscribers).
async fn live_events(bench: &Bench) -> anyhow::Result<f64> {
    metric(bench, "flashsale_live_events_total").await
}

/// Waits until the server counts every stream in `flashsale_live_subscribers`.
async fn all_counted(bench: &Bench) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric(bench, "flashsale_live_subscribers").await?;
        if open == SUBSCRIBERS as f64 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "flashsale_live_subscribers shows {open} open streams, not {SUBSCRIBERS}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bench's clock, shared with every subscriber: µs since it started.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    fn new() -> Self {
        Self(Instant::now())
    }

    /// µs since the clock started.
    fn now_us(self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// One rename: when it was sent and when its answer came, µs on the [`Clock`].
#[derive(Clone, Copy)]
struct Rename {
    /// Before the request went out.
    sent_us: u64,
    /// Once the 200 was read: the change is committed.
    answered_us: u64,
}

/// Renames the product at `url` `probe-1`, `probe-2`, … for `duration`, waiting
/// [`RENAME_EVERY`] after each answer; rename `n` at `n - 1`.
async fn rename_every(
    http: reqwest::Client,
    url: String,
    clock: Clock,
    duration: Duration,
) -> anyhow::Result<Vec<Rename>> {
    let deadline = Instant::now() + duration;
    let mut renames = Vec::new();
    while Instant::now() < deadline {
        let sent_us = clock.now_us();
        rename(&http, &url, &format!("{PREFIX}{}", renames.len() + 1)).await?;
        let answered_us = clock.now_us();
        renames.push(Rename {
            sent_us,
            answered_us,
        });
        tokio::time::sleep(RENAME_EVERY).await;
    }
    Ok(renames)
}

/// `PATCH url` `{"name": name}` with the admin token, which must answer 200.
async fn rename(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<()> {
    let answer = http
        .patch(url)
        .bearer_auth(testkit::ADMIN_TOKEN)
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .with_context(|| format!("rename to {name}"))?;
    let status = answer.status();
    if status != 200 {
        bail!(
            "rename to {name}: {status} {}",
            answer.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    /// Each rename it read (`n`, from 1) and when it read it first, µs on the [`Clock`].
    reads: Vec<(u32, u64)>,
    /// Why its stream was lost before the end rename, if it was.
    lost: Option<String>,
}

impl Seen {
    /// A subscriber whose stream was lost for `why`.
    fn lost(why: String) -> Self {
        Self {
            reads: Vec::new(),
            lost: Some(why),
        }
    }
}

/// The open streams: a task each, answering what it saw once the end rename comes.
struct Subscribers {
    /// One per stream.
    tasks: Vec<JoinHandle<Seen>>,
    /// Product events read by all of them since they opened (the first ones not counted).
    read: Arc<AtomicU64>,
}

impl Subscribers {
    /// Opens [`SUBSCRIBERS`] streams of `product`, [`CONNECTING`] at a time; fails unless
    /// every one gets its first event.
    async fn open(bench: &Bench, product: i64, clock: Clock) -> anyhow::Result<Self> {
        eprintln!("{}: live-stock: opening {SUBSCRIBERS} streams", bench.name);
        let addr: SocketAddr = bench.app.addr.parse().context("the server's address")?;
        let path = format!("/api/products/{product}/stream");
        let gate = Arc::new(Semaphore::new(CONNECTING));
        let (opened_tx, mut opened) = mpsc::unbounded_channel();
        let read = Arc::new(AtomicU64::new(0));
        let tasks = (0..SUBSCRIBERS)
            .map(|_| {
                let stream = Stream {
                    addr,
                    path: path.clone(),
                    clock,
                    read: read.clone(),
                };
                tokio::spawn(stream.subscribe(gate.clone(), opened_tx.clone()))
            })
            .collect();
        drop(opened_tx);
        let subscribers = Self { tasks, read };
        let deadline = tokio::time::Instant::now() + OPEN_PATIENCE;
        let (mut ok, mut failed, mut first_error) = (0, 0, None);
        while ok + failed < SUBSCRIBERS {
            match tokio::time::timeout_at(deadline, opened.recv()).await {
                Ok(Some(Ok(()))) => ok += 1,
                Ok(Some(Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Ok(None) | Err(_) => break,
            }
        }
        ensure!(
            ok == SUBSCRIBERS,
            "{ok} of {SUBSCRIBERS} streams opened within {OPEN_PATIENCE:?}, {failed} failed \
             (the first: {})",
            first_error.as_deref().unwrap_or("none")
        );
        Ok(subscribers)
    }

    /// Product events read so far, all streams together.
    fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Renames `product` `probe-end`, which ends every subscriber, and collects what each
    /// saw; one that does not end within [`END_PATIENCE`] counts as lost.
    async fn finish(mut self, bench: &Bench, product: i64) -> anyhow::Result<Vec<Seen>> {
        let url = bench.app.url(&format!("/api/admin/products/{product}"));
        rename(&bench.http, &url, &format!("{PREFIX}end")).await?;
        let deadline = tokio::time::Instant::now() + END_PATIENCE;
        let mut seen = Vec::with_capacity(self.tasks.len());
        for mut task in std::mem::take(&mut self.tasks) {
            seen.push(match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => Seen::lost(format!("the subscriber task failed: {e}")),
                Err(_) => {
                    task.abort();
                    Seen::lost(format!("no end rename within {END_PATIENCE:?}"))
                }
            });
        }
        Ok(seen)
    }
}

impl Drop for Subscribers {
    /// Closes the streams still open when the bench gives up early.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One subscriber's stream, before it opens.
struct Stream {
    /// The server.
    addr: SocketAddr,
    /// `/api/products/{id}/stream`.
    path: String,
    /// The clock the renames were timed on.
    clock: Clock,
    /// Product events read by every subscriber.
    read: Arc<AtomicU64>,
}

impl Stream {
    /// Opens the stream once `gate` lets it, reads its first event, tells `opened` how that
    /// went, then reads until the end rename.
    async fn subscribe(
        self,
        gate: Arc<Semaphore>,
        opened: mpsc::UnboundedSender<Result<(), String>>,
    ) -> Seen {
        let first = {
            let _turn = gate.acquire().await.expect("the gate is never closed");
            self.first_event().await
        };
        let stream = match first {
            Ok(stream) => stream,
            Err(e) => {
                let why = format!("{e:#}");
                let _ = opened.send(Err(why.clone()));
                return Seen::lost(why);
            }
        };
        let _ = opened.send(Ok(()));
        drop(opened);
        self.watch(stream).await
    }

    /// Opens the stream and reads its first event, the product as it is.
    async fn first_event(&self) -> anyhow::Result<SseStream> {
        let mut stream = SseStream::open(self.addr, &self.path).await?;
        let got = stream.each_event(|_| ControlFlow::Break(())).await?;
        ensure!(got, "the stream ended before its first event");
        Ok(stream)
    }

    /// Reads events until the end rename, noting when each rename shows.
    async fn watch(self, mut stream: SseStream) -> Seen {
        let mut reads = Vec::new();
        let mut last = 0;
        let ended = stream
            .each_event(|event| {
                let at_us = self.clock.now_us();
                self.read.fetch_add(1, Ordering::Relaxed);
                match name(event) {
                    Some(Name::End) => return ControlFlow::Break(()),
                    // A rename shows in every event until the next one: note its first.
                    Some(Name::Probe(n)) if n > last => {
                        last = n;
                        reads.push((n, at_us));
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            })
            .await;
        let lost = match ended {
            Ok(true) => None,
            Ok(false) => Some("the server ended the stream".to_owned()),
            Err(e) => Some(format!("reading the stream: {e}")),
        };
        Seen { reads, lost }
    }
}

/// A name the bench gave the product, as an event shows it.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// `probe-<n>`.
    Probe(u32),
    /// `probe-end`.
    End,
}

/// The bench's name in a product event, if it carries one.
// A byte search, not a JSON parse: 10,000 subscribers read some 50,000 events a second on
// the cores the server runs on.
fn name(event: &[u8]) -> Option<Name> {
    let start = find(event, NAME_KEY)? + NAME_KEY.len();
    let rest = &event[start..];
    let value = &rest[..find(rest, b"\"")?];
    if value == b"end" {
        return Some(Name::End);
    }
    std::str::from_utf8(value)
        .ok()?
        .parse()
        .ok()
        .map(Name::Probe)
}

/// What all the subscribers saw together.
struct Figures {
    /// Every (subscriber, rename) delay counted from the rename's sending, µs.
    after_sending_us: Histogram<u64>,
    /// … counted from its answer (0 for an event read before the answer), µs.
    after_answer_us: Histogram<u64>,
    /// The renames' round trips, µs.
    round_trip_us: Histogram<u64>,
    /// (subscriber, rename) pairs never seen.
    missed: u64,
    /// Streams lost before the end rename.
    lost: u64,
    /// Why the first of them was lost.
    first_lost: Option<String>,
}

impl Figures {
    /// Adds up what each subscriber in `seen` read of `renames`.
    fn of(seen: &[Seen], renames: &[Rename]) -> Self {
        let mut figures = Self {
            after_sending_us: histogram(),
            after_answer_us: histogram(),
            round_trip_us: histogram(),
            missed: 0,
            lost: 0,
            first_lost: None,
        };
        for r in renames {
            figures
                .round_trip_us
                .saturating_record(r.answered_us - r.sent_us);
        }
        for s in seen {
            let mut read = 0;
            for &(n, at_us) in &s.reads {
                let Some(rename) = renames.get(n as usize - 1) else {
                    continue;
                };
                read += 1;
                let after = |t: u64| at_us.saturating_sub(t);
                figures
                    .after_sending_us
                    .saturating_record(after(rename.sent_us));
                figures
                    .after_answer_us
                    .saturating_record(after(rename.answered_us));
            }
            figures.missed += renames.len() as u64 - read;
            if let Some(why) = &s.lost {
                figures.lost += 1;
                figures.first_lost.get_or_insert_with(|| why.clone());
            }
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_s_names_are_found_in_an_event() {
        let event = br#"event: product
data: {"id":7,"name":"probe-12","price_cents":100,"available_stock":3}"#;
        assert_eq!(name(event), Some(Name::Probe(12)));
        assert_eq!(name(br#"data: {"name":"probe-end"}"#), Some(Name::End));
        assert_eq!(name(br#"data: {"name":"Test sneaker"}"#), None);
    }
}
