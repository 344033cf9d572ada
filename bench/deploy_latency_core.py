#!/usr/bin/env python3
"""Time from the deployment request to SUCCEEDED for one real `lichen core` on loopback: a
`lichen fleet serve`, one core enrolled with `lichen fleet enroll --group`, and per run a new
component version (a script artifact uploaded through the fleet's S3 API, published with boto3)
deployed to the group. The clock starts before boto3's CreateDeployment (`--via deployments`) or
CreateJob in namespace aws-gg-deployment (`--via jobs`) and stops when the fleet shows the core's
SUCCEEDED: ListEffectiveDeployments (deployments) or DescribeJobExecution (jobs), polled every
10 ms. It includes the notify, the core's
resolve and artifact download over the mutual-TLS data plane, the merge, the component reaching
RUNNING and the status going back. Greengrass takes 40 s to 3 min for the same.

    cargo build -p lichen --bins        # or --release, then --bin target/release/lichen
    .venv/bin/python bench/deploy_latency_core.py [--bin PATH] [--runs 20] [--via jobs|deployments]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "compat"))
sys.path.insert(0, str(HERE.parent / "compat" / "fleet"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="the lichen binary (default: LICHEN_BIN or target/debug/lichen)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--via", choices=["jobs", "deployments"], default="deployments")
    a = ap.parse_args()
    if a.bin:
        os.environ["LICHEN_BIN"] = os.path.abspath(a.bin)
    from conftest import Fleet
    from ota_support import APP, BUCKET, OtaCore, execution, job_deploy, publish

    tmp = Path(tempfile.mkdtemp(prefix="lichen-deploy-core-bench-"))
    fleet = Fleet(tmp / "root").start()
    core = None
    try:
        iot, s3, gg = fleet.client("iot"), fleet.client("s3"), fleet.client("greengrassv2")
        s3.create_bucket(Bucket=BUCKET)
        group = "bench"
        core = OtaCore(fleet, tmp, "bench-core", group).start()
        group_arn = iot.describe_thing_group(thingGroupName=group)["thingGroupArn"]
        times = []
        for i in range(a.runs):
            version = f"1.0.{i}"
            publish(s3, gg, version)
            t0 = time.perf_counter()
            if a.via == "jobs":
                job = job_deploy(iot, group, {APP: version}, revision=i + 1)
            else:
                d = gg.create_deployment(targetArn=group_arn, deploymentName=f"bench-{i}", components={APP: {"componentVersion": version}})
            while True:
                if a.via == "jobs":
                    e = execution(iot, job, core.thing)
                    status = e and e["status"]
                else:
                    effs = gg.list_effective_deployments(coreDeviceThingName=core.thing)["effectiveDeployments"]
                    e = next((x for x in effs if x["deploymentId"] == d["deploymentId"]), None)
                    status = e and e["coreDeviceExecutionStatus"]
                if status in ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED"):
                    break
                if time.perf_counter() - t0 > 120:
                    raise SystemExit(f"run {i}: no terminal status after 120 s\n{core.log()[-3000:]}")
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            if status != "SUCCEEDED":
                raise SystemExit(f"run {i}: {status} {e}")
            # The core runs the new version (its script wrote the line), not just reported it.
            deadline = time.monotonic() + 30
            while core.running_version() != version:
                if time.monotonic() > deadline:
                    raise SystemExit(f"run {i}: SUCCEEDED but {version} is not running")
                time.sleep(0.01)
            times.append(elapsed)
            print(f"run {i + 1:>3}: {elapsed * 1000:8.0f} ms", flush=True)
        times.sort()
        p50 = statistics.median(times)
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        print(f"\n{a.via}: request → SUCCEEDED, one real core, {a.runs} runs: p50 {p50:.2f} s, p90 {p90:.2f} s, "
              f"min {times[0]:.2f} s, max {times[-1]:.2f} s   (AWS IoT Greengrass: 40 s – 3 min)")
    finally:
        if core is not None:
            core.stop()
        fleet.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
