"""Fixtures for the over-the-air suite: real `lichen core run` processes enrolled in the fleet with
`lichen fleet enroll --thing T --group G`, components with a script artifact uploaded through the
fleet's S3 API and published with boto3 `greengrassv2.create_component_version`, and deployments
to a thing group as AWS sends them: a job in namespace `aws-gg-deployment` whose document is the
deployment document (greengrass-core.md §6.3), or CreateDeployment.

The component's script appends `<version> <thing>` to `runs.log` in its work folder
(`<core root>/work/<component>/`) and keeps running, so a test reads which version each core runs.
"""

import json
import sys
import time
import uuid
from pathlib import Path

import pytest
from fleet_core import Core

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402

import subprocess  # noqa: E402

NS = "aws-gg-deployment"
SHADOW = "AWSManagedGreengrassV2Deployment"
BUCKET = "ota-artifacts"
APP = "com.example.OtaApp"


def script(version, size=0):
    """The artifact: records the version it runs as, then stays up. `size` pads it with a comment
    (a large artifact for the download tests)."""
    body = (
        "#!/bin/sh\n"
        f'echo "{version} $AWS_IOT_THING_NAME" >> runs.log\n'
        f'echo "ota-app {version} running on $AWS_IOT_THING_NAME"\n'
        "exec sleep 3600\n"
    ).encode()
    if size > len(body):
        # A comment line after `exec` is never read by sh.
        body += b"#" + b"x" * (size - len(body) - 2) + b"\n"
    return body


def enroll(fleet, thing, out, *groups):
    args = [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(out)]
    for g in groups:
        args += ["--group", g]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"lichen fleet enroll failed ({p.returncode}): {p.stderr}"
    return json.loads(p.stdout)


class OtaCore:
    """An enrolled thing and its `lichen core run` (started by `start`)."""

    def __init__(self, fleet, tmp_path, thing, *groups):
        self.thing = thing
        self.work = tmp_path / thing
        self.work.mkdir()
        enroll(fleet, thing, self.work / "enrolled", *groups)
        self.core = Core(self.work / "root", self.work / "enrolled" / "config.yaml", self.work)
        self.fleet = fleet

    def start(self):
        self.core.start()
        wait_for(lambda: "connected to the cloud" in self.core.log(), 60, f"{self.thing} to connect to the fleet")
        return self

    def stop(self):
        self.core.stop()

    def kill9(self):
        import os
        import signal

        p = self.core.proc
        if p is not None and p.poll() is None:
            # The core leads its own session: its components go with it.
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        self.core.proc = None

    def runs(self, component=APP):
        f = self.core.root / "work" / component / "runs.log"
        return f.read_text().split("\n")[:-1] if f.exists() else []

    def running_version(self, component=APP):
        """The version the core's component last started as, per its runs.log."""
        runs = self.runs(component)
        return runs[-1].split(" ")[0] if runs else None

    def log(self):
        return self.core.log() + (self.work / "core.stderr").read_text(errors="replace")


@pytest.fixture
def ota_cores(fleet, tmp_path):
    made = []

    def make(thing, *groups, start=True):
        c = OtaCore(fleet, tmp_path, thing, *groups)
        made.append(c)
        return c.start() if start else c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def s3(fleet):
    s3 = fleet.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    return s3


@pytest.fixture
def gg(fleet):
    return fleet.client("greengrassv2")


def publish(s3, gg, version, name=APP, install=None, size=0, run="sh {artifacts:path}/app.sh"):
    """Uploads the script for `version` and creates the component version; its ARN."""
    key = f"{name}/{version}/app.sh"
    s3.put_object(Bucket=BUCKET, Key=key, Body=script(version, size))
    lifecycle = {"Run": run}
    if install is not None:
        lifecycle["Install"] = install
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentDescription": "over-the-air test app",
        "ComponentPublisher": "tests",
        "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": lifecycle, "Artifacts": [{"URI": f"s3://{BUCKET}/{key}"}]}],
    }
    out = gg.create_component_version(inlineRecipe=json.dumps(recipe).encode())
    assert out["status"]["componentState"] == "DEPLOYABLE", out
    return out["arn"]


def group_arn(iot, group):
    try:
        return iot.describe_thing_group(thingGroupName=group)["thingGroupArn"]
    except iot.exceptions.ResourceNotFoundException:
        return iot.create_thing_group(thingGroupName=group)["thingGroupArn"]


def deployment_document(job_id, target, components, revision=1, failure="ROLLBACK"):
    """The §6.3 document a thing-group deployment's job carries. `target` is `thinggroup/G`."""
    return {
        "deploymentId": job_id,
        "schemaDate": "2021-05-17",
        "deploymentName": f"ota-{job_id}",
        "configurationArn": f"arn:aws:greengrass:us-east-1:123456789012:configuration:{target}:{revision}",
        "creationTimestamp": int(time.time() * 1000),
        "components": {n: {"version": v} for n, v in components.items()},
        "failureHandlingPolicy": failure,
        "componentUpdatePolicy": {"timeout": 5, "action": "NOTIFY_COMPONENTS"},
        "configurationValidationPolicy": {"timeout": 5},
    }


def job_deploy(iot, group, components, revision=1, failure="ROLLBACK"):
    """A thing-group deployment as an IoT job (CONTINUOUS, namespace aws-gg-deployment); its id."""
    job_id = f"ota-{uuid.uuid4().hex[:10]}"
    doc = deployment_document(job_id, f"thinggroup/{group}", components, revision, failure)
    iot.create_job(
        jobId=job_id,
        targets=[group_arn(iot, group)],
        document=json.dumps(doc),
        targetSelection="CONTINUOUS",
        namespaceId=NS,
    )
    return job_id


def execution(iot, job_id, thing):
    try:
        return iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"]
    except iot.exceptions.ResourceNotFoundException:
        return None


def wait_execution(iot, job_id, thing, statuses=("SUCCEEDED",), timeout=120, why=""):
    """Waits for the thing's execution of the job to reach a terminal status; asserts it is one of
    `statuses` and returns the execution."""
    terminal = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"}

    def done():
        e = execution(iot, job_id, thing)
        return e if e and e["status"] in terminal else None

    e = wait_for(done, timeout, f"{thing}'s execution of {job_id} to finish {why}")
    assert e["status"] in statuses, (thing, e)
    return e


def details(e):
    """An execution's statusDetails as the device sent them (boto3 nests them in `detailsMap`)."""
    return e.get("statusDetails", {}).get("detailsMap", {})


def restart_on_same_ports(fleet):
    """Starts a stopped (or killed) fleet again on the addresses its devices were enrolled with."""
    hostport = lambda url: url.split("://", 1)[-1]  # noqa: E731
    e = fleet.endpoints
    fleet.bind = (hostport(e["api"]), hostport(e["mqtt"]), hostport(e["dataPlane"]))
    return fleet.start()


def partial_downloads(core):
    """The `.partial` artifact files in the core's store, with their sizes."""
    return {p: p.stat().st_size for p in core.core.root.rglob("*.partial") if p.is_file()}
