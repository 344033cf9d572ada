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
    # The last message on the peer's connection went out after wild/peer/x: once the
    # from-others subscription saw that one, it has seen all it will see.
    others = d.poll("result = recorded('others')", lambda r: len(r) >= 1)
    time.sleep(0.2)
    others = d.run("result = recorded('others')")
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
