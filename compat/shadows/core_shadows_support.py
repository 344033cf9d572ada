"""A real `lichen core run` with `aws.greengrass.ShadowManager`, client device auth, the
client-device broker and the MQTT bridge (mapping `$aws/things/+/shadow/#` both ways between
client devices and local pub/sub) deployed; components are unmodified awsiotsdk
GreengrassCoreIPCClientV2 drivers (compat/ipc/core_support.py's mailbox driver); client devices
are paho clients with certificates.

Everything binds 127.0.0.1 on ports chosen at run time; every process started here is stopped at
teardown. The binary is $LICHEN_BIN, else target/debug/lichen.
"""

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "ipc"))
from core_support import DRIVER, PYTHON, Driver  # noqa: E402
from lichen_certs import make_ca, make_leaf, pem  # noqa: E402
from lichen_support import free_port, lichen_bin, wait_for, wait_listening  # noqa: E402

SHADOW = "aws.greengrass.ShadowManager"
AUTH = "aws.greengrass.clientdevices.Auth"
BROKER = "aws.greengrass.clientdevices.mqtt.EMQX"
BRIDGE = "aws.greengrass.clientdevices.mqtt.Bridge"
THING = "lichen-shadow-core"

MAPPINGS = {
    "shadowFromDevices": {"topic": "$aws/things/+/shadow/#", "source": "LocalMqtt", "target": "Pubsub"},
    "shadowToDevices": {"topic": "$aws/things/+/shadow/#", "source": "Pubsub", "target": "LocalMqtt"},
}

DEVICE_GROUPS = {
    "formatVersion": "2021-03-05",
    "definitions": {"testDevices": {"selectionRule": "thingName: dev-*", "policyName": "everything"}},
    "policies": {
        "everything": {
            "all": {
                "operations": ["mqtt:connect", "mqtt:publish", "mqtt:subscribe"],
                "resources": ["mqtt:clientId:*", "mqtt:topic:*", "mqtt:topicfilter:*"],
            }
        }
    },
}

SHADOW_OPS = [
    "aws.greengrass#GetThingShadow",
    "aws.greengrass#UpdateThingShadow",
    "aws.greengrass#DeleteThingShadow",
]

# name -> accessControl of the driver components.
DRIVERS = {
    # Its own thing's shadows (classic and named) and the list of its named shadows.
    "test.ShadowApp": {
        SHADOW: {
            "test.ShadowApp:shadow:1": {
                "operations": SHADOW_OPS,
                "resources": [f"$aws/things/{THING}/shadow", f"$aws/things/{THING}/shadow/name/*"],
            },
            "test.ShadowApp:shadow:2": {
                "operations": ["aws.greengrass#ListNamedShadowsForThing"],
                "resources": [THING],
            },
        },
        "aws.greengrass.ipc.pubsub": {
            "test.ShadowApp:pubsub:1": {"operations": ["*"], "resources": ["*"]}
        },
    },
    # Shadow operations only on another thing.
    "test.OtherThing": {
        SHADOW: {
            "test.OtherThing:shadow:1": {
                "operations": SHADOW_OPS + ["aws.greengrass#ListNamedShadowsForThing"],
                "resources": ["$aws/things/other-thing/shadow", "other-thing"],
            }
        }
    },
    # No policy at all.
    "test.NoShadow": None,
}


def recipe(name, run, acl):
    configuration = {"accessControl": acl} if acl else {}
    return json.dumps(
        {
            "RecipeFormatVersion": "2020-01-25",
            "ComponentName": name,
            "ComponentVersion": "1.0.0",
            "ComponentConfiguration": {"DefaultConfiguration": configuration},
            "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": run}}],
        }
    )


class MqttClient:
    """A paho MQTT 5 client (TLS with a client certificate) that records what it receives."""

    def __init__(self, client_id, port, ca, cert):
        self.messages = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(*cert)
        self.c.tls_set_context(ctx)
        self.connected = threading.Event()
        self.subacks = {}
        self.c.on_connect = lambda c, u, f, rc, p: rc.value == 0 and self.connected.set()
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._suback(mid, rcs)
        self.c.on_message = lambda c, u, m: self._add(m)
        self.c.connect("localhost", port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(15), f"{client_id} could not connect to 127.0.0.1:{port}"

    def _suback(self, mid, rcs):
        with self.cond:
            self.subacks[mid] = [r.value for r in rcs]
            self.cond.notify_all()

    def _add(self, m):
        with self.cond:
            self.messages.append((m.topic, json.loads(bytes(m.payload))))
            self.cond.notify_all()

    def subscribe(self, topic):
        _, mid = self.c.subscribe(topic, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, 10), f"no SUBACK for {topic}"
            assert all(r < 0x80 for r in self.subacks[mid]), f"{topic} refused: {self.subacks[mid]}"

    def publish(self, topic, payload):
        self.c.publish(topic, json.dumps(payload).encode(), qos=1).wait_for_publish(10)

    def on(self, topic):
        with self.cond:
            return [p for t, p in self.messages if t == topic]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


class Core:
    def __init__(self, root: Path, work: Path, config_file: Path):
        self.root, self.work, self.config_file = root, work, config_file
        self.proc = None
        self.drivers = {}

    def start(self):
        self.proc = subprocess.Popen(
            [lichen_bin(), "core", "run", "--root", str(self.root), "--config", str(self.config_file)],
            stdout=subprocess.PIPE,
            stderr=open(self.work / "core.stderr", "ab"),
            text=True,
            env={**os.environ, "LICHEN_LOG": os.environ.get("LICHEN_LOG", "info")},
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while "ready in" not in (self.proc.stdout.readline() or ""):
            assert self.proc.poll() is None and time.monotonic() < deadline, "the core did not become ready"
        proc = self.proc
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()

    def cli(self, *args):
        r = subprocess.run(
            [lichen_bin(), *args, "--root", str(self.root)], capture_output=True, text=True, timeout=180
        )
        assert r.returncode == 0, f"lichen {args} failed: {r.stdout}\n{r.stderr}"
        return r

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text() if p.exists() else ""

    def kill9(self):
        """SIGKILL to the core and its components (their own process groups die with the test)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_drivers(self):
        for name in DRIVERS:
            box = self.work / "box" / name
            wait_for(lambda: (box / "ready").exists(), 60, f"{name} to connect:\n{self.log()[-3000:]}")
            self.drivers[name] = Driver(name, box)


@pytest.fixture(scope="session")
def certs():
    d = Path(tempfile.mkdtemp(prefix="lichen-shadow-certs-"))
    device_ca = make_ca("Device Test CA")
    out = {"dir": d, "device_ca_pem": pem(device_ca[0]), "dev-shadow": make_leaf(device_ca, "dev-shadow", d)}
    yield out
    shutil.rmtree(d, ignore_errors=True)


def deploy_drivers(core: Core, extra_update: dict, extra_merge: list):
    work = core.work
    recipes, artifacts = work / "recipes", work / "artifacts"
    recipes.mkdir(exist_ok=True)
    for name, acl in DRIVERS.items():
        art = artifacts / name / "1.0.0"
        art.mkdir(parents=True, exist_ok=True)
        (art / "driver.py").write_text(DRIVER)
        box = work / "box" / name
        box.mkdir(parents=True, exist_ok=True)
        (recipes / f"{name}.json").write_text(recipe(name, f"{PYTHON} -u {{artifacts:path}}/driver.py {box}", acl))
    merges = [a for n in DRIVERS for a in ("--merge", f"{n}=1.0.0")]
    for m in extra_merge:
        merges += ["--merge", m]
    core.cli(
        "deployment", "create", "--wait", "--json", "--recipe-dir", str(recipes),
        "--artifact-dir", str(artifacts), *merges, "--update-config", json.dumps(extra_update),
    )
    core.wait_drivers()


@pytest.fixture(scope="session")
def setup(tmp_path_factory, certs):
    """A core without a cloud: shadows, IPC, local topics and client devices."""
    work = tmp_path_factory.mktemp("shadows")
    root = work / "root"
    config = {"system": {"thingName": THING}}
    (work / "config.json").write_text(json.dumps(config))
    core = Core(root, work, work / "config.json")
    try:
        core.start()
        port = free_port()
        update = {
            SHADOW: {"MERGE": {"rateLimits": {"maxLocalRequestsPerSecondPerThing": 50}}},
            AUTH: {
                "MERGE": {
                    "certificateAuthority": {"caType": "ECDSA_P256"},
                    "trustedClientCertificates": {"caCertificates": [certs["device_ca_pem"]]},
                    "deviceGroups": DEVICE_GROUPS,
                }
            },
            BROKER: {"MERGE": {"emqx": {"listener.ssl.external": f"127.0.0.1:{port}"}}},
            BRIDGE: {"MERGE": {"mqttTopicMapping": MAPPINGS}},
        }
        deploy_drivers(
            core, update, [f"{SHADOW}=2.3.9", f"{AUTH}=2.5.3", f"{BROKER}=2.0.1", f"{BRIDGE}=2.3.2"]
        )
        wait_listening(port)
        yield {"core": core, "broker_port": port, "broker_ca": str(root / "work" / AUTH / "ca.pem")}
    finally:
        core.stop()
        if os.environ.get("LICHEN_KEEP_LOG"):
            print(core.log())


@pytest.fixture
def device(setup, certs):
    made = []

    def make(name="dev-shadow"):
        c = MqttClient(name, setup["broker_port"], setup["broker_ca"], certs[name])
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass
