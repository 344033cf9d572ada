"""lichen.IndustrialCollector's OPC UA source on a real core against a real OPC UA server
(python asyncua, compat/industrial/opcua_server.py) over Basic256Sha256 SignAndEncrypt with
certificates made here: the server's certificate is pinned in the source's configuration, and
the certificate the collector generates for itself on first use is refused by the server until
the test trusts it. Values are read back from the collector's stream with the Stream Manager
SDK. The server killed and restarted on the same port: BAD values (no value) for every alias
while it is away, GOOD values again after."""

import datetime
import ipaddress
import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from industrial_support import (
    HERE,
    PYTHON,
    child_uids,
    deploy,
    flatten,
    free_port,
    log_tail,
    reachable_binaries,
    running_core,
    stream_manager_config,
    wait_for,
)

SERVER_URI = "urn:lichen:test:opcua-server"
PREFIX = "/site1"
LINE1 = ["Temperature", "Count", "Running"]
LINE2 = ["Pressure", "Mode"]
ALIASES = [f"{PREFIX}/Plant/Line1/{n}" for n in LINE1] + [f"{PREFIX}/Plant/Line2/{n}" for n in LINE2]


def make_cert(directory, name, uri):
    """A self-signed RSA-2048 application instance certificate as OPC UA wants it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(uri),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=True, data_encipherment=True,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    der, pem = directory / f"{name}.der", directory / f"{name}.pem"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return der, pem, directory / f"{name}.key.pem"


class OpcUaServer:
    """opcua_server.py on a fixed port; stop() kills it (no goodbye), start() brings it back."""

    def __init__(self, cert, key, trust_dir, user=None, policy=None):
        self.cert, self.key, self.trust_dir, self.user, self.policy = cert, key, trust_dir, user, policy
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [PYTHON, str(HERE / "opcua_server.py"), "--port", str(self.port), "--cert", str(self.cert),
             "--key", str(self.key), "--trust-dir", str(self.trust_dir), "--period", "0.2"]
            + (["--user", self.user] if self.user else [])
            + (["--policy", self.policy] if self.policy else []),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line == f"READY {self.port}", f"OPC UA server did not start: {line!r}"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    @property
    def url(self):
        return f"opc.tcp://127.0.0.1:{self.port}/lichen/"


@pytest.fixture
def pki(tmp_path):
    server_der, server_pem, server_key = make_cert(tmp_path / "server", "LichenTestServer", SERVER_URI)
    trust = tmp_path / "server-trusts"
    trust.mkdir()
    return {"der": server_der, "pem": server_pem, "key": server_key, "trust": trust, "dir": tmp_path}


@pytest.fixture
def server(pki):
    s = OpcUaServer(pki["der"], pki["key"], pki["trust"])
    yield s
    s.stop()


def source_config(url, trust, identity=None, policy="BASIC256_SHA256", mode="SIGN_AND_ENCRYPT"):
    return {
        "name": "plant-opcua",
        "type": "OpcUa",
        "endpoint": {
            "endpointUri": url,
            "securityPolicy": policy,
            "messageSecurityMode": mode,
            "identityProvider": identity or {"type": "Anonymous"},
            "certificateTrust": trust,
            "nodeFilterRules": [
                {"action": "INCLUDE", "definition": {"type": "OpcUaRootPath", "rootPath": "/Plant/Line1/*"}},
                {"action": "INCLUDE", "definition": {"type": "OpcUaRootPath", "rootPath": "/Plant/**/Pressure"}},
                {"action": "INCLUDE", "definition": {"type": "OpcUaRootPath", "rootPath": "/Plant/Line2/Mo*"}},
            ],
        },
        "measurementDataStreamPrefix": PREFIX,
        "propertyGroups": [
            {"name": "temperature-deadband",
             "nodeFilterRuleDefinitions": [{"type": "OpcUaRootPath", "rootPath": "/Plant/*/Temperature"}],
             "scanMode": {"type": "EXCEPTION", "rate": 100},
             "deadband": {"type": "ABSOLUTE", "value": 1.2},
             "subscription": {"publishingIntervalMilliseconds": 200, "queueSize": 10}},
            {"name": "line2-polled", "nodeFilterRuleDefinitions": [{"type": "OpcUaRootPath", "rootPath": "/Plant/Line2"}],
             "scanMode": {"type": "POLL", "rate": 300}},
            {"name": "line1-subscribed", "nodeFilterRuleDefinitions": [{"type": "OpcUaRootPath", "rootPath": "/Plant/Line1"}],
             "scanMode": {"type": "EXCEPTION", "rate": 100},
             "subscription": {"publishingIntervalMilliseconds": 200, "queueSize": 10}},
        ],
        "reconnect": {"initialMilliseconds": 300, "maxMilliseconds": 1500},
    }


def read_stream(sm_port, stream="SiteWise_Edge_Stream"):
    """Every record of the collector's stream as (alias, ns, value, quality)."""
    from stream_manager import ReadMessagesOptions, StreamManagerClient

    client = StreamManagerClient(port=sm_port)
    try:
        out, seq = [], 0
        while True:
            try:
                msgs = client.read_messages(stream, ReadMessagesOptions(
                    desired_start_sequence_number=seq, min_message_count=1, max_message_count=1000,
                    read_timeout_millis=0))
            except Exception:
                break
            if not msgs:
                break
            for m in msgs:
                out += flatten(json.loads(m.payload))
            seq = msgs[-1].sequence_number + 1
        return out
    finally:
        client.close()


def start_collecting(root, server, trust, identity=None, **security):
    sm_port = free_port()
    deploy(root, {
        "aws.greengrass.StreamManager": stream_manager_config(sm_port, free_port()),
        "lichen.IndustrialCollector": {"sources": [source_config(server.url, trust, identity, **security)]},
    })
    return sm_port


def own_certificate(root):
    """The certificate the collector generated for itself (async-opcua's PKI layout)."""
    found = sorted(Path(root).glob("**/own/cert.der"))
    return found[0] if found else None


def trust_collector(root, pki):
    cert = wait_for(lambda: own_certificate(root), 60, "the collector's generated certificate:\n" + log_tail(root))
    (pki["trust"] / "lichen-collector.der").write_bytes(cert.read_bytes())


def test_values_over_sign_and_encrypt_and_the_gap_of_a_server_restart(tmp_path, pki, server):
    root = tmp_path / "root"
    with running_core(root):
        sm_port = start_collecting(root, server, {"type": "X509", "certificateBody": pki["pem"].read_text()})
        # The server refuses the collector's fresh certificate until it is trusted there.
        trust_collector(root, pki)

        def good(alias, after=0):
            return [(ts, v) for a, ts, v, q in read_stream(sm_port) if a == alias and q == "GOOD" and ts > after]

        wait_for(lambda: all(len(good(a)) >= 3 for a in ALIASES if not a.endswith("Pressure")), 120,
                 "GOOD values for every variable:\n" + log_tail(root))
        values = read_stream(sm_port)
        seen = {a for a, *_ in values}
        assert seen == set(ALIASES), f"aliases collected: {sorted(seen)}"
        by = {a: [(ts, v, q) for x, ts, v, q in values if x == a] for a in ALIASES}
        counts = [v for _, v, q in by[f"{PREFIX}/Plant/Line1/Count"]]
        assert all(isinstance(c, int) for c in counts) and counts == sorted(counts) and len(set(counts)) >= 3
        temps = [v for _, v, _ in by[f"{PREFIX}/Plant/Line1/Temperature"]]
        assert all(isinstance(v, float) for v in temps)
        # The server steps the temperature by 0.5: the 1.2 deadband passes every third step.
        assert all(abs(b - a) > 1.2 for a, b in zip(temps, temps[1:])), temps
        assert {v for _, v, _ in by[f"{PREFIX}/Plant/Line1/Running"]} <= {True, False}
        assert {v for _, v, _ in by[f"{PREFIX}/Plant/Line2/Mode"]} <= {"mode-0", "mode-1", "mode-2"}
        # The server marks Pressure Uncertain on odd ticks: the status code maps to quality.
        wait_for(lambda: {q for a, _, _, q in read_stream(sm_port) if a.endswith("Pressure")} >= {"GOOD", "UNCERTAIN"},
                 30, "GOOD and UNCERTAIN pressures")
        # Source timestamps: within the run, not the time of the stream append.
        now = time.time_ns()
        assert all(now - 600_000_000_000 < ts <= now + 1_000_000_000 for _, ts, _, _ in values)

        last_count = max(counts)
        server.stop()
        stopped = time.time_ns()

        def bad_since(alias):
            return [(ts, v) for a, ts, v, q in read_stream(sm_port) if a == alias and q == "BAD" and ts >= stopped]

        # One BAD value per alias for each failed reconnect, not silence.
        wait_for(lambda: all(len(bad_since(a)) >= 2 for a in ALIASES), 60,
                 "BAD values for every alias while the server is down:\n" + log_tail(root))
        assert all(v is None for a in ALIASES for _, v in bad_since(a))
        server.start()
        restarted = time.time_ns()
        wait_for(lambda: all(good(a, restarted) for a in ALIASES if not a.endswith("Pressure")), 90,
                 "GOOD values after the server came back:\n" + log_tail(root))
        after = [v for _, v in good(f"{PREFIX}/Plant/Line1/Count", restarted)]
        assert min(after) > last_count, "values after the restart are not new ones"
        # The gap is visible: between the last GOOD before the outage and the first after it
        # lie only BAD values.
        count_alias = f"{PREFIX}/Plant/Line1/Count"
        series = sorted((ts, q) for a, ts, _, q in read_stream(sm_port) if a == count_alias)
        gap = [q for ts, q in series if stopped <= ts < restarted]
        assert gap and set(gap) == {"BAD"}, gap


def test_an_unpinned_server_certificate_is_refused(tmp_path, pki, server):
    other_der, _, _ = make_cert(tmp_path / "other", "SomeOtherServer", SERVER_URI)
    root = tmp_path / "root"
    with running_core(root):
        sm_port = start_collecting(root, server, {"type": "X509", "certificatePath": str(other_der)})
        trust_collector(root, pki)
        # The real server's certificate is not the pinned one: it is put aside as rejected.
        rejected = wait_for(lambda: sorted(Path(root).glob("**/rejected/*.der")), 60,
                            "the server certificate in the rejected directory:\n" + log_tail(root))
        assert any("LichenTestServer" in p.name for p in rejected), rejected
        time.sleep(2)
        assert [v for v in read_stream(sm_port) if v[3] == "GOOD"] == []


def test_user_name_identity(tmp_path, pki):
    """A server that admits one user name and password (no anonymous sessions)."""
    server = OpcUaServer(pki["der"], pki["key"], pki["trust"], user="operator:s3cret-pw")
    root = tmp_path / "root"
    try:
        with running_core(root):
            identity = {"type": "Username", "username": "operator", "password": "s3cret-pw"}
            sm_port = start_collecting(root, server, {"type": "X509", "certificatePath": str(pki["der"])}, identity)
            trust_collector(root, pki)
            wait_for(lambda: {a for a, _, _, q in read_stream(sm_port) if q == "GOOD"} >= set(ALIASES) - {ALIASES[3]}, 90,
                     "GOOD values with a user name identity:\n" + log_tail(root))
    finally:
        server.stop()


@pytest.mark.parametrize("server_policy,policy,mode", [
    ("Aes128Sha256RsaOaep_SignAndEncrypt", "AES128_SHA256_RSAOAEP", "SIGN_AND_ENCRYPT"),
    ("Aes256Sha256RsaPss_SignAndEncrypt", "AES256_SHA256_RSAPSS", "SIGN_AND_ENCRYPT"),
    ("Basic256Sha256_Sign", "BASIC256_SHA256", "SIGN"),
])
def test_other_security_policies_and_modes(tmp_path, pki, server_policy, policy, mode):
    server = OpcUaServer(pki["der"], pki["key"], pki["trust"], policy=server_policy)
    root = tmp_path / "root"
    try:
        with running_core(root):
            sm_port = start_collecting(root, server, {"type": "TrustDir", "path": str(pki["der"].parent)},
                                       policy=policy, mode=mode)
            trust_collector(root, pki)
            wait_for(lambda: any(a.endswith("/Count") and q == "GOOD" for a, _, _, q in read_stream(sm_port)), 90,
                     f"GOOD values over {policy} {mode}:\n" + log_tail(root))
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only a root core runs its workers as another user")
def test_the_worker_runs_as_the_component_user():
    """A root core with `runWithDefault.posixUser` nobody runs each OPC UA worker as nobody (it
    parses what the network sends): the worker creates and keeps its PKI as nobody and collects."""
    nobody = pwd.getpwnam("nobody")
    # The executables, the pinned server certificate and the root go where nobody can reach them.
    with reachable_binaries("lichen-opcua-user-", "lichen-opcua") as (base, bin_dir):
        der, _, key = make_cert(base / "server", "LichenTestServer", SERVER_URI)
        for p in (base / "server", der):
            p.chmod(0o755 if p.is_dir() else 0o644)
        trust = base / "server-trusts"
        trust.mkdir()
        server = OpcUaServer(der, key, trust)
        try:
            config = base / "config.json"
            config.write_text(json.dumps({
                "services": {"aws.greengrass.Nucleus": {"configuration": {"runWithDefault": {"posixUser": "nobody"}}}}
            }))
            root = base / "root"
            with running_core(root, config=config, binary=bin_dir / "lichen") as core:
                sm_port = start_collecting(root, server, {"type": "X509", "certificatePath": str(der)})
                cert = wait_for(lambda: own_certificate(root), 60,
                                "the collector's generated certificate:\n" + log_tail(root))
                assert (cert.stat().st_uid, cert.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
                pki_dir = cert.parent.parent
                assert pki_dir.stat().st_mode & 0o777 == 0o700 and pki_dir.stat().st_uid == nobody.pw_uid
                assert child_uids(core.pid, "lichen-opcua") == [(nobody.pw_uid, nobody.pw_uid)]
                trust_collector(root, {"trust": trust})
                wait_for(lambda: {a for a, _, _, q in read_stream(sm_port) if q == "GOOD"} >= set(ALIASES) - {ALIASES[3]},
                         90, "GOOD values from a worker run as nobody:\n" + log_tail(root))
        finally:
            server.stop()
