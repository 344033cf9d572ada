"""The unmodified Stream Manager SDK in a component deployed on a real `lichen core run`.

The component depends on `aws.greengrass.StreamManager`, which the core runs in-process; it builds
`StreamManagerClient()` from its default environment (the token in
AWS_CONTAINER_AUTHORIZATION_TOKEN; the port the test configured through --update-config), creates a
stream, appends, reads back, checks that a wrong token is refused, and writes what it saw to a file.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import free_port, lichen_bin  # noqa: E402

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
    core = subprocess.Popen(
        [lichen_bin(), "core", "run", "--root", str(root)],
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
        config = {"aws.greengrass.StreamManager": {"MERGE": {"STREAM_MANAGER_SERVER_PORT": str(port)}}}
        r = subprocess.run(
            [
                lichen_bin(), "deployment", "create", "--wait", "--json", "--root", str(root),
                "--recipe-dir", str(recipes), "--artifact-dir", str(artifacts),
                "--merge", "test.StreamClient=1.0.0", "--update-config", json.dumps(config),
            ],
            capture_output=True, text=True, timeout=180,
        )
        assert r.returncode == 0, f"deployment failed: {r.stdout}\n{r.stderr}"
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
