"""A real `lichen core run` with client device auth and the client-device broker deployed.

Device certificates are made here with `cryptography`: a device CA the core is told to trust, and
a stranger CA it is not. Everything listens on 127.0.0.1 on ports chosen at run time; the core
(and the components it runs) are stopped at teardown.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_certs import make_ca, make_leaf, pem  # noqa: E402
from lichen_support import lichen_bin, free_port, wait_listening  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
AUTH = "aws.greengrass.clientdevices.Auth"
BROKER = "aws.greengrass.clientdevices.mqtt.EMQX"


DEVICE_GROUPS = {
    "formatVersion": "2021-03-05",
    "definitions": {
        "sensors": {"selectionRule": "thingName: sensor* OR thingName: sdk-*", "policyName": "sensorPolicy"}
    },
    "policies": {
        "sensorPolicy": {
            "connect": {"operations": ["mqtt:connect"], "resources": ["mqtt:clientId:*"]},
            "pubsub": {
                "operations": ["mqtt:publish", "mqtt:subscribe"],
                "resources": [
                    "mqtt:topic:allowed/*",
                    "mqtt:topicfilter:allowed/#",
                    "mqtt:topic:things/${iot:Connection.Thing.ThingName}/data",
                ],
            },
        }
    },
}

CLIENT_SCRIPT = r'''
import json, sys, threading
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc import model

out, device_pem, stranger_pem = sys.argv[1], open(sys.argv[2]).read(), open(sys.argv[3]).read()
result = {}
client = GreengrassCoreIPCClientV2()
def attempt(name, f):
    try:
        result[name] = f()
    except Exception as e:
        result[name] = {"error": type(e).__name__, "message": str(e)}
import time
# Built-in services start right after the deployment that names them: wait until Auth answers.
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        client.verify_client_device_identity(
            credential=model.ClientDeviceCredential(client_device_certificate=device_pem))
        break
    except Exception as e:
        if type(e).__name__ != "ServiceError":
            break
        time.sleep(0.2)
attempt("verify_device", lambda: client.verify_client_device_identity(
    credential=model.ClientDeviceCredential(client_device_certificate=device_pem)).is_valid_client_device)
attempt("verify_stranger", lambda: client.verify_client_device_identity(
    credential=model.ClientDeviceCredential(client_device_certificate=stranger_pem)).is_valid_client_device)
def token(client_id, cert):
    return client.get_client_device_auth_token(credential=model.CredentialDocument(
        mqtt_credential=model.MQTTCredential(client_id=client_id, certificate_pem=cert))).client_device_auth_token
attempt("token_stranger", lambda: token("sensor9", stranger_pem))
attempt("token_device", lambda: token("sensor1", device_pem))
# A device certificate gets a token only for the thing it is bound to, under a valid thing name.
attempt("token_other_thing", lambda: token("sensor2", device_pem))
attempt("token_wildcard", lambda: token("sensor*", device_pem))
tok = result["token_device"] if isinstance(result["token_device"], str) else "missing"
def authz(op, res):
    return client.authorize_client_device_action(client_device_auth_token=tok, operation=op, resource=res).is_authorized
attempt("connect", lambda: authz("mqtt:connect", "mqtt:clientId:sensor1"))
attempt("publish_allowed", lambda: authz("mqtt:publish", "mqtt:topic:allowed/x"))
attempt("publish_forbidden", lambda: authz("mqtt:publish", "mqtt:topic:forbidden/x"))
attempt("bad_token", lambda: client.authorize_client_device_action(
    client_device_auth_token="nope", operation="mqtt:connect", resource="mqtt:clientId:x").is_authorized)
got = threading.Event()
events = []
def on_event(e):
    events.append(e.certificate_update)
    got.set()
def subscribe():
    client.subscribe_to_certificate_updates(
        certificate_options=model.CertificateOptions(certificate_type="SERVER"), on_stream_event=on_event)
    got.wait(10)
    u = events[0]
    return {"certificate": u.certificate, "privateKey": bool(u.private_key), "ca": u.ca_certificates}
attempt("certificate_updates", subscribe)
with open(out + ".tmp", "w") as f:
    json.dump(result, f)
import os; os.rename(out + ".tmp", out)
'''


class Core:
    def __init__(self, root, proc):
        self.root, self.proc = Path(root), proc

    def cli(self, *args, check=True):
        r = subprocess.run([lichen_bin(), *args, "--root", str(self.root)], capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"lichen {args} failed: {r.stdout}\n{r.stderr}")
        return r

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text() if p.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def devices(tmp_path_factory):
    d = tmp_path_factory.mktemp("devices")
    ca = make_ca("Test Device CA")
    stranger_ca = make_ca("Stranger CA")
    return {
        "dir": d,
        "ca_pem": pem(ca[0]),
        "sensor1": make_leaf(ca, "sensor1", d),
        "intruder": make_leaf(ca, "intruder", d),
        "stranger": make_leaf(stranger_ca, "stranger", d),
        "sdk": make_leaf(ca, "sdk-client", d),
        "sensor2": make_leaf(ca, "sensor2", d),
        # Bound to thing sensor-mapped by fingerprint (thingCertificates), whatever its CN says.
        "mapped": make_leaf(ca, "sensor-cn", d),
        # A CA-trusted certificate naming a thing whose certificates are listed explicitly.
        "impostor": make_leaf(ca, "sensor-mapped", d),
        "bounded": make_leaf(ca, "bounded1", d),
    }


def fingerprint(cert_path):
    """`sha256:<hex>` of a PEM certificate's DER, the form thingCertificates takes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


@pytest.fixture(scope="session")
def core(tmp_path_factory, devices):
    root = tmp_path_factory.mktemp("core")
    work = tmp_path_factory.mktemp("ws")
    port = free_port()
    recipes, artifacts = work / "recipes", work / "artifacts"
    recipes.mkdir()
    for name, policy in (("test.CdaClient", True), ("test.CdaNoPolicy", False)):
        art = artifacts / name / "1.0.0"
        art.mkdir(parents=True)
        (art / "cda.py").write_text(CLIENT_SCRIPT)
        out = work / f"{name}.json"
        acl = ""
        if policy:
            acl = (
                "ComponentConfiguration:\n  DefaultConfiguration:\n    accessControl:\n"
                f"      {AUTH}:\n        {name}:cda:1:\n          operations: ['*']\n          resources: ['*']\n"
            )
        (recipes / f"{name}.yaml").write_text(
            f"RecipeFormatVersion: '2020-01-25'\nComponentName: {name}\nComponentVersion: '1.0.0'\n{acl}"
            "Manifests:\n  - Platform:\n      os: '*'\n    Lifecycle:\n"
            f"      Run: \"{sys.executable} -u {{artifacts:path}}/cda.py {out} {devices['sensor1'][0]} {devices['stranger'][0]}\"\n"
        )
    proc = subprocess.Popen(
        [lichen_bin(), "core", "run", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "LICHEN_LOG": "info"},
    )
    c = Core(root, proc)
    try:
        deadline = time.monotonic() + 60
        while "ready in" not in (proc.stdout.readline() or ""):
            assert proc.poll() is None and time.monotonic() < deadline, "core did not become ready"
        update = {
            AUTH: {
                "MERGE": {
                    "certificateAuthority": {"caType": "ECDSA_P256"},
                    "trustedClientCertificates": {
                        "caCertificates": [devices["ca_pem"]],
                        "thingCertificates": {"sensor-mapped": [fingerprint(devices["mapped"][0])]},
                    },
                    "deviceGroups": DEVICE_GROUPS,
                }
            },
            BROKER: {"MERGE": {"emqx": {"listener.ssl.external": f"127.0.0.1:{port}"}}},
        }
        c.cli(
            "deployment", "create", "--wait", "--json",
            "--recipe-dir", str(recipes), "--artifact-dir", str(artifacts),
            "--merge", f"{AUTH}=2.5.3", "--merge", f"{BROKER}=2.0.1",
            "--merge", "test.CdaClient=1.0.0", "--merge", "test.CdaNoPolicy=1.0.0",
            "--update-config", json.dumps(update),
        )
        wait_listening(port)
        c.port = port
        c.work = work
        c.ca_path = str(root / "work" / AUTH / "ca.pem")
        yield c
    finally:
        c.stop()
        if os.environ.get("LICHEN_KEEP_LOG"):
            print(c.log())


BOUNDED_GROUPS = {
    "formatVersion": "2021-03-05",
    "definitions": {"bounded": {"selectionRule": "thingName: bounded*", "policyName": "everything"}},
    "policies": {
        "everything": {
            "all": {
                "operations": ["mqtt:connect", "mqtt:publish", "mqtt:subscribe"],
                "resources": ["mqtt:clientId:*", "mqtt:topic:*", "mqtt:topicfilter:*"],
            }
        }
    },
}


@pytest.fixture(scope="session")
def bounded_core(tmp_path_factory, devices):
    """A second core whose client-device broker has small bounds (brokerLimits and EMQX keys)."""
    root = tmp_path_factory.mktemp("bounded-core")
    port = free_port()
    proc = subprocess.Popen(
        [lichen_bin(), "core", "run", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "LICHEN_LOG": "info"},
    )
    c = Core(root, proc)
    try:
        deadline = time.monotonic() + 60
        while "ready in" not in (proc.stdout.readline() or ""):
            assert proc.poll() is None and time.monotonic() < deadline, "core did not become ready"
        update = {
            AUTH: {
                "MERGE": {
                    "certificateAuthority": {"caType": "ECDSA_P256"},
                    "trustedClientCertificates": {"caCertificates": [devices["ca_pem"]]},
                    "deviceGroups": BOUNDED_GROUPS,
                }
            },
            BROKER: {
                "MERGE": {
                    "emqx": {
                        "listener.ssl.external": f"127.0.0.1:{port}",
                        "mqtt.max_packet_size": "4096",
                        "zone.external.max_subscriptions": "3",
                    },
                    "brokerLimits": {"maxRetainedMessages": 2, "maxRetainedBytes": 1000},
                }
            },
        }
        c.cli(
            "deployment", "create", "--wait", "--json",
            "--merge", f"{AUTH}=2.5.3", "--merge", f"{BROKER}=2.0.1",
            "--update-config", json.dumps(update),
        )
        wait_listening(port)
        c.port = port
        c.ca_path = str(root / "work" / AUTH / "ca.pem")
        yield c
    finally:
        c.stop()
        if os.environ.get("LICHEN_KEEP_LOG"):
            print(c.log())
