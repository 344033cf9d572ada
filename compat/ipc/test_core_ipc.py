"""Every Greengrass IPC operation, from unmodified awsiotsdk 1.31.0 components on a real core.

The components are long-lived drivers (see core_support.py): each check runs a snippet inside a
component over its own GreengrassCoreIPCClientV2 connection. `test.Driver` holds pubsub, Cli and
lifecycle policies, `test.Peer` pubsub only, `test.Bare` none, `aws.test.Metrics` a
componentmetric policy; `test.Target` is a plain process that writes a heartbeat file.
"""

import json
import time

import pytest


@pytest.fixture(scope="module")
def d(core):
    return core.drivers["test.Driver"]


@pytest.fixture(scope="module")
def peer(core):
    return core.drivers["test.Peer"]


@pytest.fixture(scope="module")
def bare(core):
    return core.drivers["test.Bare"]


def err(r):
    assert isinstance(r, dict) and "error" in r, f"expected an error, got {r}"
    return r["error"]


def ok(r):
    assert isinstance(r, dict) and "ok" in r, f"expected success, got {r}"
    return r["ok"]


# ---------------------------------------------------------------------------------------------
# Local pub/sub


COLLECT = r'''
def collector(key):
    def on(e):
        if e.json_message is not None:
            record(key, {"json": e.json_message.message, "topic": e.json_message.context.topic})
        elif e.binary_message is not None:
            record(key, {"binary": base64.b64encode(e.binary_message.message).decode(),
                         "topic": e.binary_message.context.topic})
    return on
result = True
'''


def test_pubsub_json_and_binary_between_components(d, peer):
    peer.run(COLLECT)
    peer.run(
        "state['op1'] = client.subscribe_to_topic(topic='peer/data', on_stream_event=collector('peer'))[1]\n"
        "result = True"
    )
    r = d.run(
        "result = [attempt(lambda: client.publish_to_topic(topic='peer/data', publish_message=model.PublishMessage("
        "json_message=model.JsonMessage(message={'n': 1, 'list': [1, 'two'], 'nested': {'ok': True}}))) and True),"
        " attempt(lambda: client.publish_to_topic(topic='peer/data', publish_message=model.PublishMessage(binary_message=model.BinaryMessage(message=bytes(range(256))))) and True)]"
    )
    assert [x.get("error") for x in r] == [None, None], r
    got = peer.poll("result = recorded('peer')", lambda r: len(r) >= 2)
    import base64

    assert got[0] == {"json": {"n": 1, "list": [1, "two"], "nested": {"ok": True}}, "topic": "peer/data"}
    assert got[1]["topic"] == "peer/data"
    assert base64.b64decode(got[1]["binary"]) == bytes(range(256))
    peer.run("state['op1'].close(); result = True")


def test_wildcards_and_receive_modes(d, peer):
    d.run(COLLECT)
    d.run(
        "state['w1'] = client.subscribe_to_topic(topic='wild/#', receive_mode=model.ReceiveMode.RECEIVE_ALL_MESSAGES,"
        " on_stream_event=collector('all'))[1]\n"
        "state['w2'] = client.subscribe_to_topic(topic='wild/+/x',"
        " receive_mode=model.ReceiveMode.RECEIVE_MESSAGES_FROM_OTHERS, on_stream_event=collector('others'))[1]\n"
        "result = True"
    )
    d.run("client.publish_to_topic(topic='wild/self/x', publish_message=model.PublishMessage("
          "json_message=model.JsonMessage(message={'from': 'self'}))); result = True")
    peer.run("client.publish_to_topic(topic='wild/peer/x', publish_message=model.PublishMessage("
             "json_message=model.JsonMessage(message={'from': 'peer'})))\n"
             "client.publish_to_topic(topic='wild/peer/y/z', publish_message=model.PublishMessage("
             "json_message=model.JsonMessage(message={'from': 'peer-deep'}))); result = True")
    all_ = d.poll("result = recorded('all')", lambda r: len(r) >= 3)
    assert sorted(m["topic"] for m in all_) == ["wild/peer/x", "wild/peer/y/z", "wild/self/x"]
    # Receive modes are decided when a message is published, and every publish above has been
    # answered: wild/self/x was never queued for the from-others subscription, so once it holds
    # one message it holds all it will get.
    others = d.poll("result = recorded('others')", lambda r: len(r) >= 1)
    assert others == [{"json": {"from": "peer"}, "topic": "wild/peer/x"}]
    d.run("state['w1'].close(); state['w2'].close(); result = True")


def test_pubsub_unauthorized_and_bad_arguments(d, bare):
    r = bare.run(
        "result = [attempt(lambda: client.publish_to_topic(topic='t', publish_message=model.PublishMessage("
        "json_message=model.JsonMessage(message={})))),"
        " attempt(lambda: client.subscribe_to_topic(topic='t', on_stream_event=lambda e: None) and True)]"
    )
    assert [err(x) for x in r] == ["UnauthorizedError", "UnauthorizedError"]
    r = d.run(
        "result = [attempt(lambda: client.publish_to_topic(topic='a/+/b', publish_message=model.PublishMessage("
        "json_message=model.JsonMessage(message={})))),"
        " attempt(lambda: client.publish_to_topic(topic='a/b', publish_message=model.PublishMessage())),"
        " attempt(lambda: client.subscribe_to_topic(topic='a/#/b', on_stream_event=lambda e: None) and True),"
        " attempt(lambda: client.subscribe_to_topic(topic='', on_stream_event=lambda e: None) and True)]"
    )
    assert [err(x) for x in r] == ["InvalidArgumentsError"] * 4, r


# ---------------------------------------------------------------------------------------------
# Component state and configuration


def test_update_state(d):
    r = d.run(
        "result = [attempt(lambda: client.update_state(state=model.ReportedLifecycleState.RUNNING) and True),"
        " attempt(lambda: client.update_state(state='SLEEPING') and True)]"
    )
    assert ok(r[0]) is True
    assert err(r[1]) == "InvalidArgumentsError"


def test_get_configuration(d, bare):
    r = d.run(
        "result = [attempt(lambda: client.get_configuration(key_path=['greeting']).value),"
        " attempt(lambda: client.get_configuration(key_path=['nested']).value),"
        " attempt(lambda: client.get_configuration(component_name='test.Target', key_path=['v']).value),"
        " attempt(lambda: client.get_configuration(key_path=['no', 'such']).value),"
        " attempt(lambda: client.get_configuration(component_name='no.such.Component').value)]"
    )
    assert ok(r[0]) == {"greeting": "hello"}
    assert ok(r[1]) == {"a": 1}
    assert ok(r[2]) == {"v": 1}
    assert err(r[3]) == "ResourceNotFoundError"
    assert err(r[4]) == "ResourceNotFoundError"
    # Reading configuration needs no policy (Greengrass: any component may read any configuration).
    assert ok(bare.run("result = attempt(lambda: client.get_configuration(key_path=['greeting']).value)")) == {
        "greeting": "hello"
    }


def test_update_configuration_and_its_event(peer):
    peer.run(
        "def on_cfg(e):\n"
        "    record('cfg', {'component': e.configuration_update_event.component_name,"
        " 'keyPath': e.configuration_update_event.key_path})\n"
        "state['cfg'] = client.subscribe_to_configuration_update(key_path=['tuning'], on_stream_event=on_cfg)[1]\n"
        "result = True"
    )
    r = peer.run(
        "now = datetime.datetime.now()\n"
        "result = [attempt(lambda: client.update_configuration(key_path=['tuning'], timestamp=now,"
        " value_to_merge={'speed': 7}) and True),"
        " attempt(lambda: client.get_configuration(key_path=['tuning']).value),"
        " attempt(lambda: client.update_configuration(key_path=['tuning'], timestamp=now - datetime.timedelta(hours=1),"
        " value_to_merge={'speed': 1}) and True),"
        " attempt(lambda: client.update_configuration(key_path=['accessControl'], timestamp=now + datetime.timedelta(seconds=1),"
        " value_to_merge={'x': 1}) and True),"
        " attempt(lambda: client.subscribe_to_configuration_update(component_name='no.such.Component',"
        " on_stream_event=lambda e: None) and True)]"
    )
    assert ok(r[0]) is True
    assert ok(r[1]) == {"speed": 7}
    assert err(r[2]) == "FailedUpdateConditionCheckError"
    assert err(r[3]) == "InvalidArgumentsError"
    assert err(r[4]) == "ResourceNotFoundError"
    events = peer.poll("result = recorded('cfg')", lambda r: len(r) >= 1)
    assert events[0] == {"component": "test.Peer", "keyPath": ["tuning", "speed"]}
    peer.run("state['cfg'].close(); result = True")


VALIDATOR = r'''
def on_validate(e):
    ev = e.validate_configuration_update_event
    record('validate', {'deploymentId': ev.deployment_id, 'configuration': ev.configuration})
    status = 'REJECTED' if ev.configuration.get('reject') else 'ACCEPTED'
    report = model.ConfigurationValidityReport(status=status, deployment_id=ev.deployment_id,
                                               message='reject was set' if status == 'REJECTED' else '')
    record('reports', attempt(lambda: client.send_configuration_validity_report(
        configuration_validity_report=report) and True))
def on_cfg(e):
    record('cfg', {'component': e.configuration_update_event.component_name,
                   'keyPath': e.configuration_update_event.key_path})
state['val'] = client.subscribe_to_validate_configuration_updates(on_stream_event=on_validate)[1]
state['cfg'] = client.subscribe_to_configuration_update(on_stream_event=on_cfg)[1]
result = True
'''


def test_validation_rejects_then_merge_reaches_subscriber(core, d):
    d.run(VALIDATOR)
    rejected = json.dumps({"test.Driver": {"MERGE": {"reject": True, "marker": "rejected"}}})
    code, out = core.deploy("--update-config", rejected, check=False)
    assert code != 0, out
    listed = json.loads(core.cli("deployment", "list", "--json").stdout)
    failed = [x for x in listed if x.get("status") == "FAILED"]
    assert failed, listed
    details = json.dumps(failed[-1])
    assert "FAILED_NO_STATE_CHANGE" in details and "reject was set" in details, details
    assert d.run("result = client.get_configuration(key_path=['marker']).value") == {"marker": "initial"}
    assert [ok(x) for x in d.run("result = recorded('reports')")] == [True]

    accepted = json.dumps({"test.Driver": {"MERGE": {"marker": "merged"}}})
    code, out = core.deploy("--update-config", accepted)
    assert code == 0, out
    assert d.run("result = client.get_configuration(key_path=['marker']).value") == {"marker": "merged"}
    events = d.poll("result = recorded('cfg')", lambda r: any(e["keyPath"] == ["marker"] for e in r))
    assert {"component": "test.Driver", "keyPath": ["marker"]} in events, events
    validated = d.run("result = recorded('validate')")
    assert [v["configuration"]["marker"] for v in validated] == ["rejected", "merged"]
    r = d.run(
        "result = attempt(lambda: client.send_configuration_validity_report(configuration_validity_report="
        "model.ConfigurationValidityReport(status='ACCEPTED', deployment_id='no-such-deployment')) and True)"
    )
    assert err(r) == "InvalidArgumentsError"
    d.run("state['val'].close(); state['cfg'].close(); result = True")


DEFERRER = r'''
def on_update(e):
    if e.pre_update_event is not None:
        dep = e.pre_update_event.deployment_id
        n = len(recorded('pre'))
        record('pre', dep)
        # Defer the first notice, accept the second.
        record('defer', attempt(lambda: client.defer_component_update(
            deployment_id=dep, message='busy' if n == 0 else 'ok', recheck_after_ms=1000 if n == 0 else 0) and True))
    elif e.post_update_event is not None:
        record('post', e.post_update_event.deployment_id)
state['upd'] = client.subscribe_to_component_updates(on_stream_event=on_update)[1]
result = True
'''


def test_component_update_deferred_then_applied(core, d):
    d.run(DEFERRER)
    update = json.dumps({"test.Target": {"MERGE": {"deferred": True}}})
    code, out = core.deploy(
        "--update-config", update, "--component-update-policy", "NOTIFY_COMPONENTS", "--update-timeout", "10"
    )
    assert code == 0, out
    pre = d.run("result = recorded('pre')")
    assert len(pre) == 2 and pre[0] == pre[1], pre
    assert [ok(x) for x in d.run("result = recorded('defer')")] == [True, True]
    post = d.poll("result = recorded('post')", lambda r: len(r) >= 1)
    assert post == [pre[0]]
    r = d.run("result = client.get_configuration(component_name='test.Target', key_path=['deferred']).value")
    assert r == {"deferred": True}
    r = d.run(
        "result = attempt(lambda: client.defer_component_update(deployment_id='no-such-deployment',"
        " recheck_after_ms=10) and True)"
    )
    assert err(r) == "InvalidArgumentsError"
    d.run("state['upd'].close(); result = True")


# ---------------------------------------------------------------------------------------------
# Cli service operations (components need aws.greengrass.Cli policies)


def components(d):
    return d.run(
        "result = {c.component_name: c.state for c in client.list_components().components}"
    )


def beat(core):
    return int(core.beat.read_text() or 0)


def test_list_and_get_component_details(d, bare):
    listed = components(d)
    assert listed.get("test.Target") == "RUNNING" and listed.get("test.Driver") == "RUNNING", listed
    r = d.run(
        "result = [attempt(lambda: (lambda c: [c.component_name, c.version, c.state, c.configuration])("
        "client.get_component_details(component_name='test.Target').component_details)),"
        " attempt(lambda: client.get_component_details(component_name='no.such.Component') and True),"
        " attempt(lambda: client.get_component_details(component_name='') and True)]"
    )
    name, version, state, configuration = ok(r[0])
    assert (name, version, state) == ("test.Target", "1.0.0", "RUNNING")
    assert configuration.get("v") == 1
    assert err(r[1]) == "ResourceNotFoundError"
    assert err(r[2]) == "InvalidArgumentsError"
    r = bare.run(
        "result = [attempt(lambda: client.list_components() and True),"
        " attempt(lambda: client.get_component_details(component_name='test.Target') and True)]"
    )
    assert [err(x) for x in r] == ["UnauthorizedError", "UnauthorizedError"]


def wait_state(d, name, want, timeout=30):
    got = d.poll(
        f"result = client.get_component_details(component_name='{name}').component_details.state",
        lambda s: s == want,
        timeout,
    )
    assert got == want, f"{name} is {got}, expected {want}"


def test_stop_restart_pause_resume(core, d, bare):
    # Stop: the process ends and ListComponents no longer shows it RUNNING.
    r = d.run("result = attempt(lambda: client.stop_component(component_name='test.Target').stop_status)")
    assert ok(r) == "SUCCEEDED"
    listed = d.poll(
        "result = {c.component_name: c.state for c in client.list_components().components}",
        lambda m: m.get("test.Target") in ("FINISHED", "STOPPING", "INSTALLED"),
    )
    assert listed["test.Target"] != "RUNNING", listed
    # Restart: RUNNING again, with a new process (the heartbeat counter starts over).
    stopped_at = beat(core)
    r = d.run("result = attempt(lambda: client.restart_component(component_name='test.Target').restart_status)")
    assert ok(r) == "SUCCEEDED"
    wait_state(d, "test.Target", "RUNNING")
    deadline = time.monotonic() + 30
    while beat(core) >= stopped_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert beat(core) < stopped_at, "test.Target did not start over"
    assert components(d)["test.Target"] == "RUNNING"
    # Pause freezes the process (the heartbeat stops); Resume lets it go on.
    while beat(core) < 3:
        time.sleep(0.05)
    assert ok(d.run("result = attempt(lambda: client.pause_component(component_name='test.Target') and True)"))
    frozen = beat(core)
    time.sleep(0.5)
    assert beat(core) == frozen, "test.Target kept running while paused"
    assert ok(d.run("result = attempt(lambda: client.resume_component(component_name='test.Target') and True)"))
    deadline = time.monotonic() + 10
    while beat(core) == frozen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert beat(core) > frozen, "test.Target did not go on after resume"
    assert components(d)["test.Target"] == "RUNNING"

    ops = ["stop_component", "restart_component", "pause_component", "resume_component"]
    r = bare.run(
        "result = [attempt(lambda: getattr(client, op)(component_name='test.Target') and True) for op in "
        + repr(ops)
        + "]"
    )
    assert [err(x) for x in r] == ["UnauthorizedError"] * 4
    r = d.run(
        "result = [attempt(lambda: getattr(client, op)(component_name='no.such.Component') and True) for op in "
        + repr(ops)
        + "] + [attempt(lambda: getattr(client, op)(component_name='') and True) for op in "
        + repr(ops)
        + "]"
    )
    assert [err(x) for x in r] == ["ResourceNotFoundError"] * 4 + ["InvalidArgumentsError"] * 4


def test_local_deployments_over_ipc(core, d, bare):
    r = d.run(
        "r = client.create_local_deployment(root_component_versions_to_add={'test.Target': '1.0.0'},"
        " component_to_configuration={'test.Target': {'MERGE': {'fromIpc': 1}}})\n"
        "result = r.deployment_id"
    )
    dep = r
    status = d.poll(
        f"result = client.get_local_deployment_status(deployment_id='{dep}').deployment.status",
        lambda s: s in ("SUCCEEDED", "FAILED", "CANCELED"),
    )
    assert status == "SUCCEEDED"
    assert d.run("result = client.get_configuration(component_name='test.Target', key_path=['fromIpc']).value") == {
        "fromIpc": 1
    }
    listed = d.run("result = [x.deployment_id for x in client.list_local_deployments().local_deployments]")
    assert dep in listed
    # Cancel: a deployment queued behind one that a component holds back with a deferral.
    d.run(
        "def hold(e):\n"
        "    if e.pre_update_event is not None:\n"
        "        record('held', attempt(lambda: client.defer_component_update(deployment_id="
        "e.pre_update_event.deployment_id, recheck_after_ms=0) and True))\n"
        "state['hold'] = client.subscribe_to_component_updates(on_stream_event=hold)[1]\n"
        "result = True"
    )
    r = d.run(
        "a = client.create_local_deployment(component_to_configuration={'test.Target': {'MERGE': {'first': 1}}})"
        ".deployment_id\n"
        "b = client.create_local_deployment(component_to_configuration={'test.Target': {'MERGE': {'second': 1}}})"
        ".deployment_id\n"
        "result = [a, b, attempt(lambda: client.cancel_local_deployment(deployment_id=b).message)]"
    )
    first, second, cancel = r
    assert isinstance(ok(cancel), str)
    status = d.poll(
        f"result = client.get_local_deployment_status(deployment_id='{second}').deployment.status",
        lambda s: s in ("SUCCEEDED", "FAILED", "CANCELED"),
    )
    assert status == "CANCELED"
    d.poll(
        f"result = client.get_local_deployment_status(deployment_id='{first}').deployment.status",
        lambda s: s == "SUCCEEDED",
    )
    d.run("state['hold'].close(); result = True")
    # Cancelling a finished deployment, unknown ids and bad arguments.
    r = d.run(
        f"result = [attempt(lambda: client.cancel_local_deployment(deployment_id='{first}') and True),"
        " attempt(lambda: client.cancel_local_deployment(deployment_id='no-such-deployment') and True),"
        " attempt(lambda: client.get_local_deployment_status(deployment_id='no-such-deployment') and True),"
        " attempt(lambda: client.create_local_deployment(group_name='bad:group') and True),"
        " attempt(lambda: client.create_local_deployment(recipe_directory_path='/no/such/recipes') and True),"
        " attempt(lambda: client.get_local_deployment_status(deployment_id='') and True)]"
    )
    assert [err(x) for x in r] == [
        "InvalidArgumentsError",
        "ResourceNotFoundError",
        "ResourceNotFoundError",
        "InvalidArgumentsError",
        "InvalidRecipeDirectoryPathError",
        "InvalidArgumentsError",
    ], r
    r = bare.run(
        "result = [attempt(lambda: client.create_local_deployment() and True),"
        f" attempt(lambda: client.get_local_deployment_status(deployment_id='{first}') and True),"
        " attempt(lambda: client.list_local_deployments() and True),"
        f" attempt(lambda: client.cancel_local_deployment(deployment_id='{first}') and True)]"
    )
    assert [err(x) for x in r] == ["UnauthorizedError"] * 4


def test_create_debug_password(d, bare):
    r = d.run(
        "r = client.create_debug_password()\n"
        "result = [r.username, len(r.password), r.password_expiration.timestamp() - time.time()]"
    )
    username, length, expires_in = r
    assert username == "debug" and length >= 16 and expires_in > 3600
    assert err(bare.run("result = attempt(lambda: client.create_debug_password() and True)")) == "UnauthorizedError"


# ---------------------------------------------------------------------------------------------
# Other kernel operations


def test_put_component_metric(core, d):
    m = core.drivers["aws.test.Metrics"]
    metric = "model.Metric(name={!r}, unit=model.MetricUnitType.COUNT, value={})"
    r = m.run(
        f"result = [attempt(lambda: client.put_component_metric(metrics=[{metric.format('requests', 5)}]) and True),"
        f" attempt(lambda: client.put_component_metric(metrics=[{metric.format('', 1)}]) and True),"
        f" attempt(lambda: client.put_component_metric(metrics=[{metric.format('x' * 40, 1)}]) and True),"
        f" attempt(lambda: client.put_component_metric(metrics=[{metric.format('neg', -1)}]) and True)]"
    )
    assert ok(r[0]) is True
    assert [err(x) for x in r[1:]] == ["InvalidArgumentsError"] * 3
    # Non-aws components may not put metrics at all.
    r = d.run(f"result = attempt(lambda: client.put_component_metric(metrics=[{metric.format('requests', 5)}]))")
    assert err(r) == "UnauthorizedError"


def test_validate_authorization_token_is_for_stream_manager_only(d):
    r = d.run(
        "result = [attempt(lambda: client.validate_authorization_token(token=os.environ['SVCUID']) and True),"
        " attempt(lambda: client.validate_authorization_token(token='') and True)]"
    )
    assert [err(x) for x in r] == ["UnauthorizedError", "UnauthorizedError"]


def test_operation_of_a_service_that_is_not_running(d):
    r = d.run(
        "result = [attempt(lambda: client.get_thing_shadow(thing_name='t', shadow_name='s') and True),"
        " attempt(lambda: client.get_secret_value(secret_id='s') and True)]"
    )
    assert [err(x) for x in r] == ["ServiceError", "ServiceError"], r
    assert "aws.greengrass.ShadowManager" in r[0]["message"], r[0]
    assert "aws.greengrass.SecretManager" in r[1]["message"], r[1]


CONNECTIONS = r'''
import awsiot.greengrasscoreipc as gg
clients, errors = [], []
for i in range(500):
    try:
        clients.append(gg.connect())
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
answers = 0
futures = []
for c in clients:
    op = c.new_get_configuration()
    op.activate(model.GetConfigurationRequest(key_path=["greeting"]))
    futures.append(op.get_response())
for f in futures:
    try:
        if f.result(60).value == {"greeting": "hello"}:
            answers += 1
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
for c in clients:
    c.close()
result = {"connected": len(clients), "answers": answers, "errors": errors[:5]}
'''


def test_500_concurrent_connections(peer):
    r = peer.run(CONNECTIONS, timeout=120)
    assert r == {"connected": 500, "answers": 500, "errors": []}, r
