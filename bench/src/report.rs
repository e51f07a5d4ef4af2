//! What the bench prints and writes: the rows of the results table, the live-stock
//! figures, the markdown tables, the chart, and the splice of both into BENCHMARKS.md and
//! benchmarks.svg.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Context, bail};
use charts_rs::{AxisScale, LineChart, Series};
use hdrhistogram::Histogram;

use crate::{
    CLIENT_COUNTS,
    load::Load,
    pgbench::{PgBaselines, PgRun},
    probes::CpuShare,
};

/// One row of the results table.
pub struct Row {
    /// What ran, on which back end, at how many clients.
    pub scenario: String,
    /// What the load generator measured.
    pub load: Load,
    /// CPU used while it ran.
    pub cpu: CpuShare,
    /// The commonest waits of busy PostgreSQL backends, or `—`.
    pub waits: String,
    /// What the row is compared with, or `—` for none.
    pub baseline_name: String,
    /// The baseline's rate, per second.
    pub baseline_rate: f64,
    /// The server's peak resident memory so far, in MiB.
    pub rss_mib: f64,
    /// The scenario's own check: stock exact, every flow paid, …
    pub note: String,
}

/// hot-holds at each client count: (holds/s, p99 ms).
pub type HotCurve = BTreeMap<usize, (f64, f64)>;

/// What live-stock measured on one back end, beyond its two rows of holds.
pub struct LiveStock {
    /// The back end's name.
    pub backend: &'static str,
    /// Streams held open.
    pub subscribers: usize,
    /// How long opening them all took, each until its first event, in seconds.
    pub connect_secs: f64,
    /// The server's resident memory after the holds without subscribers, in MiB.
    pub rss_without_mib: f64,
    /// … with every subscriber open and nothing changing.
    pub rss_idle_mib: f64,
    /// … at the end of the holds with the subscribers open.
    pub rss_loaded_mib: f64,
    /// The server's peak resident memory so far, in MiB.
    pub peak_rss_mib: f64,
    /// From sending a change to a subscriber reading its event, per (subscriber, change), µs.
    pub delay_us: Histogram<u64>,
    /// From the change's answer (it is committed) to the same, µs.
    pub after_answer_us: Histogram<u64>,
    /// Round trip of the change requests themselves, µs.
    pub change_us: Histogram<u64>,
    /// Changes made.
    pub changes: u64,
    /// (subscriber, change) pairs never seen.
    pub missed: u64,
    /// Streams lost before the end.
    pub lost: u64,
    /// Why the first of them was lost.
    pub first_lost: Option<String>,
    /// Product events the server published meanwhile, per second.
    pub published_per_s: f64,
    /// Product events the subscribers read meanwhile, all together, per second.
    pub delivered_per_s: f64,
    /// Holds per second without the subscribers, and with them.
    pub holds_per_s: (f64, f64),
    /// The load generator's own peak resident memory, in MiB.
    pub bench_rss_mib: f64,
}

/// Everything measured on one back end.
pub struct Results {
    /// The rows of the results table.
    pub rows: Vec<Row>,
    /// hot-holds for the chart (empty without hot-holds).
    pub hot: HotCurve,
    /// live-stock's figures, when it ran.
    pub live: Option<LiveStock>,
}

/// The markdown BENCHMARKS.md shows: results, live stock, where the time goes, pgbench
/// baselines.
pub fn table(rows: &[&Row], live: &[&LiveStock], pg: &PgBaselines) -> String {
    let mut t = results(rows);
    live_stock(&mut t, live);
    profile(&mut t, rows);
    baselines(&mut t, pg);
    t
}

/// The results table: rate, baseline, ratio, latency percentiles, statuses, RSS, check.
fn results(rows: &[&Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| scenario | req/s | baseline | baseline/s | ratio | p50 ms | p90 ms | p99 ms | max ms | statuses | peak RSS MiB | check |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = if r.baseline_name == "—" {
            "—".to_owned()
        } else {
            format!("{:.2}×", r.load.rate() / r.baseline_rate)
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {} |",
            r.scenario,
            r.load.rate(),
            r.baseline_name,
            r.baseline_rate,
            ratio,
            r.load.pct_ms(0.50),
            r.load.pct_ms(0.90),
            r.load.pct_ms(0.99),
            r.load.latency_us.max() as f64 / 1000.0,
            r.load.statuses(),
            r.rss_mib,
            r.note
        );
    }
    t
}

/// The live-stock table: the server's memory without and with the subscribers, the delay
/// from a change to its event, and the hold rate beside them.
fn live_stock(t: &mut String, live: &[&LiveStock]) {
    if live.is_empty() {
        return;
    }
    let _ = writeln!(
        t,
        "\nLive stock: subscribers to one product's stream on one server while holds on that \
         product run at 64 clients, the product renamed every 500 ms. Delay: from the bench \
         sending the rename to a subscriber reading the event that carries it, over every \
         (subscriber, rename) pair; the commit falls between the sending and the answer, \
         so the delay from the answer (last two delay columns) is a lower bound. RSS: without subscribers, with \
         them idle, with them under the holds, and the peak.\n"
    );
    let _ = writeln!(
        t,
        "| back end | subscribers | opened in s | RSS MiB | delay p50 ms | p90 ms | p99 ms | max ms | after the answer: p50 ms | p99 ms | renames (rename p99 ms) | missed | events/s published → read | holds/s without → with | bench RSS MiB |"
    );
    let _ = writeln!(
        t,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for l in live {
        let (without, with) = l.holds_per_s;
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} | {:.0} / {:.0} / {:.0} / {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} ({:.0}) | {} | {:.1} → {:.0} | {:.0} → {:.0} ({:.2}×) | {:.0} |",
            l.backend,
            l.subscribers,
            l.connect_secs,
            l.rss_without_mib,
            l.rss_idle_mib,
            l.rss_loaded_mib,
            l.peak_rss_mib,
            ms(&l.delay_us, 0.5),
            ms(&l.delay_us, 0.9),
            ms(&l.delay_us, 0.99),
            l.delay_us.max() as f64 / 1000.0,
            ms(&l.after_answer_us, 0.5),
            ms(&l.after_answer_us, 0.99),
            l.changes,
            ms(&l.change_us, 0.99),
            l.missed,
            l.published_per_s,
            l.delivered_per_s,
            without,
            with,
            with / without,
            l.bench_rss_mib,
        );
    }
}

/// Fails when a live-stock subscriber missed a change or lost its stream: every subscriber
/// must see every change.
pub fn check_live(live: &[&LiveStock]) -> anyhow::Result<()> {
    for l in live {
        if l.missed > 0 || l.lost > 0 {
            bail!(
                "{} live-stock: {} of {} (subscriber, change) pairs missed, {} streams lost \
                 (the first: {})",
                l.backend,
                l.missed,
                l.changes * l.subscribers as u64,
                l.lost,
                l.first_lost.as_deref().unwrap_or("none"),
            );
        }
    }
    Ok(())
}

/// The profile table: CPU of each process and what PostgreSQL waited on, per row.
fn profile(t: &mut String, rows: &[&Row]) {
    let _ = writeln!(
        t,
        "\nWhere the time goes: CPU in % of one core (the machine has two), and what \
         PostgreSQL's busy backends were doing (share of 20 ms samples of `pg_stat_activity`; \
         `CPU`: running, `IO:WALSync`: waiting for the commit's fsync, `Lock:…`: waiting for a \
         row lock, `Client:ClientRead`: waiting for the API's next statement inside a \
         transaction).\n"
    );
    let _ = writeln!(
        t,
        "| scenario | API | PostgreSQL | load generator | PostgreSQL backends busy with |\n|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {:.0} | {} |",
            r.scenario, r.cpu.api, r.cpu.postgres, r.cpu.bench, r.waits
        );
    }
}

/// The pgbench baselines at each client count measured (`—` where one was not).
fn baselines(t: &mut String, pg: &PgBaselines) {
    if pg.update.is_empty() && pg.naive_hold.is_empty() {
        return;
    }
    let _ = writeln!(t, "\npgbench baselines (transactions/s):\n");
    let _ = writeln!(
        t,
        "| clients | hot-row UPDATE | naive hold transaction |\n|---|---|---|"
    );
    let tps = |runs: &BTreeMap<usize, PgRun>, c| {
        runs.get(&c)
            .map_or_else(|| "—".to_owned(), |r| format!("{:.0}", r.tps))
    };
    for c in CLIENT_COUNTS {
        if pg.update.contains_key(&c) || pg.naive_hold.contains_key(&c) {
            let _ = writeln!(
                t,
                "| {c} | {} | {} |",
                tps(&pg.update, c),
                tps(&pg.naive_hold, c)
            );
        }
    }
}

/// Writes the chart to benchmarks.svg and `table` between BENCHMARKS.md's result markers,
/// with the date and the `seconds` each measurement ran.
pub fn write(table: &str, svg: String, seconds: u64) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("benchmarks.svg");
    std::fs::write(&path, svg).context("write benchmarks.svg")?;
    eprintln!("wrote {}", path.display());
    let path = root.join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).context("read BENCHMARKS.md")?;
    let (start, end) = ("<!-- results:start -->", "<!-- results:end -->");
    let (Some(a), Some(b)) = (doc.find(start), doc.find(end)) else {
        bail!("BENCHMARKS.md has no result markers");
    };
    let when = chrono::Utc::now().format("%Y-%m-%d");
    let new = format!(
        "{}{start}\n\nMeasured {when} with `--seconds {seconds}`.\n\n{table}\n{}",
        &doc[..a],
        &doc[b..]
    );
    std::fs::write(&path, new)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The chart BENCHMARKS.md embeds: hot-holds throughput and p99 latency against client
/// count, flashsale on both back ends beside the pgbench baselines.
pub fn chart(pg: &PgBaselines, postgres: &HotCurve, sqlite: &HotCurve) -> anyhow::Result<String> {
    let per_clients = |f: &dyn Fn(usize) -> f64| CLIENT_COUNTS.iter().map(|&c| f(c)).collect();
    let throughput = draw(
        "hot-holds: holds/s on one product, higher is better",
        "per second, log scale",
        vec![
            line("flashsale, PostgreSQL", per_clients(&|c| postgres[&c].0)),
            line("flashsale, SQLite", per_clients(&|c| sqlite[&c].0)),
            line(
                "pgbench hot-row UPDATE",
                per_clients(&|c| pg.update[&c].tps),
            ),
            line(
                "pgbench naive hold",
                per_clients(&|c| pg.naive_hold[&c].tps),
            ),
        ],
    )?;
    let latency = draw(
        "hot-holds: latency in ms, lower is better",
        "ms, log scale",
        vec![
            line("flashsale PostgreSQL p99", per_clients(&|c| postgres[&c].1)),
            line("flashsale SQLite p99", per_clients(&|c| sqlite[&c].1)),
            line(
                "pgbench UPDATE avg",
                per_clients(&|c| pg.update[&c].latency_avg_ms),
            ),
            line(
                "pgbench naive hold avg",
                per_clients(&|c| pg.naive_hold[&c].latency_avg_ms),
            ),
        ],
    )?;
    Ok(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{h}" viewBox="0 0 {CHART_WIDTH} {h}">
<g>{throughput}</g>
<g transform="translate(0 {CHART_HEIGHT})">{latency}</g>
</svg>
"#,
        h = 2.0 * CHART_HEIGHT
    ))
}

/// Width of the chart, in SVG pixels.
const CHART_WIDTH: f32 = 760.0;
/// Height of each of the chart's two panels, in SVG pixels.
const CHART_HEIGHT: f32 = 420.0;

/// One line of a chart panel.
fn line(name: &str, values: Vec<f64>) -> Series {
    (
        name,
        values.into_iter().map(|v| v as f32).collect::<Vec<f32>>(),
    )
        .into()
}

/// One chart panel: `series` against client count on a log scale titled `axis`.
fn draw(title: &str, axis: &str, series: Vec<Series>) -> anyhow::Result<String> {
    let x: Vec<String> = CLIENT_COUNTS
        .iter()
        .map(|c| format!("{c} clients"))
        .collect();
    let mut chart = LineChart::new(series, x);
    chart.title.text = title.to_owned();
    chart.width = CHART_WIDTH;
    chart.height = CHART_HEIGHT;
    chart.legend.margin = Some(charts_rs::Box {
        top: 30.0,
        ..Default::default()
    });
    let y = &mut chart.y_axis_configs[0];
    y.scale = AxisScale::Log(10.0);
    y.title = Some(axis.to_owned());
    chart.svg().map_err(|e| anyhow::anyhow!("chart: {e:?}"))
}
