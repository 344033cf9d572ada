//! `infer`: drives the engine from another process (the compat parity tests and the benchmark
//! in `bench/inference.py`), one JSON request per stdin line, one JSON answer per stdout line.
//!
//! ```text
//! {"op": "load", "path": "m.onnx", "options": {"backend": "tract", "threads": 1}}
//!   → {"inputs": [TensorSpec…], "outputs": [...], "loadMs": 12.5, "rssBeforeKb": …, "rssAfterKb": …}
//! {"op": "run", "inputs": [Tensor…]}            → {"outputs": [Tensor…]}
//! {"op": "bench", "inputs": [Tensor…], "warmup": 20, "iterations": 200, "concurrency": 1}
//!   → {"latenciesUs": [...], "wallS": 1.2, "rssKb": …}
//! any failure                                    → {"error": {"kind": "shape", "message": "…"}}
//! ```
//! Test and benchmark tooling only; the product's worker is `lichen-inference`.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Instant;

use lichen_inference::{InferenceError, Model, ModelOptions, Tensor};
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    Load {
        path: std::path::PathBuf,
        #[serde(default)]
        options: ModelOptions,
    },
    Run {
        inputs: Vec<Tensor>,
    },
    Bench {
        inputs: Vec<Tensor>,
        #[serde(default)]
        warmup: usize,
        iterations: usize,
        #[serde(default = "one")]
        concurrency: usize,
    },
}

fn one() -> usize {
    1
}

/// Resident set size of this process, from /proc (Linux only; 0 elsewhere).
fn rss_kb() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn error(kind: &str, message: String) -> Value {
    json!({"error": {"kind": kind, "message": message}})
}

fn engine_error(e: InferenceError) -> Value {
    let kind = match e {
        InferenceError::Load { .. } => "load",
        InferenceError::Shape { .. } => "shape",
        InferenceError::Input(_) => "input",
        InferenceError::Backend(_) => "backend",
    };
    error(kind, e.to_string())
}

fn handle(model: &mut Option<Arc<Model>>, req: Request) -> Value {
    match req {
        Request::Load { path, options } => {
            let before = rss_kb();
            let start = Instant::now();
            match Model::load(&path, &options) {
                Ok(m) => {
                    let load_ms = start.elapsed().as_secs_f64() * 1e3;
                    let answer = json!({
                        "inputs": m.inputs(), "outputs": m.outputs(), "loadMs": load_ms,
                        "rssBeforeKb": before, "rssAfterKb": rss_kb(),
                    });
                    *model = Some(Arc::new(m));
                    answer
                }
                Err(e) => engine_error(e),
            }
        }
        Request::Run { inputs } => match model {
            None => error("usage", "send a load request first".into()),
            Some(m) => match m.run(inputs) {
                Ok(outputs) => json!({ "outputs": outputs }),
                Err(e) => engine_error(e),
            },
        },
        Request::Bench {
            inputs,
            warmup,
            iterations,
            concurrency,
        } => match model {
            None => error("usage", "send a load request first".into()),
            Some(m) => bench(m, inputs, warmup, iterations, concurrency.max(1)),
        },
    }
}

/// Runs `iterations` runs spread over `concurrency` threads after `warmup` runs on each;
/// every run's latency and the wall time of the timed part.
fn bench(
    model: &Arc<Model>,
    inputs: Vec<Tensor>,
    warmup: usize,
    iterations: usize,
    concurrency: usize,
) -> Value {
    let barrier = Arc::new(std::sync::Barrier::new(concurrency + 1));
    let handles: Vec<_> = (0..concurrency)
        .map(|t| {
            let (model, inputs, barrier) = (model.clone(), inputs.clone(), barrier.clone());
            let mine = iterations / concurrency + usize::from(t < iterations % concurrency);
            std::thread::spawn(move || -> Result<Vec<f64>, InferenceError> {
                for _ in 0..warmup {
                    model.run(inputs.clone())?;
                }
                barrier.wait();
                let mut lat = Vec::with_capacity(mine);
                for _ in 0..mine {
                    let run_inputs = inputs.clone();
                    let start = Instant::now();
                    model.run(run_inputs)?;
                    lat.push(start.elapsed().as_secs_f64() * 1e6);
                }
                Ok(lat)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(iterations);
    for h in handles {
        match h.join().expect("bench thread panicked") {
            Ok(l) => latencies.extend(l),
            Err(e) => return engine_error(e),
        }
    }
    json!({ "latenciesUs": latencies, "wallS": start.elapsed().as_secs_f64(), "rssKb": rss_kb() })
}

fn main() {
    let mut model: Option<Arc<Model>> = None;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(&mut model, req),
            Err(e) => error("usage", format!("bad request: {e}")),
        };
        serde_json::to_writer(&mut stdout, &answer).expect("stdout");
        stdout
            .write_all(b"\n")
            .and_then(|_| stdout.flush())
            .expect("stdout");
    }
}
