"""`lichen fleet enroll` and a real `lichen core run` with the config it writes: the core connects
to the fleet's device endpoint as the enrolled thing, and a component written against the
unmodified awsiotsdk GreengrassCoreIPCClientV2 publishes through PublishToIoTCore to a device
subscribed on the fleet with its own certificate.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from fleet_core import Core, cores, publisher_recipe, watcher_policy  # noqa: F401 (fixture)
from fleet_devices import TIMEOUT, Device, Session5

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402


def enroll(fleet, thing, out, *extra):
    p = subprocess.run(
        [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"lichen fleet enroll failed ({p.returncode}): {p.stderr}"
    return json.loads(p.stdout)


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
    watcher = Session5(Device(fleet, iot, tmp_path, name="watcher", policy=watcher_policy(thing)))
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
        publisher_recipe(recipes, name, f"devices/{thing}/telemetry", f"devices/{thing}/*", tmp_path / "progress")
        core.deploy(recipes, f"{name}=1.0.0")

        topic, payload = watcher.received.result(60)
        assert topic == f"devices/{thing}/telemetry/t0"
        assert json.loads(payload) == {"i": 0}
    finally:
        watcher.stop()
