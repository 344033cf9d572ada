"""S3 export tasks read their input file with the privileges of the component that appended them.

A real `lichen core run` as root, with `runWithDefault.posixUser` set to `nobody`, runs an
unmodified Stream Manager SDK component (so as `nobody`). The component appends two S3 export
tasks: a file only root may read (mode 0600) and a file anyone may read. The first must fail with
a permission error in its status and never reach the (moto) bucket; the second is uploaded.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lichen_support import free_port  # noqa: E402
from test_core import PYTHON, deploy, running_core  # noqa: E402
from test_exporters import boto, moto  # noqa: E402,F401  (moto is a fixture)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the core must run as root to run a component as another user"
)

CLIENT = r'''
import json, os, sys, traceback
out, port, secret, public = sys.argv[1:5]
os.environ["STREAM_MANAGER_SERVER_PORT"] = port
result = {"uid": os.getuid()}
try:
    from stream_manager import (ExportDefinition, MessageStreamDefinition, Persistence,
                                ReadMessagesOptions, S3ExportTaskDefinition,
                                S3ExportTaskExecutorConfig, StatusConfig, StatusLevel,
                                StatusMessage, StrategyOnFull, StreamManagerClient)
    from stream_manager.util import Util
    import time
    client = StreamManagerClient()
    client.create_message_stream(MessageStreamDefinition(
        name="status", strategy_on_full=StrategyOnFull.OverwriteOldestData,
        persistence=Persistence.Memory))
    client.create_message_stream(MessageStreamDefinition(
        name="tasks", strategy_on_full=StrategyOnFull.OverwriteOldestData,
        export_definition=ExportDefinition(s3_task_executor=[S3ExportTaskExecutorConfig(
            identifier="s3", status_config=StatusConfig(
                status_level=StatusLevel.INFO, status_stream_name="status"))])))
    seqs = {}
    for name, path in (("secret", secret), ("public", public)):
        task = S3ExportTaskDefinition(input_url="file://" + path, bucket="lichen-bucket",
                                      key=name + ".bin")
        seqs[name] = client.append_message("tasks", Util.validate_and_serialize_to_json_bytes(task))
    done = {}
    deadline = time.monotonic() + 90
    while len(done) < 2 and time.monotonic() < deadline:
        msgs = client.read_messages("status", ReadMessagesOptions(
            desired_start_sequence_number=0, min_message_count=1, max_message_count=100,
            read_timeout_millis=1000))
        for m in msgs:
            s = Util.deserialize_json_bytes_to_obj(m.payload, StatusMessage)
            if s.status.name in ("Success", "Failure"):
                done[s.status_context.sequence_number] = [s.status.name, s.message]
    result["statuses"] = {name: done.get(seq) for name, seq in seqs.items()}
    client.close()
except Exception:
    result["error"] = traceback.format_exc()
with open(out + ".tmp", "w") as f:
    json.dump(result, f)
os.rename(out + ".tmp", out)
'''


def interpreter_for(user, base):
    """A Python that `user` can run with the SDK importable: (argv prefix, PYTHONPATH). The
    venv's interpreter and site-packages may live where only root can reach them (e.g. under
    /root), so the SDK and what it needs are copied into `base`, which the user can read."""
    import importlib.metadata

    site = base / "site"
    for dist in ("stream-manager", "cbor2"):
        for f in importlib.metadata.distribution(dist).files or []:
            src = Path(f.locate())
            if ".." not in f.parts and src.is_file():
                dst = site / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)
    for d in [site, *site.rglob("*")]:
        d.chmod(0o755 if d.is_dir() else 0o644)
    candidates = [PYTHON, os.path.realpath(PYTHON), shutil.which("python3"), "/usr/bin/python3"]
    for exe in dict.fromkeys(c for c in candidates if c):
        try:
            ok = subprocess.run(
                [exe, "-c", "import stream_manager, cbor2"],
                user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd="/",
                capture_output=True, timeout=60,
            ).returncode == 0
        except OSError:
            ok = False
        if ok:
            return exe, str(site)
    pytest.skip(f"no Python that user {user.pw_name} may run imports the Stream Manager SDK from {site}")


@pytest.fixture
def world_readable_dir():
    # pytest's tmp_path lives under a 0700 directory of root's: the component user could not
    # reach its own script there.
    d = Path(tempfile.mkdtemp(prefix="lichen-s3-privileges-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_s3_export_reads_the_input_file_as_the_component_user(world_readable_dir, moto):
    base = world_readable_dir
    nobody = pwd.getpwnam("nobody")
    python, site = interpreter_for(nobody, base)
    s3 = boto("s3", moto)
    s3.create_bucket(Bucket="lichen-bucket")

    secret = base / "secret.bin"
    secret.write_bytes(b"only root may read this")
    secret.chmod(0o600)
    public = base / "public.bin"
    public.write_bytes(os.urandom(2000))
    public.chmod(0o644)
    (base / "client.py").write_text(CLIENT)
    (base / "client.py").chmod(0o644)
    outdir = base / "out"
    outdir.mkdir()
    os.chown(outdir, nobody.pw_uid, nobody.pw_gid)
    out = outdir / "result.json"

    root = base / "root"
    root.mkdir(mode=0o755)
    core_config = base / "config.json"
    core_config.write_text(json.dumps({
        "services": {"aws.greengrass.Nucleus": {"configuration": {"runWithDefault": {"posixUser": "nobody"}}}}
    }))
    recipes = base / "recipes"
    recipes.mkdir()
    (base / "artifacts").mkdir()
    port = free_port()
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "test.S3TaskClient",
        "ComponentVersion": "1.0.0",
        "ComponentDependencies": {
            "aws.greengrass.StreamManager": {"VersionRequirement": ">=2.0.0", "DependencyType": "HARD"}
        },
        "Manifests": [
            {
                "Platform": {"os": "*"},
                "Lifecycle": {
                    "Run": f"PYTHONPATH={site} {python} -u {base}/client.py {out} {port} {secret} {public}"
                },
            }
        ],
    }
    (recipes / "test.S3TaskClient.json").write_text(json.dumps(recipe))
    settings = {
        "STREAM_MANAGER_SERVER_PORT": str(port),
        "STREAM_MANAGER_EXPORTER_S3_ENDPOINT": moto,
        "STREAM_MANAGER_EXPORTER_AWS_REGION": "us-east-1",
        "STREAM_MANAGER_EXPORTER_AWS_ACCESS_KEY_ID": "testing",
        "STREAM_MANAGER_EXPORTER_AWS_SECRET_ACCESS_KEY": "testing",
        "STREAM_MANAGER_EXPORTER_MAX_RETRY_INTERVAL_MILLIS": "500",
    }
    with running_core(root, ["--config", str(core_config)]):
        deploy(
            root,
            "test.S3TaskClient=1.0.0",
            {"aws.greengrass.StreamManager": {"MERGE": settings}},
            recipes,
            base / "artifacts",
        )
        deadline = time.monotonic() + 120
        while not out.exists():
            logs = [root / "logs" / "lichen.log", root / "logs" / "test.S3TaskClient.log"]
            assert time.monotonic() < deadline, "component wrote no result:\n" + "\n".join(
                log.read_text()[-3000:] for log in logs if log.exists()
            )
            time.sleep(0.2)
        result = json.loads(out.read_text())
        print("component saw:", result)
        assert "error" not in result, result["error"]
        assert result["uid"] == nobody.pw_uid, "the component must run as the default user"
        statuses = result["statuses"]
        assert statuses["public"] == ["Success", "uploaded 2000 bytes"], statuses
        assert statuses["secret"] is not None, statuses
        state, message = statuses["secret"]
        assert state == "Failure", statuses
        assert "Permission denied" in message and str(secret) in message, message
        assert s3.get_object(Bucket="lichen-bucket", Key="public.bin")["Body"].read() == public.read_bytes()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lichen-bucket").get("Contents", [])]
        assert keys == ["public.bin"], keys
