"""The cloud stand-in (mosquitto with mutual TLS), a real `lichen core run` pointed at it, and
components written against the unmodified awsiotsdk GreengrassCoreIPCClientV2.

Everything binds 127.0.0.1 on ports chosen at run time; every process started here is killed at
teardown. The binary is $LICHEN_BIN, else target/debug/lichen.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_certs import make_ca, make_leaf, write_ca  # noqa: E402
from lichen_support import lichen_bin, free_port, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = "/usr/sbin/mosquitto"
PYTHON = sys.executable
COMPONENT_SCRIPT = Path(__file__).resolve().parent / "component.py"


# --- certificates -----------------------------------------------------------------------------


def _make_certs(d: Path):
    ca = make_ca("Lichen Test Root CA")
    write_ca(ca, d / "ca.pem")
    make_leaf(ca, "server", d, server=True)
    make_leaf(ca, "device", d)
    make_leaf(ca, "tester", d)
    for f in d.iterdir():
        f.chmod(0o644)


@pytest.fixture(scope="session")
def certs():
    # mosquitto drops root to user `mosquitto`: a world-readable directory outside pytest's 0700 tree.
    d = Path(tempfile.mkdtemp(prefix="lichen-cloud-certs-"))
    d.chmod(0o755)
    _make_certs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --- mosquitto --------------------------------------------------------------------------------


class Mosquitto:
    """mosquitto with mutual TLS on one port; restartable on the same port with its sessions kept."""

    def __init__(self, certs: Path, port: int):
        self.certs = certs
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="lichen-mosquitto-"))
        self.dir.chmod(0o777)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    "allow_anonymous true",
                    f"listener {port} 127.0.0.1",
                    f"cafile {certs / 'ca.pem'}",
                    f"certfile {certs / 'server.pem'}",
                    f"keyfile {certs / 'server.key'}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "persistence true",
                    f"persistence_location {self.dir}/",
                    "autosave_interval 1",
                    "max_queued_messages 0",
                    "max_queued_bytes 0",
                    "max_inflight_messages 100",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "",
                ]
            )
        )
        self.conf.chmod(0o644)
        self.proc = None

    def start(self):
        self.log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(listening, 10, "mosquitto to listen")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves its sessions to the persistence file
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def mosquitto(certs):
    brokers = []

    def make(port=None):
        b = Mosquitto(certs, port or free_port())
        brokers.append(b)
        return b

    yield make
    for b in brokers:
        b.cleanup()


class Tester:
    """A paho-mqtt client on mosquitto (the cloud side), collecting what it receives."""

    def __init__(self, certs, port, client_id, clean=True):
        import paho.mqtt.client as mqtt

        self.messages = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311
        )
        self.client.tls_set(
            ca_certs=str(certs / "ca.pem"),
            certfile=str(certs / "tester.pem"),
            keyfile=str(certs / "tester.key"),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: self.connected.set()
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.port = port

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def connect(self):
        self.connected.clear()
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "tester could not connect to mosquitto"
        return self

    def subscribe(self, topic, qos=1):
        result, mid = self.client.subscribe(topic, qos)
        assert result == 0
        time.sleep(0.3)

    def publish(self, topic, payload, qos=1):
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(10)

    def received(self):
        with self.lock:
            return list(self.messages)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def tester(certs):
    clients = []

    def make(port, client_id="tester", clean=True):
        t = Tester(certs, port, client_id, clean)
        clients.append(t)
        return t

    yield make
    for t in clients:
        try:
            t.close()
        except Exception:
            pass


# --- the core ---------------------------------------------------------------------------------


class Core:
    def __init__(self, root: Path, config: dict, workdir: Path):
        self.root = root
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [lichen_bin(), "core", "run", "--root", str(self.root), "--config", str(self.config_path)],
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

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cli(self, *args):
        return subprocess.run(
            [lichen_bin(), *args], env={**os.environ, "LICHEN_ROOT": str(self.root)}, capture_output=True, text=True
        )

    def deploy(self, recipe_dir, *components):
        args = ["deployment", "create", "--wait", "--json", "--recipe-dir", str(recipe_dir)]
        for c in components:
            args += ["--merge", c]
        out = self.cli(*args)
        assert out.returncode == 0, f"deployment failed: {out.stdout}{out.stderr}"

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text() if p.exists() else ""

    def connections(self):
        return self.log().count("connected to the cloud")


def core_config(certs, port, spooler=None, endpoint=True, mqtt=None):
    nucleus = {
        "mqtt": {
            "port": port,
            "minReconnectDelayMs": 100,
            "maxReconnectDelayMs": 1000,
            "keepAliveTimeoutMs": 10000,
            "pingTimeoutMs": 5000,
            **(mqtt or {}),
        }
    }
    if spooler:
        nucleus["mqtt"]["spooler"] = spooler
    if endpoint:
        nucleus["iotDataEndpoint"] = "127.0.0.1"
    return {
        "system": {
            "thingName": "lichen-test-thing",
            "certificateFilePath": str(certs / "device.pem"),
            "privateKeyPath": str(certs / "device.key"),
            "rootCaPath": str(certs / "ca.pem"),
        },
        "services": {"aws.greengrass.Nucleus": {"configuration": nucleus}},
    }


@pytest.fixture
def make_core(tmp_path):
    cores = []

    def make(config, name="core"):
        work = tmp_path / name
        work.mkdir(exist_ok=True)
        c = Core(work / "root", config, work)
        cores.append(c)
        return c

    yield make
    for c in cores:
        c.stop()


def write_recipe(dir: Path, name: str, args: list, policy_resources=None):
    """A component running component.py with `args`; with policy_resources, an mqttproxy policy."""
    dir.mkdir(parents=True, exist_ok=True)
    config = {"accessControl": {}}
    if policy_resources is not None:
        config["accessControl"]["aws.greengrass.ipc.mqttproxy"] = {
            f"{name}:mqttproxy:1": {
                "policyDescription": "cloud test",
                "operations": ["aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore"],
                "resources": policy_resources,
            }
        }
    cmd = " ".join([PYTHON, "-u", str(COMPONENT_SCRIPT), *[str(a) for a in args]])
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": "1.0.0",
        "ComponentConfiguration": {"DefaultConfiguration": config},
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": cmd}}],
    }
    (dir / f"{name}.json").write_text(json.dumps(recipe))
    return dir
