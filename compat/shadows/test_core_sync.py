"""Shadow sync end to end between a real core and a real `lichen fleet serve`: the core is
enrolled with `lichen fleet enroll`, deploys aws.greengrass.ShadowManager with `synchronize`
for its classic shadow and named shadow `n`, and a component changes its shadows through the
unmodified awsiotsdk IPC client; the cloud side is read and changed with boto3 `iot-data`.

The link is cut by stopping the fleet; a cloud-side change while the core is cut off is made on
a fleet restarted on another MQTT port (same database), then the fleet comes back on the port
the core knows.
"""

import importlib.util
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from core_shadows_support import SHADOW, THING, Core, deploy_drivers, wait_for
from lichen_support import free_port, lichen_bin

FLEET_SUITE = Path(__file__).resolve().parents[1] / "fleet"
_spec = importlib.util.spec_from_file_location("fleet_suite_conftest_for_sync", FLEET_SUITE / "conftest.py")
_fleet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fleet)

SYNC = {
    "synchronize": {"coreThing": {"classic": True, "namedShadows": ["n"]}, "direction": "betweenDeviceAndCloud"},
    "strategy": {"type": "realTime"},
}


class PinnedFleet(_fleet.Fleet):
    """`lichen fleet serve` whose MQTT port is chosen by the test, so it can come back on it."""

    def start(self, mqtt_port):
        (self.root / "endpoints.json").unlink(missing_ok=True)
        self.log = open(self.root.parent / f"{self.root.name}.log", "ab")
        self.proc = subprocess.Popen(
            [lichen_bin(), "fleet", "serve", "--root", str(self.root), "--api", "127.0.0.1:0",
             "--mqtt", f"127.0.0.1:{mqtt_port}", "--data-plane", "127.0.0.1:0"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def ready():
            assert self.proc.poll() is None, f"lichen fleet serve exited: {self.output()}"
            try:
                return json.loads((self.root / "endpoints.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return None

        saved = (self.access_key, self.secret_key) if getattr(self, "access_key", None) else None
        self.endpoints = wait_for(ready, 60, "endpoints.json")
        self.api = self.endpoints["api"]
        self.root_ca = self.endpoints["rootCa"]
        import configparser

        creds = configparser.ConfigParser()
        creds.read(self.root / "admin" / "credentials")
        self.access_key = creds["default"]["aws_access_key_id"]
        self.secret_key = creds["default"]["aws_secret_access_key"]
        assert saved is None or saved == (self.access_key, self.secret_key)
        return self


def shadow_of(data, name=None):
    """The cloud's document, or None when there is none."""
    try:
        kw = {"thingName": THING, **({"shadowName": name} if name else {})}
        return json.loads(data.get_thing_shadow(**kw)["payload"].read())
    except data.exceptions.ResourceNotFoundException:
        return None


def ipc(app, op, shadow="", doc=None):
    if op == "update":
        code = (
            f"result = attempt(lambda: json.loads(client.update_thing_shadow(thing_name={THING!r}, "
            f"shadow_name={shadow!r}, payload=json.dumps({doc!r}).encode()).payload))"
        )
    else:
        code = (
            f"result = attempt(lambda: json.loads(client.{op}_thing_shadow(thing_name={THING!r}, "
            f"shadow_name={shadow!r}).payload))"
        )
    return app.run(code)


def settle(read, want, timeout, what):
    """Polls `read()` until it equals `want`; on timeout says what it last was."""
    deadline = time.monotonic() + timeout
    while True:
        last = read()
        if last == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: wanted {want}, still {last} after {timeout} s")
        time.sleep(0.1)


def queued(core):
    db = core.root / "work" / SHADOW / "shadow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return [tuple(r) for r in c.execute("SELECT thing_name, shadow_name FROM sync_queue")]


@pytest.fixture
def rig(tmp_path):
    mqtt_port = free_port()
    fleet = PinnedFleet(tmp_path / "fleet" / "root")
    (tmp_path / "fleet").mkdir()
    fleet.start(mqtt_port)
    core = None
    try:
        out = tmp_path / "enrolled"
        p = subprocess.run(
            [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", THING, "--out", str(out)],
            capture_output=True, text=True, timeout=120,
        )
        assert p.returncode == 0, p.stderr
        work = tmp_path / "core"
        work.mkdir()
        config = work / "config.yaml"
        config.write_text((out / "config.yaml").read_text())
        core = Core(work / "root", work, config)
        core.start()
        wait_for(lambda: "connected to the cloud" in core.log(), 60, f"the core to connect\n{fleet.output()}")
        deploy_drivers(core, {SHADOW: {"MERGE": SYNC}}, [f"{SHADOW}=2.3.9"])
        yield {"fleet": fleet, "core": core, "app": core.drivers["test.ShadowApp"], "mqtt_port": mqtt_port}
    finally:
        if core:
            core.stop()
        fleet.stop()


def data_client(fleet):
    return fleet.client("iot-data")


def test_a_change_on_either_side_appears_on_the_other(rig):
    app, data = rig["app"], data_client(rig["fleet"])
    a = ipc(app, "update", "", {"state": {"reported": {"temp": 21}}})
    assert "ok" in a, a
    cloud = wait_for(lambda: (lambda d: d if d and d["state"].get("reported") == {"temp": 21} else None)(shadow_of(data)),
                     60, "the core's report at the fleet")
    assert cloud["state"]["reported"] == {"temp": 21}

    data.update_thing_shadow(thingName=THING, payload=json.dumps({"state": {"desired": {"temp": 25}}}).encode())
    local = wait_for(lambda: (lambda r: r["ok"] if "ok" in r and r["ok"]["state"].get("desired") == {"temp": 25} else None)(ipc(app, "get")),
                     60, "the fleet's desired at the core")
    assert local["state"]["delta"] == {"temp": 25}

    # A named shadow made in the cloud comes down; deleted locally, it goes in the cloud too.
    data.update_thing_shadow(thingName=THING, shadowName="n", payload=json.dumps({"state": {"desired": {"x": 1}}}).encode())
    wait_for(lambda: "ok" in ipc(app, "get", "n"), 60, "the named shadow at the core")
    assert "ok" in ipc(app, "delete", "n")
    wait_for(lambda: shadow_of(data, "n") is None, 60, "the delete at the fleet")
    # A shadow that is not configured for sync stays local.
    assert "ok" in ipc(app, "update", "unsynced", {"state": {"reported": {"v": 1}}})
    time.sleep(1)
    assert shadow_of(data, "unsynced") is None


def test_changes_on_both_sides_while_cut_off_merge_on_reconnect(rig):
    fleet, core, app = rig["fleet"], rig["core"], rig["app"]
    data = data_client(fleet)
    base = {"state": {"reported": {"a": 0, "b": 0, "same": 0}, "desired": {"d": 0, "e": 0}}}
    assert "ok" in ipc(app, "update", "", base)
    wait_for(lambda: (lambda d: d if d and d["state"].get("reported", {}).get("same") == 0 else None)(shadow_of(data)), 60, "the first sync")
    wait_for(lambda: queued(core) == [], 60, "the sync queue to drain")

    fleet.stop()
    # Device side, cut off: reported.a and the shared fields.
    assert "ok" in ipc(app, "update", "", {"state": {"reported": {"a": "device", "same": "device"}, "desired": {"d": "device"}}})
    assert queued(core) == [(THING, "")]
    # Cloud side, while the core still cannot reach it (the fleet on another port).
    fleet.start(free_port())
    data = data_client(fleet)
    data.update_thing_shadow(
        thingName=THING,
        payload=json.dumps({"state": {"reported": {"b": "cloud", "same": "cloud"}, "desired": {"d": "cloud", "e": "cloud"}}}).encode(),
    )
    fleet.stop()
    # The fleet comes back where the core looks for it.
    fleet.start(rig["mqtt_port"])
    data = data_client(fleet)
    want = {
        # desired: the cloud wins the field both changed.
        "desired": {"d": "cloud", "e": "cloud"},
        # reported: the device wins the field both changed; each side's own field survives.
        "reported": {"a": "device", "b": "cloud", "same": "device"},
    }

    def cloud_state():
        d = shadow_of(data)
        return d and {k: d["state"].get(k) for k in ("desired", "reported")}

    settle(cloud_state, want, 90, "the merge at the fleet")

    def local_state():
        r = ipc(app, "get")
        return "ok" in r and {k: r["ok"]["state"].get(k) for k in ("desired", "reported")}

    settle(local_state, want, 60, "the merge at the core")
    wait_for(lambda: queued(core) == [], 60, "the sync queue to drain")


def test_kill_9_with_unsynced_changes_loses_none(rig):
    fleet, core, app = rig["fleet"], rig["core"], rig["app"]
    assert "ok" in ipc(app, "update", "", {"state": {"reported": {"seq": 0}}})
    wait_for(lambda: shadow_of(data_client(fleet)) is not None, 60, "the first sync")
    wait_for(lambda: queued(core) == [], 60, "the sync queue to drain")
    fleet.stop()
    assert "ok" in ipc(app, "update", "", {"state": {"reported": {"seq": 1}}})
    assert "ok" in ipc(app, "update", "n", {"state": {"reported": {"named": True}}})
    core.kill9()
    # On disk after the crash: both changes, queued.
    assert sorted(queued(core)) == [(THING, ""), (THING, "n")]
    # The restarted drivers must not replay the commands already run.
    for box in (core.work / "box").iterdir():
        for f in box.glob("*.py"):
            f.unlink()
    core.start()
    fleet.start(rig["mqtt_port"])
    data = data_client(fleet)
    wait_for(lambda: (shadow_of(data) or {}).get("state", {}).get("reported") == {"seq": 1}, 90, "the classic change at the fleet")
    wait_for(lambda: (shadow_of(data, "n") or {}).get("state", {}).get("reported") == {"named": True}, 90, "the named change at the fleet")
    wait_for(lambda: queued(core) == [], 60, "the sync queue to drain")
