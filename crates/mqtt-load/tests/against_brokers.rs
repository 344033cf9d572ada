//! The load generator against real broker processes: ours (through the tool's own `broker`
//! subcommand) and, when installed, mosquitto.

use lichen_mqtt::QoS;
use lichen_mqtt_load::{
    BrokerKind, Flow, Plan, RunningBroker, latency_series, latency_table, open_idle, run_flow,
};
use std::path::PathBuf;
use std::time::Duration;

fn ours() -> BrokerKind {
    BrokerKind::Lichen {
        program: PathBuf::from(env!("CARGO_BIN_EXE_mqtt-load")),
        args: vec!["broker".into()],
    }
}

fn flow(qos: QoS, publishers: usize, subscribers: usize) -> Flow {
    Flow {
        publishers,
        subscribers,
        qos,
        messages: 2_000,
        payload: 32,
        rate: None,
        time_limit: Duration::from_secs(60),
    }
}

async fn exercise(kind: BrokerKind) {
    let broker = RunningBroker::start(&kind).expect("broker starts");
    let before = broker.stats().expect("stats");
    assert!(before.rss_bytes > 0);
    let idle = open_idle(broker.addr, 50, 8)
        .await
        .expect("idle connections");
    assert_eq!(idle.len(), 50);
    drop(idle);
    for (i, f) in [flow(QoS::AtLeastOnce, 3, 1), flow(QoS::AtLeastOnce, 1, 3)]
        .into_iter()
        .enumerate()
    {
        let r = run_flow(broker.addr, &format!("t{i}"), &f)
            .await
            .expect("flow");
        assert_eq!(r.expected, 6_000);
        assert_eq!((r.delivered, r.lost, r.duplicates), (6_000, 0, 0), "{f:?}");
        assert!(!r.timed_out);
    }
    let paced = Flow {
        rate: Some(1000.0),
        messages: 200,
        ..flow(QoS::AtMostOnce, 1, 1)
    };
    let r = run_flow(broker.addr, "lat", &paced)
        .await
        .expect("paced flow");
    assert_eq!(r.latencies.len() as u64, r.delivered);
    assert!(r.delivered > 0);
    let after = broker.stats().expect("stats");
    assert!(after.cpu_seconds >= before.cpu_seconds);
    broker.stop().expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_flows_through_our_broker_lose_nothing() {
    exercise(ours()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_flows_through_mosquitto_lose_nothing() {
    let program = PathBuf::from("/usr/sbin/mosquitto");
    if !program.exists() {
        eprintln!("mosquitto is not installed; skipping");
        return;
    }
    exercise(BrokerKind::Mosquitto { program }).await;
}

/// Repeated latency runs alternate the brokers and yield one measured run per broker, QoS and
/// repetition (ours against itself when mosquitto is not installed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_series_measures_every_run_of_both_brokers() {
    let mosquitto = PathBuf::from("/usr/sbin/mosquitto");
    let theirs = if mosquitto.exists() {
        BrokerKind::Mosquitto { program: mosquitto }
    } else {
        ours()
    };
    let plan = Plan {
        latency_rate: 1000.0,
        latency_messages: 100,
        payload: 32,
        time_limit: Duration::from_secs(30),
        ..Plan::default()
    };
    let series = latency_series(&ours(), &theirs, &plan, 3)
        .await
        .expect("latency series");
    assert_eq!(series.len(), 2);
    for s in &series {
        assert_eq!((s.ours.len(), s.theirs.len()), (3, 3));
        for r in s.ours.iter().chain(&s.theirs) {
            assert_eq!((r.lost, r.duplicates), (0, 0));
            assert!(r.p50_us > 0.0 && r.p99_us >= r.p50_us, "{r:?}");
        }
    }
    let t = latency_table(&series, "lichen", "other");
    assert_eq!(t.matches("ratio").count(), 2, "{t}");
}
