#!/usr/bin/env python3
"""Inference benchmark: the lichen-inference engine (tract) against onnxruntime (the Python wheel)
on the same models, inputs, thread count and machine, in one run.

    cargo build --release -p lichen-inference --example infer
    .venv/bin/python bench/inference.py [--threads 1] [--iterations 300] [--streams 1]

For each model: latency p50/p99 (one request at a time, `--threads` threads inside the engine),
throughput (requests/s with `--streams` concurrent requests), and memory per loaded model (RSS
growth from before the load to after the timed runs, so lazily built plans and arenas count).
tract runs in the `infer` process and times `Model::run` there; onnxruntime runs in this
process and times `InferenceSession.run` (which adds the few microseconds of a Python call).
Models come from the rapidocr-onnxruntime and silero-vad wheels in the venv.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat" / "inference"))

from engine_support import Engine, classifier_model, infer_bin, ort_session, silero_model, speech_like  # noqa: E402


def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def models():
    rng = np.random.default_rng(0)
    cls = [rng.uniform(-1, 1, size=(1, 3, 48, 192)).astype(np.float32)]
    vad = [speech_like(0, 512)[None, :], np.zeros((2, 1, 128), np.float32), np.array(16000, np.int64)]
    return [
        ("rapidocr cls (MobileNetV3, 1x3x48x192)", classifier_model(), cls, ["x"]),
        ("silero-vad (512 samples, 16 kHz)", silero_model(), vad, ["input", "state", "sr"]),
    ]


def summarize(latencies_us, wall_s, count):
    lat = sorted(latencies_us)
    p = lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] / 1000.0  # noqa: E731
    return {"p50_ms": p(0.50), "p99_ms": p(0.99), "mean_ms": statistics.fmean(lat) / 1000.0, "rps": count / wall_s}


def bench_tract(binary, path, inputs, args, options):
    with Engine(binary) as e:
        loaded = e.load(path, threads=args.threads, **options)
        if "error" in loaded:
            raise SystemExit(f"tract could not load {path}: {loaded['error']['message']}")
        lat = e.bench(inputs, args.warmup, args.iterations)
        if "error" in lat:
            raise SystemExit(f"tract failed on {path}: {lat['error']['message']}")
        out = summarize(lat["latenciesUs"], lat["wallS"], len(lat["latenciesUs"]))
        out["rss_mb"] = (lat["rssKb"] - loaded["rssBeforeKb"]) / 1024.0
        out["load_ms"] = loaded["loadMs"]
        if args.streams > 1:
            tput = e.bench(inputs, args.warmup, args.iterations, concurrency=args.streams)
            out["rps"] = len(tput["latenciesUs"]) / tput["wallS"]
        return out


def bench_ort(path, inputs, names, args):
    before = rss_kb()
    start = time.perf_counter()
    sess = ort_session(path, threads=args.threads)
    load_ms = (time.perf_counter() - start) * 1000.0
    feed = dict(zip(names, inputs))
    for _ in range(args.warmup):
        sess.run(None, feed)
    lat = []
    wall = time.perf_counter()
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        sess.run(None, feed)
        lat.append((time.perf_counter() - t0) * 1e6)
    wall = time.perf_counter() - wall
    out = summarize(lat, wall, len(lat))
    out["rss_mb"] = (rss_kb() - before) / 1024.0
    out["load_ms"] = load_ms
    if args.streams > 1:
        per = args.iterations // args.streams

        def worker():
            for _ in range(per):
                sess.run(None, feed)

        threads = [threading.Thread(target=worker) for _ in range(args.streams)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["rps"] = per * args.streams / (time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="threads inside each engine (intra-op)")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--streams", type=int, default=1, help="concurrent requests for the throughput figure")
    ap.add_argument("--infer", default=None, help="the infer example (default: release build)")
    ap.add_argument("--specialized-shapes", type=int, default=None, help="tract: 0 = generic plans only")
    ap.add_argument("--ort-backend", action="store_true",
                    help="also run lichen-inference's onnxruntime backend (infer built with --features onnxruntime)")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    binary = Path(args.infer) if args.infer else infer_bin("release")
    if not binary.exists():
        raise SystemExit(f"no {binary}: cargo build --release -p lichen-inference --example infer")
    import onnxruntime

    options = {}
    if args.specialized_shapes is not None:
        options["specializedShapes"] = args.specialized_shapes
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} CPUs · threads={args.threads} · "
          f"streams={args.streams} · iterations={args.iterations} · onnxruntime {onnxruntime.__version__} · {binary}")
    print("| model | engine | p50 ms | p99 ms | mean ms | req/s | RSS MB | load ms | p50 ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for name, path, inputs, names in models():
        ort = bench_ort(path, inputs, names, args)
        tract = bench_tract(binary, path, inputs, args, options)
        rows = [("onnxruntime (Python)", ort), ("lichen tract", tract)]
        if args.ort_backend:
            rows.append(("lichen onnxruntime", bench_tract(binary, path, inputs, args, {**options, "backend": "onnxruntime"})))
        for engine, r in rows:
            ratio = r["p50_ms"] / ort["p50_ms"]
            print(f"| {name} | {engine} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | "
                  f"{r['rps']:.0f} | {r['rss_mb']:.1f} | {r['load_ms']:.0f} | {ratio:.2f}× |")
            results.append({"model": name, "engine": engine, **r, "ratio_p50": ratio})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
