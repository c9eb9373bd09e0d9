//! The admission bench: the example server (release build, a pool of 10, PostgreSQL) under the
//! five load shapes admission by time must get right, each measured twice in one run — with
//! ballast's default admission and with admission turned off (`queue_target=0`: every checkout
//! queues for up to `pool_timeout`, 20 s) — from its own process over keep-alive HTTP/1.1.
//!
//! ```text
//! cargo build --release --example server
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p ballast-bench --bin admission-bench
//! # and one SVG chart per shape (served/s, refusals/s, p99 over time) in target/admission-charts:
//! DATABASE_URL=... cargo run --release -p ballast-bench --features charts --bin admission-bench
//! ```
//!
//! | shape | load | goal |
//! |---|---|---|
//! | a | 200 closed-loop clients, 20 ms queries | no refusal; served/s ≥ 0.95 × admission off |
//! | b | 500 closed-loop clients, 100 ms queries (5 s of work queued) | served/s ≥ 0.90 × capacity; successes p99 ≤ 2 s; refusals p99 ≤ 50 ms; `/readyz` within 100 ms |
//! | c | an open loop of 3 × capacity for 10 s, 100 ms queries | served/s ≥ 0.90 × capacity; no success older than `pool_timeout`; the queue does not grow |
//! | d | b's clients, queries of 5 ms, then 200 ms for 10 s, then 5 ms | served/s ≥ 0.85 × the current capacity in every window (a second; two while queries take 200 ms, ten holds per connection); full rate ≤ 2 s after |
//! | e | 500 requests at once on an idle pool, 20 ms queries | all served |
//!
//! Closed-loop clients send again as soon as they have an answer — after a 503 too, the worst
//! clients. Capacity is the pool over the query time (10 / 100 ms = 100 a second). The queue is
//! the pool's waiting checkouts, read from `/stats` every 250 ms. Each shape runs `BENCH_ROUNDS`
//! (3) rounds, admission off and on alternated so the machine's drift falls on both, and shows
//! each subject's median round. `BENCH_SCALE` (1) scales every duration (CI smoke-runs it with
//! 0.1 and one round); `BENCH_SHAPES` (`abcdef`) picks shapes; `CHART_DIR`
//! (`target/admission-charts`) is where the charts go.
//!
//! `BENCH_SLICES=1` also prints each 250 ms slice's served and refused rates.
//!
//! `f` is not a shape but an evaluation: whether a concurrency limit below `connection_limit`
//! (what a latency-driven adaptive limit converges to) serves more or faster when the database
//! itself is saturated (`saturated.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{database_url, exit, start_example};
use load::Recorder;
use report::{header, row, short, slices, summarise, Summary};

mod chart;
// Shared with the other bench binaries; this one uses part of it.
#[allow(dead_code)]
#[path = "../common.rs"]
mod common;
mod load;
mod report;
mod saturated;

/// The pool's size.
const POOL: u32 = 10;
/// The server's `pool_timeout` (the default): the deadline no success may outlive.
const POOL_TIMEOUT: Duration = Duration::from_secs(20);
/// The width of a chart's time slice.
const SLICE: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> ExitCode {
    exit(run().await)
}

/// A load shape.
#[derive(Clone, Copy)]
enum Load {
    /// Closed-loop clients sending `path(t)`.
    Closed {
        clients: usize,
        path: fn(Duration) -> String,
    },
    /// A fixed arrival rate.
    Open { rate: f64, path: &'static str },
    /// Requests all at once, once each.
    Burst { size: usize, path: &'static str },
}

/// What one subject saw in one shape.
struct Seen {
    summary: Summary,
    samples: Vec<load::Sample>,
    /// `/readyz` latencies.
    ready: Vec<Duration>,
    /// Waiting checkouts, every 250 ms.
    queue: Vec<u64>,
    /// The most requests the open loop had outstanding.
    outstanding: u64,
    example: Option<String>,
}

/// How long to run, scaled by `BENCH_SCALE`.
fn scaled(duration: Duration) -> Duration {
    let scale = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .filter(|scale| *scale > 0.0)
        .unwrap_or(1.0);
    duration.mul_f64(scale)
}

/// The example server on `url` with pool parameters `params`, warmed up: the schema made, the
/// pool's connections open, and the hold time known (`warm_ms` queries).
async fn server(
    url: &str,
    params: &str,
    warm_ms: u64,
) -> Result<(tokio::process::Child, SocketAddr), String> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{separator}connection_limit={POOL}{params}");
    let (child, base) = start_example(&[("DATABASE_URL", &full)]).await?;
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .map_err(|_| format!("unexpected address {base}"))?;
    let path = format!("/sleep?ms={warm_ms}");
    let tasks: Vec<_> = (0..POOL)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                let mut client = ballast_testkit::http::Client::new(addr);
                for _ in 0..5 {
                    let _ = client.get(&path).await;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    Ok((child, addr))
}

/// Runs `load` for `run` against a fresh server with `params`, probing `/readyz` and the queue.
async fn measure(
    url: &str,
    params: &str,
    load: Load,
    run: Duration,
    warm_ms: u64,
) -> Result<Seen, String> {
    let (_server, addr) = server(url, params, warm_ms).await?;
    let start = Instant::now();
    let recorder = Recorder::new(start);
    let until = start + run;
    let ready = tokio::spawn(load::probe(
        addr,
        "/readyz",
        Duration::from_millis(100),
        until,
    ));
    let queue = tokio::spawn(load::queue_lengths(addr, Duration::from_millis(250), until));
    let mut outstanding = 0;
    match load {
        Load::Closed { clients, path } => {
            load::closed_loop(addr, clients, run, path, &recorder).await;
        }
        Load::Open { rate, path } => {
            outstanding = load::open_loop(addr, rate, run, path, &recorder).await;
        }
        Load::Burst { size, path } => load::burst(addr, size, path, &recorder).await,
    }
    let ready = ready.await.map_err(|error| error.to_string())?;
    let queue = queue.await.map_err(|error| error.to_string())?;
    let samples = recorder.samples();
    let end = samples.iter().map(|sample| sample.at).max().unwrap_or(run);
    Ok(Seen {
        summary: summarise(&samples, Duration::ZERO, end + Duration::from_millis(1)),
        example: recorder.example(),
        samples,
        ready: ready.into_iter().map(|(took, _)| took).collect(),
        queue,
        outstanding,
    })
}

/// One shape: admission off, then ballast's default, the table, the chart, and the goal's
/// verdict from `judge`.
async fn shape(
    url: &str,
    name: &str,
    title: &str,
    load: Load,
    run: Duration,
    warm_ms: u64,
    judge: impl Fn(&Seen, &Seen) -> (bool, String),
) -> Result<bool, String> {
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|rounds| *rounds > 0)
        .unwrap_or(3);
    println!(
        "\n{name}. {title}, {} s, {rounds} rounds alternated (the median round of each shown)",
        run.as_secs_f64()
    );
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        offs.push(measure(url, "&queue_target=0", load, run, warm_ms).await?);
        ons.push(measure(url, "", load, run, warm_ms).await?);
    }
    let (off, on) = (median_round(offs), median_round(ons));
    println!("{}", header());
    println!("{}", row("admission off", &off.summary));
    println!("{}", row("ballast (default)", &on.summary));
    for (label, seen) in [("admission off", &off), ("ballast", &on)] {
        let mut ready = seen.ready.clone();
        println!(
            "  {label}: /readyz ({} probes) p99 {} max {}; queue (waiting checkouts) max {} last {}{}; refusals without Retry-After {}",
            ready.len(),
            short(report::quantile(&mut ready, 0.99)),
            short(report::quantile(&mut ready, 1.0)),
            seen.queue.iter().max().copied().unwrap_or(0),
            seen.queue.last().copied().unwrap_or(0),
            if seen.outstanding > 0 {
                format!("; most requests outstanding {}", seen.outstanding)
            } else {
                String::new()
            },
            seen.summary.refused_without_retry_after,
        );
    }
    if let Some(example) = &on.example {
        println!("  a refusal reads: {example}");
    }
    if std::env::var("BENCH_SLICES").is_ok() {
        for (label, seen) in [("admission off", &off), ("ballast", &on)] {
            let line: Vec<String> = slices(&seen.samples, SLICE, run)
                .iter()
                .map(|slice| {
                    format!(
                        "{:.2}:{:.0}/{:.0}",
                        slice.at, slice.served_per_second, slice.refused_per_second
                    )
                })
                .collect();
            println!(
                "  {label} slices (start: served/s / refused/s): {}",
                line.join(" ")
            );
        }
    }
    let (met, verdict) = judge(&on, &off);
    println!(
        "  goal: {verdict} -> {}",
        if met { "met" } else { "NOT met" }
    );
    let until = on
        .samples
        .iter()
        .chain(&off.samples)
        .map(|sample| sample.at)
        .max()
        .unwrap_or(run)
        .max(run);
    let dir = std::env::var("CHART_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/admission-charts"),
        PathBuf::from,
    );
    if cfg!(feature = "charts") {
        std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let path = dir.join(format!("shape-{name}.svg"));
        chart::write(
            &path,
            &format!("{name}. {title}"),
            &slices(&on.samples, SLICE, until),
            &slices(&off.samples, SLICE, until),
        )?;
        println!("  chart: {}", path.display());
    }
    Ok(met)
}

/// The round whose served/s is the median of the rounds'.
fn median_round(mut rounds: Vec<Seen>) -> Seen {
    rounds.sort_by(|a, b| {
        a.summary
            .served_per_second
            .total_cmp(&b.summary.served_per_second)
    });
    let middle = rounds.len() / 2;
    rounds.swap_remove(middle)
}

fn ratio(value: f64, of: f64) -> f64 {
    if of > 0.0 {
        value / of
    } else {
        0.0
    }
}

/// Shape d's query time at `t`: 5 ms, 200 ms from 5 s to 15 s (scaled), 5 ms again.
fn slowing(t: Duration) -> String {
    let (slow_from, slow_until) = (
        scaled(Duration::from_secs(5)),
        scaled(Duration::from_secs(15)),
    );
    let ms = if t >= slow_from && t < slow_until {
        200
    } else {
        5
    };
    format!("/sleep?ms={ms}")
}

async fn run() -> Result<(), String> {
    let Some(url) = database_url("admission bench") else {
        return Ok(());
    };
    let shapes = std::env::var("BENCH_SHAPES").unwrap_or_else(|_| "abcdef".to_owned());
    println!(
        "example server (release), pool of {POOL}, pool_timeout {POOL_TIMEOUT:?}; each shape with admission off \
         (queue_target=0) and ballast's default (queue_target 1 s), a fresh server each"
    );
    let mut met = Vec::new();
    if shapes.contains('a') {
        let ok = shape(
            &url,
            "a",
            "many clients, enough capacity: 200 closed-loop clients, 20 ms queries",
            Load::Closed {
                clients: 200,
                path: |_| "/sleep?ms=20".to_owned(),
            },
            scaled(Duration::from_secs(10)),
            20,
            |on, off| {
                let r = ratio(on.summary.served_per_second, off.summary.served_per_second);
                (
                    on.summary.refused == 0 && on.summary.other == 0 && r >= 0.95,
                    format!(
                        "0 refusals, served/s >= 0.95 x admission off: {} refusals, {r:.2} x",
                        on.summary.refused
                    ),
                )
            },
        )
        .await?;
        met.push(("a", ok));
    }
    if shapes.contains('b') {
        let capacity = f64::from(POOL) / 0.1;
        let ok = shape(
            &url,
            "b",
            "standing 5x overload: 500 closed-loop clients, 100 ms queries",
            Load::Closed { clients: 500, path: |_| "/sleep?ms=100".to_owned() },
            scaled(Duration::from_secs(15)),
            100,
            move |on, off| {
                let s = &on.summary;
                let r = ratio(s.served_per_second, capacity);
                let measured = ratio(s.served_per_second, off.summary.served_per_second);
                let mut ready = on.ready.clone();
                let ready_max = report::quantile(&mut ready, 1.0);
                (
                    r >= 0.90
                        && s.ok_p99 <= Duration::from_secs(2)
                        && s.refused_p99 <= Duration::from_millis(50)
                        && ready_max <= Duration::from_millis(100)
                        && s.refused_without_retry_after == 0,
                    format!(
                        "served/s >= 0.90 x capacity ({capacity:.0}/s): {r:.2} x ({measured:.2} x what the same stack serves with admission off); successes p99 <= 2 s: {}; refusals p99 <= 50 ms: {}; /readyz <= 100 ms: max {}",
                        short(s.ok_p99),
                        short(s.refused_p99),
                        short(ready_max)
                    ),
                )
            },
        )
        .await?;
        met.push(("b", ok));
    }
    if shapes.contains('c') {
        let capacity = f64::from(POOL) / 0.1;
        let run = scaled(Duration::from_secs(10));
        let ok = shape(
            &url,
            "c",
            "open-loop overload: 300 requests a second (3 x capacity), 100 ms queries",
            Load::Open { rate: 3.0 * capacity, path: "/sleep?ms=100" },
            run,
            100,
            move |on, _| {
                // Served within the run (answers after it are the queue draining).
                let s = summarise(&on.samples, Duration::ZERO, run);
                let r = ratio(s.served_per_second, capacity);
                let half = on.queue.len() / 2;
                let mid = on.queue.get(half.saturating_sub(1)).copied().unwrap_or(0);
                let most = on.queue.iter().max().copied().unwrap_or(0);
                let growing = on.queue.iter().skip(half).any(|length| *length > 2 * mid.max(50));
                (
                    r >= 0.90 && on.summary.ok_max <= POOL_TIMEOUT && !growing,
                    format!(
                        "served/s >= 0.90 x capacity: {r:.2} x; oldest success {} (deadline {POOL_TIMEOUT:?}); \
                         the queue does not grow (no sample in the second half past twice the midpoint's {mid}): most {most}",
                        short(on.summary.ok_max)
                    ),
                )
            },
        )
        .await?;
        met.push(("c", ok));
    }
    if shapes.contains('d') {
        let run = scaled(Duration::from_secs(20));
        let (slow_from, slow_until) = (
            scaled(Duration::from_secs(5)),
            scaled(Duration::from_secs(15)),
        );
        let ok = shape(
            &url,
            "d",
            "the database slows down: 500 closed-loop clients, 5 ms queries, 200 ms from 5 s to 15 s",
            Load::Closed { clients: 500, path: slowing },
            run,
            5,
            move |on, _| {
                let second = Duration::from_secs(1);
                // Full rate: what the pool served in the steady seconds before the slowdown.
                let fast = summarise(&on.samples, second * 2, slow_from).served_per_second;
                let slow = f64::from(POOL) / 0.2;
                // Windows of a second while queries take 5 ms; of two while they take 200 ms, so
                // each connection finishes ten in a window (with five, when a window starts
                // against a connection's holds moves a count by a tenth).
                let mut windows = Vec::new();
                let mut worst = f64::INFINITY;
                let mut worst_at = 0.0;
                let mut t = second;
                while t < run {
                    let slow_phase = t >= slow_from && t < slow_until;
                    let width = if slow_phase { 2 * second } else { second };
                    let phase_end = if t < slow_from {
                        slow_from
                    } else if slow_phase {
                        slow_until
                    } else {
                        run
                    };
                    // A slow window never shorter than two seconds: the phase's last one takes
                    // the remainder.
                    let end = if slow_phase && t + 2 * width > phase_end {
                        phase_end
                    } else {
                        (t + width).min(phase_end)
                    };
                    // The second after each change is the change itself; recovery is judged
                    // apart.
                    let in_change = (t >= slow_from && t < slow_from + second)
                        || (t >= slow_until && t < slow_until + 2 * second);
                    if !in_change && end > t {
                        let capacity = if slow_phase { slow } else { fast };
                        let served = summarise(&on.samples, t, end).served as f64;
                        let r = served / (capacity * (end - t).as_secs_f64());
                        windows.push(format!("{:.0}s:{r:.2}", t.as_secs_f64()));
                        if r < worst {
                            worst = r;
                            worst_at = t.as_secs_f64();
                        }
                    }
                    t = if in_change { t + second } else { end };
                }
                println!("  windows (start: served / current capacity): {}", windows.join(" "));
                // Back to full rate: the first second (four 250 ms slices, the windows' width
                // above) after the change that serves 85% of the fast rate.
                let series = slices(&on.samples, SLICE, run);
                let back = series
                    .windows(4)
                    .find(|window| {
                        let rate = window.iter().map(|slice| slice.served_per_second).sum::<f64>()
                            / window.len() as f64;
                        window[0].at >= slow_until.as_secs_f64() && rate >= 0.85 * fast
                    })
                    .map(|window| window[0].at - slow_until.as_secs_f64());
                (
                    worst >= 0.85 && back.is_some_and(|back| back <= 2.0),
                    format!(
                        "served/s >= 0.85 x the current capacity (full {fast:.0}/s, slow {slow:.0}/s) in every window: worst {worst:.2} x (at {worst_at} s); \
                         full rate <= 2 s after: {}",
                        back.map_or_else(|| "never".to_owned(), |back| format!("{back:.2} s"))
                    ),
                )
            },
        )
        .await?;
        met.push(("d", ok));
    }
    if shapes.contains('e') {
        let ok = shape(
            &url,
            "e",
            "burst on an idle pool: 500 requests at once, 20 ms queries",
            Load::Burst {
                size: 500,
                path: "/sleep?ms=20",
            },
            Duration::from_secs(2),
            20,
            |on, _| {
                let s = &on.summary;
                (
                    s.served == 500,
                    format!(
                        "all 500 served: {} served, {} refused, last after {}",
                        s.served,
                        s.refused,
                        short(s.ok_max)
                    ),
                )
            },
        )
        .await?;
        met.push(("e", ok));
    }
    if shapes.contains('f') {
        saturated::evaluate(&url, scaled(Duration::from_secs(8))).await?;
    }
    println!();
    for (shape, ok) in &met {
        println!(
            "shape {shape}: goal {}",
            if *ok { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
