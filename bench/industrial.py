#!/usr/bin/env python3
"""Industrial collection throughput: a real core's lichen.IndustrialCollector polls a pymodbus
device (POINTS input registers, each every INTERVAL ms), writes the values through the built-in
stream manager, whose SiteWise exporter sends them to a local BatchPutAssetPropertyValue fake.
Reports values/second collected and exported, and the core's CPU (utime+stime from /proc, % of
one core) over the measured window.

    .venv/bin/python bench/industrial.py [--bin target/release/lichen] [--points 200]
        [--interval-ms 100] [--seconds 20] [--batch-delay-ms 1000]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "compat" / "industrial"))
from industrial_support import (  # noqa: E402
    ModbusDevice,
    SiteWiseFake,
    deploy,
    free_port,
    running_core,
    stream_manager_config,
)


def read_stream(sm_port):
    """(alias, ns, value, quality) of every value in SiteWise_Edge_Stream."""
    from industrial_support import flatten
    from stream_manager import ReadMessagesOptions, StreamManagerClient

    client = StreamManagerClient(port=sm_port)
    out, seq = [], 0
    try:
        while True:
            msgs = client.read_messages("SiteWise_Edge_Stream", ReadMessagesOptions(
                desired_start_sequence_number=seq, min_message_count=1, max_message_count=2000,
                read_timeout_millis=0))
            if not msgs:
                return out
            for m in msgs:
                out += flatten(json.loads(m.payload))
            seq = msgs[-1].sequence_number + 1
    except Exception:
        return out
    finally:
        client.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", str(REPO / "target/release/lichen")))
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--interval-ms", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--batch-delay-ms", type=int, default=1000)
    args = ap.parse_args()
    os.environ["LICHEN_BIN"] = args.bin

    device = ModbusDevice(extra=args.points)
    fake = SiteWiseFake()
    tmp = tempfile.mkdtemp(prefix="lichen-bench-industrial-")
    root = Path(tmp) / "root"
    try:
        with running_core(root) as core:
            points = [
                {"alias": f"/p{i}", "kind": "input", "address": 10 + i, "pollIntervalMs": args.interval_ms}
                for i in range(args.points)
            ]
            sm_port = free_port()
            deploy(root, {
                "aws.greengrass.StreamManager": stream_manager_config(sm_port, fake.port),
                "lichen.IndustrialCollector": {
                    "sources": [{"name": "bench", "type": "ModbusTcp",
                                 "endpoint": {"host": "127.0.0.1", "port": device.port},
                                 "measurementDataStreamPrefix": "/bench", "points": points}],
                    "batch": {"maxSamples": 50000, "maxDelayMs": args.batch_delay_ms},
                },
            })
            time.sleep(3)  # warm up: connected, stream created, exporter running
            t0, c0, n0 = time.time_ns(), cpu_seconds(core.pid), len(fake.values())
            time.sleep(args.seconds)
            t1, c1, n1 = time.time_ns(), cpu_seconds(core.pid), len(fake.values())
            wall = (t1 - t0) / 1e9
            # Collected: values stamped inside the window, as the stream holds them.
            stored = read_stream(sm_port)
            stamped = sum(1 for _, ts, _, q in stored if t0 <= ts < t1 and q == "GOOD")
            bad = sum(1 for *_, q in stored if q != "GOOD")
            result = {
                "points": args.points,
                "interval_ms": args.interval_ms,
                "target_values_per_s": args.points * 1000 / args.interval_ms,
                "collected_values_per_s": round(stamped / wall, 1),
                "exported_values_per_s": round((n1 - n0) / wall, 1),
                "core_cpu_percent": round(100 * (c1 - c0) / wall, 1),
                "sitewise_requests": fake.requests,
                "bad_values": bad,
                "binary": args.bin,
            }
            print(json.dumps(result))
    finally:
        device.stop()
        fake.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
