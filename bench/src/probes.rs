//! Where the time and memory go while a scenario runs: the server's peak RSS, the CPU of
//! the server, PostgreSQL and the load generator, and what PostgreSQL's busy backends wait on.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DatabaseConnection};

/// CPU used during one measurement, in percent of one core (this machine has two).
#[derive(Clone, Copy, Default)]
pub struct CpuShare {
    /// The `flashsale-api` process.
    pub api: f64,
    /// Every PostgreSQL process together.
    pub postgres: f64,
    /// This load generator.
    pub bench: f64,
}

/// Watches where the time goes while a scenario runs: CPU of the server, PostgreSQL and
/// the load generator, and what PostgreSQL's busy backends wait on (sampled from
/// `pg_stat_activity` every 20 ms).
pub struct Probe {
    /// The `flashsale-api` process.
    api: procfs::process::Process,
    /// The scenario database, when it is PostgreSQL.
    pg_url: Option<String>,
}

/// A measurement in progress.
pub struct Probing {
    /// When it started.
    at: Instant,
    /// CPU ticks of the server, PostgreSQL and the bench at the start.
    ticks: (u64, u64, u64),
    /// Set to stop sampling the waits.
    stop: Arc<AtomicBool>,
    /// The wait sampler, on PostgreSQL: how often each wait was seen.
    waits: Option<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
}

impl Probe {
    /// Watches the server with process id `pid`, and the PostgreSQL database at `pg_url`.
    pub fn new(pid: u32, pg_url: Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            api: procfs::process::Process::new(i32::try_from(pid)?)?,
            pg_url,
        })
    }

    /// Peak resident memory of the server so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_mib(&self.api.pid().to_string(), "VmHWM:")
    }

    /// Resident memory of the server now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        status_mib(&self.api.pid().to_string(), "VmRSS:")
    }

    /// CPU ticks so far of the server, PostgreSQL and this bench.
    fn ticks(&self) -> (u64, u64, u64) {
        let me = procfs::process::Process::myself().expect("own /proc entry");
        (cpu_ticks(&self.api), postgres_ticks(), cpu_ticks(&me))
    }

    /// Starts counting CPU ticks and, on PostgreSQL, sampling the backends' waits.
    pub async fn start(&self) -> Probing {
        let stop = Arc::new(AtomicBool::new(false));
        let waits = match &self.pg_url {
            Some(url) => {
                let conn = sea_orm::Database::connect(url.as_str())
                    .await
                    .expect("probe connection");
                Some(tokio::spawn(sample_waits(conn, stop.clone())))
            }
            None => None,
        };
        Probing {
            at: Instant::now(),
            ticks: self.ticks(),
            stop,
            waits,
        }
    }

    /// CPU shares since `start`, and the commonest waits of busy PostgreSQL backends.
    pub async fn finish(&self, probing: Probing) -> (CpuShare, String) {
        let (api, postgres, bench) = self.ticks();
        let per_s = procfs::ticks_per_second() as f64 * probing.at.elapsed().as_secs_f64();
        let pct = |now: u64, then: u64| now.saturating_sub(then) as f64 / per_s * 100.0;
        let cpu = CpuShare {
            api: pct(api, probing.ticks.0),
            postgres: pct(postgres, probing.ticks.1),
            bench: pct(bench, probing.ticks.2),
        };
        probing.stop.store(true, Ordering::Relaxed);
        let waits = match probing.waits {
            Some(task) => top_waits(task.await.unwrap_or_default()),
            None => "—".to_owned(),
        };
        (cpu, waits)
    }
}

/// Counts what the database's busy backends (other than this one) wait on, every 20 ms,
/// until `stop`.
async fn sample_waits(conn: DatabaseConnection, stop: Arc<AtomicBool>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let rows = conn
            .query_all_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w \
                 FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND state <> 'idle'",
            ))
            .await
            .unwrap_or_default();
        for row in rows {
            if let Ok(w) = row.try_get::<String>("", "w") {
                *counts.entry(w).or_insert(0) += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = conn.close().await;
    counts
}

/// The four commonest waits with their share of the samples: `CPU 60 %, IO:WALSync 30 %`.
fn top_waits(counts: BTreeMap<String, u64>) -> String {
    let total: u64 = counts.values().sum();
    let mut top: Vec<(String, u64)> = counts.into_iter().collect();
    top.sort_by_key(|w| std::cmp::Reverse(w.1));
    top.iter()
        .take(4)
        .map(|(w, n)| format!("{w} {:.0} %", *n as f64 * 100.0 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Peak resident memory of this load generator so far, in MiB.
pub fn own_peak_rss_mib() -> f64 {
    status_mib("self", "VmHWM:")
}

/// A memory figure of process `pid` (a number or `self`) from its `/proc` status, where
/// `field` (`VmHWM:`, `VmRSS:`) is counted in kB; in MiB, 0 once the process is gone.
fn status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU ticks (user + system) of a process so far; 0 once it is gone.
fn cpu_ticks(process: &procfs::process::Process) -> u64 {
    process.stat().map_or(0, |s| s.utime + s.stime)
}

/// CPU ticks of every PostgreSQL process so far.
fn postgres_ticks() -> u64 {
    procfs::process::all_processes().map_or(0, |all| {
        all.flatten()
            .filter_map(|p| p.stat().ok())
            .filter(|s| s.comm == "postgres")
            .map(|s| s.utime + s.stime)
            .sum()
    })
}
