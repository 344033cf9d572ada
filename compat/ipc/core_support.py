"""A real `lichen core run` with long-lived "driver" components for the IPC suite.

Each driver is an unmodified awsiotsdk GreengrassCoreIPCClientV2 program (driver.py below) that
runs Python snippets the test drops into its mailbox folder (`<seq>.py`) and answers with
`<seq>.json`, so one deployment serves every check. The core, its components and the drivers'
connections live for the whole session and are stopped at teardown.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("LICHEN_PYTHON") or str(REPO / ".venv" / "bin" / "python")

DRIVER = r'''
import base64, datetime, json, os, sys, threading, time, traceback
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc import model

box = sys.argv[1]
client = GreengrassCoreIPCClientV2()
lock = threading.Lock()
state = {}
records = {}

def attempt(f):
    """{"ok": value} or {"error": <exception class>, "message": ...}."""
    try:
        return {"ok": f()}
    except Exception as e:
        return {"error": type(e).__name__, "message": getattr(e, "message", None) or str(e)}

def record(key, value):
    with lock:
        records.setdefault(key, []).append(value)

def recorded(key):
    with lock:
        return list(records.get(key, []))

env = {"client": client, "model": model, "state": state, "attempt": attempt, "record": record,
       "recorded": recorded, "base64": base64, "json": json, "time": time, "threading": threading,
       "os": os, "sys": sys, "datetime": datetime}

def write(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, default=str)
    os.rename(path + ".tmp", path)

write(os.path.join(box, "ready"), {"pid": os.getpid()})
done = set()
while True:
    for name in sorted(os.listdir(box)):
        if not name.endswith(".py") or name in done:
            continue
        done.add(name)
        code = open(os.path.join(box, name)).read()
        env.pop("result", None)
        try:
            exec(code, env)
            answer = {"result": env.get("result")}
        except Exception as e:
            answer = {"exception": type(e).__name__, "message": str(e), "trace": traceback.format_exc()}
        write(os.path.join(box, name[:-3] + ".json"), answer)
    time.sleep(0.01)
'''

TARGET = r'''
import sys, time
n = 0
while True:
    n += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(n))
    import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.05)
'''

ALL = {"operations": ["*"], "resources": ["*"]}


def lichen_bin():
    path = os.environ.get("LICHEN_BIN") or str(REPO / "target" / "debug" / "lichen")
    if not os.path.exists(path):
        pytest.skip(f"no lichen binary at {path}; run cargo build -p lichen or set LICHEN_BIN")
    return path


class Driver:
    """A driver component's mailbox."""

    def __init__(self, name, box):
        self.name, self.box, self.seq = name, Path(box), 0

    def run(self, code, timeout=60):
        """Runs `code` in the component (it sets `result`); returns `result`."""
        self.seq += 1
        stem = f"{self.seq:05d}"
        (self.box / f"{stem}.tmp").write_text(code)
        os.rename(self.box / f"{stem}.tmp", self.box / f"{stem}.py")
        answer = self.box / f"{stem}.json"
        deadline = time.monotonic() + timeout
        while not answer.exists():
            assert time.monotonic() < deadline, f"{self.name} did not answer command {stem} within {timeout}s"
            time.sleep(0.01)
        value = json.loads(answer.read_text())
        if "exception" in value:
            raise AssertionError(f"{self.name} command {stem} raised: {value['trace']}")
        return value["result"]

    def poll(self, code, predicate, timeout=30):
        """Runs `code` until predicate(result); returns the last result."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.run(code)
            if predicate(r) or time.monotonic() > deadline:
                return r
            time.sleep(0.05)


class Core:
    def __init__(self, root, work, proc):
        self.root, self.work, self.proc = Path(root), Path(work), proc
        self.drivers = {}

    def cli(self, *args, check=True, timeout=120):
        r = subprocess.run(
            [lichen_bin(), *args, "--root", str(self.root)], capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(f"lichen {args} failed ({r.returncode}): {r.stdout}\n{r.stderr}")
        return r

    def deploy(self, *args, check=True):
        """`lichen deployment create --wait --json …`; returns (returncode, parsed stdout or text)."""
        r = self.cli("deployment", "create", "--wait", "--json", *args, check=check)
        try:
            out = json.loads(r.stdout)
        except ValueError:
            out = r.stdout
        return r.returncode, out

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text() if p.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def recipe(name, run, acl=None, config=None):
    configuration = dict(config or {})
    if acl:
        configuration["accessControl"] = acl
    doc = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": "1.0.0",
        "ComponentConfiguration": {"DefaultConfiguration": configuration},
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": run}}],
    }
    return json.dumps(doc, indent=1)


# name -> accessControl of the driver components.
DRIVERS = {
    "test.Driver": {
        "aws.greengrass.ipc.pubsub": {"test.Driver:pubsub:1": ALL},
        "aws.greengrass.Cli": {"test.Driver:cli:1": ALL},
        "aws.greengrass.ipc.lifecycle": {"test.Driver:lifecycle:1": ALL},
    },
    "test.Peer": {"aws.greengrass.ipc.pubsub": {"test.Peer:pubsub:1": ALL}},
    "test.Bare": None,
    "aws.test.Metrics": {
        "aws.greengrass.ipc.componentmetric": {
            "aws.test.Metrics:metric:1": {
                "operations": ["aws.greengrass#PutComponentMetric"],
                "resources": ["*"],
            }
        }
    },
}


def start_core(tmp_path_factory):
    root = tmp_path_factory.mktemp("core")
    work = tmp_path_factory.mktemp("ws")
    recipes, artifacts = work / "recipes", work / "artifacts"
    recipes.mkdir()
    for name, acl in DRIVERS.items():
        art = artifacts / name / "1.0.0"
        art.mkdir(parents=True)
        (art / "driver.py").write_text(DRIVER)
        box = work / "box" / name
        box.mkdir(parents=True)
        run = f"{PYTHON} -u {{artifacts:path}}/driver.py {box}"
        config = {"greeting": "hello", "nested": {"a": 1}, "marker": "initial"}
        (recipes / f"{name}.json").write_text(recipe(name, run, acl, config))
    art = artifacts / "test.Target" / "1.0.0"
    art.mkdir(parents=True)
    (art / "target.py").write_text(TARGET)
    (recipes / "test.Target.json").write_text(
        recipe("test.Target", f"{PYTHON} -u {{artifacts:path}}/target.py {work / 'target.beat'}", None, {"v": 1})
    )
    proc = subprocess.Popen(
        [lichen_bin(), "core", "run", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "LICHEN_LOG": os.environ.get("LICHEN_LOG", "info")},
    )
    core = Core(root, work, proc)
    try:
        deadline = time.monotonic() + 60
        while "ready in" not in (proc.stdout.readline() or ""):
            assert proc.poll() is None and time.monotonic() < deadline, "core did not become ready"
        names = [*DRIVERS, "test.Target"]
        core.deploy(
            "--recipe-dir", str(recipes), "--artifact-dir", str(artifacts),
            *[a for n in names for a in ("--merge", f"{n}=1.0.0")],
        )
        for name in DRIVERS:
            box = work / "box" / name
            deadline = time.monotonic() + 60
            while not (box / "ready").exists():
                assert time.monotonic() < deadline, f"{name} did not connect:\n{core.log()[-4000:]}"
                time.sleep(0.05)
            core.drivers[name] = Driver(name, box)
        core.beat = work / "target.beat"
    except BaseException:
        core.stop()
        raise
    return core
