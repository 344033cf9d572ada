"""`lichen fleet enroll` and a real `lichen core run` with the config it writes: the core connects
to the fleet's device endpoint as the enrolled thing, and a component written against the
unmodified awsiotsdk GreengrassCoreIPCClientV2 publishes through PublishToIoTCore to a device
subscribed on the fleet with its own certificate.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from fleet_devices import TIMEOUT, Device, Session5

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402

COMPONENT_SCRIPT = Path(__file__).resolve().parents[1] / "cloud" / "component.py"


def enroll(fleet, thing, out, *extra):
    p = subprocess.run(
        [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"lichen fleet enroll failed ({p.returncode}): {p.stderr}"
    return json.loads(p.stdout)


class Core:
    """`lichen core run --root R --config C`, stopped at teardown."""

    def __init__(self, root, config, workdir):
        self.root, self.config, self.workdir = root, config, workdir
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [lichen_bin(), "core", "run", "--root", str(self.root), "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "core.stderr", "ab"),
            env={**os.environ, "LICHEN_LOG": os.environ.get("LICHEN_LOG", "info")},
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"core exited: {(self.workdir / 'core.stderr').read_text()}")
            if "ready in" in line:
                threading.Thread(target=lambda p=self.proc: [None for _ in p.stdout], daemon=True).start()
                return self
        raise AssertionError("core not ready within 60 s")

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text() if p.exists() else ""

    def deploy(self, recipe_dir, *components):
        args = ["deployment", "create", "--wait", "--json", "--recipe-dir", str(recipe_dir)]
        for c in components:
            args += ["--merge", c]
        out = subprocess.run(
            [lichen_bin(), *args], env={**os.environ, "LICHEN_ROOT": str(self.root)}, capture_output=True, text=True
        )
        assert out.returncode == 0, f"deployment failed: {out.stdout}{out.stderr}"

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def cores():
    started = []
    yield started
    for c in started:
        c.stop()


def test_enroll_writes_a_greengrass_config_and_scoped_identity(fleet, iot, tmp_path):
    out = tmp_path / "enrolled"
    made = enroll(fleet, "gateway-7", out, "--group", "site-a", "--group", "site-b")
    config = yaml.safe_load((out / "config.yaml").read_text())
    system = config["system"]
    nucleus = config["services"]["aws.greengrass.Nucleus"]["configuration"]
    assert system["thingName"] == "gateway-7"
    assert nucleus["iotDataEndpoint"] == "127.0.0.1"
    assert nucleus["mqtt"]["port"] == fleet.mqtt_port
    assert nucleus["awsRegion"] == "us-east-1"
    assert Path(system["rootCaPath"]).read_text() == Path(fleet.root_ca).read_text()
    assert os.stat(system["privateKeyPath"]).st_mode & 0o777 == 0o600
    cert = iot.describe_certificate(certificateId=made["certificateId"])["certificateDescription"]
    assert cert["status"] == "ACTIVE"
    assert cert["certificatePem"].strip() == Path(system["certificateFilePath"]).read_text().strip()
    assert iot.list_thing_principals(thingName="gateway-7")["principals"] == [made["certificateArn"]]
    policies = iot.list_attached_policies(target=made["certificateArn"])["policies"]
    assert [p["policyName"] for p in policies] == [made["policyName"]]
    groups = {g["groupName"] for g in iot.list_thing_groups_for_thing(thingName="gateway-7")["thingGroups"]}
    assert groups == {"site-a", "site-b"}


def test_enrolled_core_publishes_to_a_device_on_the_fleet(fleet, iot, tmp_path, cores):
    thing = "core-1"
    out = tmp_path / "enrolled"
    enroll(fleet, thing, out)

    # A device of the operator's that may watch the core's topics.
    watcher_policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"arn:aws:iot:*:*:topicfilter/devices/{thing}/*"},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": f"arn:aws:iot:*:*:topic/devices/{thing}/*"},
        ],
    }
    watcher = Session5(Device(fleet, iot, tmp_path, name="watcher", policy=watcher_policy))
    try:
        assert watcher.outcome is True, watcher.outcome
        assert watcher.subscribe(f"devices/{thing}/#") == [1]

        work = tmp_path / "core"
        work.mkdir()
        core = Core(work / "root", out / "config.yaml", work)
        cores.append(core)
        core.start()
        wait_for(lambda: "connected to the cloud" in core.log(), 60, f"the core to connect to the fleet\n{fleet.output()}")

        recipes = tmp_path / "recipes"
        recipes.mkdir()
        name = "com.example.Producer"
        progress = tmp_path / "progress"
        cmd = " ".join([sys.executable, "-u", str(COMPONENT_SCRIPT), "produce", str(progress), "1", f"devices/{thing}/telemetry"])
        recipe = {
            "RecipeFormatVersion": "2020-01-25",
            "ComponentName": name,
            "ComponentVersion": "1.0.0",
            "ComponentConfiguration": {
                "DefaultConfiguration": {
                    "accessControl": {
                        "aws.greengrass.ipc.mqttproxy": {
                            f"{name}:mqttproxy:1": {
                                "policyDescription": "publish the core's telemetry",
                                "operations": ["aws.greengrass#PublishToIoTCore"],
                                "resources": [f"devices/{thing}/*"],
                            }
                        }
                    }
                }
            },
            "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": cmd}}],
        }
        (recipes / f"{name}.json").write_text(json.dumps(recipe))
        core.deploy(recipes, f"{name}=1.0.0")

        topic, payload = watcher.received.result(60)
        assert topic == f"devices/{thing}/telemetry/t0"
        assert json.loads(payload) == {"i": 0}
    finally:
        watcher.stop()
