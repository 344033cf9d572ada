"""Unmodified awsiotsdk GreengrassCoreIPCClientV2 against a Lichen IPC server with small bounds:
a stream beyond the connection's bound is refused alone, with a ServiceError the SDK raises, and
a connection beyond the component's bound is refused as an unknown token is."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from awsiot.eventstreamrpc import AccessDeniedError
from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage, ServiceError

from conftest import COMPONENTS, CONFIG, _server_binary, wait_for

MAX_STREAMS = 4


@pytest.fixture(scope="module")
def bounded_server():
    """Its own server (the shared one keeps the default bounds), with a bound of MAX_STREAMS
    streams per connection and 2 connections per component."""
    binary = _server_binary()
    env = dict(
        os.environ,
        LICHEN_IPC_MAX_STREAMS=str(MAX_STREAMS),
        LICHEN_IPC_MAX_CONNECTIONS_PER_COMPONENT="2",
    )
    with tempfile.TemporaryDirectory(prefix="lichen-ipc-limits-") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(CONFIG))
        socket = Path(tmp) / "ipc.socket"
        proc = subprocess.Popen(
            [binary, str(socket), str(config_path), *COMPONENTS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            line = proc.stdout.readline()
            assert line, "the IPC test server exited before printing its tokens"
            yield json.loads(line)
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def connect(bounded_server):
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    clients = []

    def make(component):
        os.environ["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"] = bounded_server["socket"]
        os.environ["SVCUID"] = bounded_server["tokens"][component]
        client = GreengrassCoreIPCClientV2()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def publish(client, topic, value):
    client.publish_to_topic(
        topic=topic, publish_message=PublishMessage(json_message=JsonMessage(message={"v": value}))
    )


def test_a_stream_beyond_the_bound_is_refused_alone_and_a_closed_one_frees_its_slot(connect):
    client = connect("com.example.Pub")
    got = {i: [] for i in range(MAX_STREAMS)}
    ops = []
    for i in range(MAX_STREAMS):
        _, op = client.subscribe_to_topic(
            topic=f"limits/{i}", on_stream_event=lambda e, i=i: got[i].append(e)
        )
        ops.append(op)

    with pytest.raises(ServiceError) as refused:
        client.subscribe_to_topic(topic="limits/extra", on_stream_event=lambda e: None)
    assert f"{MAX_STREAMS} streams" in refused.value.message, refused.value.message
    assert "close streams" in refused.value.message, refused.value.message

    # The connection and every open stream keep working.
    for i in range(MAX_STREAMS):
        publish(client, f"limits/{i}", i)
    assert wait_for(lambda: all(len(got[i]) == 1 for i in range(MAX_STREAMS)))
    assert [got[i][0].json_message.message for i in range(MAX_STREAMS)] == [
        {"v": i} for i in range(MAX_STREAMS)
    ]

    # Closing one frees its slot.
    ops[0].close().result(5)
    again = []
    client.subscribe_to_topic(topic="limits/again", on_stream_event=again.append)
    publish(client, "limits/again", "x")
    assert wait_for(lambda: len(again) == 1)
    assert again[0].json_message.message == {"v": "x"}


def test_a_connection_beyond_a_components_bound_is_rejected(connect):
    first = connect("com.example.Sub")
    connect("com.example.Sub")
    # Refused as an unknown token is: the SDK raises AccessDeniedError.
    with pytest.raises(AccessDeniedError):
        connect("com.example.Sub")
    # Another component is not affected.
    connect("com.example.Pub").publish_to_topic(
        topic="limits/other", publish_message=PublishMessage(json_message=JsonMessage(message={}))
    )
    # The component's accepted connections keep working.
    assert first.get_configuration(key_path=["greeting"]).value == {"greeting": "hello"}
