//! `mqtt-load`: runs the load plan against our broker and mosquitto and prints the table.
//! `mqtt-load broker --listen tcp://HOST:PORT` runs our broker itself (as `lichen broker` does),
//! for when the full `lichen` binary is not at hand.

use clap::{Parser, Subcommand};
use lichen_mqtt_load::{
    BrokerKind, Plan, add_latency_rows, latency_series, latency_table, measure, raise_fd_limit,
    table, tls,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mqtt-load",
    about = "MQTT load generator: our broker against mosquitto"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Our broker's program; it is given `broker --listen tcp://127.0.0.1:<port>`.
    /// Defaults to this program's own `broker` subcommand.
    #[arg(long)]
    lichen: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Messages per throughput run (over all publishers).
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Publishers in fan-in runs, subscribers in fan-out runs.
    #[arg(long, default_value_t = 10)]
    fan: usize,
    /// Payload bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Time limit per throughput run, in seconds.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    #[arg(long, default_value_t = 2000.0)]
    latency_rate: f64,
    #[arg(long, default_value_t = 10_000)]
    latency_messages: usize,
    /// Idle connections for the memory figure (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Latency runs per broker, alternating ours and mosquitto; above 1, each run is printed
    /// and the table shows the medians (single runs are noisy).
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run our broker in this process until SIGINT or SIGTERM.
    Broker {
        #[arg(long = "listen", default_value = "tcp://127.0.0.1:1883")]
        listen: Vec<String>,
        /// Largest MQTT packet accepted from or sent to a client, in bytes.
        #[arg(long = "max-packet-size")]
        max_packet_size: Option<u32>,
        /// Deliveries queued per session before its publishers are held back.
        #[arg(long = "max-queued-messages")]
        max_queued_messages: Option<usize>,
        /// Keep a task for every idle connection instead of parking it in the idle pool.
        #[arg(long = "no-park-idle-connections")]
        no_park_idle_connections: bool,
    },
    /// Write P-256 device certificates signed by a CA: `<out>/<prefix>NNNNN.pem` and `.key`.
    DeviceCerts {
        /// The CA certificate (PEM), e.g. `<fleet root>/ca/ca.pem`.
        #[arg(long)]
        ca_cert: PathBuf,
        /// The CA's private key (PEM), e.g. `<fleet root>/ca/ca.key`.
        #[arg(long)]
        ca_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "bench-device-")]
        prefix: String,
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
    },
    /// Connect N devices over mutual TLS (each its own certificate, client id = its name), keep
    /// them idle with keepalive pings, disconnect; print one JSON line of figures.
    TlsDevices {
        /// A name for the broker, echoed in the output.
        #[arg(long)]
        name: String,
        /// The broker's device endpoint, HOST:PORT.
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// The broker's process id (its VmRSS is read).
        #[arg(long)]
        pid: u32,
        /// The CA the broker's certificate chains to.
        #[arg(long)]
        ca: PathBuf,
        /// The folder `device-certs` wrote.
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, default_value = "bench-device-")]
        prefix: String,
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 8)]
        sources: u8,
        #[arg(long, default_value_t = 20)]
        keep_alive: u16,
        /// Seconds the devices stay connected after the last one is in.
        #[arg(long, default_value_t = 30)]
        idle: u64,
        /// Devices (the last ones) that never ping, with `--silent-keep-alive`.
        #[arg(long, default_value_t = 10)]
        silent: usize,
        #[arg(long, default_value_t = 4)]
        silent_keep_alive: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqtt-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Cmd::Broker {
        listen,
        max_packet_size,
        max_queued_messages,
        no_park_idle_connections,
    }) = cli.command
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .try_init();
        let opts = lichen_broker::StandaloneOptions {
            listen,
            max_packet_size,
            max_queued_messages,
            park_idle_connections: !no_park_idle_connections,
            ..Default::default()
        };
        return match rt.block_on(lichen_broker::run_standalone(opts)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mqtt-load broker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let limit = raise_fd_limit();
    match cli.command {
        Some(Cmd::DeviceCerts {
            ca_cert,
            ca_key,
            out,
            prefix,
            devices,
        }) => {
            return match tls::generate_device_certs(&ca_cert, &ca_key, &out, &prefix, devices) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mqtt-load device-certs: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::TlsDevices {
            name,
            addr,
            pid,
            ca,
            certs,
            prefix,
            devices,
            concurrency,
            sources,
            keep_alive,
            idle,
            silent,
            silent_keep_alive,
        }) => {
            if devices as u64 + 100 > limit {
                eprintln!(
                    "mqtt-load tls-devices: {devices} devices need more open files than the limit {limit}"
                );
                return ExitCode::FAILURE;
            }
            let plan = tls::DevicePlan {
                addr,
                pid,
                ca,
                certs,
                prefix,
                devices,
                concurrency,
                sources,
                keep_alive,
                idle: Duration::from_secs(idle),
                silent,
                silent_keep_alive,
            };
            return match rt.block_on(tls::connect_devices(plan)) {
                Ok(r) => {
                    println!("{}", r.json(&name));
                    if let Some(e) = &r.first_error {
                        eprintln!("{name}: first failure: {e}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mqtt-load tls-devices: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let plan = Plan {
        messages: cli.messages,
        fan: cli.fan.max(1),
        payload: cli.payload,
        time_limit: Duration::from_secs(cli.time_limit),
        latency_rate: cli.latency_rate,
        latency_messages: cli.latency_messages,
        idle_connections: cli.idle.min(limit.saturating_sub(100) as usize),
        latency_runs: cli.runs.max(1),
    };
    let ours = match cli.lichen {
        Some(program) => BrokerKind::Lichen {
            program,
            args: vec!["broker".into()],
        },
        None => match std::env::current_exe() {
            Ok(program) => BrokerKind::Lichen {
                program,
                args: vec!["broker".into()],
            },
            Err(e) => {
                eprintln!("mqtt-load: cannot find this program to run the broker: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let theirs = BrokerKind::Mosquitto {
        program: cli.mosquitto,
    };
    eprintln!("plan: {plan:?} (open-file limit {limit})");
    let result = rt.block_on(async {
        let mut a = measure(&ours, &plan).await?;
        let mut b = measure(&theirs, &plan).await?;
        let mut series = Vec::new();
        if plan.latency_runs > 1 {
            series = latency_series(&ours, &theirs, &plan, plan.latency_runs).await?;
            add_latency_rows(&series, &plan, &mut a, &mut b);
        }
        anyhow::Ok((a, b, series))
    });
    match result {
        Ok((a, b, series)) => {
            println!("{}", table(&a, &b));
            if !series.is_empty() {
                println!("{}", latency_table(&series, a.name, b.name));
            }
            println!(
                "QoS 1 messages lost: {} {}, {} {}",
                a.name, a.qos1_lost, b.name, b.qos1_lost
            );
            if a.qos1_lost > 0 {
                eprintln!("mqtt-load: our broker lost QoS 1 messages");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqtt-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
