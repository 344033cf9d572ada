"""Security boundaries of the IPC a partly trusted component meets, on a real core with
unmodified awsiotsdk components (the drivers of core_support.py): it cannot widen its own
policy, cannot pin its configuration against deployments, cannot hold an update off for ever."""

import json

import pytest

ALL = {"operations": ["*"], "resources": ["*"]}
SPELLINGS = ["accessControl", "AccessControl", "ACCESSCONTROL", "accesscontrol"]


@pytest.fixture(scope="module")
def d(core):
    return core.drivers["test.Driver"]


@pytest.fixture(scope="module")
def peer(core):
    return core.drivers["test.Peer"]


def err(r):
    assert isinstance(r, dict) and "error" in r, f"expected an error, got {r}"
    return r["error"]


def ok(r):
    assert isinstance(r, dict) and "ok" in r, f"expected success, got {r}"
    return r["ok"]


def test_policy_widening_is_refused_in_every_casing(peer):
    """test.Peer holds a pubsub policy only; it tries to give itself the Cli service."""
    before = peer.run("result = client.get_configuration(key_path=['accessControl']).value")
    attempts = []
    for spelling in SPELLINGS:
        attempts.append((repr([spelling, "aws.greengrass.Cli", "test.Peer:cli:1"]), repr(ALL)))
        attempts.append((repr([spelling]), repr({"aws.greengrass.Cli": {"test.Peer:cli:1": ALL}})))
        attempts.append(("[]", repr({spelling: {"aws.greengrass.Cli": {"test.Peer:cli:1": ALL}}})))
    code = "now = datetime.datetime.now()\nresult = [" + ", ".join(
        f"attempt(lambda: client.update_configuration(key_path={path}, timestamp=now, value_to_merge={value}) and True)"
        for path, value in attempts
    ) + "]"
    results = peer.run(code)
    # First what matters: the component did not gain the Cli service.
    r = peer.run(
        "result = [attempt(lambda: client.create_local_deployment("
        "component_to_configuration={'test.Target': {'MERGE': {'escalated': True}}}) and True),"
        " attempt(lambda: client.list_components() and True)]"
    )
    assert [x.get("error") for x in r] == ["UnauthorizedError", "UnauthorizedError"], r
    assert [err(r) for r in results] == ["InvalidArgumentsError"] * len(attempts), list(zip(attempts, results))
    assert all("accessControl" in r["message"] for r in results), results
    assert peer.run("result = client.get_configuration(key_path=['accessControl']).value") == before


def test_a_future_timestamp_is_clamped_and_a_deployment_merge_wins(core, peer):
    r = peer.run(
        "year_3000 = datetime.datetime(3000, 1, 1)\n"
        "in_a_minute = datetime.datetime.now() + datetime.timedelta(seconds=60)\n"
        "result = [attempt(lambda: client.update_configuration(key_path=['pinned'], timestamp=year_3000,"
        " value_to_merge='component') and True),"
        # Recorded at the core's clock (plus a few seconds), the year-3000 write does not lock
        # the node: a write a minute ahead still counts as newer.
        " attempt(lambda: client.update_configuration(key_path=['pinned'], timestamp=in_a_minute,"
        " value_to_merge='later') and True)]"
    )
    assert [ok(x) for x in r] == [True, True], r
    assert peer.run("result = client.get_configuration(key_path=['pinned']).value") == {"pinned": "later"}
    code, out = core.deploy("--update-config", json.dumps({"test.Peer": {"MERGE": {"pinned": "deployed"}}}))
    assert code == 0, out
    assert peer.run("result = client.get_configuration(key_path=['pinned']).value") == {"pinned": "deployed"}


ALWAYS_DEFER = r'''
def always_defer(e):
    if e.pre_update_event is not None:
        dep = e.pre_update_event.deployment_id
        record('forever_pre', dep)
        record('forever_defer', attempt(lambda: client.defer_component_update(
            deployment_id=dep, message='busy', recheck_after_ms=100) and True))
    elif e.post_update_event is not None:
        record('forever_post', e.post_update_event.deployment_id)
state['always'] = client.subscribe_to_component_updates(on_stream_event=always_defer)[1]
result = True
'''

# crates/lichen/src/cmd/core/ipc_ops.rs: MAX_DEFERRALS
MAX_DEFERRALS = 10


def test_a_component_cannot_defer_an_update_for_ever(core, d):
    d.run(ALWAYS_DEFER)
    try:
        update = json.dumps({"test.Target": {"MERGE": {"deferredForEver": False}}})
        r = core.cli(
            "deployment", "create", "--wait", "--json", "--update-config", update,
            "--component-update-policy", "NOTIFY_COMPONENTS", "--update-timeout", "10",
            check=False, timeout=90,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        pre = d.run("result = recorded('forever_pre')")
        assert len(pre) == MAX_DEFERRALS + 1 and len(set(pre)) == 1, pre
        assert all(ok(x) for x in d.run("result = recorded('forever_defer')"))
        post = d.poll("result = recorded('forever_post')", lambda r: len(r) >= 1)
        assert post == [pre[0]]
        r = d.run("result = client.get_configuration(component_name='test.Target', key_path=['deferredForEver']).value")
        assert r == {"deferredForEver": False}
    finally:
        d.run("state['always'].close(); result = True")
