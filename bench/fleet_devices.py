#!/usr/bin/env python3
"""Fleet device endpoint figures: devices connecting per second over mutual TLS and resident
memory per idle connected device, N devices (default 10,000) each with its own certificate and
client id = its thing name; mosquitto (TLS, require_certificate) driven the same way in the same
run as the reference.

    cargo build --release -p lichen -p lichen-mqtt-load
    .venv/bin/python bench/fleet_devices.py [--bin target/release/lichen] [--load target/release/mqtt-load]

Steps: start `lichen fleet serve` on a fresh root; write N P-256 device certificates signed by
the fleet CA (`mqtt-load device-certs`, with the CA key in <root>/ca/); register them through
the control plane (CreatePolicy once, then per device CreateThing, RegisterCertificate with the
fleet CA, AttachThingPrincipal, AttachPolicy; boto3 threads, timed); then `mqtt-load
tls-devices` against the fleet and against mosquitto (the fleet's server certificate, the fleet
CA as the only client CA, require_certificate true). Each run reads the broker's VmRSS before,
2 s after the last CONNACK, and at the end of the idle period; devices ping at 3/4 of their
keepalive, and a few silent devices check that the broker closes them after 1.5 x keepalive.
"""
import argparse
import configparser
import concurrent.futures
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import boto3
from botocore.config import Config


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fleet(binary, root, wrap):
    p = subprocess.Popen(wrap + [binary, "fleet", "serve", "--root", root, "--api", "127.0.0.1:0",
                          "--mqtt", "127.0.0.1:0"],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(os.path.dirname(root), "fleet.log"), "w"))
    path = os.path.join(root, "endpoints.json")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return p, json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise RuntimeError("the fleet did not write endpoints.json")


POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": "arn:aws:iot:*:*:topic/devices/${iot:Connection.Thing.ThingName}/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": "arn:aws:iot:*:*:topicfilter/devices/${iot:Connection.Thing.ThingName}/*"},
    ],
})


def register(api, creds, ca_pem, certs, prefix, n, threads):
    """Things, certificates and policy attachments for n devices; returns seconds and calls."""
    local = threading.local()

    def client():
        if not hasattr(local, "iot"):
            local.iot = boto3.client("iot", endpoint_url=api, region_name="us-east-1",
                                     aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
                                     config=Config(retries={"max_attempts": 3}, max_pool_connections=2))
        return local.iot

    client().create_policy(policyName="bench-device", policyDocument=POLICY)

    def one(i):
        iot = client()
        name = f"{prefix}{i:05d}"
        with open(os.path.join(certs, name + ".pem")) as f:
            pem = f.read()
        iot.create_thing(thingName=name)
        arn = iot.register_certificate(certificatePem=pem, caCertificatePem=ca_pem,
                                       status="ACTIVE")["certificateArn"]
        iot.attach_thing_principal(thingName=name, principal=arn)
        iot.attach_policy(policyName="bench-device", target=arn)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, range(n)):
            pass
    return time.monotonic() - t0, 4 * n + 1


def start_mosquitto(program, work, ca, cert, key):
    port = free_port()
    # mosquitto drops root for its own user: give it copies it may read.
    d = os.path.join(work, "mosquitto")
    os.makedirs(d)
    os.chmod(work, 0o755)
    copies = []
    for src in (ca, cert, key):
        dst = os.path.join(d, os.path.basename(src))
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
        copies.append(dst)
    ca, cert, key = copies
    conf = os.path.join(d, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
                f"persistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n"
                f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\n")
    # Its log (TLS errors such as a device dropped without close_notify) goes to a file.
    p = subprocess.Popen([program, "-c", conf], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(work, "mosquitto.log"), "w"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not listen")


def serving_pid(root):
    """The fleet process serving `root` (under a wrapper it is not our child)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{d}/exe")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if exe.endswith("lichen-fleet") and root.encode() in argv:
            return int(d)
    raise RuntimeError("no lichen-fleet process serving " + root)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def devices(load, name, addr, pid, ca, certs, prefix, args):
    out = subprocess.run([load, "tls-devices", "--name", name, "--addr", addr, "--pid", str(pid),
                          "--ca", ca, "--certs", certs, "--prefix", prefix,
                          "--devices", str(args.devices), "--concurrency", str(args.concurrency),
                          "--keep-alive", str(args.keep_alive), "--idle", str(args.idle)],
                         check=True, capture_output=True, text=True)
    if out.stderr.strip():
        print(out.stderr.strip())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", "target/release/lichen"))
    ap.add_argument("--load", default="target/release/mqtt-load")
    ap.add_argument("--mosquitto", default="/usr/sbin/mosquitto")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--keep-alive", type=int, default=20)
    ap.add_argument("--idle", type=int, default=30)
    ap.add_argument("--threads", type=int, default=4, help="boto3 threads registering devices")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--fleet-wrap", default="", help="a command the fleet runs under, e.g. heaptrack")
    args = ap.parse_args()
    # Both brokers and the load generator hold one descriptor per device.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.devices + 200:
        raise SystemExit(f"open-file hard limit {hard} is below {args.devices + 200}")
    work = tempfile.mkdtemp(prefix="lichen-fleet-devices-")
    root = os.path.join(work, "root")
    certs = os.path.join(work, "certs")
    prefix = "bench-device-"
    load = os.path.abspath(args.load)
    fleet, ends = start_fleet(os.path.abspath(args.bin), root, args.fleet_wrap.split())
    mosq = None
    try:
        ca_dir = os.path.join(root, "ca")
        t0 = time.monotonic()
        subprocess.run([load, "device-certs", "--ca-cert", os.path.join(ca_dir, "ca.pem"),
                        "--ca-key", os.path.join(ca_dir, "ca.key"), "--out", certs,
                        "--prefix", prefix, "--devices", str(args.devices)], check=True)
        gen = time.monotonic() - t0
        print(f"device certificates (P-256, signed by the fleet CA): {args.devices} in {gen:.1f} s")
        c = configparser.ConfigParser()
        c.read(os.path.join(root, "admin", "credentials"))
        creds = (c["default"]["aws_access_key_id"], c["default"]["aws_secret_access_key"])
        with open(ends["rootCa"]) as f:
            ca_pem = f.read()
        secs, calls = register(ends["api"], creds, ca_pem, certs, prefix, args.devices, args.threads)
        print(f"registration through the control plane ({args.threads} boto3 threads): "
              f"{args.devices} devices, {calls} calls in {secs:.1f} s = {calls / secs:.0f} calls/s, "
              f"{args.devices / secs:.0f} devices/s")
        pid = serving_pid(root)
        print(f"fleet RSS after registration: {rss_kib(pid) / 1024:.1f} MiB (pid {pid})")
        ours = devices(load, "lichen-fleet", ends["mqtt"], pid, ends["rootCa"], certs, prefix, args)
        mosq, maddr = start_mosquitto(args.mosquitto, work, ends["rootCa"],
                                      os.path.join(ca_dir, "server.pem"), os.path.join(ca_dir, "server.key"))
        theirs = devices(load, "mosquitto", maddr, mosq.pid, ends["rootCa"], certs, prefix, args)
        rows = [
            ("devices connected", "connected", "{:.0f}", False),
            ("failed", "failed", "{:.0f}", False),
            ("connects/s (mutual TLS + CONNECT)", "connects_per_second", "{:,.0f}", True),
            ("broker CPU s while connecting", "cpu_seconds_connecting", "{:.2f}", True),
            ("RSS before (MiB)", "rss_before", "{:.1f}", False),
            ("RSS connected (MiB)", "rss_connected", "{:.1f}", False),
            ("RSS per device, connected (B)", "bytes_per_device", "{:,.0f}", True),
            ("RSS per device, idle end (B)", "bytes_per_device_idle_end", "{:,.0f}", True),
            ("keepalive pings answered", "pings_answered", "{:.0f}", False),
            ("pinging devices dropped", "pinging_dropped", "{:.0f}", False),
            ("silent devices closed by keepalive", "silent_closed", "{:.0f}", False),
        ]
        print(f"\n{'measure':40} {'lichen-fleet':>14} {'mosquitto':>14} {'ratio':>7}")
        for label, key, fmt, ratio in rows:
            a, b = ours[key], theirs[key]
            if key.startswith("rss_"):
                a, b = a / 1048576, b / 1048576
            r = f"{a / b:.2f}x" if ratio and b else ""
            print(f"{label:40} {fmt.format(a):>14} {fmt.format(b):>14} {r:>7}")
        print(json.dumps({"ours": ours, "mosquitto": theirs}))
    finally:
        if args.fleet_wrap:
            # Stop the fleet itself so that the wrapper (a profiler) sees it exit and finishes.
            try:
                served = serving_pid(root)
                os.kill(served, signal.SIGTERM)
                deadline = time.monotonic() + 120
                while os.path.exists(f"/proc/{served}") and time.monotonic() < deadline:
                    time.sleep(0.2)
                fleet.wait(timeout=120)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                pass
        for p in (mosq, fleet):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
