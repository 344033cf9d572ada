#!/usr/bin/env python3
"""Time from CreateDeployment to SUCCEEDED for one device, on loopback: boto3 `greengrassv2`
against `lichen fleet serve`, and a simulated core (awsiotsdk MQTT over mutual TLS with a device
certificate) that acts on `notify-namespace-aws-gg-deployment` the way a core does: `$next/get`,
then IN_PROGRESS and SUCCEEDED on `<jobId>/namespace-aws-gg-deployment/update`. The clock stops
when ListEffectiveDeployments shows SUCCEEDED (polled every 5 ms), so the figure includes the
fleet's job event reaching the deployment's per-device state.

    cargo build -p lichen --bins      # or --release, and --bin target/release/lichen
    .venv/bin/python bench/deploy_latency.py [--bin PATH] [--runs 20]

No real core installs anything here: this measures the fleet's side (create, job, notify,
device round trips, status), not a component's install time.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "compat"))
sys.path.insert(0, str(HERE.parent / "compat" / "fleet"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="the lichen binary (default: LICHEN_BIN or target/debug/lichen)")
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    if a.bin:
        os.environ["LICHEN_BIN"] = a.bin
    from awscrt import mqtt
    from conftest import Fleet
    from test_deployments import NS, SimulatedCore, publish

    tmp = Path(tempfile.mkdtemp(prefix="lichen-deploy-bench-"))
    fleet = Fleet(tmp / "root").start()
    core = None
    try:
        iot = fleet.client("iot")
        gg = fleet.client("greengrassv2")
        core = SimulatedCore(fleet, iot, tmp)
        group = f"bench-{uuid.uuid4().hex[:6]}"
        arn = iot.create_thing_group(thingGroupName=group)["thingGroupArn"]
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=core.name)
        wake = threading.Event()
        sub, _ = core.conn.subscribe(
            topic=f"$aws/things/{core.name}/jobs/notify-{NS}",
            qos=mqtt.QoS.AT_LEAST_ONCE,
            callback=lambda topic, payload, **kw: wake.set(),
        )
        sub.result(15)
        stop = threading.Event()

        def device():
            done = set()
            while not stop.is_set():
                wake.wait(0.5)
                wake.clear()
                job = core.next_job()
                if not job or job["jobId"] in done:
                    continue
                core.update(job["jobId"], "IN_PROGRESS")
                core.update(job["jobId"], "SUCCEEDED")
                done.add(job["jobId"])

        t = threading.Thread(target=device, daemon=True)
        t.start()
        times = []
        for i in range(a.runs):
            publish(gg, "com.example.Bench", f"1.0.{i}")
            start = time.monotonic()
            d = gg.create_deployment(targetArn=arn, components={"com.example.Bench": {"componentVersion": f"1.0.{i}"}})
            while True:
                effs = gg.list_effective_deployments(coreDeviceThingName=core.name)["effectiveDeployments"]
                if any(e["deploymentId"] == d["deploymentId"] and e["coreDeviceExecutionStatus"] == "SUCCEEDED" for e in effs):
                    break
                if time.monotonic() - start > 60:
                    raise SystemExit(f"run {i}: no SUCCEEDED within 60 s\n{fleet.output()}")
                time.sleep(0.005)
            times.append(time.monotonic() - start)
        stop.set()
        wake.set()
        t.join(10)
        times.sort()
        print(
            json.dumps(
                {
                    "runs": len(times),
                    "p50_ms": round(statistics.median(times) * 1000, 1),
                    "p90_ms": round(times[int(len(times) * 0.9) - 1] * 1000, 1),
                    "max_ms": round(times[-1] * 1000, 1),
                }
            )
        )
    finally:
        if core:
            core.stop()
        fleet.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
