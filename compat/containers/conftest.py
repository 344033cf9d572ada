"""A real Docker engine (private data and exec roots, no bridge network) and a local registry on
127.0.0.1, for `docker:` artifacts deployed by a real `lichen core`.

dockerd and docker-registry are started here and stopped by their own PIDs at the end of the
session; what dockerd leaves mounted under its roots is unmounted before they are removed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import free_port, lichen_bin, wait_for  # noqa: E402


def _need(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"not installed: {missing} (./scripts/test installs docker.io, docker-registry, skopeo, busybox-static as root)")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")


class Engine:
    def __init__(self, base):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock = self.base / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.proc = subprocess.Popen(
            ["dockerd", "--bridge", "none", "--iptables=false", "--ip-forward=false",
             "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "exec"),
             "--host", self.host, "--pidfile", str(self.base / "docker.pid")],
            stdout=open(self.base / "dockerd.log", "w"), stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.docker("version", check=False).returncode == 0, 60, "dockerd")

    def docker(self, *args, check=True):
        r = subprocess.run(["docker", *args], capture_output=True, text=True,
                           env={**os.environ, "DOCKER_HOST": self.host}, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {args}: {r.stdout}{r.stderr}")
        return r

    def has_image(self, name):
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        mounts = [l.split()[4] for l in open("/proc/self/mountinfo")]
        for m in sorted((m for m in mounts if m.startswith(str(self.base))), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


class Registry:
    def __init__(self, base):
        self.base = Path(base)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        (self.base / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.base / 'data'}\nhttp:\n  addr: {self.addr}\n"
        )
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.base / "config.yml")],
                                     stdout=open(self.base / "registry.log", "a"), stderr=subprocess.STDOUT)
        import urllib.request

        def up():
            try:
                return urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2).status == 200
            except Exception:
                return False
        wait_for(up, 30, "docker-registry")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    _need("dockerd", "docker", "docker-registry", "skopeo", "busybox")
    e = Engine(Path(f"/tmp/lichen-dk-{os.getpid()}"))  # short: the socket path must fit sun_path
    yield e
    e.stop()


@pytest.fixture(scope="session")
def registry(engine, tmp_path_factory):
    r = Registry(tmp_path_factory.mktemp("registry"))
    # A busybox image from a rootfs tarball, pushed to the registry and then dropped locally.
    rootfs = tmp_path_factory.mktemp("rootfs")
    tar_path = rootfs / "busybox.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(shutil.which("busybox"), arcname="bin/busybox")
        for tool in ["sh", "echo", "cat", "sleep", "ls"]:
            info = tarfile.TarInfo(f"bin/{tool}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    engine.docker("import", str(tar_path), "lichen-test/busybox:src")
    r.image = "lichen-test/busybox:src"
    yield r
    r.stop()


def push(engine, registry, tag):
    """Pushes the busybox image as `<registry>/lichen/busybox:<tag>`; returns (name, digest)."""
    name = f"{registry.addr}/lichen/busybox:{tag}"
    subprocess.run(
        ["skopeo", "copy", "--src-daemon-host", engine.host, "--dest-tls-verify=false",
         f"docker-daemon:{registry.image}", f"docker://{name}"],
        check=True, capture_output=True, timeout=120,
    )
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{name}"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return name, json.loads(out)["Digest"]


class Core:
    def __init__(self, root, engine):
        self.root = Path(root)
        self.proc = subprocess.Popen(
            [lichen_bin(), "core", "run", "--root", str(self.root)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "DOCKER_HOST": engine.host, "LICHEN_LOG": "info"},
        )
        deadline = time.monotonic() + 60
        while "ready in" not in (self.proc.stdout.readline() or ""):
            assert self.proc.poll() is None and time.monotonic() < deadline, "core did not become ready"

    def cli(self, *args, check=True):
        r = subprocess.run([lichen_bin(), *args, "--root", str(self.root)], capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"lichen {args}: {r.stdout}\n{r.stderr}")
        return r

    def deploy(self, *args):
        r = self.cli("deployment", "create", "--wait", "--json", *args, check=False)
        try:
            return r.returncode, json.loads(r.stdout)
        except ValueError:
            return r.returncode, r.stdout + r.stderr

    def log(self, name="lichen"):
        p = self.root / "logs" / f"{name}.log"
        return p.read_text() if p.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def core(engine, tmp_path):
    c = Core(tmp_path / "root", engine)
    yield c
    c.stop()


@pytest.fixture
def make_core(engine, tmp_path):
    cores = []

    def make(name):
        c = Core(tmp_path / name, engine)
        cores.append(c)
        return c
    yield make
    for c in cores:
        c.stop()
