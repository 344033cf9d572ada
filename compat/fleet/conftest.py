"""A real `lichen fleet serve` on a free loopback port, with the administrator credentials it
writes, and the clients that prove it: boto3 and the `aws` CLI (`--endpoint-url`).

The fleet is started from LICHEN_BIN with `--root <tmp> --api 127.0.0.1:0 --mqtt 127.0.0.1:0
--data-plane 127.0.0.1:0`; its address comes from
`<root>/endpoints.json`. Every process started here is stopped at teardown.

A module that overrides `fleet_store` with params ["sqlite", "postgres"] runs against both stores:
for PostgreSQL each test gets a fresh database on the server at LICHEN_TEST_POSTGRES_URL, or else on
a private server this session starts (initdb + pg_ctl on a free loopback port) and stops.
"""

import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402


def aws_cli():
    """The `aws` CLI: the one installed beside this Python (tests/requirements.txt), else PATH."""
    beside = Path(sys.executable).parent / "aws"
    path = str(beside) if beside.exists() else shutil.which("aws")
    if not path:
        pytest.fail("no `aws` CLI: install tests/requirements.txt (awscli) into the venv")
    return path


def postgres_bin_dir():
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """URL of a PostgreSQL server for the tests (superuser, trust auth on loopback)."""
    given = os.environ.get("LICHEN_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bindir = postgres_bin_dir()
    if bindir is None:
        reason = "PostgreSQL is not installed (Debian package `postgresql`; ./scripts/test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    d = Path(tempfile.mkdtemp(prefix="lichen-pg-"))
    # PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(d, "postgres", "postgres")
    port = free_port()
    data = d / "data"
    run = lambda *a: subprocess.run([*as_user, *a], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale")
    opts = f"-p {port} -k {d} -c listen_addresses=127.0.0.1"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(d / "log"), "-w", "-o", opts, "start")
    try:
        yield f"postgres://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def fresh_postgres_database(admin_url):
    """Creates an empty database on the server (byte-order collation, as the registry needs); its URL."""
    import uuid

    name = f"lichen_fleet_{uuid.uuid4().hex}"
    bindir = postgres_bin_dir()
    psql = str(bindir / "psql") if bindir else (shutil.which("psql") or "psql")
    subprocess.run([psql, admin_url, "-q", "-c", f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"], check=True, capture_output=True, timeout=60)
    return admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def fleet_store():
    """The registry's store; a module overrides this to run on both (see the module docstring)."""
    return "sqlite"


@pytest.fixture
def fleet_database(fleet_store, request):
    """`--database` for `lichen fleet serve`: None (SQLite in the root) or a fresh PostgreSQL database."""
    if fleet_store == "sqlite":
        return None
    return fresh_postgres_database(request.getfixturevalue("postgres_server"))


class Fleet:
    def __init__(self, root, database=None):
        self.root = Path(root)
        self.database = database
        self.proc = None
        self.api = None
        self.log = None
        # (api, mqtt, data plane) listen addresses; a restart may keep the ones devices know.
        self.bind = ("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")

    def start(self):
        # endpoints.json of an earlier (killed) run must not be mistaken for this one's.
        (self.root / "endpoints.json").unlink(missing_ok=True)
        self.log = open(self.root.parent / f"{self.root.name}.log", "ab")
        self.proc = subprocess.Popen(
            [
                lichen_bin(),
                "fleet",
                "serve",
                "--root",
                str(self.root),
                "--api",
                self.bind[0],
                "--mqtt",
                self.bind[1],
                "--data-plane",
                self.bind[2],
                *(["--database", self.database] if self.database else []),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"lichen fleet serve exited with {self.proc.returncode}: {self.output()}")
            try:
                return json.loads((self.root / "endpoints.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return None

        self.endpoints = wait_for(ready, 60, "endpoints.json")
        self.api = self.endpoints["api"]
        self.mqtt_port = int(self.endpoints["mqtt"].rsplit(":", 1)[1]) if "mqtt" in self.endpoints else None
        self.root_ca = self.endpoints["rootCa"]
        creds = configparser.ConfigParser()
        creds.read(self.root / "admin" / "credentials")
        self.access_key = creds["default"]["aws_access_key_id"]
        self.secret_key = creds["default"]["aws_secret_access_key"]
        return self

    def output(self):
        try:
            return (self.root.parent / f"{self.root.name}.log").read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def client(self, service="iot", access_key=None, secret_key=None, session_token=None):
        return boto3.client(
            service,
            endpoint_url=self.api,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            aws_session_token=session_token,
            config=Config(retries={"max_attempts": 1}),
        )

    def cli_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(self.root / "admin" / "credentials")
        env["AWS_CONFIG_FILE"] = str(self.root / "admin" / "config")
        return env

    def aws(self, *args, check=True):
        """Runs `aws --endpoint-url <api> iot <args>`; returns the parsed JSON output (or the
        CompletedProcess when check=False)."""
        p = subprocess.run(
            [aws_cli(), "--endpoint-url", self.api, "iot", *args],
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if not check:
            return p
        assert p.returncode == 0, f"aws iot {' '.join(args)} failed ({p.returncode}): {p.stderr}"
        return json.loads(p.stdout) if p.stdout.strip() else {}

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()
            self.log = None


@pytest.fixture
def fleet_root():
    d = tempfile.mkdtemp(prefix="lichen-fleet-")
    yield Path(d) / "root"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fleet(fleet_root, fleet_database):
    f = Fleet(fleet_root, fleet_database).start()
    yield f
    f.stop()


@pytest.fixture
def iot(fleet):
    return fleet.client("iot")
