#!/usr/bin/env python3
"""Lambda figures through the Runtime API under unmodified awslambdaric: p50/p90 warm latency
(pinned instance, one event at a time), p50 cold latency (on-demand, each event after the idle
instance was stopped), and invocations per second (pinned; on-demand with 4 instances). Latency
is event published by a component → the function's answer received by it, over local pub/sub.
Needs awsiotsdk and awslambdaric in the Python running it (tests/requirements.txt).

    python3 bench/lambda.py [--bin target/release/lichen]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
PUBSUB = {
    "aws.greengrass.ipc.pubsub": {
        "p:1": {"policyDescription": "bench", "operations": ["aws.greengrass#SubscribeToTopic", "aws.greengrass#PublishToTopic"], "resources": ["*"]}
    }
}


def fn_recipe(recipes, artifacts, name, pinned, max_idle):
    art = os.path.join(artifacts, name, "1.0.0")
    os.makedirs(art)
    with zipfile.ZipFile(os.path.join(art, "lambda-artifact.zip"), "w") as z:
        z.write(os.path.join(HERE, "lambda_fn.py"), "lambda_fn.py")
    r = {
        "RecipeFormatVersion": "2020-01-25", "ComponentName": name, "ComponentVersion": "1.0.0",
        "ComponentType": "aws.greengrass.lambda",
        "ComponentDependencies": {"aws.greengrass.LambdaLauncher": {"VersionRequirement": ">=2.0.0"}},
        "ComponentConfiguration": {"DefaultConfiguration": {
            "pinned": pinned, "maxInstancesCount": 4, "maxIdleTimeInSeconds": max_idle, "timeoutInSeconds": 30,
            "inputPayloadEncodingType": "json", "pubsubTopics": {"0": {"topic": f"bench/{name}", "type": "PUB_SUB"}},
            "accessControl": PUBSUB}},
        "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {
            "setenv": {"AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER": "lambda_fn.handler",
                       "AWS_GREENGRASS_LAMBDA_ARTIFACT_PATH": "{artifacts:decompressedPath}/lambda-artifact",
                       "AWS_GREENGRASS_LAMBDA_EXEC_ARGS": json.dumps([sys.executable, "-m", "awslambdaric"])},
            "Run": '"$LICHEN_EXE" lambda launch'},
            "Artifacts": [{"URI": "greengrass:lambda-artifact.zip", "Unarchive": "ZIP"}]}],
    }
    with open(os.path.join(recipes, f"{name}.json"), "w") as f:
        json.dump(r, f)


def driver_recipe(recipes, name, args):
    cmd = " ".join([sys.executable, "-u", os.path.join(HERE, "lambda_driver.py"), *map(str, args)])
    r = {"RecipeFormatVersion": "2020-01-25", "ComponentName": name, "ComponentVersion": "1.0.0",
         "ComponentConfiguration": {"DefaultConfiguration": {"accessControl": PUBSUB}},
         "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": cmd}}]}
    with open(os.path.join(recipes, f"{name}.json"), "w") as f:
        json.dump(r, f)


def deploy(binary, root, recipes, artifacts, merge, remove=()):
    args = [binary, "deployment", "create", "--wait", "--root", root, "--recipe-dir", recipes, "--artifact-dir", artifacts]
    for m in merge:
        args += ["--merge", f"{m}=1.0.0"]
    for r in remove:
        args += ["--remove", r]
    subprocess.run(args, check=True, capture_output=True, timeout=300)


def wait_file(path, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return json.load(open(path))
        time.sleep(0.1)
    raise RuntimeError(f"no result in {path}")


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", "target/release/lichen"))
    ap.add_argument("--warm", type=int, default=200)
    ap.add_argument("--cold", type=int, default=10)
    ap.add_argument("--blast", type=int, default=500)
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="lichen-bench-lambda-")
    root, recipes, artifacts = (os.path.join(work, d) for d in ("root", "recipes", "artifacts"))
    os.makedirs(recipes)
    os.makedirs(artifacts)
    core = subprocess.Popen([binary, "core", "run", "--root", root], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in core.stdout:
            if "ready in" in line:
                break
        fn_recipe(recipes, artifacts, "bench.Pinned", True, 60)
        fn_recipe(recipes, artifacts, "bench.OnDemand", False, 1)
        rows = []
        scenarios = [
            ("warm", "bench.Pinned", ["seq", args.warm, "bench/bench.Pinned", 0]),
            ("cold", "bench.OnDemand", ["seq", args.cold, "bench/bench.OnDemand", 2.5]),
            ("blast-pinned", "bench.Pinned", ["blast", args.blast, "bench/bench.Pinned"]),
            ("blast-ondemand", "bench.OnDemand", ["blast", args.blast, "bench/bench.OnDemand"]),
        ]
        for i, (label, fn, dargs) in enumerate(scenarios):
            out = os.path.join(work, f"{label}.json")
            driver = f"bench.Driver{i}"
            driver_recipe(recipes, driver, [out, *dargs])
            deploy(binary, root, recipes, artifacts, [fn, driver])
            res = wait_file(out)
            deploy(binary, root, recipes, artifacts, [], remove=[driver])
            if "latencies_ms" in res:
                lat = res["latencies_ms"]
                rows.append(f"{label}: n={len(lat)} p50={statistics.median(lat):.2f} ms p90={pct(lat, 0.9):.2f} ms")
            else:
                rows.append(f"{label}: {res['count']} invocations in {res['seconds']:.2f} s = {res['count'] / res['seconds']:.0f}/s")
        print("\n".join(rows))
    finally:
        core.send_signal(signal.SIGTERM)
        core.wait(timeout=120)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
