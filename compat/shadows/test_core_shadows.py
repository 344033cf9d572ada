"""aws.greengrass.ShadowManager on a real core: the four IPC shadow operations from unmodified
awsiotsdk components (with and without the policy), the `$aws/things/…/shadow` topics on local
pub/sub, and a paho client device using them through the client-device broker and the bridge."""

import json
import time

import pytest
from core_shadows_support import THING, certs, device, setup, wait_for  # noqa: F401


@pytest.fixture(scope="module")
def app(setup):
    return setup["core"].drivers["test.ShadowApp"]


@pytest.fixture(scope="module")
def other(setup):
    return setup["core"].drivers["test.OtherThing"]


@pytest.fixture(scope="module")
def bare(setup):
    return setup["core"].drivers["test.NoShadow"]


def ok(r):
    assert isinstance(r, dict) and "ok" in r, f"expected success, got {r}"
    return r["ok"]


def err(r):
    assert isinstance(r, dict) and "error" in r, f"expected an error, got {r}"
    return r["error"]


def update(thing, shadow, doc):
    return (
        f"result = attempt(lambda: json.loads(client.update_thing_shadow(thing_name={thing!r}, "
        f"shadow_name={shadow!r}, payload=json.dumps({doc!r}).encode()).payload))"
    )


def get(thing, shadow):
    return (
        f"result = attempt(lambda: json.loads(client.get_thing_shadow(thing_name={thing!r}, "
        f"shadow_name={shadow!r}).payload))"
    )


def delete(thing, shadow):
    return (
        f"result = attempt(lambda: json.loads(client.delete_thing_shadow(thing_name={thing!r}, "
        f"shadow_name={shadow!r}).payload))"
    )


def test_update_get_delete_classic_over_ipc(app):
    a = ok(app.run(update(THING, "", {"state": {"reported": {"temp": 21}, "desired": {"temp": 25}}, "clientToken": "t1"})))
    assert a["state"] == {"reported": {"temp": 21}, "desired": {"temp": 25}}
    assert a["clientToken"] == "t1"
    version = a["version"]
    assert a["metadata"]["reported"]["temp"]["timestamp"] > 0
    g = ok(app.run(get(THING, "")))
    assert g["state"]["delta"] == {"temp": 25}
    assert g["version"] == version
    # A stale version is a conflict; the current one is accepted.
    assert err(app.run(update(THING, "", {"state": {"reported": {"temp": 22}}, "version": version - 1 if version > 1 else version + 5}))) == "ConflictError"
    a = ok(app.run(update(THING, "", {"state": {"reported": {"temp": 25}}, "version": version})))
    assert a["version"] == version + 1
    assert "delta" not in ok(app.run(get(THING, "")))["state"]
    d = ok(app.run(delete(THING, "")))
    assert d["version"] == version + 1
    assert err(app.run(get(THING, ""))) == "ResourceNotFoundError"
    assert err(app.run(delete(THING, ""))) == "ResourceNotFoundError"


def test_bad_payloads_are_invalid_arguments(app):
    assert err(app.run(update(THING, "", {"nostate": 1}))) == "InvalidArgumentsError"
    big = {"state": {"reported": {"x": "y" * 9000}}}
    assert err(app.run(update(THING, "", big))) == "InvalidArgumentsError"
    r = app.run(
        f"result = attempt(lambda: client.update_thing_shadow(thing_name={THING!r}, shadow_name='n', payload=b'not json'))"
    )
    assert err(r) == "InvalidArgumentsError"
    assert err(app.run(get(THING, "bad name!"))) in ("InvalidArgumentsError", "UnauthorizedError")


def test_named_shadows_and_their_list_with_pages(app):
    names = [f"n{i:02d}" for i in range(5)]
    for n in names:
        ok(app.run(update(THING, n, {"state": {"reported": {"n": n}}})))
    pages, token = [], None
    while True:
        r = ok(app.run(
            f"r = client.list_named_shadows_for_thing(thing_name={THING!r}, page_size=2, next_token={token!r})\n"
            "result = attempt(lambda: {'results': r.results, 'next': r.next_token, 'ts': r.timestamp})"
        ))
        pages.append(r["results"])
        token = r["next"]
        if not token:
            break
    assert [n for p in pages for n in p if n.startswith("n")] == names
    assert all(len(p) <= 2 for p in pages)
    # A forged token is refused.
    r = app.run(
        f"result = attempt(lambda: client.list_named_shadows_for_thing(thing_name={THING!r}, next_token='2.deadbeef'))"
    )
    assert err(r) == "InvalidArgumentsError"
    ok(app.run(delete(THING, "n00")))
    r = ok(app.run(f"result = attempt(lambda: client.list_named_shadows_for_thing(thing_name={THING!r}).results)"))
    assert "n00" not in r and "n01" in r


def test_refused_without_the_policy(app, other, bare):
    for code in (get(THING, ""), update(THING, "", {"state": {}}), delete(THING, "x")):
        assert err(bare.run(code)) == "UnauthorizedError"
        assert err(other.run(code)) == "UnauthorizedError"
    r = other.run(f"result = attempt(lambda: client.list_named_shadows_for_thing(thing_name={THING!r}))")
    assert err(r) == "UnauthorizedError"
    # Its own resource works.
    ok(other.run(update("other-thing", "", {"state": {"reported": {"ok": True}}})))
    # The named-shadow resource of the app's policy does not cover another thing.
    assert err(app.run(get("other-thing", ""))) == "UnauthorizedError"


def test_local_pubsub_topics(app):
    """A component uses the shadow topics with PublishToTopic/SubscribeToTopic."""
    base = f"$aws/things/{THING}/shadow/name/topics"
    app.run(
        "def on(e):\n"
        "    m = e.binary_message\n"
        "    record('topics', {'topic': m.context.topic, 'body': json.loads(bytes(m.message))})\n"
        f"state['sub'] = client.subscribe_to_topic(topic={base + '/#'!r}, on_stream_event=on)[1]\n"
        "result = True"
    )
    pub = (
        "result = attempt(lambda: client.publish_to_topic(topic={t!r}, publish_message=model.PublishMessage("
        "binary_message=model.BinaryMessage(message=json.dumps({b!r}).encode()))) and True)"
    )
    app.run(pub.format(t=base + "/update", b={"state": {"desired": {"on": True}}, "clientToken": "c1"}))
    got = lambda: {m["topic"]: m["body"] for m in app.run("result = recorded('topics')")}
    seen = wait_for(lambda: (lambda g: g if f"{base}/update/delta" in g and f"{base}/update/documents" in g else None)(got()), 20, "accepted, delta and documents")
    assert seen[f"{base}/update/accepted"]["clientToken"] == "c1"
    assert seen[f"{base}/update/delta"]["state"] == {"on": True}
    assert seen[f"{base}/update/documents"]["current"]["state"]["desired"] == {"on": True}
    app.run(pub.format(t=base + "/get", b={"clientToken": "g1"}))
    g = wait_for(lambda: got().get(f"{base}/get/accepted"), 20, "get/accepted")
    assert g["state"]["delta"] == {"on": True} and g["clientToken"] == "g1"
    app.run(pub.format(t=base + "/update", b={"state": {"desired": {"on": False}}, "version": 999}))
    r = wait_for(lambda: got().get(f"{base}/update/rejected"), 20, "update/rejected")
    assert r["code"] == 409 and r["message"] == "Version conflict"
    # The IPC view is the same document.
    assert ok(app.run(get(THING, "topics")))["state"]["desired"] == {"on": True}


def test_client_device_uses_shadow_topics_through_the_bridge(device, app):
    dev = device()
    thing = "dev-shadow"
    base = f"$aws/things/{thing}/shadow"
    dev.subscribe(f"{base}/#")
    # The bridge's subscription is in place once the device sees answers: retry the first update.
    for i in range(20):
        dev.publish(f"{base}/update", {"state": {"reported": {"color": "red"}}, "clientToken": f"d{i}"})
        try:
            wait_for(lambda: dev.on(f"{base}/update/accepted"), 2, "update/accepted at the device")
            break
        except AssertionError:
            continue
    acc = dev.on(f"{base}/update/accepted")
    assert acc and acc[0]["state"] == {"reported": {"color": "red"}}
    dev.publish(f"{base}/get", {"clientToken": "g"})
    g = wait_for(lambda: dev.on(f"{base}/get/accepted"), 20, "get/accepted at the device")
    assert g[0]["state"]["reported"] == {"color": "red"} and g[0]["clientToken"] == "g"
    # A component sets desired through IPC (its policy does not cover dev-shadow: refused) ...
    assert err(app.run(update(thing, "", {"state": {"desired": {"color": "blue"}}}))) == "UnauthorizedError"
    # ... so the device asks itself, and gets the delta.
    dev.publish(f"{base}/update", {"state": {"desired": {"color": "blue"}}})
    delta = wait_for(lambda: dev.on(f"{base}/update/delta"), 20, "update/delta at the device")
    assert delta[-1]["state"] == {"color": "blue"}
    dev.publish(f"{base}/delete", {})
    wait_for(lambda: dev.on(f"{base}/delete/accepted"), 20, "delete/accepted at the device")
    dev.publish(f"{base}/get", {"clientToken": "g2"})
    rej = wait_for(lambda: dev.on(f"{base}/get/rejected"), 20, "get/rejected at the device")
    assert rej[0]["code"] == 404


def test_local_rate_limit(app):
    """More than maxLocalRequestsPerSecondPerThing (50 here) in one burst: some are throttled."""
    r = app.run(
        "out = []\n"
        f"for i in range(120): out.append(attempt(lambda: client.get_thing_shadow(thing_name={THING!r}, shadow_name='n01') and 'ok'))\n"
        "result = out"
    )
    throttled = [x for x in r if x.get("error") == "ServiceError"]
    assert throttled, "no request was throttled"
    assert "Too Many Requests" in throttled[0]["message"]
    assert any("ok" in x for x in r)
    time.sleep(1.5)
