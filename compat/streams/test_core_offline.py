"""Offline proof through a real core: a component appends 100 000 records with the unmodified
Stream Manager SDK to the core's built-in stream manager while the export endpoint (an HTTP sink)
is down; the core is killed with SIGKILL part way and restarted on the same root; the new core stops
the orphaned component and starts it again, and the component resumes from its own progress file.
Once the endpoint comes back, every acknowledged record must be exported, in stream order.

The component appends WITHOUT flushOnWrite: an acknowledged append has been written to the
stream's file, so it sits in the page cache and survives the death of the core's process (which
is what this test proves); surviving power loss would need flushOnWrite.

LICHEN_OFFLINE_RECORDS sets another record count (default 100 000).
"""

import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_exporters import Recorder, wait_for
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("LICHEN_PYTHON") or sys.executable
COMPONENT = "test.OfflineWriter"

# The component: resumes after the last acknowledged record named in acks.log (one line
# "<index> <sequence number>" per acknowledged append, written right after the acknowledgement),
# retries with a fresh client whenever the stream manager is unreachable, and marks completion.
WRITER = r'''
import os, sys, time
work, port, sink, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
os.environ["STREAM_MANAGER_SERVER_PORT"] = port
from stream_manager import (ExportDefinition, ExportFormat, HTTPConfig, MessageStreamDefinition,
                            Persistence, StrategyOnFull, StreamManagerClient)

acks_path = os.path.join(work, "acks.log")
next_index = 0
if os.path.exists(acks_path):
    with open(acks_path, "rb") as f:
        complete = f.read().split(b"\n")[:-1]  # a torn last line is not an acknowledgement
    if complete:
        next_index = int(complete[-1].split()[0]) + 1
with open(os.path.join(work, "pids.log"), "a") as f:
    f.write(f"{os.getpid()} {next_index}\n")
acks = os.open(acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

definition = MessageStreamDefinition(
    name="offline",
    strategy_on_full=StrategyOnFull.RejectNewData,
    persistence=Persistence.File,
    flush_on_write=False,
    export_definition=ExportDefinition(http=[HTTPConfig(
        identifier="sink", uri=sink, batch_size=500, export_format=ExportFormat.JSON_BATCHED)]),
)

def connect():
    client = StreamManagerClient(request_timeout=10)
    if "offline" not in client.list_streams():
        client.create_message_stream(definition)
    return client

client = None
i = next_index
while i < total:
    try:
        if client is None:
            client = connect()
        seq = client.append_message("offline", f"rec-{i}".encode())
    except Exception as e:
        # The core is gone (or not yet back): this append is not acknowledged. The SDK client
        # does not always notice a dead connection, so start a new one.
        print(f"append {i} failed: {e!r}", file=sys.stderr, flush=True)
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
            client = None
        time.sleep(0.2)
        continue
    os.write(acks, f"{i} {seq}\n".encode())
    i += 1
if client is not None:
    client.close()
with open(os.path.join(work, "done"), "w") as f:
    f.write(str(total))
'''




def port_below_ephemeral_range():
    # A client that keeps reconnecting to a port in the ephemeral range while nothing listens
    # there can end up connected to itself and then hold the port; a lower port cannot be a
    # client's source port.
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randrange(max(1025, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    pytest.fail("no free port below the ephemeral range")


def processes_with(marker):
    """PIDs of live processes whose command line contains `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Core:
    """`lichen core run` on a root, in its own session; its stdout is drained."""

    def __init__(self, root):
        self.proc = subprocess.Popen(
            [lichen_bin(), "core", "run", "--root", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "LICHEN_LOG": "info"},
            start_new_session=True,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 60
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail("core did not become ready")

    def _drain(self):
        for line in self.proc.stdout:
            if "ready in" in line:
                self.ready.set()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def acked_lines(path):
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [tuple(map(int, line.split())) for line in data.split(b"\n")[:-1]]


def test_component_appends_survive_core_sigkill_and_offline_endpoint(tmp_path):
    total = int(os.environ.get("LICHEN_OFFLINE_RECORDS", "100000"))
    root, recipes, artifacts = tmp_path / "root", tmp_path / "recipes", tmp_path / "artifacts"
    recipes.mkdir()
    art = artifacts / COMPONENT / "1.0.0"
    art.mkdir(parents=True)
    (art / "writer.py").write_text(WRITER)
    sm_port = port_below_ephemeral_range()
    sink_port = port_below_ephemeral_range()
    while sink_port == sm_port:
        sink_port = port_below_ephemeral_range()
    sink_uri = f"http://127.0.0.1:{sink_port}/in"
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": COMPONENT,
        "ComponentVersion": "1.0.0",
        "ComponentDependencies": {
            "aws.greengrass.StreamManager": {"VersionRequirement": ">=2.0.0", "DependencyType": "HARD"}
        },
        "Manifests": [
            {
                "Platform": {"os": "*"},
                "Lifecycle": {
                    "Run": f"{PYTHON} -u {{artifacts:path}}/writer.py {{work:path}} {sm_port} {sink_uri} {total}"
                },
            }
        ],
    }
    (recipes / f"{COMPONENT}.json").write_text(json.dumps(recipe))
    work = root / "work" / COMPONENT
    acks_path, pids_path, done_path = work / "acks.log", work / "pids.log", work / "done"
    log = root / "logs" / "lichen.log"

    def log_tail():
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    cores = []
    sink = None
    try:
        cores.append(Core(root))
        config = {
            "aws.greengrass.StreamManager": {
                "MERGE": {
                    "STREAM_MANAGER_SERVER_PORT": str(sm_port),
                    # Retry soon once the endpoint is back.
                    "STREAM_MANAGER_EXPORTER_MAX_RETRY_INTERVAL_MILLIS": "500",
                }
            }
        }
        r = subprocess.run(
            [
                lichen_bin(), "deployment", "create", "--wait", "--json", "--root", str(root),
                "--recipe-dir", str(recipes), "--artifact-dir", str(artifacts),
                "--merge", f"{COMPONENT}=1.0.0", "--update-config", json.dumps(config),
            ],
            capture_output=True, text=True, timeout=180,
        )
        assert r.returncode == 0, f"deployment failed: {r.stdout}\n{r.stderr}"

        started = time.monotonic()
        wait_for(
            lambda: len(acked_lines(acks_path)) >= total // 2 or done_path.exists(),
            300,
            "half of the appends",
        )
        before_kill = len(acked_lines(acks_path))
        assert not done_path.exists(), "every append finished before the core could be killed"
        first_pid = int(pids_path.read_text().split()[0])
        cores[0].proc.send_signal(signal.SIGKILL)
        cores[0].proc.wait()
        assert alive(first_pid), "the component should outlive its core until the next core stops it"

        cores.append(Core(root))
        # The new core stops the orphan before it serves, then starts the component again.
        assert not alive(first_pid), "the new core left the old core's component running"
        wait_for(lambda: len(pids_path.read_text().splitlines()) >= 2, 60, "the component to start again:\n" + log_tail())
        wait_for(done_path.exists, 300, "the rest of the appends")
        append_s = time.monotonic() - started

        runs = [tuple(map(int, line.split())) for line in pids_path.read_text().splitlines()]
        acks = acked_lines(acks_path)
        assert [i for i, _ in acks] == list(range(total)), "the ack log skips or repeats an index"
        acknowledged = {i: seq for i, seq in acks}
        # Resumed from its own progress: the second run started after the last acknowledged record
        # of the first run, not at zero.
        assert runs[1][1] >= before_kill > 0

        # Nothing was exported while the endpoint was down.
        sink = Recorder(port=sink_port)
        delivered = []  # (sequence number, payload) in delivery order
        parsed = [0]
        seen = {}

        def all_exported():
            requests = sink.snapshot()
            for req in requests[parsed[0]:]:
                for item in json.loads(req["body"]):
                    delivered.append((item["sequenceNumber"], base64.b64decode(item["payload"])))
                    seen.setdefault(item["sequenceNumber"], base64.b64decode(item["payload"]))
            parsed[0] = len(requests)
            return all(seq in seen for seq in acknowledged.values())

        wait_for(all_exported, 300, "the backlog to reach the sink")
        export_s = time.monotonic() - started - append_s

        for i, seq in acknowledged.items():
            assert seen[seq] == f"rec-{i}".encode(), f"sequence {seq} carried {seen[seq]!r}, not rec-{i}"
        firsts, known = [], set()
        for seq, _ in delivered:
            if seq not in known:
                known.add(seq)
                firsts.append(seq)
        assert firsts == sorted(firsts), "records were exported out of stream order"
        # Re-deliveries of one sequence number, and records stored twice (an append that was
        # written but whose answer died with the core, then appended again by the component).
        redelivered = len(delivered) - len(known)
        payloads = [seen[s] for s in known]
        stored_twice = len(payloads) - len(set(payloads))
        print(
            f"\nexported {len(delivered)}, acknowledged {len(acknowledged)}, duplicates {redelivered + stored_twice} "
            f"({redelivered} re-delivered, {stored_twice} stored twice); core SIGKILLed after {before_kill} acks; "
            f"appends {append_s:.1f} s, export {export_s:.1f} s"
        )
    finally:
        if sink is not None:
            sink.close()
        for core in cores:
            core.kill()
        # Components the cores started (their command lines name this test's root).
        for pid in processes_with(str(root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
