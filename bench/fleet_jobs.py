#!/usr/bin/env python3
"""Fleet jobs figures: N (default 1,000) simulated devices — real MQTT 3.1.1 clients over
mutual TLS, each with its own certificate, connected as its thing — take one job targeting
their thing group: notifications per second, time from CreateJob until 99% of executions are
SUCCEEDED, and the fleet's RSS and CPU while it runs.

    cargo build --release -p lichen -p lichen-mqtt-load
    .venv/bin/python bench/fleet_jobs.py [--bin target/release/lichen] [--load target/release/mqtt-load]

Steps: start `lichen fleet serve`; write the device certificates (`mqtt-load device-certs`) and
register them through the control plane (bench/fleet_devices.py's `register`, with a policy for
the device's own `$aws/things/<thing>/jobs/…` topics); put the things in a group; connect every
device (asyncio TLS, `--concurrency` handshakes at once) and subscribe it to its jobs topics; then
CreateJob on the group. Each device answers `notify-next` with `start-next`, and the accepted
execution with `<jobId>/update` SUCCEEDED, as an awsiotsdk jobs sample does. DescribeJob confirms
the counts at the end.
"""
import argparse
import asyncio
import configparser
import json
import os
import resource
import shutil
import signal
import ssl
import struct
import sys
import tempfile
import time

import boto3
from botocore.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet_devices  # noqa: E402

JOBS_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*"},
    ],
})


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    b = text.encode()
    return struct.pack("!H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


async def read_packet(reader):
    first = (await reader.readexactly(1))[0]
    mult, n = 1, 0
    while True:
        b = (await reader.readexactly(1))[0]
        n += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    return first, await reader.readexactly(n)


class Stats:
    def __init__(self, n):
        self.n = n
        self.notified = []   # monotonic times of the first notify-next with an execution
        self.succeeded = []  # monotonic times of update/accepted
        self.errors = 0


async def device(name, addr, ctx, stats, ready, go):
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="localhost")
    writer.write(packet(0x10, s("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 120) + s(name)))
    first, body = await read_packet(reader)
    if first != 0x20 or body[1] != 0:
        raise RuntimeError(f"{name}: CONNACK {body!r}")
    base = f"$aws/things/{name}/jobs"
    writer.write(packet(0x82, struct.pack("!H", 1) + s(f"{base}/#") + b"\x01"))
    first, body = await read_packet(reader)
    if first != 0x90 or body[2] != 1:
        raise RuntimeError(f"{name}: SUBACK {body!r}")
    ready()
    await go.wait()
    seen_next = False
    while True:
        first, body = await read_packet(reader)
        if first >> 4 != 3:
            continue
        qos = (first >> 1) & 3
        tlen = struct.unpack("!H", body[:2])[0]
        topic = body[2:2 + tlen].decode()
        rest = body[2 + tlen:]
        if qos:
            writer.write(packet(0x40, rest[:2]))
            rest = rest[2:]
        msg = json.loads(rest)
        if topic == f"{base}/notify-next" and "execution" in msg and not seen_next:
            seen_next = True
            stats.notified.append(time.monotonic())
            writer.write(packet(0x30, s(f"{base}/start-next") + json.dumps({"clientToken": name}).encode()))
        elif topic == f"{base}/start-next/accepted" and "execution" in msg:
            job = msg["execution"]["jobId"]
            writer.write(packet(0x30, s(f"{base}/{job}/update") + json.dumps(
                {"status": "SUCCEEDED", "expectedVersion": msg["execution"]["versionNumber"]}).encode()))
        elif topic.endswith("/update/accepted"):
            stats.succeeded.append(time.monotonic())
            writer.close()
            return
        elif topic.endswith("/rejected"):
            stats.errors += 1


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args, ends, root, certs, prefix, iot, garn):
    ctx = ssl.create_default_context(cafile=ends["rootCa"])
    pid = fleet_devices.serving_pid(root)
    stats = Stats(args.devices)
    connected = 0
    all_ready = asyncio.Event()
    go = asyncio.Event()

    def ready():
        nonlocal connected
        connected += 1
        if connected == args.devices:
            all_ready.set()

    sem = asyncio.Semaphore(args.concurrency)
    tasks = []

    async def start(i):
        name = f"{prefix}{i:05d}"
        c = ssl.create_default_context(cafile=ends["rootCa"])
        c.load_cert_chain(os.path.join(certs, name + ".pem"), os.path.join(certs, name + ".key"))
        async with sem:
            opened = asyncio.Event()
            t = asyncio.create_task(device(name, ends["mqtt"], c, stats, lambda: (ready(), opened.set()), go))
            tasks.append(t)
            await asyncio.wait([t, asyncio.create_task(opened.wait())], return_when=asyncio.FIRST_COMPLETED)

    del ctx
    t0 = time.monotonic()
    await asyncio.gather(*(start(i) for i in range(args.devices)))
    await asyncio.wait_for(all_ready.wait(), 600)
    print(f"devices connected and subscribed: {connected} in {time.monotonic() - t0:.1f} s")
    rss0, cpu0 = fleet_devices.rss_kib(pid), cpu_seconds(pid)
    go.set()
    created = time.monotonic()
    await asyncio.to_thread(iot.create_job, jobId="bench-job", targets=[garn],
                            document=json.dumps({"operation": "bench"}))
    need = -(-args.devices * 99 // 100)
    deadline = time.monotonic() + args.timeout
    peak = rss0
    while len(stats.succeeded) < need and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        peak = max(peak, fleet_devices.rss_kib(pid))
    done = sorted(stats.succeeded)
    t99 = done[need - 1] - created if len(done) >= need else None
    await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
    cpu = cpu_seconds(pid) - cpu0
    total = time.monotonic() - created
    job = (await asyncio.to_thread(iot.describe_job, jobId="bench-job"))["job"]
    for t in tasks:
        t.cancel()
    n = stats.notified
    rate = len(n) / (max(n) - created) if n else 0
    print(json.dumps({
        "devices": args.devices,
        "notified": len(n),
        "notifications_per_second": round(rate),
        "seconds_to_99_percent_succeeded": None if t99 is None else round(t99, 2),
        "seconds_to_all_succeeded": round(max(stats.succeeded) - created, 2) if stats.succeeded else None,
        "succeeded_seen_by_devices": len(stats.succeeded),
        "rejected_replies": stats.errors,
        "job_status": job["status"],
        "job_succeeded_things": job["jobProcessDetails"]["numberOfSucceededThings"],
        "fleet_rss_mib_before": round(rss0 / 1024, 1),
        "fleet_rss_mib_peak": round(peak / 1024, 1),
        "fleet_cpu_seconds": round(cpu, 2),
        "fleet_cpu_percent_of_one_core": round(100 * cpu / total, 1),
    }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", "target/release/lichen"))
    ap.add_argument("--load", default="target/release/mqtt-load")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32, help="TLS handshakes at once")
    ap.add_argument("--threads", type=int, default=4, help="boto3 threads registering devices")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="lichen-fleet-jobs-")
    root = os.path.join(work, "root")
    certs = os.path.join(work, "certs")
    prefix = "jobs-device-"
    fleet, ends = fleet_devices.start_fleet(os.path.abspath(args.bin), root, [])
    try:
        ca_dir = os.path.join(root, "ca")
        subprocess_run = __import__("subprocess").run
        subprocess_run([os.path.abspath(args.load), "device-certs", "--ca-cert", os.path.join(ca_dir, "ca.pem"),
                        "--ca-key", os.path.join(ca_dir, "ca.key"), "--out", certs, "--prefix", prefix,
                        "--devices", str(args.devices)], check=True, capture_output=True)
        c = configparser.ConfigParser()
        c.read(os.path.join(root, "admin", "credentials"))
        creds = (c["default"]["aws_access_key_id"], c["default"]["aws_secret_access_key"])
        with open(ends["rootCa"]) as f:
            ca_pem = f.read()
        fleet_devices.POLICY = JOBS_POLICY
        secs, _ = fleet_devices.register(ends["api"], creds, ca_pem, certs, prefix, args.devices, args.threads)
        print(f"registered {args.devices} devices in {secs:.1f} s")
        iot = boto3.client("iot", endpoint_url=ends["api"], region_name="us-east-1",
                           aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
                           config=Config(retries={"max_attempts": 3}))
        garn = iot.create_thing_group(thingGroupName="bench-jobs")["thingGroupArn"]
        for i in range(args.devices):
            iot.add_thing_to_thing_group(thingGroupName="bench-jobs", thingName=f"{prefix}{i:05d}")
        asyncio.run(run(args, ends, root, certs, prefix, iot, garn))
    finally:
        fleet.send_signal(signal.SIGTERM)
        try:
            fleet.wait(timeout=30)
        except Exception:
            fleet.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
