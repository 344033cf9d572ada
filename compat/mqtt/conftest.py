"""Fixtures: a fresh broker per test, ours (`lichen broker`) and mosquitto, on free loopback ports."""

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SMALL_PACKET = 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker did not listen on {port} within {timeout}s")


def lichen_bin():
    path = os.environ.get("LICHEN_BIN") or str(ROOT / "target" / "debug" / "lichen")
    if not os.path.exists(path):
        pytest.skip(f"no lichen binary at {path}; run cargo build -p lichen or set LICHEN_BIN")
    return path


class Broker:
    def __init__(self, kind, port, proc, workdir):
        self.kind, self.port, self.proc, self.workdir = kind, port, proc, workdir

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_broker(kind, max_packet_size=None):
    port = free_port()
    workdir = tempfile.mkdtemp(prefix=f"mqtt-{kind}-")
    os.chmod(workdir, 0o755)
    log = open(os.path.join(workdir, "broker.log"), "wb")
    if kind == "lichen":
        cmd = [lichen_bin(), "broker", "--listen", f"tcp://127.0.0.1:{port}"]
        if max_packet_size:
            cmd += ["--max-packet-size", str(max_packet_size)]
    else:
        if not os.path.exists(MOSQUITTO):
            pytest.skip("mosquitto is not installed")
        conf = os.path.join(workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            if max_packet_size:
                f.write(f"max_packet_size {max_packet_size}\n")
        os.chmod(conf, 0o644)
        cmd = [MOSQUITTO, "-c", conf]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    broker = Broker(kind, port, proc, workdir)
    try:
        wait_listening(port, proc)
    except Exception:
        broker.stop()
        raise
    return broker


@pytest.fixture(params=["lichen", "mosquitto"])
def broker(request):
    b = start_broker(request.param)
    yield b
    b.stop()


@pytest.fixture(params=["lichen", "mosquitto"])
def small_broker(request):
    """A broker whose maximum packet size is SMALL_PACKET bytes."""
    b = start_broker(request.param, max_packet_size=SMALL_PACKET)
    yield b
    b.stop()
