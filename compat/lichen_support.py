"""Small helpers every compatibility suite uses: where the binary is, free ports, waiting.

Each suite's conftest.py puts this folder on sys.path and imports from here.
"""

import os
import socket
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
