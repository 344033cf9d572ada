"""The observability suite: real `lichen core` processes enrolled with a real `lichen fleet serve`
(started by the fleet suite's fixtures, compat/fleet/conftest.py, with extra flags), read back with
boto3, the `aws` CLI and awsiotsdk.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FLEET_SUITE = HERE.parents[0] / "fleet"
sys.path.insert(0, str(HERE.parents[0]))
sys.path.insert(0, str(FLEET_SUITE))
sys.path.insert(0, str(HERE))

from lichen_support import free_port, lichen_bin, wait_for  # noqa: E402

_spec = importlib.util.spec_from_file_location("fleet_suite_conftest_obs", FLEET_SUITE / "conftest.py")
_fleet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fleet)

fleet_root = _fleet.fleet_root
postgres_server = _fleet.postgres_server


class ObsFleet(_fleet.Fleet):
    """`lichen fleet serve` with extra flags (`--device-stale-after`, …)."""

    def __init__(self, root, extra=(), pinned=False):
        super().__init__(root)
        self.extra = list(extra)
        # Pinned: the same ports on every start, so a restarted fleet is where cores expect it.
        self.ports = {k: free_port() for k in ("api", "mqtt", "data-plane")} if pinned else {}

    def start(self):
        (self.root / "endpoints.json").unlink(missing_ok=True)
        self.log = open(self.root.parent / f"{self.root.name}.log", "ab")
        self.proc = subprocess.Popen(
            [lichen_bin(), "fleet", "serve", "--root", str(self.root),
             *[a for k in ("api", "mqtt", "data-plane") for a in (f"--{k}", f"127.0.0.1:{self.ports.get(k, 0)}")],
             *self.extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def ready():
            assert self.proc.poll() is None, f"lichen fleet serve exited: {self.output()}"
            try:
                return json.loads((self.root / "endpoints.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return None

        self.endpoints = wait_for(ready, 60, "endpoints.json")
        self.api = self.endpoints["api"]
        self.mqtt_port = int(self.endpoints["mqtt"].rsplit(":", 1)[1])
        self.root_ca = self.endpoints["rootCa"]
        import configparser

        creds = configparser.ConfigParser()
        creds.read(self.root / "admin" / "credentials")
        self.access_key = creds["default"]["aws_access_key_id"]
        self.secret_key = creds["default"]["aws_secret_access_key"]
        return self


class Core:
    """`lichen core run` with a config from `lichen fleet enroll` (plus `nucleus` settings)."""

    def __init__(self, fleet, thing, work: Path, nucleus=None):
        import yaml

        self.thing, self.work = thing, work
        self.root = work / "root"
        out = work / "enrolled"
        p = subprocess.run(
            [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(out)],
            capture_output=True, text=True, timeout=120,
        )
        assert p.returncode == 0, p.stderr
        self.enrolled = json.loads(p.stdout)
        config = yaml.safe_load((out / "config.yaml").read_text())
        conf = config["services"]["aws.greengrass.Nucleus"]["configuration"]
        conf.update(nucleus or {})
        self.config_file = work / "config.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.proc = None

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
        return self

    def cli(self, *args):
        r = subprocess.run(
            [lichen_bin(), *args, "--root", str(self.root)], capture_output=True, text=True, timeout=180
        )
        assert r.returncode == 0, f"lichen {args} failed: {r.stdout}\n{r.stderr}"
        return r

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def signal(self, sig):
        os.killpg(self.proc.pid, sig)

    def kill9(self):
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def make_fleet(fleet_root):
    started = []

    def make(*extra, pinned=False):
        f = ObsFleet(fleet_root, extra, pinned).start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()


@pytest.fixture
def make_core(tmp_path):
    started = []

    def make(fleet, thing, nucleus=None):
        work = tmp_path / thing
        work.mkdir()
        c = Core(fleet, thing, work, nucleus)
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()
