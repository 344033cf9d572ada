"""Over-the-air deployments through the greengrassv2 deployments API, end to end with real
processes: boto3 CreateDeployment against `lichen fleet serve`, real `lichen core run` processes
enrolled with `lichen fleet enroll --group`, and what the fleet then shows of them
(GetDeployment, ListEffectiveDeployments, ListInstalledComponents, GetCoreDevice), which it
learns from the cores' job status and fleet status messages.
"""

import json
import subprocess

import yaml
from lichen_support import lichen_bin, wait_for
from ota_support import APP, gg, script, ota_cores, partial_downloads, publish, restart_on_same_ports, s3, wait_execution  # noqa: F401 (fixtures)

GROUP = "ota-fleet"


def group_arn(iot, name=GROUP):
    return iot.create_thing_group(thingGroupName=name)["thingGroupArn"]


def deploy(gg, target, version, name="ota", **kw):
    d = gg.create_deployment(targetArn=target, deploymentName=name, components={APP: {"componentVersion": version}}, **kw)
    return gg.get_deployment(deploymentId=d["deploymentId"])


def effective(gg, core, deployment_id):
    effs = gg.list_effective_deployments(coreDeviceThingName=core.thing)["effectiveDeployments"]
    mine = [e for e in effs if e["deploymentId"] == deployment_id]
    return mine[0] if mine else None


def wait_effective(gg, core, deployment_id, status, timeout=120):
    def seen():
        e = effective(gg, core, deployment_id)
        return e if e and e["coreDeviceExecutionStatus"] == status else None

    return wait_for(seen, timeout, f"{core.thing}'s effective deployment {deployment_id} to be {status}\n{core.log()[-3000:]}")


def installed(gg, core):
    comps = gg.list_installed_components(coreDeviceThingName=core.thing, topologyFilter="ALL")["installedComponents"]
    return {c["componentName"]: (c["componentVersion"], c["lifecycleState"]) for c in comps}


def test_create_deployment_runs_on_every_core_and_the_fleet_shows_it(fleet, iot, s3, gg, ota_cores):
    arn = group_arn(iot)
    cores = [ota_cores(f"core{i}", GROUP) for i in (1, 2, 3)]
    publish(s3, gg, "1.0.0")
    d = deploy(gg, arn, "1.0.0", deploymentPolicies={"failureHandlingPolicy": "ROLLBACK"})
    assert (d["targetArn"], d["deploymentStatus"], d["revisionId"]) == (arn, "ACTIVE", "1")
    assert d["components"][APP]["componentVersion"] == "1.0.0"
    for c in cores:
        wait_execution(iot, d["iotJobId"], c.thing, why=f"\n{c.log()[-3000:]}")
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0")
        e = wait_effective(gg, c, d["deploymentId"], "SUCCEEDED")
        assert (e["deploymentName"], e["targetArn"], e["iotJobId"]) == ("ota", arn, d["iotJobId"])
        # The core's fleet status says what it runs.
        wait_for(lambda c=c: installed(gg, c).get(APP) == ("1.0.0", "RUNNING"), 60, f"{c.thing}'s installed components")
        dev = gg.get_core_device(coreDeviceThingName=c.thing)
        assert dev["status"] == "HEALTHY", dev
    listed = [x["coreDeviceThingName"] for x in gg.list_core_devices(thingGroupArn=arn)["coreDevices"]]
    assert sorted(listed) == ["core1", "core2", "core3"]
    assert [x["deploymentId"] for x in gg.list_deployments(targetArn=arn)["deployments"]] == [d["deploymentId"]]


def test_a_failing_revision_is_failed_with_its_cause_and_rolled_back_on_each_core(fleet, iot, s3, gg, ota_cores):
    arn = group_arn(iot)
    cores = [ota_cores(f"core{i}", GROUP) for i in (1, 2)]
    publish(s3, gg, "1.0.0")
    first = deploy(gg, arn, "1.0.0")
    for c in cores:
        wait_effective(gg, c, first["deploymentId"], "SUCCEEDED")
    publish(s3, gg, "2.0.0", install="echo cannot install >&2; exit 3")
    second = deploy(gg, arn, "2.0.0")
    assert second["revisionId"] == "2"
    for c in cores:
        e = wait_effective(gg, c, second["deploymentId"], "FAILED", timeout=180)
        assert APP in e["reason"], e
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0 again")
        assert not any(r.startswith("2.0.0") for r in c.runs())
        wait_for(lambda c=c: installed(gg, c).get(APP) == ("1.0.0", "RUNNING"), 60, f"{c.thing}'s installed components")


def test_abort_criteria_stop_the_rollout_and_roll_back_the_cores_that_took_it(fleet, iot, s3, gg, ota_cores):
    arn = group_arn(iot)
    cores = [ota_cores(f"core{i}", GROUP) for i in (1, 2, 3)]
    publish(s3, gg, "1.0.0")
    first = deploy(gg, arn, "1.0.0")
    for c in cores:
        wait_effective(gg, c, first["deploymentId"], "SUCCEEDED")
    # 2.0.0 installs everywhere but on core3.
    publish(s3, gg, "2.0.0", install='test "$AWS_IOT_THING_NAME" != core3')
    abort = {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 30, "minNumberOfExecutedThings": 3}]}
    second = deploy(gg, arn, "2.0.0", iotJobConfiguration={"abortConfig": abort})
    for c in cores[:2]:
        wait_for(lambda c=c: c.running_version() == "2.0.0", 120, f"{c.thing} to run 2.0.0\n{c.log()[-3000:]}")
    wait_effective(gg, cores[2], second["deploymentId"], "FAILED", timeout=180)
    wait_for(lambda: gg.get_deployment(deploymentId=second["deploymentId"])["deploymentStatus"] == "FAILED", 60, "the aborted deployment FAILED")

    def rollback():
        others = [x for x in gg.list_deployments(targetArn=arn)["deployments"] if x["deploymentId"] not in (first["deploymentId"], second["deploymentId"])]
        return others[0] if others else None

    rb = gg.get_deployment(deploymentId=wait_for(rollback, 60, "the rollback revision")["deploymentId"])
    assert rb["tags"]["lichen:rollbackOf"] == second["deploymentId"]
    assert rb["components"][APP]["componentVersion"] == "1.0.0"
    # The cores that had taken 2.0.0 run 1.0.0 again; the one that failed never left it.
    for c in cores:
        wait_for(lambda c=c: c.running_version() == "1.0.0", 120, f"{c.thing} to run 1.0.0 again\n{c.log()[-3000:]}")
        wait_effective(gg, c, rb["deploymentId"], "SUCCEEDED")
    for c in cores[:2]:
        assert [r.split(" ")[0] for r in c.runs()] == ["1.0.0", "2.0.0", "1.0.0"], c.runs()


def test_a_single_thing_deployment_goes_through_the_shadow_to_the_core(fleet, iot, s3, gg, ota_cores):
    core = ota_cores("core1")
    publish(s3, gg, "1.0.0")
    thing_arn = iot.describe_thing(thingName=core.thing)["thingArn"]
    d = deploy(gg, thing_arn, "1.0.0")
    assert "iotJobId" not in d
    wait_for(lambda: core.running_version() == "1.0.0", 60, f"the core to run 1.0.0\n{core.log()[-3000:]}")
    wait_effective(gg, core, d["deploymentId"], "SUCCEEDED")
    wait_for(lambda: installed(gg, core).get(APP) == ("1.0.0", "RUNNING"), 60, "the core's installed components")


def test_cancel_deployment_stops_it_for_cores_that_have_not_taken_it(fleet, iot, s3, gg, ota_cores):
    # As AWS documents CancelDeployment: a device that already received the deployment keeps
    # it; one that had not never gets it. (Cancelling a job in progress with force, which the
    # core honours until its merge, is test_ota's canceled-mid-download test.)
    arn = group_arn(iot)
    online, away = ota_cores("core1", GROUP), ota_cores("core2", GROUP)
    publish(s3, gg, "1.0.0")
    first = deploy(gg, arn, "1.0.0")
    for c in (online, away):
        wait_effective(gg, c, first["deploymentId"], "SUCCEEDED")
    away.stop()
    publish(s3, gg, "2.0.0")
    second = deploy(gg, arn, "2.0.0")
    wait_effective(gg, online, second["deploymentId"], "SUCCEEDED")
    gg.cancel_deployment(deploymentId=second["deploymentId"])
    assert gg.get_deployment(deploymentId=second["deploymentId"])["deploymentStatus"] == "CANCELED"
    assert wait_execution(iot, second["iotJobId"], away.thing, statuses=("CANCELED",))
    away.start()
    publish(s3, gg, "3.0.0")
    third = deploy(gg, arn, "3.0.0")
    for c in (online, away):
        wait_effective(gg, c, third["deploymentId"], "SUCCEEDED")
        wait_for(lambda c=c: c.running_version() == "3.0.0", 30, f"{c.thing} to run 3.0.0")
    assert "2.0.0" in [r.split(" ")[0] for r in online.runs()]
    assert "2.0.0" not in [r.split(" ")[0] for r in away.runs()], away.runs()


def test_bake_time_counts_a_core_only_once_its_component_stayed_running(fleet, iot, s3, gg, ota_cores):
    arn = group_arn(iot)
    core = ota_cores("core1", GROUP)
    publish(s3, gg, "1.0.0")
    d = deploy(gg, arn, "1.0.0", tags={"lichen:bakeTimeSeconds": "5"})
    wait_execution(iot, d["iotJobId"], core.thing)
    # The job execution SUCCEEDED; the fleet holds the success for the bake time.
    held = wait_for(lambda: effective(gg, core, d["deploymentId"]), 30, "the effective deployment")
    assert held["coreDeviceExecutionStatus"] in ("QUEUED", "IN_PROGRESS"), held
    wait_effective(gg, core, d["deploymentId"], "SUCCEEDED", timeout=60)


def test_a_fleet_killed_mid_rollout_shows_every_core_succeeded_after_restart(fleet, iot, s3, gg, ota_cores):
    arn = group_arn(iot)
    cores = [ota_cores(f"core{i}", GROUP) for i in (1, 2, 3)]
    publish(s3, gg, "1.0.0", size=50 * 1024 * 1024)
    d = deploy(gg, arn, "1.0.0")
    wait_for(lambda: any(n > 0 for c in cores for n in partial_downloads(c).values()), 120, "a download to start")
    fleet.kill9()
    restart_on_same_ports(fleet)
    gg = fleet.client("greengrassv2")
    for c in cores:
        wait_effective(gg, c, d["deploymentId"], "SUCCEEDED", timeout=180)
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0")
        wait_for(lambda c=c: installed(gg, c).get(APP) == ("1.0.0", "RUNNING"), 60, f"{c.thing}'s installed components")
    assert gg.get_deployment(deploymentId=d["deploymentId"])["deploymentStatus"] == "ACTIVE"


def lichen_fleet(fleet, *args, check=True, root=True):
    p = subprocess.run([lichen_bin(), "fleet", *args, *(["--root", str(fleet.root)] if root else [])], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, f"lichen fleet {' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}"
    return p


def component_folder(tmp_path, version):
    """A component folder as `lichen fleet component publish` takes it: recipe + artifacts."""
    d = tmp_path / f"app-{version}"
    (d / "artifacts" / APP / version).mkdir(parents=True)
    (d / "artifacts" / APP / version / "app.sh").write_bytes(script(version))
    (d / "recipe.yaml").write_text(
        f"RecipeFormatVersion: '2020-01-25'\nComponentName: {APP}\nComponentVersion: {version}\n"
        "Manifests:\n  - Platform: {os: linux}\n    Lifecycle: {Run: 'sh {artifacts:path}/app.sh'}\n"
        "    Artifacts:\n      - URI: app.sh\n"
    )
    return d


def test_the_lichen_cli_publishes_signed_versions_that_cores_requiring_signatures_run(fleet, iot, s3, gg, ota_cores, tmp_path):
    key = tmp_path / "signing.pem"
    public = lichen_fleet(fleet, "component", "keygen", "--out", str(key), root=False).stdout.strip()
    cores = [ota_cores(f"core{i}", GROUP, start=False) for i in (1, 2)]
    for c in cores:
        path = c.work / "enrolled" / "config.yaml"
        config = yaml.safe_load(path.read_text())
        nucleus = config["services"]["aws.greengrass.Nucleus"]["configuration"]
        nucleus["lichen"] = {"requireSignedComponents": True, "componentSigningKeys": [public]}
        path.write_text(yaml.safe_dump(config))
        c.start()
    lichen_fleet(fleet, "component", "publish", str(component_folder(tmp_path, "1.0.0")), "--sign-key", str(key))
    dep = lichen_fleet(fleet, "deployment", "create", "--target", f"group:{GROUP}", "--component", f"{APP}=1.0.0").stdout.strip()
    status = lichen_fleet(fleet, "deployment", "status", dep, "--wait-seconds", "120").stdout
    assert "core1: SUCCEEDED" in status and "core2: SUCCEEDED" in status, status
    for c in cores:
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0")
    # An unsigned version (boto3, no signature) is refused by each core before anything changes.
    publish(s3, gg, "2.0.0")
    dep = lichen_fleet(fleet, "deployment", "create", "--target", f"group:{GROUP}", "--component", f"{APP}=2.0.0").stdout.strip()
    for c in cores:
        e = wait_effective(gg, c, dep, "FAILED")
        assert f"{APP}@2.0.0" in e["reason"] and "signature" in e["reason"], e
    status = lichen_fleet(fleet, "deployment", "status", dep, "--once", check=False).stdout
    assert "core1: FAILED" in status, status
    for c in cores:
        assert c.running_version() == "1.0.0" and not any(r.startswith("2.0.0") for r in c.runs()), c.runs()


def test_an_offline_core_and_a_thing_added_later_catch_up_with_the_deployment(fleet, iot, s3, gg, ota_cores):
    arn = group_arn(iot)
    online = ota_cores("core1", GROUP)
    offline = ota_cores("core2", GROUP, start=False)
    later = ota_cores("core3")
    publish(s3, gg, "1.0.0")
    d = deploy(gg, arn, "1.0.0")
    wait_effective(gg, online, d["deploymentId"], "SUCCEEDED")
    assert effective(gg, later, d["deploymentId"]) is None
    offline.start()
    iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=later.thing)
    for c in (offline, later):
        wait_effective(gg, c, d["deploymentId"], "SUCCEEDED")
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0")
        wait_for(lambda c=c: installed(gg, c).get(APP) == ("1.0.0", "RUNNING"), 60, f"{c.thing}'s installed components")


def test_a_configuration_too_large_for_a_job_or_shadow_reaches_the_cores(fleet, iot, s3, gg, ota_cores):
    # Over 32 KiB the job document (over 8 KiB the shadow state) cannot carry the deployment:
    # it goes without its components, requiring LARGE_CONFIGURATION, and each core fetches the
    # whole document with GetDeploymentConfiguration over the data plane.
    arn = group_arn(iot)
    member, single = ota_cores("core1", GROUP), ota_cores("core2")
    publish(s3, gg, "1.0.0", run="echo {configuration:/marker} > marker.txt; sh {artifacts:path}/app.sh")
    for core, target, pad in ((member, arn, 40_000), (single, iot.describe_thing(thingName="core2")["thingArn"], 10_000)):
        merge = json.dumps({"marker": f"for-{core.thing}", "padding": "x" * pad})
        d = gg.create_deployment(targetArn=target, components={APP: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": merge}}})
        if "iotJobId" in d:
            doc = json.loads(iot.get_job_document(jobId=d["iotJobId"])["document"])
            assert "LARGE_CONFIGURATION" in doc["requiredCapabilities"] and "components" not in doc, doc
        wait_effective(gg, core, d["deploymentId"], "SUCCEEDED")
        marker = core.core.root / "work" / APP / "marker.txt"
        wait_for(marker.exists, 30, f"{core.thing}'s component to write its marker")
        assert marker.read_text().strip() == f"for-{core.thing}"


def test_components_of_a_group_the_core_left_are_removed_at_its_next_deployment(fleet, iot, s3, gg, ota_cores):
    other_app = "com.example.OtherApp"
    arn_a, arn_b = group_arn(iot, "site-a"), group_arn(iot, "site-b")
    core = ota_cores("core1", "site-a", "site-b")
    publish(s3, gg, "1.0.0")
    publish(s3, gg, "1.0.0", name=other_app)
    a = deploy(gg, arn_a, "1.0.0")
    wait_effective(gg, core, a["deploymentId"], "SUCCEEDED")
    b = gg.create_deployment(targetArn=arn_b, components={other_app: {"componentVersion": "1.0.0"}})
    wait_effective(gg, core, b["deploymentId"], "SUCCEEDED")
    wait_for(lambda: installed(gg, core).get(other_app) == ("1.0.0", "RUNNING"), 60, "both groups' components")
    assert installed(gg, core).get(APP) == ("1.0.0", "RUNNING")
    iot.remove_thing_from_thing_group(thingGroupName="site-b", thingName=core.thing)
    publish(s3, gg, "1.1.0")
    a2 = deploy(gg, arn_a, "1.1.0")
    wait_effective(gg, core, a2["deploymentId"], "SUCCEEDED")
    wait_for(lambda: other_app not in installed(gg, core), 60, f"{other_app} to be removed\n{core.log()[-3000:]}")
    assert installed(gg, core).get(APP) == ("1.1.0", "RUNNING")
