#!/usr/bin/env python3
"""Fleet control-plane figures: requests per second for CreateThing (a durable write: one
fsynced SQLite commit each) and DescribeThing (a read), driven by boto3 from several threads.

    cargo build --release -p lichen && .venv/bin/python bench/fleet_api.py [--bin target/release/lichen]

boto3 itself (signing, parsing) costs about as much CPU as the server per request, and both
share the machine, so the figures are a lower bound for the server.
"""
import argparse
import configparser
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

import boto3
from botocore.config import Config


def start(binary, root):
    p = subprocess.Popen([binary, "fleet", "serve", "--root", root, "--api", "127.0.0.1:0",
                          "--mqtt", "127.0.0.1:0", "--data-plane", "127.0.0.1:0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(root, "endpoints.json")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return p, json.load(f)["api"]
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise RuntimeError("the fleet did not write endpoints.json")


def run(api, creds, threads, seconds, op):
    latencies, lock = [], threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(w):
        iot = boto3.client("iot", endpoint_url=api, region_name="us-east-1",
                           aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
                           config=Config(retries={"max_attempts": 1}, max_pool_connections=2))
        mine, i = [], 0
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            if op == "create":
                iot.create_thing(thingName=f"bench-{w}-{i}", attributePayload={"attributes": {"w": str(w)}})
            else:
                iot.describe_thing(thingName=f"bench-{w}-{i % 50}")
            mine.append(time.perf_counter() - t0)
            i += 1
        with lock:
            latencies.extend(mine)

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, sorted(latencies)[int(len(latencies) * 0.99)] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", "target/release/lichen"))
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lichen-fleet-bench-")
    root = os.path.join(work, "root")
    p, api = start(os.path.abspath(args.bin), root)
    try:
        c = configparser.ConfigParser()
        c.read(os.path.join(root, "admin", "credentials"))
        creds = (c["default"]["aws_access_key_id"], c["default"]["aws_secret_access_key"])
        for op in ("create", "describe"):
            rps, p50, p99 = run(api, creds, args.threads, args.seconds, op)
            name = "CreateThing" if op == "create" else "DescribeThing"
            print(f"{name:14} {args.threads} threads: {rps:7.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        with open(f"/proc/{p.pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        print(f"fleet RSS after the run: {rss / 1024:.1f} MiB")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
