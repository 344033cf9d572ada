"""Small helpers every compatibility suite uses: where the binary is, free ports, waiting.

Each suite's conftest.py puts this folder on sys.path and imports from here.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lichen_bin():
    """The `lichen` binary under test: $LICHEN_BIN, else this tree's debug build."""
    path = os.environ.get("LICHEN_BIN") or str(REPO / "target" / "debug" / "lichen")
    if not os.path.exists(path):
        pytest.fail(f"no lichen binary at {path}: run `cargo build -p lichen` or set LICHEN_BIN")
    return path


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=60.0, what="condition"):
    """Polls `predicate` until it returns something true (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def wait_listening(port, timeout=30):
    """Waits until something accepts TCP connections on 127.0.0.1:`port`."""

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(up, timeout, f"a listener on 127.0.0.1:{port}")


def child_uids(parent_pid, name):
    """The (real, effective) uids of `parent_pid`'s children named `name` (the kernel keeps the
    first 15 characters of a process name)."""
    uids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("Name", "").strip() == name[:15] and int(fields["PPid"]) == parent_pid:
            uids.append(tuple(int(u) for u in fields["Uid"].split()[:2]))
    return uids


@contextlib.contextmanager
def running_core(root, config=None, binary=None):
    """A `lichen core run` on `root` (with `--config config`, from `binary`), ready; on exit it
    and whatever it started are stopped."""
    extra = ["--config", str(config)] if config else []
    core = subprocess.Popen(
        [str(binary or lichen_bin()), "core", "run", "--root", str(root), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "LICHEN_LOG": "info"}, start_new_session=True,
    )
    ready = threading.Event()

    def drain():
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(core.pid, signal.SIGKILL)


@contextlib.contextmanager
def reachable_binaries(prefix, *names):
    """A fresh 0755 folder under /tmp, removed on exit, with copies of the built `lichen` and the
    executables `names` beside it in `bin/`: pytest's tmp_path and the build tree may lie under
    root's 0700 folders, where a component user could run nothing. Yields (folder, bin folder)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    try:
        bin_dir = base / "bin"
        bin_dir.mkdir(mode=0o755)
        for name in ("lichen", *names):
            shutil.copy2(Path(lichen_bin()).with_name(name), bin_dir / name)
        yield base, bin_dir
    finally:
        shutil.rmtree(base, ignore_errors=True)
