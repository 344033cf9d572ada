#!/usr/bin/env python3
"""Idle traffic: a core enrolled with `lichen fleet` and left alone for a measured period, its
bytes to and from the fleet counted at the socket level by a TCP relay this script puts between
them (MQTT and the Greengrass data plane both go through it), extrapolated to a day and printed
beside the 1 MB/day budget, with the CPU time the idle core used. Standard library only.

    cargo build --release -p lichen --bins && python3 bench/idle_traffic.py [--seconds 600]

The core runs with its default intervals: MQTT keep-alive 60 s (`mqtt.keepAliveTimeoutMs`),
fleet status every 3600 s (`fleetStatusService.periodicStatusPublishIntervalSeconds`), no
telemetry or Device Defender unless deployed. `--telemetry-ms N` deploys the nucleus emitter
sending to the fleet every N ms, to see what that costs.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BUDGET = 1_000_000  # bytes per day


class Relay:
    """Accepts on a free loopback port and forwards to `target`, counting bytes each way."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.up = 0  # core → fleet
        self.down = 0  # fleet → core
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src, dst, direction):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def snapshot(self):
        with self.lock:
            return self.up, self.down


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # utime, stime, cutime, cstime (fields 14-17, counted from 1)
    return sum(int(x) for x in fields[11:15]) / ticks


def wait_file(path, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return json.loads(open(path).read())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.1)
    raise RuntimeError(f"{path} did not appear")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", "target/release/lichen"))
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--telemetry-ms", type=int, default=0)
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="lichen-idle-")
    procs = []
    try:
        fleet_root = os.path.join(work, "fleet")
        fleet = subprocess.Popen([binary, "fleet", "serve", "--root", fleet_root, "--api", "127.0.0.1:0",
                                  "--mqtt", "127.0.0.1:0", "--data-plane", "127.0.0.1:0"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(fleet)
        endpoints = wait_file(os.path.join(fleet_root, "endpoints.json"))
        mqtt = Relay(int(endpoints["mqtt"].rsplit(":", 1)[1]))
        plane = Relay(int(endpoints["dataPlane"].rsplit(":", 1)[1]))
        out = os.path.join(work, "enrolled")
        subprocess.run([binary, "fleet", "enroll", "--root", fleet_root, "--thing", "idle-core", "--out", out],
                       check=True, capture_output=True)
        # The enrolled config, pointed at the relays (JSON is YAML).
        config = json.loads(subprocess.run(
            [sys.executable, "-c", "import json,sys,yaml;print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
             os.path.join(out, "config.yaml")], check=True, capture_output=True, text=True).stdout)
        nucleus = config["services"]["aws.greengrass.Nucleus"]["configuration"]
        nucleus["mqtt"]["port"] = mqtt.port
        nucleus["greengrassDataPlanePort"] = plane.port
        cfg = os.path.join(work, "config.json")
        with open(cfg, "w") as f:
            json.dump(config, f)
        root = os.path.join(work, "core")
        core = subprocess.Popen([binary, "core", "run", "--root", root, "--config", cfg],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(core)
        for line in core.stdout:
            if "ready in" in line:
                break
        threading.Thread(target=lambda: [None for _ in core.stdout], daemon=True).start()
        if args.telemetry_ms:
            emitter = "aws.greengrass.telemetry.NucleusEmitter"
            conf = {"telemetryPublishIntervalMs": args.telemetry_ms, "pubSubPublish": "false",
                    "mqttTopic": "$aws/things/{iot:thingName}/lichen/telemetry"}
            subprocess.run([binary, "deployment", "create", "--wait", "--merge", f"{emitter}=1.0.9",
                            "--update-config", json.dumps({emitter: {"MERGE": conf}}), "--root", root],
                           check=True, capture_output=True)
        # Let the connection and its launch-time messages settle, then measure.
        deadline = time.time() + 60
        while mqtt.connections == 0 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(5)
        launch = sum(mqtt.snapshot()) + sum(plane.snapshot())
        up0, down0 = mqtt.snapshot()
        pup0, pdown0 = plane.snapshot()
        cpu0, t0 = cpu_seconds(core.pid), time.monotonic()
        time.sleep(args.seconds)
        up1, down1 = mqtt.snapshot()
        pup1, pdown1 = plane.snapshot()
        cpu1, t1 = cpu_seconds(core.pid), time.monotonic()
        elapsed = t1 - t0
        total = (up1 - up0) + (down1 - down0) + (pup1 - pup0) + (pdown1 - pdown0)
        per_day = total * 86400 / elapsed
        print(f"measured {elapsed:.0f} s idle (telemetry {'every %d ms' % args.telemetry_ms if args.telemetry_ms else 'off'}):")
        print(f"  MQTT        up {up1 - up0} B, down {down1 - down0} B")
        print(f"  data plane  up {pup1 - pup0} B, down {pdown1 - pdown0} B")
        # The hourly COMPLETE fleet status falls outside a short window: count 24 a day, each
        # as large as everything the connection carried at launch (TLS handshake, CONNECT,
        # subscriptions, the launch status) — an upper bound.
        bound = per_day + 24 * launch
        print(f"  launch      {launch} B (handshake, subscriptions, launch fleet status)")
        print(f"  per day     {per_day / 1000:.1f} kB measured rate; {bound / 1000:.1f} kB with 24 hourly "
              f"statuses at launch size (budget {BUDGET / 1000:.0f} kB: "
              f"{'within' if bound <= BUDGET else 'OVER'}, {100 * bound / BUDGET:.1f} %)")
        print(f"  core CPU    {cpu1 - cpu0:.3f} s in {elapsed:.0f} s ({100 * (cpu1 - cpu0) / elapsed:.3f} %)")
        print(f"  relay connections: MQTT {mqtt.connections}, data plane {plane.connections}")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
