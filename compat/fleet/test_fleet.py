"""The fleet's control plane with unmodified clients: boto3 and the `aws` CLI."""

import json
import os
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import Fleet

POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:us-east-1:*:client/${iot:Connection.Thing.ThingName}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:us-east-1:*:topic/things/*"},
        ],
    }
)


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_store(request):
    """The whole control-plane suite runs on the embedded store and on PostgreSQL."""
    return request.param


def test_serve_writes_endpoints_and_private_admin_credentials(fleet):
    root = fleet.root
    assert fleet.api.startswith("http://127.0.0.1:")
    assert Path(fleet.endpoints["rootCa"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for f in ["admin/credentials", "admin/config", "ca/ca.key"]:
        assert stat.S_IMODE(os.stat(root / f).st_mode) == 0o600, f
    assert "region = us-east-1" in (root / "admin" / "config").read_text()
    assert fleet.access_key.startswith("AKIA") and len(fleet.access_key) == 20


def test_things_with_boto3(iot):
    r = iot.create_thing(thingName="sensor-1", attributePayload={"attributes": {"room": "lab", "floor": "2"}})
    assert r["thingArn"].endswith(":thing/sensor-1")
    again = iot.create_thing(thingName="sensor-1", attributePayload={"attributes": {"room": "lab", "floor": "2"}})
    assert again["thingId"] == r["thingId"]
    with pytest.raises(ClientError) as e:
        iot.create_thing(thingName="sensor-1", attributePayload={"attributes": {"room": "attic"}})
    assert error_code(e) == "ResourceAlreadyExistsException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409

    d = iot.describe_thing(thingName="sensor-1")
    assert d["attributes"] == {"room": "lab", "floor": "2"}
    assert d["version"] == 1 and d["defaultClientId"] == "sensor-1"

    iot.update_thing(thingName="sensor-1", attributePayload={"attributes": {"floor": "", "rack": "7"}, "merge": True}, expectedVersion=1)
    d = iot.describe_thing(thingName="sensor-1")
    assert d["attributes"] == {"room": "lab", "rack": "7"} and d["version"] == 2
    with pytest.raises(ClientError) as e:
        iot.update_thing(thingName="sensor-1", attributePayload={"attributes": {}}, expectedVersion=1)
    assert error_code(e) == "VersionConflictException"

    iot.create_thing(thingName="sensor-2", attributePayload={"attributes": {"room": "hall"}})
    hall = iot.list_things(attributeName="room", attributeValue="hall")["things"]
    assert [t["thingName"] for t in hall] == ["sensor-2"]

    iot.delete_thing(thingName="sensor-1")
    iot.delete_thing(thingName="sensor-1")  # absent: still succeeds, as AWS does
    with pytest.raises(ClientError) as e:
        iot.describe_thing(thingName="sensor-1")
    assert error_code(e) == "ResourceNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_things_with_the_aws_cli(fleet):
    r = fleet.aws("create-thing", "--thing-name", "cli:thing", "--attribute-payload", '{"attributes":{"k":"v"}}')
    assert r["thingName"] == "cli:thing"
    assert fleet.aws("describe-thing", "--thing-name", "cli:thing")["attributes"] == {"k": "v"}
    assert [t["thingName"] for t in fleet.aws("list-things")["things"]] == ["cli:thing"]
    fleet.aws("delete-thing", "--thing-name", "cli:thing")
    p = fleet.aws("describe-thing", "--thing-name", "cli:thing", check=False)
    assert p.returncode != 0
    assert "ResourceNotFoundException" in p.stderr
    ep = fleet.aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS")
    assert ep["endpointAddress"] == "localhost"
    ep = fleet.aws("describe-endpoint", "--endpoint-type", "iot:CredentialProvider")
    assert ep["endpointAddress"] == "localhost"


def test_thing_groups(iot, fleet):
    iot.create_thing_group(thingGroupName="plant", thingGroupProperties={"thingGroupDescription": "the plant"})
    iot.create_thing_group(thingGroupName="line-1", parentGroupName="plant")
    iot.create_thing(thingName="press")
    iot.create_thing(thingName="oven")
    iot.add_thing_to_thing_group(thingGroupName="line-1", thingName="press")
    iot.add_thing_to_thing_group(thingGroupArn=iot.describe_thing_group(thingGroupName="plant")["thingGroupArn"], thingName="oven")

    g = iot.describe_thing_group(thingGroupName="line-1")
    assert g["thingGroupMetadata"]["parentGroupName"] == "plant"
    assert [p["groupName"] for p in g["thingGroupMetadata"]["rootToParentThingGroups"]] == ["plant"]
    assert iot.describe_thing_group(thingGroupName="plant")["thingGroupProperties"]["thingGroupDescription"] == "the plant"

    assert iot.list_things_in_thing_group(thingGroupName="plant")["things"] == ["oven"]
    assert iot.list_things_in_thing_group(thingGroupName="plant", recursive=True)["things"] == ["oven", "press"]
    assert [g["groupName"] for g in iot.list_thing_groups_for_thing(thingName="press")["thingGroups"]] == ["line-1"]
    assert {g["groupName"] for g in iot.list_thing_groups()["thingGroups"]} == {"plant", "line-1"}
    assert [g["groupName"] for g in iot.list_thing_groups(parentGroup="plant")["thingGroups"]] == ["line-1"]

    v = iot.update_thing_group(thingGroupName="plant", thingGroupProperties={"thingGroupDescription": "the whole plant", "attributePayload": {"attributes": {"site": "north"}}}, expectedVersion=1)["version"]
    assert v == 2
    props = iot.describe_thing_group(thingGroupName="plant")["thingGroupProperties"]
    assert props["thingGroupDescription"] == "the whole plant" and props["attributePayload"]["attributes"] == {"site": "north"}
    with pytest.raises(ClientError) as e:
        iot.update_thing_group(thingGroupName="plant", thingGroupProperties={}, expectedVersion=1)
    assert error_code(e) == "VersionConflictException"

    with pytest.raises(ClientError) as e:
        iot.delete_thing_group(thingGroupName="plant")
    assert error_code(e) == "InvalidRequestException"
    iot.remove_thing_from_thing_group(thingGroupName="line-1", thingName="press")
    assert fleet.aws("list-things-in-thing-group", "--thing-group-name", "line-1")["things"] == []
    fleet.aws("delete-thing-group", "--thing-group-name", "line-1")
    iot.delete_thing_group(thingGroupName="plant")
    with pytest.raises(ClientError) as e:
        iot.describe_thing_group(thingGroupName="plant")
    assert error_code(e) == "ResourceNotFoundException"


def openssl(*args, input=None):
    p = subprocess.run(["openssl", *args], capture_output=True, text=True, input=input)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_certificates_created_revoked_and_deleted(fleet, iot):
    r = fleet.aws("create-keys-and-certificate", "--set-as-active")
    cert_id = r["certificateId"]
    assert len(cert_id) == 64
    assert r["certificateArn"].endswith(f":cert/{cert_id}")
    assert "PRIVATE KEY" in r["keyPair"]["PrivateKey"]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.pem").write_text(r["certificatePem"])
        (Path(d) / "k.pem").write_text(r["keyPair"]["PrivateKey"])
        # The certificate chains to the rootCa of endpoints.json and belongs to the key pair.
        assert ": OK" in openssl("verify", "-CAfile", fleet.endpoints["rootCa"], str(Path(d) / "c.pem"))
        assert openssl("x509", "-in", str(Path(d) / "c.pem"), "-noout", "-pubkey") == openssl("pkey", "-in", str(Path(d) / "k.pem"), "-pubout")
        der = subprocess.run(["openssl", "x509", "-in", str(Path(d) / "c.pem"), "-outform", "DER"], capture_output=True).stdout
    import hashlib

    assert hashlib.sha256(der).hexdigest() == cert_id

    d = fleet.aws("describe-certificate", "--certificate-id", cert_id)["certificateDescription"]
    assert d["status"] == "ACTIVE" and d["certificatePem"] == r["certificatePem"]
    fleet.aws("update-certificate", "--certificate-id", cert_id, "--new-status", "REVOKED")
    assert fleet.aws("describe-certificate", "--certificate-id", cert_id)["certificateDescription"]["status"] == "REVOKED"
    with pytest.raises(ClientError) as e:
        iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    assert error_code(e) == "CertificateStateException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 406

    # From a CSR: the certificate carries the CSR's own key; not active unless asked.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "dev")])).sign(key, hashes.SHA256())
    c = iot.create_certificate_from_csr(certificateSigningRequest=csr.public_bytes(serialization.Encoding.PEM).decode())
    issued = x509.load_pem_x509_certificate(c["certificatePem"].encode())
    assert issued.public_key().public_numbers() == key.public_key().public_numbers()
    assert iot.describe_certificate(certificateId=c["certificateId"])["certificateDescription"]["status"] == "INACTIVE"
    with pytest.raises(ClientError) as e:
        iot.create_certificate_from_csr(certificateSigningRequest="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    assert error_code(e) == "InvalidRequestException"

    listed = {x["certificateId"]: x["status"] for x in iot.list_certificates()["certificates"]}
    assert listed == {cert_id: "REVOKED", c["certificateId"]: "INACTIVE"}

    iot.delete_certificate(certificateId=c["certificateId"])
    iot.delete_certificate(certificateId=cert_id, forceDelete=True)
    assert iot.list_certificates()["certificates"] == []
    with pytest.raises(ClientError) as e:
        iot.describe_certificate(certificateId=cert_id)
    assert error_code(e) == "ResourceNotFoundException"


def test_policies_and_attachments(fleet, iot):
    p = iot.create_policy(policyName="device", policyDocument=POLICY)
    assert p["policyVersionId"] == "1"
    g = fleet.aws("get-policy", "--policy-name", "device")
    assert json.loads(g["policyDocument"]) == json.loads(POLICY) and g["defaultVersionId"] == "1"
    assert [x["policyName"] for x in iot.list_policies()["policies"]] == ["device"]
    with pytest.raises(ClientError) as e:
        iot.create_policy(policyName="bad", policyDocument='{"Statement": "nope"}')
    assert error_code(e) == "MalformedPolicyException"

    cert = iot.create_keys_and_certificate(setAsActive=True)
    arn = cert["certificateArn"]
    iot.create_thing(thingName="dev-1")
    iot.attach_policy(policyName="device", target=arn)
    fleet.aws("attach-thing-principal", "--thing-name", "dev-1", "--principal", arn)
    assert [x["policyName"] for x in iot.list_attached_policies(target=arn)["policies"]] == ["device"]
    assert fleet.aws("list-targets-for-policy", "--policy-name", "device")["targets"] == [arn]
    assert iot.list_thing_principals(thingName="dev-1")["principals"] == [arn]
    assert iot.list_principal_things(principal=arn)["things"] == ["dev-1"]

    with pytest.raises(ClientError) as e:
        iot.delete_policy(policyName="device")
    assert error_code(e) == "DeleteConflictException"
    with pytest.raises(ClientError) as e:
        iot.attach_thing_principal(thingName="dev-1", principal="arn:aws:iot:us-east-1:123456789012:cert/" + "0" * 64)
    assert error_code(e) in ("InvalidRequestException", "ResourceNotFoundException")

    # The installer's cleanup order (DeviceProvisioningHelper): detach, delete, deactivate, detach policies, delete.
    iot.detach_thing_principal(thingName="dev-1", principal=arn)
    iot.delete_thing(thingName="dev-1")
    iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
    for pol in iot.list_attached_policies(target=arn)["policies"]:
        iot.detach_policy(policyName=pol["policyName"], target=arn)
    iot.delete_certificate(certificateId=cert["certificateId"], forceDelete=True)
    iot.delete_policy(policyName="device")
    assert iot.list_policies()["policies"] == []


def test_a_wrong_secret_or_unknown_key_is_refused(fleet):
    bad = fleet.client("iot", secret_key=fleet.secret_key[:-1] + ("A" if fleet.secret_key[-1] != "A" else "B"))
    with pytest.raises(ClientError) as e:
        bad.list_things()
    assert error_code(e) == "InvalidSignatureException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as e:
        bad.create_thing(thingName="never")
    assert error_code(e) == "InvalidSignatureException"
    stranger = fleet.client("iot", access_key="AKIAIOSFODNN7EXAMPLE", secret_key="x" * 40)
    with pytest.raises(ClientError) as e:
        stranger.list_things()
    assert error_code(e) == "UnrecognizedClientException"
    assert fleet.client("iot").list_things()["things"] == []

    creds = Path(fleet.root) / "wrong-credentials"
    creds.write_text(f"[default]\naws_access_key_id = {fleet.access_key}\naws_secret_access_key = wrong\n")
    env = fleet.cli_env()
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
    from conftest import aws_cli

    p = subprocess.run([aws_cli(), "--endpoint-url", fleet.api, "iot", "list-things"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "InvalidSignatureException" in p.stderr


def test_pagination(fleet, iot):
    names = [f"thing-{i:02}" for i in range(7)]
    for n in names:
        iot.create_thing(thingName=n)
    first = iot.list_things(maxResults=3)
    assert [t["thingName"] for t in first["things"]] == names[:3]
    second = iot.list_things(maxResults=3, nextToken=first["nextToken"])
    assert [t["thingName"] for t in second["things"]] == names[3:6]
    third = iot.list_things(maxResults=3, nextToken=second["nextToken"])
    assert [t["thingName"] for t in third["things"]] == names[6:]
    assert "nextToken" not in third
    pages = list(iot.get_paginator("list_things").paginate(PaginationConfig={"PageSize": 2}))
    assert len(pages) == 4
    assert [t["thingName"] for p in pages for t in p["things"]] == names
    # The CLI follows the tokens itself; --max-items stops early and hands back a token.
    assert [t["thingName"] for t in fleet.aws("list-things", "--page-size", "2")["things"]] == names
    some = fleet.aws("list-things", "--max-items", "4", "--page-size", "3")
    assert [t["thingName"] for t in some["things"]] == names[:4] and some["NextToken"]

    for _ in range(3):
        iot.create_keys_and_certificate()
    ids = sorted(c["certificateId"] for c in iot.list_certificates()["certificates"])
    page = iot.list_certificates(pageSize=2)
    assert len(page["certificates"]) == 2 and page["nextMarker"]
    rest = iot.list_certificates(pageSize=2, marker=page["nextMarker"])
    assert sorted(c["certificateId"] for c in page["certificates"] + rest["certificates"]) == ids
    assert "nextMarker" not in rest

    with pytest.raises(ClientError) as e:
        iot.list_things(nextToken="not-a-token-we-gave")
    assert error_code(e) == "InvalidRequestException"


def test_kill_9_during_a_burst_loses_no_acknowledged_thing(fleet_root, fleet_database):
    fleet = Fleet(fleet_root, fleet_database).start()
    acknowledged = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w):
        iot = fleet.client("iot")
        i = 0
        while not stop.is_set():
            name = f"burst-{w}-{i}"
            try:
                iot.create_thing(thingName=name, attributePayload={"attributes": {"w": str(w)}})
            except Exception:
                return  # the fleet is gone: this one was not acknowledged
            with lock:
                acknowledged.append(name)
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    try:
        for t in threads:
            t.start()
        from lichen_support import wait_for

        wait_for(lambda: len(acknowledged) >= 40, 120, "40 acknowledged CreateThing calls")
        fleet.kill9()  # while the writers are still sending
        stop.set()
        for t in threads:
            t.join(timeout=60)
        with lock:
            acked = list(acknowledged)

        fleet.start()
        iot = fleet.client("iot")
        stored = {t["thingName"] for p in iot.get_paginator("list_things").paginate() for t in p["things"]}
        missing = [n for n in acked if n not in stored]
        assert not missing, f"{len(missing)} acknowledged things lost: {missing[:5]}"
        for n in acked[:5] + acked[-5:]:
            assert iot.describe_thing(thingName=n)["attributes"]["w"] == n.split("-")[1]
    finally:
        stop.set()
        fleet.stop()


def test_dynamic_thing_groups_follow_thing_attributes(fleet, iot):
    iot.create_thing(thingName="pump-1", attributePayload={"attributes": {"fw": "1.0", "site": "north"}})
    iot.create_thing(thingName="pump-2", attributePayload={"attributes": {"fw": "2.0", "site": "north"}})
    r = iot.create_dynamic_thing_group(thingGroupName="old-firmware", queryString="attributes.fw:1.*")
    assert r["queryString"] == "attributes.fw:1.*" and r["indexName"] == "AWS_Things"
    d = iot.describe_thing_group(thingGroupName="old-firmware")
    assert d["queryString"] == "attributes.fw:1.*" and d["status"] == "ACTIVE"
    assert iot.list_things_in_thing_group(thingGroupName="old-firmware")["things"] == ["pump-1"]

    # Membership is kept current as things are created and updated.
    iot.create_thing(thingName="pump-3", attributePayload={"attributes": {"fw": "1.4"}})
    iot.update_thing(thingName="pump-1", attributePayload={"attributes": {"fw": "2.1"}, "merge": True})
    assert iot.list_things_in_thing_group(thingGroupName="old-firmware")["things"] == ["pump-3"]
    assert [g["groupName"] for g in iot.list_thing_groups_for_thing(thingName="pump-3")["thingGroups"]] == ["old-firmware"]

    with pytest.raises(ClientError) as e:
        iot.add_thing_to_thing_group(thingGroupName="old-firmware", thingName="pump-2")
    assert error_code(e) == "InvalidRequestException"
    with pytest.raises(ClientError) as e:
        iot.create_dynamic_thing_group(thingGroupName="broken", queryString="fw:1.*")
    assert error_code(e) == "InvalidRequestException"

    iot.update_dynamic_thing_group(thingGroupName="old-firmware", thingGroupProperties={}, queryString="attributes.site:north AND NOT attributes.fw:1.*")
    assert iot.list_things_in_thing_group(thingGroupName="old-firmware")["things"] == ["pump-1", "pump-2"]
    fleet.aws("delete-dynamic-thing-group", "--thing-group-name", "old-firmware")
    assert iot.list_thing_groups()["thingGroups"] == []


def test_the_audit_log_names_who_did_what(fleet, iot):
    iot.create_thing(thingName="audited")
    iot.create_policy(policyName="p", policyDocument=POLICY)
    with pytest.raises(ClientError):
        iot.create_thing(thingName="audited", thingTypeName="other")  # refused: not audited
    iot.delete_thing(thingName="audited")
    from conftest import lichen_bin

    database = ["--database", fleet.database] if fleet.database else []
    p = subprocess.run([lichen_bin(), "fleet", "audit", "--root", str(fleet.root), *database], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    entries = [json.loads(line) for line in p.stdout.splitlines()]
    mine = [(e["who"], e["operation"], e["resource"]) for e in entries if e["who"] == fleet.access_key]
    assert mine == [
        (fleet.access_key, "CreateThing", "audited"),
        (fleet.access_key, "CreatePolicy", "p"),
        (fleet.access_key, "DeleteThing", "audited"),
    ]
    assert all(e["atMs"] > 0 for e in entries)
    p = subprocess.run([lichen_bin(), "fleet", "audit", "--root", str(fleet.root), *database, "--resource", "p"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["operation"] for line in p.stdout.splitlines()] == ["CreatePolicy"]


def test_role_aliases_and_registered_certificates(fleet, iot):
    r = iot.create_role_alias(roleAlias="GreengrassCoreTokenExchangeRoleAlias", roleArn="arn:aws:iam::123456789012:role/TES", credentialDurationSeconds=3600)
    assert r["roleAliasArn"].endswith(":rolealias/GreengrassCoreTokenExchangeRoleAlias")
    d = iot.describe_role_alias(roleAlias="GreengrassCoreTokenExchangeRoleAlias")["roleAliasDescription"]
    assert d["roleArn"] == "arn:aws:iam::123456789012:role/TES" and d["credentialDurationSeconds"] == 3600
    assert iot.list_role_aliases()["roleAliases"] == ["GreengrassCoreTokenExchangeRoleAlias"]
    with pytest.raises(ClientError) as e:
        iot.create_role_alias(roleAlias="GreengrassCoreTokenExchangeRoleAlias", roleArn="arn:aws:iam::123456789012:role/Other")
    assert error_code(e) == "ResourceAlreadyExistsException"
    iot.delete_role_alias(roleAlias="GreengrassCoreTokenExchangeRoleAlias")
    with pytest.raises(ClientError) as e:
        iot.describe_role_alias(roleAlias="GreengrassCoreTokenExchangeRoleAlias")
    assert error_code(e) == "ResourceNotFoundException"

    # A certificate the fleet CA signed registers (with the CA given); a stranger's only without a CA.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "d")])).sign(key, hashes.SHA256())
    issued = iot.create_certificate_from_csr(certificateSigningRequest=csr.public_bytes(serialization.Encoding.PEM).decode())
    iot.delete_certificate(certificateId=issued["certificateId"])
    ca_pem = Path(fleet.endpoints["rootCa"]).read_text()
    r = iot.register_certificate(certificatePem=issued["certificatePem"], caCertificatePem=ca_pem, setAsActive=True)
    assert r["certificateId"] == issued["certificateId"]
    assert iot.describe_certificate(certificateId=r["certificateId"])["certificateDescription"]["status"] == "ACTIVE"

    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "self")])
    own = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    own_pem = own.public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(ClientError) as e:
        iot.register_certificate(certificatePem=own_pem)
    assert error_code(e) == "CertificateValidationException"
    r = iot.register_certificate_without_ca(certificatePem=own_pem, status="ACTIVE")
    assert iot.describe_certificate(certificateId=r["certificateId"])["certificateDescription"]["status"] == "ACTIVE"


TEMPLATE = {
    "Parameters": {"SerialNumber": {"Type": "String"}, "Location": {"Type": "String", "Default": "WA"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["ThingPrefix_", {"Ref": "SerialNumber"}]]}},
        },
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
    },
    "DeviceConfiguration": {"Site": {"Ref": "Location"}},
}


def test_provisioning_templates(fleet, iot):
    r = iot.create_provisioning_template(
        templateName="fleet-by-claim",
        description="claim",
        templateBody=json.dumps(TEMPLATE),
        enabled=True,
        provisioningRoleArn="arn:aws:iam::123456789012:role/Provisioning",
        preProvisioningHook={"targetArn": "arn:aws:lambda:us-east-1:123456789012:function:hook"},
    )
    assert r["templateArn"].endswith(":provisioningtemplate/fleet-by-claim")
    d = iot.describe_provisioning_template(templateName="fleet-by-claim")
    assert json.loads(d["templateBody"]) == TEMPLATE
    assert d["enabled"] is True and d["type"] == "FLEET_PROVISIONING"
    assert d["preProvisioningHook"]["targetArn"].endswith(":function:hook")
    iot.update_provisioning_template(templateName="fleet-by-claim", enabled=False, removePreProvisioningHook=True)
    d = iot.describe_provisioning_template(templateName="fleet-by-claim")
    assert d["enabled"] is False and "preProvisioningHook" not in d
    listed = fleet.aws("list-provisioning-templates")["templates"]
    assert [t["templateName"] for t in listed] == ["fleet-by-claim"]
    with pytest.raises(ClientError) as e:
        iot.create_provisioning_template(templateName="broken", templateBody="{}", provisioningRoleArn="arn:aws:iam::123456789012:role/P")
    assert error_code(e) == "InvalidRequestException"
    iot.delete_provisioning_template(templateName="fleet-by-claim")
    with pytest.raises(ClientError) as e:
        iot.describe_provisioning_template(templateName="fleet-by-claim")
    assert error_code(e) == "ResourceNotFoundException"


def test_thing_types(fleet, iot):
    with pytest.raises(ClientError) as e:
        iot.create_thing(thingName="m1", thingTypeName="motor")
    assert error_code(e) == "InvalidRequestException"
    r = iot.create_thing_type(thingTypeName="motor", thingTypeProperties={"thingTypeDescription": "motors", "searchableAttributes": ["rpm"]})
    assert r["thingTypeArn"].endswith(":thingtype/motor")
    iot.create_thing(thingName="m1", thingTypeName="motor", attributePayload={"attributes": {"rpm": "900"}})
    assert iot.describe_thing(thingName="m1")["thingTypeName"] == "motor"
    assert [t["thingName"] for t in iot.list_things(thingTypeName="motor")["things"]] == ["m1"]
    d = iot.describe_thing_type(thingTypeName="motor")
    assert d["thingTypeProperties"]["searchableAttributes"] == ["rpm"] and d["thingTypeMetadata"]["deprecated"] is False
    assert [t["thingTypeName"] for t in fleet.aws("list-thing-types")["thingTypes"]] == ["motor"]
    iot.deprecate_thing_type(thingTypeName="motor")
    assert iot.describe_thing_type(thingTypeName="motor")["thingTypeMetadata"]["deprecated"] is True
    with pytest.raises(ClientError) as e:
        iot.create_thing(thingName="m2", thingTypeName="motor")
    assert error_code(e) == "InvalidRequestException"
    iot.update_thing(thingName="m1", removeThingType=True)
    iot.delete_thing_type(thingTypeName="motor")
    with pytest.raises(ClientError) as e:
        iot.describe_thing_type(thingTypeName="motor")
    assert error_code(e) == "ResourceNotFoundException"
