"""Fixtures of the collector's suite and benchmark: a real core, a pymodbus device, and an IoT
SiteWise BatchPutAssetPropertyValue fake that checks every entry as the API would."""

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from lichen_support import (  # noqa: E402,F401
    child_uids,
    free_port,
    lichen_bin,
    reachable_binaries,
    running_core,
    wait_for,
    wait_listening,
)

PYTHON = os.environ.get("LICHEN_PYTHON") or sys.executable
ENTRY_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
VARIANTS = {"stringValue", "integerValue", "doubleValue", "booleanValue", "nullValue"}


def check_entry(e):
    """What BatchPutAssetPropertyValue refuses, as an error message (None when acceptable)."""
    if not isinstance(e.get("entryId"), str) or not ENTRY_ID.match(e["entryId"]):
        return f"bad entryId {e.get('entryId')!r}"
    if not e.get("propertyAlias") or not (1 <= len(e["propertyAlias"]) <= 2048):
        return "propertyAlias missing"
    values = e.get("propertyValues")
    if not isinstance(values, list) or not (1 <= len(values) <= 10):
        return "propertyValues must hold 1-10 values"
    for v in values:
        if set(v) != {"value", "timestamp", "quality"}:
            return f"unexpected keys {sorted(v)}"
        if len(v["value"]) != 1 or not set(v["value"]) <= VARIANTS:
            return f"value must be one variant: {v['value']}"
        ts = v["timestamp"]
        if not isinstance(ts.get("timeInSeconds"), int) or not (0 <= ts.get("offsetInNanos", -1) <= 999_999_999):
            return f"bad timestamp {ts}"
        if v["quality"] not in ("GOOD", "BAD", "UNCERTAIN"):
            return f"bad quality {v['quality']}"
        if "nullValue" in v["value"] and (v["quality"] == "GOOD" or v["value"]["nullValue"].get("valueType") not in list("DBSIU")):
            return f"null value with {v['quality']}: {v['value']}"
        if "doubleValue" in v["value"] and abs(v["value"]["doubleValue"]) > 1e10:
            return "double out of range"
    return None


class SiteWiseFake:
    """POST /properties: records the entries it accepts and answers errorEntries for the rest."""

    def __init__(self, port=0):
        self.entries, self.errors, self.requests = [], [], 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                errors = []
                entries = body.get("entries", [])
                if self.path != "/properties" or not (1 <= len(entries) <= 10):
                    errors.append({"entryId": "-", "errorCode": "InvalidRequestException", "errorMessage": "1-10 entries"})
                for e in entries:
                    why = check_entry(e)
                    if why:
                        errors.append({"entryId": e.get("entryId"), "errorCode": "InvalidRequestException", "errorMessage": why})
                with fake.lock:
                    fake.requests += 1
                    fake.errors += errors
                    if not errors:
                        fake.entries += entries
                out = json.dumps({"errorEntries": [{"entryId": x["entryId"], "errors": [x]} for x in errors]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the exporter gave up on this request (it retries)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def values(self, alias=None):
        """(alias, epoch ns, value or None, quality) of every accepted value."""
        with self.lock:
            entries = list(self.entries)
        return [v for e in entries for v in flatten(e) if alias is None or v[0] == alias]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def flatten(entry):
    out = []
    for v in entry["propertyValues"]:
        ts = v["timestamp"]["timeInSeconds"] * 1_000_000_000 + v["timestamp"]["offsetInNanos"]
        (kind, value), = v["value"].items()
        out.append((entry["propertyAlias"], ts, None if kind == "nullValue" else value, v["quality"]))
    return out


class ModbusDevice:
    """compat/industrial/modbus_sim.py on `port`; stop() kills it, start() brings it back."""

    def __init__(self, port=None, extra=0):
        self.port = port or free_port()
        self.extra = extra
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [PYTHON, str(HERE / "modbus_sim.py"), str(self.port), str(self.extra)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout.readline().strip() == "listening"
        wait_listening(self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stream_manager_config(sm_port, sitewise_port):
    return {
        "STREAM_MANAGER_SERVER_PORT": str(sm_port),
        "STREAM_MANAGER_AUTHENTICATE_CLIENT": "false",
        "STREAM_MANAGER_EXPORTER_IOT_SITEWISE_ENDPOINT": f"http://127.0.0.1:{sitewise_port}",
        "STREAM_MANAGER_EXPORTER_AWS_REGION": "us-east-1",
        "STREAM_MANAGER_EXPORTER_AWS_ACCESS_KEY_ID": "testing",
        "STREAM_MANAGER_EXPORTER_AWS_SECRET_ACCESS_KEY": "testing",
        "STREAM_MANAGER_EXPORTER_MAX_RETRY_INTERVAL_MILLIS": "500",
    }


def deploy(root, config):
    """Deploys the stream manager and the collector with `config` ({component: MERGE})."""
    update = {name: {"MERGE": merge} for name, merge in config.items()}
    cmd = [
        lichen_bin(), "deployment", "create", "--wait", "--json", "--root", str(root),
        "--merge", "aws.greengrass.StreamManager=2.2.1", "--merge", "lichen.IndustrialCollector=1.0.0",
        "--update-config", json.dumps(update),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"deployment failed: {r.stdout}\n{r.stderr}\n{log_tail(root)}"


def log_tail(root, n=4000):
    """The ends of the core's log and of the collector's own."""
    tails = []
    for name in ("lichen.log", "lichen.IndustrialCollector.log"):
        log = Path(root) / "logs" / name
        if log.exists():
            tails.append(f"--- {name}\n" + log.read_text(errors="replace")[-n:])
    return "\n".join(tails)
