"""A real `lichen core run` for the fleet suites, and what the core tests give it: a publishing
component (the cloud suite's component.py, written against the unmodified awsiotsdk
GreengrassCoreIPCClientV2) and a device of the operator's that may watch the core's topics.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin  # noqa: E402

COMPONENT_SCRIPT = Path(__file__).resolve().parents[1] / "cloud" / "component.py"


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


def watcher_policy(thing):
    """A device that may subscribe to and receive `devices/<thing>/*`."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"arn:aws:iot:*:*:topicfilter/devices/{thing}/*"},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": f"arn:aws:iot:*:*:topic/devices/{thing}/*"},
        ],
    }


def publisher_recipe(recipes, name, topic, resource, progress):
    """Writes `<recipes>/<name>.json`: a component that publishes once under `topic` through
    PublishToIoTCore, allowed to publish to `resource`, its progress in `progress`."""
    cmd = " ".join([sys.executable, "-u", str(COMPONENT_SCRIPT), "produce", str(progress), "1", topic])
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
                            "resources": [resource],
                        }
                    }
                }
            }
        },
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": cmd}}],
    }
    (recipes / f"{name}.json").write_text(json.dumps(recipe))
