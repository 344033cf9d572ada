"""A real `lichen core run` with the MQTT bridge, client device auth and the client-device broker
deployed, pointed at mosquitto (mutual TLS) as the cloud; client devices are paho clients with
certificates; the component uses the unmodified awsiotsdk GreengrassCoreIPCClientV2.

Everything binds 127.0.0.1 on ports chosen at run time; every process started here (mosquitto,
the core and through it the component, the paho clients) is stopped at teardown. The binary is
$LICHEN_BIN, else target/debug/lichen.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_certs import make_ca, make_leaf, pem, write_ca  # noqa: E402
from lichen_support import lichen_bin, free_port, wait_for, wait_listening  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MOSQUITTO = "/usr/sbin/mosquitto"
AUTH = "aws.greengrass.clientdevices.Auth"
BROKER = "aws.greengrass.clientdevices.mqtt.EMQX"
BRIDGE = "aws.greengrass.clientdevices.mqtt.Bridge"
COMPONENT = "test.BridgeApp"

# What the core's bridge is configured with; the tests below rely on these.
MAPPINGS = {
    "devicesToPubsub": {"topic": "devices/+/data", "source": "LocalMqtt", "target": "Pubsub"},
    "pubsubToCloud": {"topic": "app/up/#", "source": "Pubsub", "target": "IotCore", "targetTopicPrefix": "lichen/"},
    "cloudToPubsub": {"topic": "app/down/#", "source": "IotCore", "target": "Pubsub"},
    # The same filter both ways between the cloud and client devices.
    "loopUp": {"topic": "loop/cloud/#", "source": "localmqtt", "target": "iotcore"},
    "loopDown": {"topic": "loop/cloud/#", "source": "IOTCORE", "target": "LOCALMQTT"},
    # The same exact topic both ways between local pub/sub and client devices.
    "loopToPubsub": {"topic": "loop/ps/x", "source": "LocalMqtt", "target": "Pubsub"},
    "loopToLocal": {"topic": "loop/ps/x", "source": "Pubsub", "target": "LocalMqtt"},
}
COMPONENT_FILTERS = ["devices/+/data", "app/down/#", "loop/ps/x"]


# --- certificates -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs():
    # mosquitto drops root to user `mosquitto`: a world-readable directory outside pytest's tree.
    d = Path(tempfile.mkdtemp(prefix="lichen-bridge-certs-"))
    d.chmod(0o755)
    cloud_ca = make_ca("Cloud Test CA")
    write_ca(cloud_ca, d / "cloud-ca.pem")
    make_leaf(cloud_ca, "server", d, server=True)
    make_leaf(cloud_ca, "core", d)
    make_leaf(cloud_ca, "tester", d)
    device_ca = make_ca("Device Test CA")
    out = {
        "dir": d,
        "device_ca_pem": pem(device_ca[0]),
        "dev-pub": make_leaf(device_ca, "dev-pub", d),
        "dev-obs": make_leaf(device_ca, "dev-obs", d),
    }
    for f in d.iterdir():
        f.chmod(0o644)
    yield out
    shutil.rmtree(d, ignore_errors=True)


# --- the cloud stand-in -----------------------------------------------------------------------


class Mosquitto:
    def __init__(self, certs):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lichen-bridge-mosquitto-"))
        self.dir.chmod(0o777)
        d = certs["dir"]
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    "allow_anonymous true",
                    f"listener {self.port} 127.0.0.1",
                    f"cafile {d / 'cloud-ca.pem'}",
                    f"certfile {d / 'server.pem'}",
                    f"keyfile {d / 'server.key'}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )
        conf.chmod(0o644)
        self.log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_listening(self.port, 10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


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
            self.messages.append((m.topic, bytes(m.payload).decode()))
            self.cond.notify_all()

    def subscribe(self, topic):
        _, mid = self.c.subscribe(topic, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, 10), f"no SUBACK for {topic}"
            assert all(r < 0x80 for r in self.subacks[mid]), f"{topic} refused: {self.subacks[mid]}"

    def publish(self, topic, payload):
        self.c.publish(topic, payload.encode(), qos=1).wait_for_publish(10)

    def received(self, payload=None):
        with self.cond:
            return [m for m in self.messages if payload is None or m[1] == payload]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


# --- the core ---------------------------------------------------------------------------------

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


class Core:
    def __init__(self, root: Path, work: Path, proc):
        self.root, self.work, self.proc = root, work, proc

    def cli(self, *args):
        r = subprocess.run(
            [lichen_bin(), *args, "--root", str(self.root)], capture_output=True, text=True, timeout=180
        )
        assert r.returncode == 0, f"lichen {args} failed: {r.stdout}\n{r.stderr}"
        return r

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text() if p.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class App:
    """The test component: what it received over IPC, and publishing through it."""

    def __init__(self, out: Path, cmd_dir: Path):
        self.out, self.cmd_dir, self.n = out, cmd_dir, 0

    def received(self, payload=None):
        if not self.out.exists():
            return []
        lines = [json.loads(l) for l in self.out.read_text().splitlines() if l.strip()]
        return [(m["topic"], m["payload"]) for m in lines if payload is None or m["payload"] == payload]

    def publish(self, topic, payload):
        self.n += 1
        tmp = self.cmd_dir / f"{self.n:06d}.tmp"
        tmp.write_text(json.dumps({"topic": topic, "payload": payload}))
        tmp.rename(self.cmd_dir / f"{self.n:06d}.json")
        wait_for(lambda: not (self.cmd_dir / f"{self.n:06d}.json").exists(), 30, f"the component to publish {payload}")


@pytest.fixture(scope="session")
def setup(tmp_path_factory, certs):
    work = tmp_path_factory.mktemp("bridge")
    root = work / "root"
    cloud = Mosquitto(certs)
    started = [cloud]
    try:
        d = certs["dir"]
        config = {
            "system": {
                "thingName": "lichen-bridge-test",
                "certificateFilePath": str(d / "core.pem"),
                "privateKeyPath": str(d / "core.key"),
                "rootCaPath": str(d / "cloud-ca.pem"),
            },
            "services": {
                "aws.greengrass.Nucleus": {
                    "configuration": {
                        "iotDataEndpoint": "127.0.0.1",
                        "mqtt": {"port": cloud.port, "minReconnectDelayMs": 100, "maxReconnectDelayMs": 1000},
                    }
                }
            },
        }
        (work / "config.json").write_text(json.dumps(config))
        proc = subprocess.Popen(
            [lichen_bin(), "core", "run", "--root", str(root), "--config", str(work / "config.json")],
            stdout=subprocess.PIPE,
            stderr=open(work / "core.stderr", "ab"),
            text=True,
            env={**os.environ, "LICHEN_LOG": os.environ.get("LICHEN_LOG", "info")},
            start_new_session=True,
        )
        core = Core(root, work, proc)
        started.append(core)
        deadline = time.monotonic() + 60
        while "ready in" not in (proc.stdout.readline() or ""):
            assert proc.poll() is None and time.monotonic() < deadline, "the core did not become ready"
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        wait_for(lambda: "connected to the cloud" in core.log(), 30, "the core to connect to mosquitto")

        recipes = work / "recipes"
        recipes.mkdir()
        out, cmd_dir = work / "app.out", work / "app.cmd"
        cmd_dir.mkdir()
        run = " ".join([sys.executable, "-u", str(HERE / "component.py"), str(out), str(cmd_dir), *COMPONENT_FILTERS])
        recipe = {
            "RecipeFormatVersion": "2020-01-25",
            "ComponentName": COMPONENT,
            "ComponentVersion": "1.0.0",
            "ComponentConfiguration": {
                "DefaultConfiguration": {
                    "accessControl": {
                        "aws.greengrass.ipc.pubsub": {
                            f"{COMPONENT}:pubsub:1": {"operations": ["*"], "resources": ["*"]}
                        }
                    }
                }
            },
            "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": run}}],
        }
        (recipes / f"{COMPONENT}.json").write_text(json.dumps(recipe))
        port = free_port()
        update = {
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
        core.cli(
            "deployment", "create", "--wait", "--json", "--recipe-dir", str(recipes),
            "--merge", f"{AUTH}=2.5.3", "--merge", f"{BROKER}=2.0.1", "--merge", f"{BRIDGE}=2.3.2",
            "--merge", f"{COMPONENT}=1.0.0", "--update-config", json.dumps(update),
        )
        wait_listening(port)
        wait_for(lambda: Path(str(out) + ".ready").exists(), 60, "the component to subscribe")
        app = App(out, cmd_dir)
        yield {
            "core": core,
            "app": app,
            "broker_port": port,
            "broker_ca": str(root / "work" / AUTH / "ca.pem"),
            "cloud_port": cloud.port,
        }
    finally:
        for p in reversed(started):
            p.stop()
        if os.environ.get("LICHEN_KEEP_LOG") and len(started) > 1:
            print(started[1].log())


@pytest.fixture
def clients(setup, certs):
    """Makes paho clients for this test: `device(name)` on our broker, `tester()` on the cloud."""
    made = []
    d = certs["dir"]

    class Factory:
        @staticmethod
        def device(name):
            c = MqttClient(name, setup["broker_port"], setup["broker_ca"], certs[name])
            made.append(c)
            return c

        @staticmethod
        def tester():
            cert = (str(d / "tester.pem"), str(d / "tester.key"))
            c = MqttClient("tester", setup["cloud_port"], str(d / "cloud-ca.pem"), cert)
            made.append(c)
            return c

    yield Factory
    for c in made:
        try:
            c.close()
        except Exception:
            pass
