#!/usr/bin/env python3
"""Shadow figures: local UpdateThingShadow calls per second through IPC (one unmodified awsiotsdk
GreengrassCoreIPCClientV2 component, sequential calls, each a committed SQLite transaction), and
sync latency core -> fleet on loopback (from just before the IPC call to the first boto3
`iot-data` GetThingShadow that shows the new value; the poll itself takes a few ms).

    cargo build --release -p lichen --bins && \
      LICHEN_BIN=target/release/lichen .venv/bin/python bench/shadow_ipc.py [--updates 2000] [--syncs 20]

The core's local rate limits are raised for the run (the defaults allow 20 requests per second
per thing).
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "compat" / "shadows"))
import core_shadows_support as sup  # noqa: E402

sys.path.insert(0, str(HERE.parent / "compat" / "fleet"))
_spec = importlib.util.spec_from_file_location("fleet_suite_conftest", HERE.parent / "compat" / "fleet" / "conftest.py")
_fleet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fleet)
Fleet = _fleet.Fleet

UNLIMITED = {"rateLimits": {"maxTotalLocalRequestsRate": 1000000, "maxLocalRequestsPerSecondPerThing": 1000000,
                            "maxOutboundSyncUpdatesPerSecond": 1000}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--syncs", type=int, default=20)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lichen-bench-shadow-"))
    (tmp / "fleet").mkdir()
    fleet = Fleet(tmp / "fleet" / "root").start()
    core = None
    try:
        out = tmp / "enrolled"
        p = subprocess.run([sup.lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", sup.THING,
                            "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        work = tmp / "core"
        work.mkdir()
        core = sup.Core(work / "root", work, out / "config.yaml")
        core.start()
        sup.wait_for(lambda: "connected to the cloud" in core.log(), 60, "the core to connect")
        config = {**UNLIMITED, "synchronize": {"coreThing": {"classic": True}}}
        sup.deploy_drivers(core, {sup.SHADOW: {"MERGE": config}}, [f"{sup.SHADOW}=2.3.9"])
        app = core.drivers["test.ShadowApp"]

        # Local updates per second (a named shadow that is not synced: no cloud traffic).
        r = app.run(
            "t0 = time.perf_counter()\n"
            f"for i in range({a.updates}):\n"
            f"    client.update_thing_shadow(thing_name={sup.THING!r}, shadow_name='bench', "
            "payload=json.dumps({'state': {'reported': {'i': i}}}).encode())\n"
            "result = time.perf_counter() - t0",
            timeout=600,
        )
        print(f"local UpdateThingShadow over IPC: {a.updates / r:.0f}/s ({a.updates} sequential calls, {r:.2f} s)")

        data = fleet.client("iot-data")
        lat = []
        for i in range(a.syncs):
            t_call = app.run(
                "t = time.time()\n"
                f"client.update_thing_shadow(thing_name={sup.THING!r}, shadow_name='', "
                f"payload=json.dumps({{'state': {{'reported': {{'seq': {i}}}}}}}).encode())\n"
                "result = t"
            )
            while True:
                try:
                    d = json.loads(data.get_thing_shadow(thingName=sup.THING)["payload"].read())
                    if d["state"].get("reported", {}).get("seq") == i:
                        lat.append((time.time() - t_call) * 1000)
                        break
                except data.exceptions.ResourceNotFoundException:
                    pass
                time.sleep(0.002)
        lat.sort()
        print(f"sync latency core -> fleet: p50 {statistics.median(lat):.1f} ms, max {lat[-1]:.1f} ms ({a.syncs} updates)")
    finally:
        if core:
            core.stop()
        fleet.stop()


if __name__ == "__main__":
    main()
