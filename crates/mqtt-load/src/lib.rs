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
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
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
        let r = run_flow(broker.addr, &format!("lat{}", qos as u8), &flow).await?;
        if qos == QoS::AtLeastOnce {
            report.qos1_lost += r.lost;
        }
        let us = |q| quantile(&r.latencies, q) as f64 / 1000.0;
        eprintln!(
            "{name}: latency QoS {} at {} msg/s: p50 {:.0} us, p99 {:.0} us, lost {}, dup {}",
            qos as u8,
            plan.latency_rate,
            us(0.5),
            us(0.99),
            r.lost,
            r.duplicates
        );
        let note = format!("lost {} dup {}", r.lost, r.duplicates);
        for (q, tag) in [(0.5, "p50"), (0.99, "p99")] {
            report.rows.push((
                format!(
                    "latency {tag} QoS {} @{} msg/s",
                    qos as u8, plan.latency_rate
                ),
                "us",
                false,
                Some(us(q)),
                note.clone(),
            ));
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
