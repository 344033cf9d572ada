//! MQTT load generator: drives our broker and mosquitto identically in one run and reports
//! throughput (fan-in, fan-out; QoS 0 and 1), end-to-end latency at a fixed rate, lost and
//! duplicated messages, broker CPU time, and resident memory per idle connection, with the
//! ratio ours / mosquitto.
//!
//! Architecture invariant: every broker is a separate process started here on a free loopback
//! port and stopped before the run ends; clients speak MQTT 3.1.1 through `lichen-mqtt` only.
//! Architecture invariant: a message counts as delivered once per subscriber, by the
//! (publisher, sequence) stamp in its payload; duplicates and losses are counted, never hidden.

mod brokers;
pub mod client;
mod scenarios;
pub mod tls;

pub use brokers::{BrokerKind, ProcStats, RunningBroker, raise_fd_limit};
pub use scenarios::{Flow, FlowResult, Tracker, open_idle, quantile, run_flow};

use lichen_mqtt::QoS;
use std::fmt::Write as _;
use std::time::Duration;

/// What to measure and how hard.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Messages per throughput run, over all publishers.
    pub messages: usize,
    /// Publishers for fan-in, subscribers for fan-out.
    pub fan: usize,
    pub payload: usize,
    pub time_limit: Duration,
    /// Messages per second for the latency runs, and how many.
    pub latency_rate: f64,
    pub latency_messages: usize,
    /// Idle connections for the memory figure (0 skips it).
    pub idle_connections: usize,
    /// Latency runs per broker. One: measured inside [`measure`]. More: [`measure`] leaves
    /// latency out and [`latency_series`] alternates the brokers run by run; the table then
    /// shows the medians.
    pub latency_runs: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            messages: 200_000,
            fan: 10,
            payload: 64,
            time_limit: Duration::from_secs(30),
            latency_rate: 2000.0,
            latency_messages: 10_000,
            idle_connections: 10_000,
            latency_runs: 1,
        }
    }
}

/// Every figure for one broker, in plan order.
pub struct BrokerReport {
    pub name: &'static str,
    /// (measure, unit, higher is better, value, notes: losses, duplicates, CPU seconds).
    pub rows: Vec<(String, &'static str, bool, Option<f64>, String)>,
    /// QoS 1 messages lost over all runs (must be 0).
    pub qos1_lost: u64,
}

fn flows(plan: &Plan) -> Vec<(String, Flow)> {
    let mut v = Vec::new();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let q = qos as u8;
        v.push((
            format!("fan-in {}->1 QoS {q}", plan.fan),
            Flow {
                publishers: plan.fan,
                subscribers: 1,
                qos,
                messages: plan.messages / plan.fan.max(1),
                payload: plan.payload,
                rate: None,
                time_limit: plan.time_limit,
            },
        ));
        v.push((
            format!("fan-out 1->{} QoS {q}", plan.fan),
            Flow {
                publishers: 1,
                subscribers: plan.fan,
                qos,
                messages: plan.messages / plan.fan.max(1),
                payload: plan.payload,
                rate: None,
                time_limit: plan.time_limit,
            },
        ));
    }
    v
}

/// Runs the whole plan against one broker (started and stopped here).
pub async fn measure(kind: &BrokerKind, plan: &Plan) -> anyhow::Result<BrokerReport> {
    let broker = RunningBroker::start(kind)?;
    let name = broker.name;
    let mut report = BrokerReport {
        name,
        rows: Vec::new(),
        qos1_lost: 0,
    };
    eprintln!("{name}: listening on {}", broker.addr);
    // Give a fresh broker a moment to settle before taking its idle size.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if plan.idle_connections > 0 {
        let before = broker.stats()?;
        let conns = open_idle(broker.addr, plan.idle_connections, 64).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = broker.stats()?;
        let per = (after.rss_bytes.saturating_sub(before.rss_bytes)) as f64
            / plan.idle_connections as f64;
        eprintln!(
            "{name}: RSS {} KiB idle, {} KiB with {} connections",
            before.rss_bytes / 1024,
            after.rss_bytes / 1024,
            plan.idle_connections
        );
        report.rows.push((
            format!("RSS per idle connection ({})", plan.idle_connections),
            "bytes",
            false,
            Some(per),
            format!(
                "RSS {:.1} -> {:.1} MiB",
                before.rss_bytes as f64 / 1048576.0,
                after.rss_bytes as f64 / 1048576.0
            ),
        ));
        drop(conns);
        // Let the broker notice the closes before the next run.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (i, (label, flow)) in flows(plan).into_iter().enumerate() {
        let cpu0 = broker.stats()?.cpu_seconds;
        let r = run_flow(broker.addr, &format!("bench{i}"), &flow).await?;
        let cpu = broker.stats()?.cpu_seconds - cpu0;
        eprintln!(
            "{name}: {label}: {}/{} delivered in {:.2} s, {:.0} msg/s, lost {}, dup {}, broker CPU {cpu:.2} s{}",
            r.delivered,
            r.expected,
            r.elapsed.as_secs_f64(),
            r.rate(),
            r.lost,
            r.duplicates,
            if r.timed_out { " (time limit)" } else { "" }
        );
        if flow.qos == QoS::AtLeastOnce {
            report.qos1_lost += r.lost;
        }
        report.rows.push((
            format!("{label} throughput"),
            "msg/s",
            true,
            Some(r.rate()),
            format!(
                "lost {} dup {} cpu {cpu:.1}s{}",
                r.lost,
                r.duplicates,
                if r.timed_out { " TIMEOUT" } else { "" }
            ),
        ));
    }
    if plan.latency_runs <= 1 {
        for qos in LATENCY_QOS {
            let r = latency_run(broker.addr, plan, qos, &format!("lat{}", qos as u8)).await?;
            if qos == QoS::AtLeastOnce {
                report.qos1_lost += r.lost;
            }
            eprintln!(
                "{name}: latency QoS {} at {} msg/s: p50 {:.0} us, p99 {:.0} us, lost {}, dup {}",
                qos as u8, plan.latency_rate, r.p50_us, r.p99_us, r.lost, r.duplicates
            );
            let note = format!("lost {} dup {}", r.lost, r.duplicates);
            for (tag, v) in [("p50", r.p50_us), ("p99", r.p99_us)] {
                report.rows.push((
                    latency_label(tag, qos, plan),
                    "us",
                    false,
                    Some(v),
                    note.clone(),
                ));
            }
        }
    }
    let total = broker.stats()?;
    report.rows.push((
        "broker CPU over the whole run".into(),
        "s",
        false,
        Some(total.cpu_seconds),
        String::new(),
    ));
    broker.stop()?;
    Ok(report)
}

/// The QoS levels latency is measured at.
const LATENCY_QOS: [QoS; 2] = [QoS::AtMostOnce, QoS::AtLeastOnce];

fn latency_label(tag: &str, qos: QoS, plan: &Plan) -> String {
    format!(
        "latency {tag} QoS {} @{} msg/s",
        qos as u8, plan.latency_rate
    )
}

/// One latency run: its median and 99th percentile end to end, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct LatencyRun {
    pub p50_us: f64,
    pub p99_us: f64,
    pub lost: u64,
    pub duplicates: u64,
}

/// One publisher to one subscriber at `plan.latency_rate` for `plan.latency_messages`.
pub async fn latency_run(
    addr: std::net::SocketAddr,
    plan: &Plan,
    qos: QoS,
    prefix: &str,
) -> anyhow::Result<LatencyRun> {
    let flow = Flow {
        publishers: 1,
        subscribers: 1,
        qos,
        messages: plan.latency_messages,
        payload: plan.payload,
        rate: Some(plan.latency_rate),
        time_limit: plan.time_limit
            + Duration::from_secs_f64(plan.latency_messages as f64 / plan.latency_rate),
    };
    let r = run_flow(addr, prefix, &flow).await?;
    let us = |q| quantile(&r.latencies, q) as f64 / 1000.0;
    Ok(LatencyRun {
        p50_us: us(0.5),
        p99_us: us(0.99),
        lost: r.lost,
        duplicates: r.duplicates,
    })
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Repeated latency runs at one QoS: ours and theirs, run by run.
#[derive(Debug, Clone)]
pub struct LatencySeries {
    pub qos: QoS,
    pub ours: Vec<LatencyRun>,
    pub theirs: Vec<LatencyRun>,
}

impl LatencySeries {
    /// Median p50 and p99 of `runs`.
    fn medians(runs: &[LatencyRun]) -> (f64, f64) {
        let p50: Vec<f64> = runs.iter().map(|r| r.p50_us).collect();
        let p99: Vec<f64> = runs.iter().map(|r| r.p99_us).collect();
        (
            median(&p50).unwrap_or(f64::NAN),
            median(&p99).unwrap_or(f64::NAN),
        )
    }

    /// (p50, p99) medians of ours and of theirs.
    pub fn ours_medians(&self) -> (f64, f64) {
        Self::medians(&self.ours)
    }

    pub fn theirs_medians(&self) -> (f64, f64) {
        Self::medians(&self.theirs)
    }
}

/// Runs the latency measurement `runs` times per broker and QoS, the brokers alternating (both
/// started once, fresh; the one not measured idles). The order flips every run (ours first,
/// then theirs first) so that a drift in the machine's load favours neither.
pub async fn latency_series(
    ours: &BrokerKind,
    theirs: &BrokerKind,
    plan: &Plan,
    runs: usize,
) -> anyhow::Result<Vec<LatencySeries>> {
    let a = RunningBroker::start(ours)?;
    let b = RunningBroker::start(theirs)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut series: Vec<LatencySeries> = LATENCY_QOS
        .iter()
        .map(|&qos| LatencySeries {
            qos,
            ours: Vec::new(),
            theirs: Vec::new(),
        })
        .collect();
    for run in 0..runs {
        for s in &mut series {
            let prefix = format!("lat{}-{run}", s.qos as u8);
            let order = if run % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for is_ours in order {
                let broker = if is_ours { &a } else { &b };
                let r = latency_run(broker.addr, plan, s.qos, &prefix).await?;
                eprintln!(
                    "latency run {}/{runs} QoS {} {}: p50 {:.0} us, p99 {:.0} us, lost {}, dup {}",
                    run + 1,
                    s.qos as u8,
                    broker.name,
                    r.p50_us,
                    r.p99_us,
                    r.lost,
                    r.duplicates
                );
                if is_ours {
                    s.ours.push(r);
                } else {
                    s.theirs.push(r);
                }
            }
        }
    }
    a.stop()?;
    b.stop()?;
    Ok(series)
}

/// Adds the medians of `series` to both reports (same rows, same order, for [`table`]); QoS 1
/// losses count towards `qos1_lost`.
pub fn add_latency_rows(
    series: &[LatencySeries],
    plan: &Plan,
    ours: &mut BrokerReport,
    theirs: &mut BrokerReport,
) {
    for s in series {
        for (runs, report) in [(&s.ours, &mut *ours), (&s.theirs, &mut *theirs)] {
            let (p50, p99) = LatencySeries::medians(runs);
            let lost: u64 = runs.iter().map(|r| r.lost).sum();
            let dup: u64 = runs.iter().map(|r| r.duplicates).sum();
            if s.qos == QoS::AtLeastOnce {
                report.qos1_lost += lost;
            }
            let note = format!("median of {}; lost {lost} dup {dup}", runs.len());
            for (tag, v) in [("p50", p50), ("p99", p99)] {
                report.rows.push((
                    latency_label(tag, s.qos, plan),
                    "us",
                    false,
                    Some(v),
                    note.clone(),
                ));
            }
        }
    }
}

/// Every run of `series`, then the medians and their ratio (ours / theirs).
pub fn latency_table(series: &[LatencySeries], ours: &str, theirs: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {:<10} | {:>5} | {:>13} | {:>13} | {:>13} | {:>13} |",
        "latency us",
        "run",
        format!("{ours} p50"),
        format!("{ours} p99"),
        format!("{theirs} p50"),
        format!("{theirs} p99"),
    );
    let _ = writeln!(
        out,
        "|{:-<12}|{:-<7}|{:-<15}|{:-<15}|{:-<15}|{:-<15}|",
        "", "", "", "", "", ""
    );
    for s in series {
        let q = format!("QoS {}", s.qos as u8);
        for (i, (a, b)) in s.ours.iter().zip(&s.theirs).enumerate() {
            let _ = writeln!(
                out,
                "| {q:<10} | {:>5} | {:>13.0} | {:>13.0} | {:>13.0} | {:>13.0} |",
                i + 1,
                a.p50_us,
                a.p99_us,
                b.p50_us,
                b.p99_us
            );
        }
        let (a50, a99) = s.ours_medians();
        let (b50, b99) = s.theirs_medians();
        let _ = writeln!(
            out,
            "| {q:<10} | {:>5} | {a50:>13.0} | {a99:>13.0} | {b50:>13.0} | {b99:>13.0} |",
            "med"
        );
        let _ = writeln!(
            out,
            "| {q:<10} | {:>5} | {:>13} | {:>13} | {:>13} | {:>13} |",
            "ratio",
            format!("{:.2}x", a50 / b50),
            format!("{:.2}x", a99 / b99),
            "",
            ""
        );
    }
    out
}

/// The table: one row per figure, ours / mosquitto as the ratio.
pub fn table(ours: &BrokerReport, theirs: &BrokerReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {:<40} | {:>6} | {:>12} | {:>12} | {:>8} | {:<30} | {:<30} |",
        "measure", "unit", ours.name, theirs.name, "ratio", "ours: notes", "mosquitto: notes"
    );
    let _ = writeln!(
        out,
        "|{:-<42}|{:-<8}|{:-<14}|{:-<14}|{:-<10}|{:-<32}|{:-<32}|",
        "", "", "", "", "", "", ""
    );
    for (a, b) in ours.rows.iter().zip(&theirs.rows) {
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let ratio = match (a.3, b.3) {
            (Some(x), Some(y)) if y != 0.0 => format!("{:.2}x", x / y),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {:<40} | {:>6} | {:>12} | {:>12} | {:>8} | {:<30} | {:<30} |",
            a.0,
            a.1,
            fmt(a.3),
            fmt(b.3),
            ratio,
            a.4,
            b.4
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[254.0, 108.0, 132.0]), Some(132.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    fn run(p50_us: f64, p99_us: f64) -> LatencyRun {
        LatencyRun {
            p50_us,
            p99_us,
            lost: 0,
            duplicates: 0,
        }
    }

    #[test]
    fn latency_table_shows_every_run_the_medians_and_their_ratio() {
        let series = [LatencySeries {
            qos: QoS::AtLeastOnce,
            ours: vec![run(100.0, 132.0), run(90.0, 108.0), run(95.0, 254.0)],
            theirs: vec![run(80.0, 129.0), run(85.0, 181.0), run(90.0, 152.0)],
        }];
        let t = latency_table(&series, "lichen", "mosquitto");
        assert_eq!(t.lines().count(), 2 + 3 + 2, "{t}");
        let med = t.lines().find(|l| l.contains("med")).unwrap();
        let cells: Vec<&str> = med.split('|').map(str::trim).collect();
        assert_eq!(&cells[3..7], ["95", "132", "85", "152"], "{t}");
        let ratio = t.lines().find(|l| l.contains("ratio")).unwrap();
        assert!(ratio.contains("1.12x") && ratio.contains("0.87x"), "{t}");
    }

    #[test]
    fn latency_rows_are_the_medians_in_the_same_order_for_both() {
        let plan = Plan::default();
        let series: Vec<LatencySeries> = LATENCY_QOS
            .iter()
            .map(|&qos| LatencySeries {
                qos,
                ours: vec![run(10.0, 20.0), run(30.0, 40.0)],
                theirs: vec![run(1.0, 2.0), run(3.0, 4.0)],
            })
            .collect();
        let mut a = BrokerReport {
            name: "lichen",
            rows: Vec::new(),
            qos1_lost: 0,
        };
        let mut b = BrokerReport {
            name: "mosquitto",
            rows: Vec::new(),
            qos1_lost: 0,
        };
        add_latency_rows(&series, &plan, &mut a, &mut b);
        assert_eq!(a.rows.len(), 4);
        let labels = |r: &BrokerReport| r.rows.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(labels(&a), labels(&b));
        assert_eq!(a.rows[1].3, Some(30.0));
        assert_eq!(b.rows[2].3, Some(2.0));
        assert!(a.rows[0].4.starts_with("median of 2"));
    }
}
