"""Fixtures: a Lichen IPC test server and unmodified awsiotsdk GreengrassCoreIPCClientV2 clients."""

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PUBSUB_ALL = {
    "aws.greengrass.ipc.pubsub": {
        "policy:pubsub:1": {
            "operations": ["*"],
            "resources": ["*"],
        }
    }
}

CONFIG = {
    "services": {
        "com.example.Pub": {"configuration": {"accessControl": PUBSUB_ALL}},
        "com.example.Sub": {
            "configuration": {
                "accessControl": {
                    "aws.greengrass.ipc.pubsub": {
                        "com.example.Sub:pubsub:1": {
                            "operations": [
                                "aws.greengrass#PublishToTopic",
                                "aws.greengrass#SubscribeToTopic",
                            ],
                            "resources": ["test/*", "sensors/*", "mine", "binary/topic"],
                        }
                    }
                },
                "greeting": "hello",
                "nested": {"a": 1, "b": {"c": True}},
            }
        },
        "com.example.NoPolicy": {"configuration": {"answer": 42}},
    }
}

COMPONENTS = ["com.example.Pub", "com.example.Sub", "com.example.NoPolicy"]


def _server_binary() -> str:
    env = os.environ.get("LICHEN_IPC_TEST_SERVER")
    if env:
        return env
    subprocess.run(
        ["cargo", "build", "-q", "-p", "lichen-ipc", "--example", "ipc_test_server"],
        cwd=REPO,
        check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return str(target / "debug" / "examples" / "ipc_test_server")


@pytest.fixture(scope="session")
def server():
    """Starts the server under a temp dir; yields {"socket", "tokens"}; kills it at the end."""
    binary = _server_binary()
    with tempfile.TemporaryDirectory(prefix="lichen-ipc-") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(CONFIG))
        socket = Path(tmp) / "ipc.socket"
        proc = subprocess.Popen(
            [binary, str(socket), str(config_path), *COMPONENTS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()
            assert line, "the IPC test server exited before printing its tokens"
            info = json.loads(line)
            yield info
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def make_client(server):
    """make_client(component) -> GreengrassCoreIPCClientV2 connected as that component."""
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    clients = []

    def make(component: str, token: str = None):
        os.environ["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"] = server["socket"]
        os.environ["SVCUID"] = token if token is not None else server["tokens"][component]
        client = GreengrassCoreIPCClientV2()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def wait_for(predicate, timeout=10.0):
    """Polls until predicate() is true; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@pytest.fixture(scope="session")
def core(tmp_path_factory):
    """A real `lichen core run` with the driver components of core_support deployed."""
    from core_support import start_core

    c = start_core(tmp_path_factory)
    try:
        yield c
    finally:
        c.stop()
        if os.environ.get("LICHEN_KEEP_LOG"):
            print(c.log())
