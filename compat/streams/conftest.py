"""Runs `lichen stream-manager` as a real process for the unmodified Stream Manager SDK.

The binary is $LICHEN_BIN, else /work/main/target/debug/lichen, else the crate's standalone
example target/debug/examples/stream_manager (same arguments). Each server gets a temporary
store and a port chosen by the OS; every process started here is killed at teardown.
"""

import functools
import os
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30


def _serves_streams(binary):
    # A `lichen` built before the stream manager existed lacks --auth-token: skip it.
    try:
        out = subprocess.run([binary, "stream-manager", "--help"], capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return "--auth-token" in out.stdout


@functools.lru_cache(maxsize=1)
def server_binary():
    if os.environ.get("LICHEN_BIN"):
        return os.environ["LICHEN_BIN"]
    # The most recently built of the two, so a fresh crate example wins over an older `lichen`.
    candidates = [
        c
        for c in (REPO / "target/debug/lichen", REPO / "target/debug/examples/stream_manager")
        if c.exists() and _serves_streams(str(c))
    ]
    if candidates:
        return str(max(candidates, key=lambda c: c.stat().st_mtime))
    pytest.fail(
        "no stream manager binary: `cargo build -p lichen` (or `cargo build -p lichen-streams "
        "--example stream_manager`), or set LICHEN_BIN"
    )


class Server:
    def __init__(self, store_root, tokens=(), port=0, env=None):
        self.store_root = Path(store_root)
        self.tokens = list(tokens)
        self.port = port
        self.extra_env = dict(env or {})
        self.proc = None

    def start(self):
        args = [server_binary(), "stream-manager", "--store-root", str(self.store_root), "--port", str(self.port)]
        for t in self.tokens:
            args += ["--auth-token", t]
        env = dict(os.environ)
        env.pop("LICHEN_STREAM_MANAGER_AUTH_TOKENS", None)
        env.update(self.extra_env)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        # The first line names the port; a server that neither prints it nor exits must not
        # hang the session.
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop(signal.SIGKILL)
            pytest.fail(f"server did not start within {START_TIMEOUT_S} s: {line!r}")
        self.port = int(m.group(1))
        # Keep draining stdout: a server that logs there would block once the pipe is full.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    def stop(self, sig=signal.SIGTERM):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self, sig=signal.SIGTERM):
        # Same store, same port: clients reconnect on their next call.
        self.stop(sig)
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.start()
            except BaseException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture
def start_server(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", raising=False)
    monkeypatch.delenv("STREAM_MANAGER_SERVER_PORT", raising=False)
    servers = []

    def start(tokens=(), store_root=None, env=None):
        s = Server(store_root or tmp_path / f"store{len(servers)}", tokens, env=env).start()
        servers.append(s)
        return s

    try:
        yield start
    finally:
        # Every server, even when the test failed or another stop raised.
        for s in servers:
            try:
                s.stop(signal.SIGKILL)
            except Exception:
                if s.proc is not None:
                    s.proc.kill()


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def client(server):
    from stream_manager import StreamManagerClient

    c = StreamManagerClient(port=server.port)
    yield c
    c.close()
