"""Unmodified awsiotsdk 1.31.0 GreengrassCoreIPCClientV2 against the Lichen IPC server."""

import datetime
import os
import threading
import time

import pytest
from awsiot.greengrasscoreipc.model import (
    BinaryMessage,
    FailedUpdateConditionCheckError,
    InvalidArgumentsError,
    JsonMessage,
    PublishMessage,
    ReceiveMode,
    ResourceNotFoundError,
    ServiceError,
    UnauthorizedError,
)

from conftest import wait_for


class Collector:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, event):
        with self.lock:
            self.events.append(event)

    def snapshot(self):
        with self.lock:
            return list(self.events)


def json_publish(message):
    return PublishMessage(json_message=JsonMessage(message=message))


def test_json_and_binary_pubsub_between_two_clients(make_client):
    pub = make_client("com.example.Pub")
    sub = make_client("com.example.Sub")
    got = Collector()
    _, op = sub.subscribe_to_topic(topic="test/topic", on_stream_event=got)
    pub.publish_to_topic(topic="test/topic", publish_message=json_publish({"hello": "world"}))
    assert wait_for(lambda: len(got.snapshot()) == 1)
    event = got.snapshot()[0]
    assert event.json_message.message == {"hello": "world"}
    assert event.json_message.context.topic == "test/topic"

    bin_got = Collector()
    _, bin_op = sub.subscribe_to_topic(topic="binary/topic", on_stream_event=bin_got)
    pub.publish_to_topic(
        topic="binary/topic",
        publish_message=PublishMessage(binary_message=BinaryMessage(message=b"\x00\x01hello")),
    )
    assert wait_for(lambda: len(bin_got.snapshot()) == 1)
    assert bin_got.snapshot()[0].binary_message.message == b"\x00\x01hello"
    assert bin_got.snapshot()[0].binary_message.context.topic == "binary/topic"
    op.close().result(5)
    bin_op.close().result(5)
    # A round trip on the same connection: the server has read the close by then.
    sub.get_configuration(key_path=["greeting"])

    # After closing, publishes are not delivered to the closed stream.
    pub.publish_to_topic(topic="test/topic", publish_message=json_publish({"n": 2}))
    time.sleep(0.3)
    assert len(got.snapshot()) == 1


def test_wildcards_and_receive_modes(make_client):
    sub = make_client("com.example.Sub")
    pub = make_client("com.example.Pub")
    plus = Collector()
    hash_ = Collector()
    own_all = Collector()
    own_default = Collector()
    sub.subscribe_to_topic(topic="sensors/+/temp", on_stream_event=plus)
    sub.subscribe_to_topic(topic="sensors/#", on_stream_event=hash_)
    sub.subscribe_to_topic(
        topic="sensors/#", on_stream_event=own_all, receive_mode=ReceiveMode.RECEIVE_ALL_MESSAGES
    )
    # Default for wildcard filters: messages from others only.
    sub.subscribe_to_topic(topic="sensors/+/temp", on_stream_event=own_default)

    pub.publish_to_topic(topic="sensors/a/temp", publish_message=json_publish({"v": 1}))
    pub.publish_to_topic(topic="sensors/a/humidity", publish_message=json_publish({"v": 2}))
    sub.publish_to_topic(topic="sensors/b/temp", publish_message=json_publish({"v": 3}))

    assert wait_for(lambda: len(own_all.snapshot()) == 3)
    assert wait_for(lambda: len(hash_.snapshot()) == 2)
    time.sleep(0.2)
    assert [e.json_message.message["v"] for e in plus.snapshot()] == [1]
    assert [e.json_message.message["v"] for e in hash_.snapshot()] == [1, 2]
    assert [e.json_message.message["v"] for e in own_all.snapshot()] == [1, 2, 3]
    assert [e.json_message.context.topic for e in own_all.snapshot()] == [
        "sensors/a/temp",
        "sensors/a/humidity",
        "sensors/b/temp",
    ]
    assert [e.json_message.message["v"] for e in own_default.snapshot()] == [1]

    # Exact topic: the default includes our own messages; FROM_OTHERS excludes them.
    mine_default = Collector()
    mine_others = Collector()
    sub.subscribe_to_topic(topic="mine", on_stream_event=mine_default)
    sub.subscribe_to_topic(
        topic="mine",
        on_stream_event=mine_others,
        receive_mode=ReceiveMode.RECEIVE_MESSAGES_FROM_OTHERS,
    )
    sub.publish_to_topic(topic="mine", publish_message=json_publish({"v": 4}))
    assert wait_for(lambda: len(mine_default.snapshot()) == 1)
    time.sleep(0.2)
    assert mine_others.snapshot() == []


def test_get_and_update_configuration_with_event(make_client):
    client = make_client("com.example.Sub")
    whole = client.get_configuration()
    assert whole.component_name == "com.example.Sub"
    assert whole.value["greeting"] == "hello"
    assert "accessControl" in whole.value
    leaf = client.get_configuration(key_path=["nested", "a"])
    assert leaf.value == {"a": 1}
    container = client.get_configuration(key_path=["nested", "b"])
    assert container.value == {"c": True}
    other = client.get_configuration(component_name="com.example.NoPolicy", key_path=["answer"])
    assert other.value == {"answer": 42}
    with pytest.raises(ResourceNotFoundError):
        client.get_configuration(key_path=["no", "such", "key"])

    events = Collector()
    _, op = client.subscribe_to_configuration_update(key_path=["nested"], on_stream_event=events)
    now = datetime.datetime.now()
    client.update_configuration(key_path=["nested"], timestamp=now, value_to_merge={"a": 2, "d": "new"})
    assert client.get_configuration(key_path=["nested", "a"]).value == {"a": 2}
    assert wait_for(lambda: len(events.snapshot()) == 2)
    paths = sorted(tuple(e.configuration_update_event.key_path) for e in events.snapshot())
    assert paths == [("nested", "a"), ("nested", "d")]
    assert all(
        e.configuration_update_event.component_name == "com.example.Sub" for e in events.snapshot()
    )
    op.close()

    with pytest.raises(FailedUpdateConditionCheckError):
        client.update_configuration(key_path=["nested"], timestamp=now - datetime.timedelta(seconds=100), value_to_merge={"a": 3})
    assert client.get_configuration(key_path=["nested", "a"]).value == {"a": 2}

    with pytest.raises(InvalidArgumentsError):
        client.update_configuration(
            key_path=["accessControl"], timestamp=datetime.datetime.now(), value_to_merge={"x": 1}
        )


def test_unauthorized_without_policy(make_client):
    client = make_client("com.example.NoPolicy")
    with pytest.raises(UnauthorizedError) as err:
        client.publish_to_topic(topic="test/topic", publish_message=json_publish({}))
    assert "com.example.NoPolicy" in err.value.message
    with pytest.raises(UnauthorizedError):
        client.subscribe_to_topic(topic="test/topic", on_stream_event=lambda e: None)
    # A policy that does not cover the resource.
    sub = make_client("com.example.Sub")
    with pytest.raises(UnauthorizedError):
        sub.publish_to_topic(topic="other/topic", publish_message=json_publish({}))
    # The connection still works afterwards.
    assert client.get_configuration(key_path=["answer"]).value == {"answer": 42}


def test_bad_arguments(make_client):
    client = make_client("com.example.Pub")
    for topic in ["a/+", "a/#", "a/*"]:
        with pytest.raises(InvalidArgumentsError):
            client.publish_to_topic(topic=topic, publish_message=json_publish({}))
    with pytest.raises(InvalidArgumentsError):
        client.publish_to_topic(topic="a/b", publish_message=PublishMessage())
    with pytest.raises(InvalidArgumentsError):
        client.subscribe_to_topic(topic="", on_stream_event=lambda e: None)


def test_unregistered_operation_answers_service_error(make_client):
    client = make_client("com.example.Pub")
    with pytest.raises(ServiceError) as err:
        client.get_component_details(component_name="com.example.Sub")
    assert "not supported" in err.value.message
    # The connection is still usable.
    client.publish_to_topic(topic="test/x", publish_message=json_publish({}))


def test_wrong_token_is_rejected(make_client):
    with pytest.raises(Exception):
        make_client("com.example.Pub", token="WRONGTOKEN000000")


def test_500_concurrent_connections(server):
    """500 SDK connections open at once (sharing one event loop group), each publishing."""
    from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup, SocketDomain, SocketOptions
    from awsiot.eventstreamrpc import Connection, LifecycleHandler, MessageAmendment
    from awsiot.greengrasscoreipc.client import GreengrassCoreIPCClient
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    elg = EventLoopGroup(num_threads=2)
    bootstrap = ClientBootstrap(elg, DefaultHostResolver(elg))
    options = SocketOptions()
    options.domain = SocketDomain.Local
    token = server["tokens"]["com.example.Pub"]

    observer = None
    os.environ["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"] = server["socket"]
    os.environ["SVCUID"] = server["tokens"]["com.example.Sub"]
    observer = GreengrassCoreIPCClientV2()
    got = Collector()
    observer.subscribe_to_topic(topic="test/load", on_stream_event=got)

    connections = []
    futures = []
    for _ in range(500):
        conn = Connection(
            host_name=server["socket"],
            port=0,
            bootstrap=bootstrap,
            socket_options=options,
            connect_message_amender=MessageAmendment.create_static_authtoken_amender(token),
        )
        futures.append(conn.connect(LifecycleHandler()))
        connections.append(conn)
    for f in futures:
        f.result(30)
    clients = [GreengrassCoreIPCClientV2(client=GreengrassCoreIPCClient(c)) for c in connections]
    try:
        pending = [
            c.publish_to_topic_async(topic="test/load", publish_message=json_publish({"i": i}))
            for i, c in enumerate(clients)
        ]
        for p in pending:
            p.result(30)
        assert wait_for(lambda: len(got.snapshot()) == 500, timeout=30)
        assert sorted(e.json_message.message["i"] for e in got.snapshot()) == list(range(500))
    finally:
        for c in clients:
            c.close()
        observer.close()
