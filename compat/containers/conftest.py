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
    def __init__(self, base, login=None):
        self.base = Path(base)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        config = (
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.base / 'data'}\nhttp:\n  addr: {self.addr}\n"
        )
        if login:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt  # bcrypt through libxcrypt: what the registry's htpasswd wants
            user, password = login
            (self.base / "htpasswd").write_text(
                f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
            config += f"auth:\n  htpasswd:\n    realm: lichen\n    path: {self.base / 'htpasswd'}\n"
        (self.base / "config.yml").write_text(config)
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.base / "config.yml")],
                                     stdout=open(self.base / "registry.log", "a"), stderr=subprocess.STDOUT)
        import urllib.error
        import urllib.request

        def up():
            try:
                return urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2).status == 200
            except urllib.error.HTTPError as e:
                return e.code == 401
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


@pytest.fixture
def private_registry(engine, registry, tmp_path_factory):
    """A registry that wants a login; yields (registry, (user, password))."""
    login = ("lichen", "s3cret-pass")
    r = Registry(tmp_path_factory.mktemp("private"), login)
    r.image = registry.image
    yield r, login
    r.stop()


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


def push(engine, registry, tag, login=None, image=None):
    """Pushes the busybox image as `<registry>/lichen/busybox:<tag>`; returns (name, digest)."""
    name = f"{registry.addr}/lichen/busybox:{tag}"
    creds = ["--dest-creds", ":".join(login)] if login else []
    subprocess.run(
        ["skopeo", "copy", "--src-daemon-host", engine.host, "--dest-tls-verify=false", *creds,
         f"docker-daemon:{image or registry.image}", f"docker://{name}"],
        check=True, capture_output=True, timeout=120,
    )
    creds = ["--creds", ":".join(login)] if login else []
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *creds, f"docker://{name}"],
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


PUBLISHER = r'''
import os, sys, time
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc import model
print("connecting to", os.environ.get("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"), flush=True)
client = GreengrassCoreIPCClientV2()
print("connected", flush=True)
for i in range(240):
    client.publish_to_topic(topic="containers/hello",
                            publish_message=model.PublishMessage(
                                binary_message=model.BinaryMessage(message=b"from-container")))
    if i == 0:
        print("published", flush=True)
    time.sleep(0.25)
'''

_SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "tkinter", "ensurepip", "lib2to3",
              "pydoc_data", "turtledemo", "__pycache__", "config-3.11-x86_64-linux-gnu"}


def _libraries(paths):
    """Shared libraries that `paths` need, by ldd."""
    libs = set()
    for p in paths:
        out = subprocess.run(["ldd", p], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            for part in parts:
                if part.startswith("/") and os.path.exists(part):
                    libs.add(part)
    return libs


@pytest.fixture(scope="session")
def python_image(engine, registry, tmp_path_factory):
    """An image holding this machine's Python, its standard library and the venv's awsiotsdk
    (awsiot + awscrt), imported from a tarball: no network, no base image."""
    import awscrt
    import awsiot
    py = os.path.realpath(sys.executable)
    prefix = Path(sys.base_prefix)
    stdlib = Path(os.__file__).parent
    site = Path(awsiot.__file__).parent.parent
    dynload = stdlib / "lib-dynload"
    natives = [str(p) for p in dynload.glob("*.so")] + [str(p) for p in site.glob("_awscrt*.so")] + [py]
    work = tmp_path_factory.mktemp("pyimage")
    (work / "pub.py").write_text(PUBLISHER)
    tar_path = work / "py.tar"
    with tarfile.open(tar_path, "w") as tar:
        added = set()

        def add_once(src, arcname, **kw):
            if arcname not in added:
                added.add(arcname)
                tar.add(src, arcname=arcname, **kw)
        add_once(py, arcname=py.lstrip("/"))
        add_once(py, arcname="bin/python3")
        for lib in _libraries(natives):
            add_once(os.path.realpath(lib), arcname=lib.lstrip("/"))
        for lib in (prefix / "lib").glob("libpython3*.so*"):
            add_once(str(lib), arcname=str(lib).lstrip("/"))
        add_once(str(stdlib), arcname=str(stdlib).lstrip("/"),
                filter=lambda ti: None if Path(ti.name).name in _SKIP_DIRS else ti)
        for pkg in ["awsiot", "awscrt"]:
            add_once(str(site / pkg), arcname=f"app/site/{pkg}",
                    filter=lambda ti: None if Path(ti.name).name == "__pycache__" else ti)
        for so in site.glob("_awscrt*.so"):
            add_once(str(so), arcname=f"app/site/{so.name}")
        add_once(str(work / "pub.py"), arcname="app/pub.py")
        add_once(shutil.which("busybox"), arcname="bin/busybox")
        info = tarfile.TarInfo("bin/sh")
        info.type, info.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(info)
    engine.docker("import", str(tar_path), "lichen-test/pyipc:src")
    name = f"{registry.addr}/lichen/pyipc:1"
    subprocess.run(
        ["skopeo", "copy", "--src-daemon-host", engine.host, "--dest-tls-verify=false",
         "docker-daemon:lichen-test/pyipc:src", f"docker://{name}"],
        check=True, capture_output=True, timeout=300,
    )
    assert awscrt  # imported for its location check above
    return name
