"""The unmodified Stream Manager SDK in a component deployed on a real `lichen core run`.

The component depends on `aws.greengrass.StreamManager`, which the core runs in-process; it builds
`StreamManagerClient()` from its default environment (the token in
AWS_CONTAINER_AUTHORIZATION_TOKEN; the port the test configured through --update-config), creates a
stream, appends, reads back, checks that a wrong token is refused, and writes what it saw to a file.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import free_port, lichen_bin, wait_for, wait_listening  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("LICHEN_PYTHON") or sys.executable

CLIENT = r'''
import json, os, sys, traceback
out, port = sys.argv[1], sys.argv[2]
os.environ["STREAM_MANAGER_SERVER_PORT"] = port
result = {}
try:
    from stream_manager import (MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull,
                                StreamManagerClient)
    client = StreamManagerClient()
    client.create_message_stream(MessageStreamDefinition(
        name="core-stream", strategy_on_full=StrategyOnFull.OverwriteOldestData))
    result["seqs"] = [client.append_message("core-stream", f"m{i}".encode()) for i in range(10)]
    msgs = client.read_messages("core-stream", ReadMessagesOptions(
        desired_start_sequence_number=0, min_message_count=10, max_message_count=10,
        read_timeout_millis=5000))
    result["payloads"] = [m.payload.decode() for m in msgs]
    result["streams"] = client.list_streams()
    client.close()
    os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "not-a-component-token"
    try:
        StreamManagerClient().list_streams()
        result["bad_token"] = "accepted"
    except Exception as e:
        result["bad_token"] = type(e).__name__
except Exception:
    result["error"] = traceback.format_exc()
with open(out + ".tmp", "w") as f:
    json.dump(result, f)
os.rename(out + ".tmp", out)
'''






@contextlib.contextmanager
def running_core(root, args=()):
    """A `lichen core run` on `root` (with `args`), ready; on exit it is stopped and whatever it
    started is killed."""
    core = subprocess.Popen(
        [lichen_bin(), "core", "run", "--root", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "LICHEN_LOG": "info"},
        # Its own process group, so teardown reaches the components it started too.
        start_new_session=True,
    )
    ready = threading.Event()

    def drain():
        # Reads every line, so a core logging to a full pipe never blocks.
        for line in core.stdout:
            if "ready in" in line:
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not ready.wait(0.2):
            assert core.poll() is None and time.monotonic() < deadline, "core did not become ready"
        yield core
    finally:
        if core.poll() is None:
            core.terminate()
            try:
                core.wait(timeout=30)
            except subprocess.TimeoutExpired:
                core.kill()
                core.wait()
        # Components the core left behind, if any.
        try:
            os.killpg(core.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def deploy(root, merge, config, recipes=None, artifacts=None):
    """`lichen deployment create --wait` with `merge` (NAME=VERSION) and `config`
    (--update-config); fails the test when the deployment does not succeed."""
    cmd = [lichen_bin(), "deployment", "create", "--wait", "--json", "--root", str(root)]
    if recipes:
        cmd += ["--recipe-dir", str(recipes), "--artifact-dir", str(artifacts)]
    cmd += ["--merge", merge, "--update-config", json.dumps(config)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"deployment failed: {r.stdout}\n{r.stderr}"


def test_sdk_component_on_a_real_core(tmp_path):
    root, recipes, artifacts = tmp_path / "root", tmp_path / "recipes", tmp_path / "artifacts"
    recipes.mkdir()
    art = artifacts / "test.StreamClient" / "1.0.0"
    art.mkdir(parents=True)
    (art / "client.py").write_text(CLIENT)
    out = tmp_path / "result.json"
    port = free_port()
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "test.StreamClient",
        "ComponentVersion": "1.0.0",
        "ComponentDependencies": {
            "aws.greengrass.StreamManager": {"VersionRequirement": ">=2.0.0", "DependencyType": "HARD"}
        },
        "Manifests": [
            {"Platform": {"os": "*"}, "Lifecycle": {"Run": f"{PYTHON} -u {{artifacts:path}}/client.py {out} {port}"}}
        ],
    }
    (recipes / "test.StreamClient.json").write_text(json.dumps(recipe))
    with running_core(root):
        config = {"aws.greengrass.StreamManager": {"MERGE": {"STREAM_MANAGER_SERVER_PORT": str(port)}}}
        deploy(root, "test.StreamClient=1.0.0", config, recipes, artifacts)
        deadline = time.monotonic() + 90
        while not out.exists():
            log = root / "logs" / "lichen.log"
            assert time.monotonic() < deadline, "component wrote no result:\n" + (
                log.read_text()[-4000:] if log.exists() else ""
            )
            time.sleep(0.1)
        result = json.loads(out.read_text())
        print("component saw:", result)
        assert "error" not in result, result["error"]
        assert result["seqs"] == list(range(10))
        assert result["payloads"] == [f"m{i}" for i in range(10)]
        assert result["streams"] == ["core-stream"]
        assert result["bad_token"] != "accepted"
        # The core records the port it bound where GetConfiguration finds it.
        cfg = subprocess.run(
            [lichen_bin(), "component", "details", "--name", "aws.greengrass.StreamManager", "--root", str(root)],
            capture_output=True, text=True, timeout=60,
        )
        if cfg.returncode == 0:
            assert str(port) in cfg.stdout
        # The stream lives in the default store directory under the core root.
        assert (root / "work" / "aws.greengrass.StreamManager" / "core-stream").is_dir()


def test_the_stream_manager_logs_to_its_own_file_at_its_log_level(tmp_path):
    from stream_manager import MessageStreamDefinition, StrategyOnFull, StreamManagerClient

    root = tmp_path / "root"
    port = free_port()
    sm_log = root / "logs" / "aws.greengrass.StreamManager.log"
    core_log = root / "logs" / "lichen.log"

    def settings(level):
        return {
            "aws.greengrass.StreamManager": {
                "MERGE": {
                    "STREAM_MANAGER_SERVER_PORT": str(port),
                    "STREAM_MANAGER_AUTHENTICATE_CLIENT": "false",
                    "LOG_LEVEL": level,
                    "JVM_ARGS": "-Xmx64m",
                }
            }
        }

    def create(name):
        c = StreamManagerClient(port=port)
        c.create_message_stream(
            MessageStreamDefinition(name=name, strategy_on_full=StrategyOnFull.OverwriteOldestData)
        )
        c.close()

    def starts():
        text = core_log.read_text() if core_log.exists() else ""
        return sum(1 for line in text.splitlines() if "aws.greengrass.StreamManager" in line and "started" in line)

    with running_core(root):
        deploy(root, "aws.greengrass.StreamManager=2.2.1", settings("DEBUG"))
        wait_listening(port)
        assert not sm_log.exists() or "stream created" not in sm_log.read_text()
        create("loud")
        wait_for(lambda: sm_log.exists() and "client disconnected" in sm_log.read_text(), 30, "the DEBUG line of a disconnect")
        text = sm_log.read_text()
        assert "stream created" in text and "stream=loud" in text, text
        assert "DEBUG" in text and "client connected" in text, text
        assert "stream created" not in core_log.read_text(), "the stream manager's lines belong to its own log"

        # WARN: a refused connection is logged, the info and debug lines before it are not.
        deploy(root, "aws.greengrass.StreamManager=2.2.1", settings("WARN"))
        wait_for(lambda: starts() >= 2, 30, "the stream manager restarted with its new configuration")
        wait_listening(port)
        seen = len(sm_log.read_text())
        create("quiet")
        StreamManagerClient._StreamManagerClient__CONNECT_VERSION = 2
        try:
            try:
                StreamManagerClient(port=port).close()
            except Exception:
                pass
        finally:
            StreamManagerClient._StreamManagerClient__CONNECT_VERSION = 1
        wait_for(lambda: "connection refused" in sm_log.read_text()[seen:], 30, "the WARN line of a refused connection")
        later = sm_log.read_text()[seen:]
        assert "quiet" not in later and "client connected" not in later, later
