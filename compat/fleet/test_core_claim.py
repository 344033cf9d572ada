"""A real `lichen core run` provisions itself by claim on first start, from the configuration the
Greengrass installer takes (`aws.greengrass.FleetProvisioningByClaim`): it gets its own
certificate and thing from a provisioning template, stores them owner-only, connects to the fleet
as the new thing, and a component's PublishToIoTCore reaches a device subscribed on the fleet. A
restart does not provision again; a refused attempt is retried.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from fleet_core import Core, cores, publisher_recipe, watcher_policy  # noqa: F401 (fixture)
from fleet_devices import Device, Session5
from test_provisioning import TEMPLATE, TEMPLATE_BODY, claim  # noqa: F401 (fixture)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lichen_support import wait_for  # noqa: E402

SERIAL = "core-7"
THING = f"sensor-{SERIAL}"


def claim_config(fleet, claim, path, root):
    """The installer's config.yaml for provisioning by claim, as the Greengrass docs write it."""
    config = {
        "services": {
            "aws.greengrass.Nucleus": {"version": "2.14.0", "configuration": {"awsRegion": "us-east-1"}},
            "aws.greengrass.FleetProvisioningByClaim": {
                "configuration": {
                    "rootPath": str(root),
                    "awsRegion": "us-east-1",
                    "iotDataEndpoint": "127.0.0.1",
                    "iotCredentialEndpoint": "127.0.0.1",
                    "iotRoleAlias": "GreengrassCoreTokenExchangeRoleAlias",
                    "provisioningTemplate": TEMPLATE,
                    "claimCertificatePath": str(claim.cert),
                    "claimCertificatePrivateKeyPath": str(claim.key),
                    "rootCaPath": str(fleet.root_ca),
                    "mqttPort": fleet.mqtt_port,
                    "templateParameters": {"SerialNumber": SERIAL},
                }
            },
        }
    }
    path.write_text(yaml.safe_dump(config))
    return path


def effective(root):
    return yaml.safe_load((root / "config" / "effectiveConfig.yaml").read_text())


def test_core_provisions_itself_by_claim_and_publishes_to_the_fleet(fleet, iot, claim, tmp_path, cores):
    watcher = Session5(Device(fleet, iot, tmp_path, name="watcher", policy=watcher_policy(THING)))
    try:
        assert watcher.outcome is True, watcher.outcome
        assert watcher.subscribe(f"devices/{THING}/#") == [1]

        work = tmp_path / "core"
        work.mkdir()
        root = work / "root"
        config = claim_config(fleet, claim, work / "claim-config.yaml", root / "identity")
        core = Core(root, config, work)
        cores.append(core)
        core.start()
        wait_for(lambda: "connected to the cloud" in core.log(), 60, f"the core to connect to the fleet\n{core.log()[-3000:]}\n{fleet.output()}")

        # The registry holds the thing with one ACTIVE certificate, the one the core stored.
        thing = iot.describe_thing(thingName=THING)
        assert thing["attributes"] == {"serial": SERIAL}
        principals = iot.list_thing_principals(thingName=THING)["principals"]
        assert len(principals) == 1, principals
        cert_id = principals[0].rsplit("/", 1)[1]
        description = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
        assert description["status"] == "ACTIVE"

        system = effective(root)["system"]
        nucleus = effective(root)["services"]["aws.greengrass.Nucleus"]["configuration"]
        assert system["thingName"] == THING
        assert system["certificateFilePath"] == str(root / "identity" / "thingCert.crt")
        assert system["privateKeyPath"] == str(root / "identity" / "privKey.key")
        assert system["rootCaPath"] == str(fleet.root_ca)
        assert nucleus["iotDataEndpoint"] == "127.0.0.1"
        assert int(nucleus["mqtt"]["port"]) == fleet.mqtt_port
        assert nucleus["iotCredEndpoint"] == "127.0.0.1"
        assert nucleus["iotRoleAlias"] == "GreengrassCoreTokenExchangeRoleAlias"
        cert_file, key_file = root / "identity" / "thingCert.crt", root / "identity" / "privKey.key"
        assert description["certificatePem"].strip() == cert_file.read_text().strip()
        assert "PRIVATE KEY" in key_file.read_text()
        for f in (cert_file, key_file):
            assert os.stat(f).st_mode & 0o777 == 0o600, f
        assert os.stat(root / "identity").st_mode & 0o777 == 0o700

        recipes = tmp_path / "recipes"
        recipes.mkdir()
        publisher_recipe(
            recipes, "com.example.Producer", f"devices/{THING}/telemetry", f"devices/{THING}/telemetry/*", recipes / "progress"
        )
        core.deploy(recipes, "com.example.Producer=1.0.0")
        topic, payload = watcher.received.result(60)
        assert topic == f"devices/{THING}/telemetry/t0"
        assert json.loads(payload) == {"i": 0}

        # A restart keeps the identity: no second certificate, the same files.
        core.stop()
        before = cert_file.read_text()
        log_before = len(core.log())
        core.start()
        wait_for(lambda: "connected to the cloud" in core.log()[log_before:], 60, "the restarted core to connect")
        assert "provisioning by claim" not in core.log()[log_before:]
        assert cert_file.read_text() == before
        assert len(iot.list_thing_principals(thingName=THING)["principals"]) == 1
        assert effective(root)["system"]["thingName"] == THING
    finally:
        watcher.stop()


def test_a_refused_provisioning_is_retried_until_the_template_exists(fleet, iot, tmp_path):
    """The claim certificate exists but the template does not yet: the core says why it waits,
    retries, and provisions once the operator creates the template."""
    iot.create_policy(policyName="provisioned-device", policyDocument=json.dumps(_device_policy()))
    iot.create_thing_group(thingGroupName="sensors")
    keys = iot.create_keys_and_certificate(setAsActive=True)
    from test_provisioning import claim_policy

    iot.create_policy(policyName="claim", policyDocument=json.dumps(claim_policy()))
    iot.attach_policy(policyName="claim", target=keys["certificateArn"])
    cert, key = tmp_path / "claim.pem.crt", tmp_path / "claim.pem.key"
    cert.write_text(keys["certificatePem"])
    key.write_text(keys["keyPair"]["PrivateKey"])

    work = tmp_path / "core"
    work.mkdir()
    root = work / "root"
    config = claim_config(fleet, Device.existing(fleet, "claim", cert, key), work / "claim-config.yaml", root)
    proc = subprocess.Popen(
        [os.environ.get("LICHEN_BIN", "lichen"), "core", "run", "--root", str(root), "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "core.stderr", "ab"),
        start_new_session=True,
    )
    log = root / "logs" / "lichen.log"
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    try:
        wait_for(lambda: "provisioning by claim failed" in text(), 60, f"a logged failed attempt\n{text()[-3000:]}")
        failed = [line for line in text().splitlines() if "provisioning by claim failed" in line][0]
        assert "RegisterThing rejected" in failed and TEMPLATE in failed, failed
        assert not (root / "thingCert.crt").exists()

        iot.create_provisioning_template(
            templateName=TEMPLATE,
            templateBody=json.dumps(TEMPLATE_BODY),
            provisioningRoleArn="arn:aws:iam::123456789012:role/fleet-provisioning",
            enabled=True,
        )
        wait_for(lambda: "connected to the cloud" in text(), 90, f"the core to provision and connect\n{text()[-3000:]}")
        assert iot.describe_thing(thingName=THING)["thingName"] == THING
        assert os.stat(root / "privKey.key").st_mode & 0o777 == 0o600
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _device_policy():
    from fleet_devices import DEVICE_POLICY

    return DEVICE_POLICY


def test_with_a_csr_the_private_key_never_leaves_the_device(fleet, iot, claim, tmp_path):
    """`csrPath` + `csrPrivateKeyPath`: the core asks CreateCertificateFromCsr for its own key and
    keeps that key where it is; the fleet never sees it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, THING)])).sign(key, hashes.SHA256())
    own_key, csr_file = tmp_path / "own.key", tmp_path / "own.csr"
    own_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    own_key.chmod(0o600)
    csr_file.write_bytes(csr.public_bytes(serialization.Encoding.PEM))

    work = tmp_path / "core"
    work.mkdir()
    root = work / "root"
    config_path = claim_config(fleet, claim, work / "claim-config.yaml", root)
    config = yaml.safe_load(config_path.read_text())
    plugin = config["services"]["aws.greengrass.FleetProvisioningByClaim"]["configuration"]
    plugin["csrPath"], plugin["csrPrivateKeyPath"] = str(csr_file), str(own_key)
    config_path.write_text(yaml.safe_dump(config))

    core = Core(root, config_path, work)
    try:
        core.start()
        wait_for(lambda: "connected to the cloud" in core.log(), 60, f"the core to connect\n{core.log()[-3000:]}")
        system = effective(root)["system"]
        assert system["privateKeyPath"] == str(own_key)
        assert not (root / "privKey.key").exists()
        cert = x509.load_pem_x509_certificate((root / "thingCert.crt").read_bytes())
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        principals = iot.list_thing_principals(thingName=THING)["principals"]
        assert len(principals) == 1, principals
    finally:
        core.stop()


INSTALL_SCRIPT = r"""
set -euo pipefail
# A private /etc (ggc_user, the unit) and nothing else of the host changes; every process started
# here dies with this PID namespace when the script ends.
E=$(mktemp -d); mount -t tmpfs tmpfs "$E"; cp -a /etc/. "$E"/; mount --bind "$E" /etc
"$LICHEN" core install --init none --root "$ROOT" --provision "$CONFIG" --provision-timeout 90
"$LICHEN" core uninstall --root "$ROOT"
"""


def test_install_provisions_the_core_by_claim_and_prints_its_thing(fleet, iot, claim, tmp_path):
    """`lichen core install --provision FILE` in a private mount and PID namespace: the file is
    checked, merged, the core started, and install returns once the core has its own
    certificate, naming the thing; a file without the claim certificate is refused first."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "--mount", "--pid", "--fork", "true"]).returncode != 0:
        pytest.skip("needs root and mount/PID namespaces")
    serial = "core-install-9"
    work = tmp_path / "install"
    work.mkdir()
    root = work / "gg"
    config = claim_config(fleet, claim, work / "claim.yaml", root / "identity")
    text = yaml.safe_load(config.read_text())
    text["services"]["aws.greengrass.FleetProvisioningByClaim"]["configuration"]["templateParameters"] = {"SerialNumber": serial}
    config.write_text(yaml.safe_dump(text))
    bad = work / "bad.yaml"
    del text["services"]["aws.greengrass.FleetProvisioningByClaim"]["configuration"]["claimCertificatePath"]
    bad.write_text(yaml.safe_dump(text))

    def install(cfg):
        env = {**os.environ, "LICHEN": os.environ.get("LICHEN_BIN", "lichen"), "ROOT": str(root), "CONFIG": str(cfg)}
        return subprocess.run(
            ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "bash", "-c", INSTALL_SCRIPT],
            env=env, capture_output=True, text=True, timeout=180,
        )

    refused = install(bad)
    assert refused.returncode != 0
    assert "claimCertificatePath is missing" in refused.stderr, refused.stderr
    with pytest.raises(Exception):
        iot.describe_thing(thingName=f"sensor-{serial}")

    done = install(config)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{fleet.output()[-3000:]}"
    assert f"provisioned as thing sensor-{serial}" in done.stdout, done.stdout
    assert iot.describe_thing(thingName=f"sensor-{serial}")["attributes"] == {"serial": serial}
    assert not root.exists(), "uninstall left the root behind"
