"""Over-the-air deployments end to end with real processes: `lichen fleet serve`, `lichen core run`
processes enrolled with `lichen fleet enroll --group`, a component whose script artifact is
uploaded through the fleet's S3 API and published with boto3, deployed to the thing group; each
core resolves it and downloads the artifact over the mutual-TLS data plane, runs it, and reports
its job execution's status back to the fleet.
"""

import json
import time

from fleet_core import publisher_recipe
from lichen_support import wait_for
from ota_support import APP, SHADOW, deployment_document, details, execution, gg, partial_downloads, restart_on_same_ports, job_deploy, ota_cores, publish, s3, wait_execution  # noqa: F401 (fixtures)

GROUP = "ota-fleet"


def test_a_component_published_with_boto3_runs_on_every_core_of_the_group(fleet, iot, s3, gg, ota_cores):
    cores = [ota_cores(f"core{i}", GROUP) for i in (1, 2, 3)]
    publish(s3, gg, "1.0.0")
    job = job_deploy(iot, GROUP, {APP: "1.0.0"})
    for c in cores:
        e = wait_execution(iot, job, c.thing, why=f"\n{c.log()[-3000:]}")
        assert details(e)["detailed-deployment-status"] == "SUCCESSFUL", (e, c.log()[-3000:])
    for c in cores:
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0")
        assert c.runs() == [f"1.0.0 {c.thing}"]


def test_a_failing_install_rolls_each_core_back_to_the_running_version(fleet, iot, s3, gg, ota_cores):
    cores = [ota_cores(f"core{i}", GROUP) for i in (1, 2, 3)]
    publish(s3, gg, "1.0.0")
    first = job_deploy(iot, GROUP, {APP: "1.0.0"})
    for c in cores:
        wait_execution(iot, first, c.thing)
    publish(s3, gg, "2.0.0", install="echo cannot install >&2; exit 3")
    second = job_deploy(iot, GROUP, {APP: "2.0.0"}, revision=2)
    for c in cores:
        e = wait_execution(iot, second, c.thing, statuses=("FAILED",), timeout=180, why=f"\n{c.log()[-3000:]}")
        d = details(e)
        assert d["detailed-deployment-status"] == "FAILED_ROLLBACK_COMPLETE", e
        assert APP in d["deployment-failure-cause"], e
    for c in cores:
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0 again")
        assert not any(r.startswith("2.0.0") for r in c.runs()), c.runs()


def test_a_core_offline_during_the_deployment_gets_it_when_it_starts(fleet, iot, s3, gg, ota_cores):
    online = ota_cores("core1", GROUP)
    offline = ota_cores("core2", GROUP, start=False)
    publish(s3, gg, "1.0.0")
    job = job_deploy(iot, GROUP, {APP: "1.0.0"})
    wait_execution(iot, job, online.thing)
    assert execution(iot, job, offline.thing)["status"] == "QUEUED"
    offline.start()
    wait_execution(iot, job, offline.thing, why=f"\n{offline.log()[-3000:]}")
    wait_for(lambda: offline.running_version() == "1.0.0", 30, "the late core to run 1.0.0")


def test_a_thing_added_to_the_group_later_gets_its_deployment(fleet, iot, s3, gg, ota_cores):
    first = ota_cores("core1", GROUP)
    publish(s3, gg, "1.0.0")
    job = job_deploy(iot, GROUP, {APP: "1.0.0"})
    wait_execution(iot, job, first.thing)
    later = ota_cores("core2")
    assert execution(iot, job, later.thing) is None
    iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=later.thing)
    wait_execution(iot, job, later.thing, why=f"\n{later.log()[-3000:]}")
    wait_for(lambda: later.running_version() == "1.0.0", 30, "the added core to run 1.0.0")


def test_a_deployment_canceled_before_the_core_takes_it_never_runs(fleet, iot, s3, gg, ota_cores):
    core = ota_cores("core1", GROUP, start=False)
    publish(s3, gg, "1.0.0")
    job = job_deploy(iot, GROUP, {APP: "1.0.0"})
    iot.cancel_job(jobId=job)
    core.start()
    publish(s3, gg, "1.1.0")
    # A later deployment reaches the core, so it has asked for its jobs by then.
    later = job_deploy(iot, GROUP, {APP: "1.1.0"}, revision=2)
    wait_execution(iot, later, core.thing)
    assert execution(iot, job, core.thing)["status"] == "CANCELED"
    assert core.runs() == ["1.1.0 core1"]


def test_a_core_killed_mid_download_resumes_where_it_stopped(fleet, iot, s3, gg, ota_cores):
    core = ota_cores("core1", GROUP)
    size = 50 * 1024 * 1024
    publish(s3, gg, "1.0.0", size=size)
    job = job_deploy(iot, GROUP, {APP: "1.0.0"})
    # Kill the core (and its session) as soon as part of the artifact is on disk.
    got = wait_for(lambda: {p: n for p, n in partial_downloads(core).items() if n > 0}, 120, "a partial download")
    core.kill9()
    (partial, _), = got.items()
    kept = partial.stat().st_size
    assert 0 < kept < size, kept
    assert execution(iot, job, core.thing)["status"] in ("QUEUED", "IN_PROGRESS")
    core.start()
    wait_execution(iot, job, core.thing, why=f"\n{core.log()[-3000:]}")
    wait_for(lambda: core.running_version() == "1.0.0", 30, "the core to run 1.0.0")
    # The restarted download asked for the rest only (`Range: bytes=<kept>-`), not the whole file.
    resumed = [line for line in core.log().splitlines() if "download resumes a partial file" in line]
    assert resumed and f"resumed_at={kept}" in resumed[0], (kept, resumed)


def test_a_fleet_killed_mid_rollout_loses_no_status(fleet, iot, s3, gg, ota_cores):
    cores = [ota_cores(f"core{i}", GROUP) for i in (1, 2, 3)]
    publish(s3, gg, "1.0.0", size=50 * 1024 * 1024)
    job = job_deploy(iot, GROUP, {APP: "1.0.0"})
    # Kill the fleet while the cores download: they have reported IN_PROGRESS, their downloads
    # break off, and they report the rest while it is down or coming back.
    wait_for(lambda: any(n > 0 for c in cores for n in partial_downloads(c).values()), 120, "a download to start")
    fleet.kill9()
    before = fleet.endpoints
    restart_on_same_ports(fleet)
    assert fleet.endpoints["mqtt"] == before["mqtt"]
    iot = fleet.client("iot")
    for c in cores:
        e = wait_execution(iot, job, c.thing, timeout=180, why=f"\n{c.log()[-3000:]}")
        assert details(e)["detailed-deployment-status"] == "SUCCESSFUL", e
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0")
    # Downloads cut off by the fleet's death went on where they stopped.
    assert any("download resumes a partial file" in c.log() for c in cores)


def test_a_single_thing_deployment_arrives_through_the_deployment_shadow(fleet, iot, s3, gg, ota_cores):
    core = ota_cores("core1")
    publish(s3, gg, "1.0.0")
    data = fleet.client("iot-data")
    doc = deployment_document("thing-deploy-1", f"thing/{core.thing}", {APP: "1.0.0"})
    desired = {"fleetConfig": json.dumps(doc), "desiredStatus": "ACTIVE"}
    data.update_thing_shadow(thingName=core.thing, shadowName=SHADOW, payload=json.dumps({"state": {"desired": desired}}).encode())

    def reported():
        got = json.loads(data.get_thing_shadow(thingName=core.thing, shadowName=SHADOW)["payload"].read())
        r = got["state"].get("reported", {})
        return r if r.get("status") in ("SUCCEEDED", "FAILED") else None

    r = wait_for(reported, 60, f"the core's reported status\n{core.log()[-3000:]}")
    assert r["status"] == "SUCCEEDED", r
    assert r["fleetConfigurationArnForStatus"] == doc["configurationArn"]
    assert r["statusDetails"]["detailedStatus"] == "SUCCESSFUL", r
    wait_for(lambda: core.running_version() == "1.0.0", 30, "the core to run 1.0.0")


def test_a_deployment_canceled_mid_download_is_dropped_and_the_core_takes_the_next(fleet, iot, s3, gg, ota_cores):
    core = ota_cores("core1", GROUP)
    publish(s3, gg, "1.0.0")
    wait_execution(iot, job_deploy(iot, GROUP, {APP: "1.0.0"}), core.thing)
    # Large enough that the cancel reaches the core while it downloads (~0.4 s per 50 MB here).
    publish(s3, gg, "2.0.0", size=150 * 1024 * 1024)
    big = job_deploy(iot, GROUP, {APP: "2.0.0"}, revision=2)
    wait_for(lambda: any(n > 0 for n in partial_downloads(core).values()), 120, "the download to start")
    # An execution in progress is canceled only with force, as AWS has it.
    iot.cancel_job(jobId=big, force=True)
    assert wait_execution(iot, big, core.thing, statuses=("CANCELED",))
    publish(s3, gg, "3.0.0")
    third = job_deploy(iot, GROUP, {APP: "3.0.0"}, revision=3)
    wait_execution(iot, third, core.thing, why=f"\n{core.log()[-3000:]}")
    wait_for(lambda: core.running_version() == "3.0.0", 30, "the core to run 3.0.0")
    assert [r.split(" ")[0] for r in core.runs()] == ["1.0.0", "3.0.0"], core.runs()


def test_a_message_the_fleet_refuses_is_sent_again_later_not_at_once(fleet, iot, ota_cores, tmp_path):
    # The fleet refuses a publish outside the device's policy (as it refuses one a busy service
    # cannot take) with a PUBACK reason code; the core keeps the message and resends it after a
    # pause, so its retries span time instead of being spent in a burst and the message dropped.
    core = ota_cores("core1")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    publisher_recipe(recipes, "com.example.Stray", "devices/elsewhere/t", "devices/elsewhere/*", tmp_path / "progress")
    core.core.deploy(recipes, "com.example.Stray=1.0.0")

    def refusals():
        return [line for line in core.log().splitlines() if "the cloud refused a message" in line and "devices/elsewhere/t" in line]

    wait_for(refusals, 60, "the fleet to refuse the stray message")
    time.sleep(2.5)
    seen = refusals()
    # Resent once a second: at most a handful in this time, never the whole retry budget.
    assert 2 <= len(seen) <= 5, seen
    assert "giving up on a cloud message after mqtt.maxPublishRetry attempts topic=devices/elsewhere" not in core.log()
