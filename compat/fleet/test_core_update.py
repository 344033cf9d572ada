"""A real enrolled core, run by its loader (`lichen core loader`), updates itself through a
thing-group deployment of `aws.greengrass.Nucleus` created with boto3: the new version's artifact
is the `lichen` binary, published with `lichen fleet component publish`. A good core takes over
and reports SUCCEEDED; a core that exits at start is rolled back and the old core reports FAILED
with the cause; so is a core that starts but cannot reach the fleet within
`lichen.nucleusUpdate.connectTimeoutSeconds` (it runs in a network namespace of its own).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fleet_devices import TIMEOUT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402

NUCLEUS = "aws.greengrass.Nucleus"
CONNECT_BOUND_S = 15


def run(*args):
    p = subprocess.run([lichen_bin(), *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"lichen {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return p.stdout


def publish_nucleus(fleet, tmp_path, version, binary):
    d = tmp_path / f"nucleus-{version}"
    art = d / "artifacts" / NUCLEUS / version
    art.mkdir(parents=True)
    shutil.copy(binary, art / "lichen")
    (d / "recipe.yaml").write_text(
        f"RecipeFormatVersion: '2020-01-25'\nComponentName: {NUCLEUS}\nComponentVersion: '{version}'\n"
        "ComponentType: aws.greengrass.nucleus\n"
        "Manifests:\n  - Platform: {os: linux}\n    Artifacts:\n      - URI: lichen\n"
        "        Permission: {Read: OWNER, Execute: OWNER}\n"
    )
    run("fleet", "component", "publish", "--root", str(fleet.root), str(d))


class Loader:
    """`lichen core loader --root R` on a root laid out as `core install` lays it out."""

    def __init__(self, root, workdir):
        self.root, self.workdir, self.proc = root, workdir, None

    def start(self):
        self.proc = subprocess.Popen(
            [lichen_bin(), "core", "loader", "--root", str(self.root)],
            stdout=open(self.workdir / "loader.out", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text() if p.exists() else ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def loader(fleet, iot, tmp_path):
    thing, group = "updating-core", "updaters"
    out = tmp_path / "enrolled"
    run("fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(out), "--group", group)
    root = tmp_path / "root"
    # A switched core gets CONNECT_BOUND_S to reach the fleet (the default is minutes).
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    nucleus = cfg.setdefault("services", {}).setdefault(NUCLEUS, {}).setdefault("configuration", {})
    nucleus.setdefault("lichen", {})["nucleusUpdate"] = {"connectTimeoutSeconds": CONNECT_BOUND_S}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    # The enrolled configuration goes in once, as `core install --config` does.
    seed = subprocess.Popen(
        [lichen_bin(), "core", "run", "--root", str(root), "--config", str(out / "config.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    for line in seed.stdout:
        if "ready in" in line:
            break
    seed.send_signal(signal.SIGTERM)
    seed.wait(timeout=60)
    (root / "alts" / "init" / "bin").mkdir(parents=True)
    shutil.copy(lichen_bin(), root / "alts" / "init" / "bin" / "lichen")
    os.symlink("init", root / "alts" / "current")
    l = Loader(root, tmp_path)
    l.thing = thing
    l.group_arn = iot.describe_thing_group(thingGroupName=group)["thingGroupArn"]
    l.start()
    wait_for(lambda: "connected to the cloud" in l.log(), 60, f"the core to connect\n{fleet.output()}")
    yield l
    l.stop()


def execution(gg, thing, deployment_id):
    effs = gg.list_effective_deployments(coreDeviceThingName=thing)["effectiveDeployments"]
    return next((e for e in effs if e["deploymentId"] == deployment_id), None)


def settled(gg, thing, deployment_id):
    def done():
        e = execution(gg, thing, deployment_id)
        return e if e and e["coreDeviceExecutionStatus"] in ("SUCCEEDED", "FAILED", "REJECTED") else None

    deadline = time.monotonic() + 4 * TIMEOUT
    while time.monotonic() < deadline:
        if (e := done()) is not None:
            return e
        time.sleep(0.5)
    raise AssertionError(f"deployment {deployment_id} did not end: {execution(gg, thing, deployment_id)}")


def test_a_good_core_takes_over_and_a_broken_one_is_rolled_back(fleet, iot, tmp_path, loader):
    gg = fleet.client("greengrassv2")
    alts = loader.root / "alts"

    publish_nucleus(fleet, tmp_path, "2.14.1", lichen_bin())
    d = gg.create_deployment(targetArn=loader.group_arn, components={NUCLEUS: {"componentVersion": "2.14.1"}})
    e = settled(gg, loader.thing, d["deploymentId"])
    assert e["coreDeviceExecutionStatus"] == "SUCCEEDED", e
    assert os.readlink(alts / "current") == "nucleus-2.14.1"
    assert os.readlink(alts / "old") == "init"
    # Fleet status names the version of the core now running, not the one compiled in.
    wait_for(
        lambda: gg.get_core_device(coreDeviceThingName=loader.thing).get("coreVersion") == "2.14.1",
        TIMEOUT, "coreVersion 2.14.1 in the fleet")

    broken = tmp_path / "broken-core"
    broken.write_text("#!/bin/sh\necho this core cannot start >&2\nexit 1\n")
    broken.chmod(0o755)
    publish_nucleus(fleet, tmp_path, "2.14.2", broken)
    d = gg.create_deployment(targetArn=loader.group_arn, components={NUCLEUS: {"componentVersion": "2.14.2"}})
    e = settled(gg, loader.thing, d["deploymentId"])
    assert e["coreDeviceExecutionStatus"] == "FAILED", e
    assert "failed to start" in e.get("reason", ""), e
    assert os.readlink(alts / "current") == "nucleus-2.14.1"
    assert os.readlink(alts / "broken") == "nucleus-2.14.2"
    assert not (alts / "nucleus-2.14.1" / "unconfirmed").exists()


def netns_allowed():
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_a_core_that_cannot_reach_the_fleet_is_rolled_back_and_the_old_one_reports_why(
    fleet, iot, tmp_path, loader
):
    if not netns_allowed():
        pytest.skip("needs `unshare --net` (root) to cut the new core off the network")
    gg = fleet.client("greengrassv2")
    alts = loader.root / "alts"
    # The real core, started in a network namespace of its own: it runs, serves IPC on its unix
    # socket, and its cloud link finds no network.
    cut_off = tmp_path / "cut-off-core"
    cut_off.write_text(f'#!/bin/sh\nexec unshare --net "{lichen_bin()}" "$@"\n')
    cut_off.chmod(0o755)
    publish_nucleus(fleet, tmp_path, "2.14.3", cut_off)
    d = gg.create_deployment(targetArn=loader.group_arn, components={NUCLEUS: {"componentVersion": "2.14.3"}})
    e = settled(gg, loader.thing, d["deploymentId"])
    assert e["coreDeviceExecutionStatus"] == "FAILED", e
    reason = e.get("reason", "")
    assert "did not reach the cloud" in reason and f"within {CONNECT_BOUND_S} s" in reason, e
    assert os.readlink(alts / "current") == "init"
    assert os.readlink(alts / "broken") == "nucleus-2.14.3"
    # The old core is the one connected again, and the fleet shows its version.
    assert gg.get_core_device(coreDeviceThingName=loader.thing)["coreVersion"] == "2.14.0"
