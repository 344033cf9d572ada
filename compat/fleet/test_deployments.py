"""Greengrass deployments on the fleet with unmodified clients: boto3 `greengrassv2` for the
control plane, and simulated cores — real MQTT/TLS clients (awsiotsdk) with device certificates —
that take thing-group deployments through the namespaced jobs topics and publish fleet status.

What a core would do is done here by hand, on the wire, so the fleet's side is checked alone:
`$aws/things/<t>/jobs/$next/namespace-aws-gg-deployment/get`, `…/<jobId>/namespace-aws-gg-deployment/update`
and `$aws/things/<t>/greengrassv2/health/json`.
"""

import base64
import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future

import pytest
from awscrt import mqtt
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from fleet_devices import TIMEOUT, Device

NS = "namespace-aws-gg-deployment"

CORE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}",
        },
        {
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*",
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/*",
        },
        {"Effect": "Allow", "Action": "greengrass:GetDeploymentConfiguration", "Resource": "*"},
    ],
}


def wait_until(check, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class SimulatedCore:
    """A thing whose MQTT connection speaks the Greengrass jobs and fleet status topics."""

    def __init__(self, fleet, iot, tmp_path, name=None):
        self.device = Device(fleet, iot, tmp_path, name=name, policy=CORE_POLICY)
        self.name = self.device.name
        self.conn = self.device.mqtt3()
        self.conn.connect().result(TIMEOUT)
        self.replies = {}
        self.seq = 0
        for suffix in ["jobs/$next/" + NS + "/get/+", "jobs/+/" + NS + "/update/+"]:
            sub, _ = self.conn.subscribe(
                topic=f"$aws/things/{self.name}/{suffix}", qos=mqtt.QoS.AT_LEAST_ONCE, callback=self._on
            )
            sub.result(TIMEOUT)

    def _on(self, topic, payload, **kw):
        body = json.loads(payload)
        fut = self.replies.get(body.get("clientToken"))
        if fut and not fut.done():
            fut.set_result((topic.rsplit("/", 1)[1], body))

    def request(self, topic, body):
        token = uuid.uuid4().hex
        fut = Future()
        self.replies[token] = fut
        pub, _ = self.conn.publish(
            topic=topic, payload=json.dumps({**body, "clientToken": token}), qos=mqtt.QoS.AT_LEAST_ONCE
        )
        pub.result(TIMEOUT)
        return fut.result(TIMEOUT)

    def next_job(self):
        """The next pending deployment execution (None when there is none)."""
        kind, body = self.request(
            f"$aws/things/{self.name}/jobs/$next/{NS}/get", {"jobId": "$next", "thingName": self.name, "includeJobDocument": True}
        )
        assert kind == "accepted", body
        return body.get("execution")

    def update(self, job_id, status, details=None):
        kind, body = self.request(
            f"$aws/things/{self.name}/jobs/{job_id}/{NS}/update",
            {"status": status, "statusDetails": details or {}},
        )
        assert kind == "accepted", body
        return body

    def fleet_status(self, components, complete=True, seq=None, status="HEALTHY"):
        self.seq = seq if seq is not None else self.seq + 1
        msg = {
            "ggcVersion": "2.14.0",
            "platform": "linux",
            "architecture": "amd64",
            "thing": self.name,
            "overallDeviceStatus": status,
            "sequenceNumber": self.seq,
            "timestamp": int(time.time() * 1000),
            "messageType": "COMPLETE" if complete else "PARTIAL",
            "trigger": "CADENCE" if complete else "THING_GROUP_DEPLOYMENT",
            "components": [
                {"componentName": n, "version": v, "isRoot": True, "status": s, "fleetConfigArns": []}
                for n, v, s in components
            ],
        }
        pub, _ = self.conn.publish(
            topic=f"$aws/things/{self.name}/greengrassv2/health/json",
            payload=json.dumps(msg),
            qos=mqtt.QoS.AT_LEAST_ONCE,
        )
        pub.result(TIMEOUT)

    def stop(self):
        try:
            self.conn.disconnect().result(TIMEOUT)
        except Exception:
            pass


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_store(request):
    """Every test here runs on both registry stores (see conftest.py)."""
    return request.param


RECIPE = """RecipeFormatVersion: '2020-01-25'
ComponentName: {name}
ComponentVersion: '{version}'
Manifests:
  - Platform:
      os: linux
    Lifecycle:
      run: echo {name} {version}
"""

PUBLISHED = [
    ("com.example.Hello", v) for v in ("1.0.0", "1.1.0", "2.0.0")
] + [("com.example.Shared", "1.0.0")]


def publish(gg, name, version):
    gg.create_component_version(inlineRecipe=RECIPE.format(name=name, version=version).encode())


@pytest.fixture
def gg(fleet):
    """The greengrassv2 client, with the component versions the tests deploy published."""
    client = fleet.client("greengrassv2")
    for name, version in PUBLISHED:
        publish(client, name, version)
    return client


@pytest.fixture
def cores(fleet, iot, tmp_path):
    made = []

    def make(n=1):
        new = [SimulatedCore(fleet, iot, tmp_path) for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for c in made:
        c.stop()


def group(iot, *things):
    name = f"g-{uuid.uuid4().hex[:8]}"
    arn = iot.create_thing_group(thingGroupName=name)["thingGroupArn"]
    for t in things:
        iot.add_thing_to_thing_group(thingGroupName=name, thingName=t)
    return name, arn


def deploy(gg, target, components, **kw):
    return gg.create_deployment(
        targetArn=target,
        components={n: {"componentVersion": v} for n, v in components.items()},
        **kw,
    )


def signed_post(fleet, path, body):
    """A SigV4-signed request to one of our extension routes (boto3 has no operation for it)."""
    url = fleet.api + path
    data = json.dumps(body).encode()
    req = AWSRequest(method="POST", url=url, data=data, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(fleet.access_key, fleet.secret_key), "greengrass", "us-east-1").add_auth(req)
    r = urllib.request.Request(url, data=data, headers=dict(req.headers), method="POST")
    with urllib.request.urlopen(r, timeout=TIMEOUT) as resp:
        return json.loads(resp.read())


def test_create_get_list_cancel_and_supersede_with_revisions(fleet, iot, gg, cores):
    (core,) = cores(1)
    name, arn = group(iot, core.name)
    first = deploy(gg, arn, {"com.example.Hello": "1.0.0"}, deploymentName="first")
    assert first["iotJobId"] and first["iotJobArn"].endswith(f":job/{first['iotJobId']}")
    d = gg.get_deployment(deploymentId=first["deploymentId"])
    assert (d["deploymentStatus"], d["revisionId"], d["isLatestForTarget"]) == ("ACTIVE", "1", True)
    assert d["components"]["com.example.Hello"]["componentVersion"] == "1.0.0"
    assert d["deploymentPolicies"]["failureHandlingPolicy"] == "ROLLBACK"

    # The device gets it through the namespaced jobs topics, as the deployment document.
    job = core.next_job()
    doc = job["jobDocument"]
    assert job["jobId"] == first["iotJobId"]
    assert doc["configurationArn"].endswith(f":configuration:thinggroup/{name}:1"), doc
    assert doc["components"]["com.example.Hello"]["version"] == "1.0.0"

    second = deploy(
        gg,
        arn,
        {"com.example.Hello": "1.1.0"},
        deploymentName="second",
    )
    again = gg.get_deployment(deploymentId=first["deploymentId"])
    assert (again["deploymentStatus"], again["isLatestForTarget"]) == ("INACTIVE", False)
    d2 = gg.get_deployment(deploymentId=second["deploymentId"])
    assert (d2["revisionId"], d2["isLatestForTarget"]) == ("2", True)
    latest = gg.list_deployments(targetArn=arn)["deployments"]
    assert [x["deploymentId"] for x in latest] == [second["deploymentId"]]
    every = gg.list_deployments(targetArn=arn, historyFilter="ALL")["deployments"]
    assert sorted(x["revisionId"] for x in every) == ["1", "2"]
    # The superseded job is gone; the device's next job is the new revision.
    job = wait_until(lambda: (j := core.next_job()) and j["jobId"] == second["iotJobId"] and j, "the new revision's job")
    assert job["jobDocument"]["configurationArn"].endswith(":2")

    gg.cancel_deployment(deploymentId=second["deploymentId"])
    assert gg.get_deployment(deploymentId=second["deploymentId"])["deploymentStatus"] == "CANCELED"
    with pytest.raises(ClientError) as e:
        gg.cancel_deployment(deploymentId=second["deploymentId"])
    assert e.value.response["Error"]["Code"] == "ConflictException"
    gg.delete_deployment(deploymentId=second["deploymentId"])
    with pytest.raises(ClientError) as e:
        gg.get_deployment(deploymentId=second["deploymentId"])
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_merge_is_text_in_the_request_and_an_object_for_the_device(fleet, iot, gg, cores):
    (core,) = cores(1)
    _, arn = group(iot, core.name)
    created = gg.create_deployment(
        targetArn=arn,
        components={
            "com.example.Hello": {
                "componentVersion": "1.0.0",
                "configurationUpdate": {"merge": json.dumps({"greeting": "hi"}), "reset": ["/old"]},
                "runWith": {"posixUser": "ggc_user:ggc_group"},
            }
        },
        deploymentPolicies={"failureHandlingPolicy": "DO_NOTHING", "componentUpdatePolicy": {"action": "SKIP_NOTIFY_COMPONENTS", "timeoutInSeconds": 5}},
    )
    doc = core.next_job()["jobDocument"]
    assert doc["deploymentId"] == created["deploymentId"]
    c = doc["components"]["com.example.Hello"]
    assert c["configurationUpdate"] == {"merge": {"greeting": "hi"}, "reset": ["/old"]}
    assert c["runWith"]["posixUser"] == "ggc_user:ggc_group"
    assert doc["failureHandlingPolicy"] == "DO_NOTHING"
    assert doc["componentUpdatePolicy"] == {"timeout": 5, "action": "SKIP_NOTIFY_COMPONENTS"}
    with pytest.raises(ClientError) as e:
        gg.create_deployment(
            targetArn=arn,
            components={"com.example.Hello": {"componentVersion": "1.0.0", "configurationUpdate": {"merge": "not json"}}},
        )
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "components.com.example.Hello.configurationUpdate.merge" in e.value.response["Error"]["Message"]


def test_fleet_status_shows_in_core_devices_and_installed_components(fleet, iot, gg, cores):
    (core,) = cores(1)
    name, arn = group(iot, core.name)
    core.fleet_status([("com.example.Hello", "1.0.0", "RUNNING"), ("com.example.Other", "2.0.0", "BROKEN")], status="UNHEALTHY")
    got = wait_until(lambda: [d for d in gg.list_core_devices()["coreDevices"] if d["coreDeviceThingName"] == core.name], "the core device")
    assert (got[0]["status"], got[0]["platform"], got[0]["architecture"]) == ("UNHEALTHY", "linux", "amd64")
    assert [d["coreDeviceThingName"] for d in gg.list_core_devices(thingGroupArn=arn)["coreDevices"]] == [core.name]
    assert gg.list_core_devices(status="HEALTHY")["coreDevices"] == []
    assert gg.list_core_devices(runtime="aws_nucleus_lite")["coreDevices"] == []
    assert len(gg.list_core_devices(runtime="aws_nucleus_classic")["coreDevices"]) == 1
    dev = gg.get_core_device(coreDeviceThingName=core.name)
    assert dev["coreVersion"] == "2.14.0"
    comps = gg.list_installed_components(coreDeviceThingName=core.name, topologyFilter="ALL")["installedComponents"]
    assert {(c["componentName"], c["componentVersion"], c["lifecycleState"]) for c in comps} == {
        ("com.example.Hello", "1.0.0", "RUNNING"),
        ("com.example.Other", "2.0.0", "BROKEN"),
    }
    # An older message (lower sequence number) is dropped; a newer PARTIAL one updates.
    core.fleet_status([], seq=0)
    core.fleet_status([("com.example.Other", "2.0.0", "RUNNING")], complete=False, seq=5)
    wait_until(
        lambda: {c["lifecycleState"] for c in gg.list_installed_components(coreDeviceThingName=core.name)["installedComponents"]} == {"RUNNING"},
        "the partial update",
    )
    assert len(gg.list_installed_components(coreDeviceThingName=core.name)["installedComponents"]) == 2
    with pytest.raises(ClientError) as e:
        gg.get_core_device(coreDeviceThingName="no-such-core")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_job_updates_show_in_effective_deployments(fleet, iot, gg, cores):
    ok, bad = cores(2)
    _, arn = group(iot, ok.name, bad.name)
    created = deploy(gg, arn, {"com.example.Hello": "1.0.0"}, deploymentName="fx")
    for c in (ok, bad):
        job = c.next_job()
        c.update(job["jobId"], "IN_PROGRESS")
    ok.update(created["iotJobId"], "SUCCEEDED", {"detailed-deployment-status": "SUCCESSFUL"})
    bad.update(
        created["iotJobId"],
        "FAILED",
        {
            "detailed-deployment-status": "FAILED_ROLLBACK_COMPLETE",
            "deployment-failure-cause": "com.example.Hello install step exited 1",
            "deployment-error-stack": json.dumps(["DEPLOYMENT_FAILURE", "COMPONENT_INSTALL_ERROR"]),
        },
    )

    def status(core):
        effs = gg.list_effective_deployments(coreDeviceThingName=core.name)["effectiveDeployments"]
        return [e for e in effs if e["deploymentId"] == created["deploymentId"]]

    e = wait_until(lambda: (s := status(ok)) and s[0]["coreDeviceExecutionStatus"] == "SUCCEEDED" and s, "SUCCEEDED")[0]
    assert (e["deploymentName"], e["targetArn"], e["iotJobId"]) == ("fx", arn, created["iotJobId"])
    e = wait_until(lambda: (s := status(bad)) and s[0]["coreDeviceExecutionStatus"] == "FAILED" and s, "FAILED")[0]
    assert e["reason"] == "com.example.Hello install step exited 1"
    assert e["statusDetails"]["errorStack"] == ["DEPLOYMENT_FAILURE", "COMPONENT_INSTALL_ERROR"]


def test_bake_time_holds_success_until_components_stayed_running(fleet, iot, gg, cores):
    (core,) = cores(1)
    _, arn = group(iot, core.name)
    created = deploy(gg, arn, {"com.example.Hello": "1.0.0"}, tags={"lichen:bakeTimeSeconds": "2"})
    job = core.next_job()
    core.update(job["jobId"], "SUCCEEDED")

    def shown():
        effs = gg.list_effective_deployments(coreDeviceThingName=core.name)["effectiveDeployments"]
        return [e["coreDeviceExecutionStatus"] for e in effs if e["deploymentId"] == created["deploymentId"]]

    wait_until(lambda: shown() == ["IN_PROGRESS"], "the held success")
    time.sleep(3)
    assert shown() == ["IN_PROGRESS"], "a success was shown before fleet status showed the components RUNNING"
    core.fleet_status([("com.example.Hello", "1.0.0", "RUNNING")])
    wait_until(lambda: shown() == ["SUCCEEDED"], "SUCCEEDED after the bake time")


def test_preview_lists_versions_and_conflicts_between_groups(fleet, iot, gg, cores):
    (core,) = cores(1)
    _, arn1 = group(iot, core.name)
    _, arn2 = group(iot, core.name)
    deploy(gg, arn1, {"com.example.Hello": "1.0.0", "com.example.Shared": "1.0.0"})
    p = signed_post(
        fleet,
        "/greengrass/v2/deployments/preview",
        {"targetArn": arn2, "components": {"com.example.Shared": {"componentVersion": "1.0.0"}, "com.example.Hello": {"componentVersion": "2.0.0"}}},
    )
    (dev,) = p["devices"]
    assert dev["thingName"] == core.name
    assert {c["componentName"]: c["componentVersion"] for c in dev["components"]} == {"com.example.Shared": "1.0.0"}
    (conflict,) = dev["conflicts"]
    assert conflict["componentName"] == "com.example.Hello"
    assert conflict["requirements"] == {arn1: "=1.0.0", arn2: "=2.0.0"}
    # dryRun on CreateDeployment answers the same and records nothing.
    dry = signed_post(
        fleet,
        "/greengrass/v2/deployments?dryRun=true",
        {"targetArn": arn2, "components": {"com.example.Hello": {"componentVersion": "2.0.0"}}},
    )
    assert dry["devices"][0]["conflicts"][0]["componentName"] == "com.example.Hello"
    assert gg.list_deployments(targetArn=arn2)["deployments"] == []


def test_abort_rolls_back_devices_that_took_the_failed_revision(fleet, iot, gg, cores):
    good, bad = cores(2)
    name, arn = group(iot, good.name, bad.name)
    first = deploy(gg, arn, {"com.example.Hello": "1.0.0"})
    for c in (good, bad):
        c.update(c.next_job()["jobId"], "SUCCEEDED")
    second = deploy(
        gg,
        arn,
        {"com.example.Hello": "2.0.0"},
        iotJobConfiguration={
            "abortConfig": {
                "criteriaList": [
                    {"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 40, "minNumberOfExecutedThings": 2}
                ]
            }
        },
    )
    for c in (good, bad):
        job = wait_until(lambda c=c: (j := c.next_job()) and j["jobId"] == second["iotJobId"] and j, "revision 2")
        assert job["jobDocument"]["components"]["com.example.Hello"]["version"] == "2.0.0"
    good.update(second["iotJobId"], "SUCCEEDED")
    bad.update(second["iotJobId"], "FAILED", {"deployment-failure-cause": "install failed"})

    wait_until(lambda: gg.get_deployment(deploymentId=second["deploymentId"])["deploymentStatus"] == "FAILED", "the aborted deployment FAILED")
    latest = wait_until(
        lambda: [d for d in gg.list_deployments(targetArn=arn)["deployments"] if d["deploymentId"] != second["deploymentId"]],
        "the rollback revision",
    )[0]
    rollback = gg.get_deployment(deploymentId=latest["deploymentId"])
    assert rollback["revisionId"] == "3"
    assert rollback["tags"]["lichen:rollbackOf"] == second["deploymentId"]
    assert rollback["components"]["com.example.Hello"]["componentVersion"] == "1.0.0"
    # The device that had taken revision 2 is sent the previous revision's components.
    job = wait_until(lambda: (j := good.next_job()) and j["jobId"] == rollback["iotJobId"] and j, "the rollback job")
    doc = job["jobDocument"]
    assert doc["components"]["com.example.Hello"]["version"] == "1.0.0"
    assert doc["configurationArn"].endswith(f"thinggroup/{name}:3")
    assert first["deploymentId"] != rollback["deploymentId"]


def data_plane_get(fleet, core, url):
    ctx = ssl.create_default_context(cafile=fleet.root_ca)
    ctx.load_cert_chain(str(core.device.cert), str(core.device.key))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=TIMEOUT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_get_deployment_configuration_serves_the_document_to_targeted_devices_only(fleet, iot, gg, cores):
    member, outsider = cores(2)
    _, arn = group(iot, member.name)
    created = deploy(gg, arn, {"com.example.Hello": "1.0.0"})
    base = fleet.endpoints["dataPlane"]
    path = f"/greengrass/v2/deployments/{created['deploymentId']}/coreDevices/{{}}/configuration"
    status, body = data_plane_get(fleet, member, base + path.format(member.name))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["integrityCheck"]["algorithm"] == "SHA-256"
    status, doc = data_plane_get(fleet, member, answer["preSignedUrl"])
    assert status == 200, doc
    assert base64.b64encode(hashlib.sha256(doc).digest()).decode() == answer["integrityCheck"]["digest"]
    assert json.loads(doc)["components"]["com.example.Hello"]["version"] == "1.0.0"
    # Not in the group, or asking as another thing: refused.
    status, body = data_plane_get(fleet, outsider, base + path.format(outsider.name))
    assert status == 403, body
    status, body = data_plane_get(fleet, outsider, base + path.format(member.name))
    assert status == 403, body


def lichen_fleet(fleet, *args, check=True):
    import subprocess

    from lichen_support import lichen_bin

    p = subprocess.run(
        [lichen_bin(), "fleet", "deployment", *args, "--root", str(fleet.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert p.returncode == 0, f"lichen fleet deployment {' '.join(args)}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def lichen_bin_path():
    from lichen_support import lichen_bin

    return lichen_bin()


def on_a_terminal(argv):
    """Runs argv with stdout on a pseudo-terminal; returns what it wrote."""
    import os
    import pty
    import subprocess

    main, child = pty.openpty()
    p = subprocess.Popen(argv, stdout=child, stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    p.wait(timeout=60)
    os.close(main)
    assert p.returncode == 0, out
    return out.decode(errors="replace")


def test_cli_creates_follows_previews_lists_and_cancels(fleet, iot, gg, cores):
    (core,) = cores(1)
    name, arn = group(iot, core.name)
    _, other = group(iot, core.name)
    deploy(gg, other, {"com.example.Hello": "1.0.0"})
    preview = lichen_fleet(fleet, "preview", "--target", f"group:{name}", "--component", "com.example.Hello=2.0.0", check=False)
    assert preview.returncode == 2, preview.stdout + preview.stderr
    assert "CONFLICT" in preview.stdout and "com.example.Hello" in preview.stdout
    created = lichen_fleet(
        fleet, "create", "--target", f"group:{name}", "--component", "com.example.Hello=1.0.0", "--name", "cli", "--abort-failed-percent", "50"
    )
    dep_id = created.stdout.strip()
    d = gg.get_deployment(deploymentId=dep_id)
    assert (d["targetArn"], d["deploymentName"]) == (arn, "cli")
    assert d["iotJobConfiguration"]["abortConfig"]["criteriaList"][0]["thresholdPercentage"] == 50
    # The other group's deployment comes first; then this one.
    core.update(core.next_job()["jobId"], "SUCCEEDED")
    job = core.next_job()
    assert job["jobId"] == dep_id
    core.update(job["jobId"], "SUCCEEDED")
    # Not a terminal: plain lines, and it returns once every device finished.
    status = lichen_fleet(fleet, "status", dep_id, "--wait-seconds", "60")
    assert f"{core.name}: SUCCEEDED" in status.stdout, status.stdout
    assert "1/1 devices finished" in status.stdout
    # On a terminal: the live progress view, ending with the same summary.
    tty = on_a_terminal([lichen_bin_path(), "fleet", "deployment", "status", dep_id, "--root", str(fleet.root), "--wait-seconds", "60"])
    assert "1/1 devices finished" in tty, tty
    listed = lichen_fleet(fleet, "list")
    assert dep_id in listed.stdout
    lichen_fleet(fleet, "cancel", dep_id)
    assert gg.get_deployment(deploymentId=dep_id)["deploymentStatus"] == "CANCELED"
    bad = lichen_fleet(fleet, "create", "--target", "group:no-such-group", "--component", "a=1.0.0", check=False)
    assert bad.returncode != 0 and "no-such-group" in bad.stderr, bad.stderr


def test_single_thing_deployment_goes_through_the_deployment_shadow(fleet, iot, gg, cores):
    (core,) = cores(1)
    thing_arn = iot.describe_thing(thingName=core.name)["thingArn"]
    created = deploy(gg, thing_arn, {"com.example.Hello": "1.0.0"})
    assert "iotJobId" not in created
    shadow = f"$aws/things/{core.name}/shadow/name/AWSManagedGreengrassV2Deployment"
    got = Future()
    sub, _ = core.conn.subscribe(
        topic=f"{shadow}/get/accepted",
        qos=mqtt.QoS.AT_LEAST_ONCE,
        callback=lambda topic, payload, **kw: got.done() or got.set_result(json.loads(payload)),
    )
    sub.result(TIMEOUT)
    core.conn.publish(topic=f"{shadow}/get", payload="{}", qos=mqtt.QoS.AT_LEAST_ONCE)[0].result(TIMEOUT)
    desired = got.result(TIMEOUT)["state"]["desired"]
    assert desired["desiredStatus"] == "ACTIVE"
    doc = json.loads(desired["fleetConfig"])
    assert doc["deploymentId"] == created["deploymentId"]
    assert doc["configurationArn"].endswith(f":configuration:thing/{core.name}:1")
    reported = {
        "fleetConfigurationArnForStatus": doc["configurationArn"],
        "status": "FAILED",
        "statusDetails": {"detailedStatus": "FAILED_ROLLBACK_COMPLETE", "failureCause": "install exited 1", "errorStack": ["X"], "errorTypes": []},
        "ggcVersion": "2.14.0",
    }
    core.conn.publish(
        topic=f"{shadow}/update", payload=json.dumps({"state": {"reported": reported}}), qos=mqtt.QoS.AT_LEAST_ONCE
    )[0].result(TIMEOUT)

    def shown():
        effs = gg.list_effective_deployments(coreDeviceThingName=core.name)["effectiveDeployments"]
        return [(e["coreDeviceExecutionStatus"], e.get("reason")) for e in effs if e["deploymentId"] == created["deploymentId"]]

    wait_until(lambda: shown() == [("FAILED", "install exited 1")], "the shadow-reported failure")
    gg.cancel_deployment(deploymentId=created["deploymentId"])
    after = Future()
    sub, _ = core.conn.subscribe(
        topic=f"{shadow}/get/accepted",
        qos=mqtt.QoS.AT_LEAST_ONCE,
        callback=lambda topic, payload, **kw: after.done() or after.set_result(json.loads(payload)),
    )
    sub.result(TIMEOUT)
    core.conn.publish(topic=f"{shadow}/get", payload="{}", qos=mqtt.QoS.AT_LEAST_ONCE)[0].result(TIMEOUT)
    assert after.result(TIMEOUT)["state"]["desired"]["desiredStatus"] == "CANCELED"


def test_a_thing_added_later_gets_the_deployment_and_a_fleet_kill_loses_no_status(fleet, iot, gg, cores):
    first, late = cores(2)
    name, arn = group(iot, first.name)
    created = deploy(gg, arn, {"com.example.Hello": "1.0.0"})
    first.update(first.next_job()["jobId"], "SUCCEEDED")
    wait_until(
        lambda: [e["coreDeviceExecutionStatus"] for e in gg.list_effective_deployments(coreDeviceThingName=first.name)["effectiveDeployments"]]
        == ["SUCCEEDED"],
        "SUCCEEDED",
    )
    assert late.next_job() is None
    iot.add_thing_to_thing_group(thingGroupName=name, thingName=late.name)
    job = wait_until(late.next_job, "the late member's execution")
    assert job["jobId"] == created["iotJobId"]

    fleet.kill9()
    for c in (first, late):
        c.stop()
    fleet.start()
    gg = fleet.client("greengrassv2")
    d = gg.get_deployment(deploymentId=created["deploymentId"])
    assert (d["deploymentStatus"], d["revisionId"]) == ("ACTIVE", "1")
    effs = gg.list_effective_deployments(coreDeviceThingName=first.name)["effectiveDeployments"]
    assert [(e["deploymentId"], e["coreDeviceExecutionStatus"]) for e in effs] == [(created["deploymentId"], "SUCCEEDED")]


def test_unpublished_component_versions_are_refused_but_public_ones_pass(fleet, iot, gg, cores):
    (core,) = cores(1)
    _, arn = group(iot, core.name)
    with pytest.raises(ClientError) as e:
        deploy(gg, arn, {"com.example.Hello": "9.9.9"})
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "com.example.Hello@9.9.9" in e.value.response["Error"]["Message"]
    assert gg.list_deployments(targetArn=arn)["deployments"] == []
    # AWS's public components are resolved by cores from their own sources.
    deploy(gg, arn, {"aws.greengrass.Cli": "2.14.0", "com.example.Hello": "1.0.0"})


def test_preview_follows_recipe_dependencies_in_the_component_registry(fleet, iot, gg, cores):
    (core,) = cores(1)
    _, arn1 = group(iot, core.name)
    _, arn2 = group(iot, core.name)
    for v in ("1.0.0", "1.2.0", "2.1.0"):
        publish(gg, "com.example.Lib", v)
    app = """RecipeFormatVersion: '2020-01-25'
ComponentName: com.example.App
ComponentVersion: '1.0.0'
ComponentDependencies:
  com.example.Lib:
    VersionRequirement: ^1.0.0
  com.example.Shared:
    VersionRequirement: '>=2.0.0'
Manifests:
  - Platform:
      os: linux
    Lifecycle:
      run: echo app
"""
    gg.create_component_version(inlineRecipe=app.encode())
    deploy(gg, arn1, {"com.example.Shared": "1.0.0"})
    p = signed_post(fleet, "/greengrass/v2/deployments/preview", {"targetArn": arn2, "components": {"com.example.App": {"componentVersion": "1.0.0"}}})
    (dev,) = p["devices"]
    got = {c["componentName"]: (c["componentVersion"], c["isRoot"]) for c in dev["components"]}
    assert got == {"com.example.App": ("1.0.0", True), "com.example.Lib": ("1.2.0", False)}, dev
    (conflict,) = dev["conflicts"]
    assert conflict["componentName"] == "com.example.Shared"
    assert conflict["requirements"] == {arn1: "=1.0.0", "com.example.App@1.0.0": ">=2.0.0"}


def test_a_failed_bake_trips_the_abort_criteria_and_rolls_back(fleet, iot, gg, cores):
    (core,) = cores(1)
    _, arn = group(iot, core.name)
    deploy(gg, arn, {"com.example.Hello": "1.0.0"})
    core.update(core.next_job()["jobId"], "SUCCEEDED")
    second = deploy(
        gg,
        arn,
        {"com.example.Hello": "2.0.0"},
        tags={"lichen:bakeTimeSeconds": "60"},
        iotJobConfiguration={
            "abortConfig": {
                "criteriaList": [{"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 50, "minNumberOfExecutedThings": 1}]
            }
        },
    )
    job = wait_until(lambda: (j := core.next_job()) and j["jobId"] == second["iotJobId"] and j, "revision 2")
    core.update(job["jobId"], "SUCCEEDED")
    # The job execution SUCCEEDED; then the component breaks during the bake time.
    core.fleet_status([("com.example.Hello", "2.0.0", "BROKEN")], status="UNHEALTHY")
    wait_until(lambda: gg.get_deployment(deploymentId=second["deploymentId"])["deploymentStatus"] == "FAILED", "the deployment FAILED")
    effs = gg.list_effective_deployments(coreDeviceThingName=core.name)["effectiveDeployments"]
    (mine,) = [e for e in effs if e["deploymentId"] == second["deploymentId"]]
    assert mine["coreDeviceExecutionStatus"] == "FAILED"
    assert "BROKEN during the bake time" in mine["reason"]
    latest = gg.list_deployments(targetArn=arn)["deployments"][0]
    rollback = gg.get_deployment(deploymentId=latest["deploymentId"])
    assert rollback["tags"]["lichen:rollbackOf"] == second["deploymentId"]
    job = wait_until(lambda: (j := core.next_job()) and j["jobId"] == rollback["iotJobId"] and j, "the rollback job")
    assert job["jobDocument"]["components"]["com.example.Hello"]["version"] == "1.0.0"
