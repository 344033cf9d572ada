"""The credentials provider: a device's certificate (mutual TLS on the data plane) exchanged for
temporary credentials through a role alias, as the core's token exchange service asks for them,
and those credentials used with unmodified boto3 against the control plane, scoped to the
permissions policy of the alias's role."""

import datetime
import json
import subprocess
import uuid

import botocore.exceptions
import pytest
import requests
from fleet_devices import DEVICE_POLICY, Device
from lichen_support import lichen_bin

ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["iot:DescribeThing", "iot:ListThings"], "Resource": "*"}],
}


def assume_policy(resource="arn:aws:iot:*:*:rolealias/*"):
    return {
        "Version": "2012-10-17",
        "Statement": DEVICE_POLICY["Statement"]
        + [{"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate", "Resource": resource}],
    }


def put_role_policy(fleet, role_arn, policy, tmp_path):
    f = tmp_path / f"role-{uuid.uuid4().hex[:6]}.json"
    f.write_text(json.dumps(policy))
    p = subprocess.run(
        [lichen_bin(), "fleet", "role", "put", "--root", str(fleet.root), "--role-arn", role_arn, "--policy-file", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr


def role_alias(fleet, iot, tmp_path, policy=ROLE_POLICY, duration=900):
    name = f"alias-{uuid.uuid4().hex[:8]}"
    role_arn = f"arn:aws:iam::{'1' * 12}:role/{name}-role"
    iot.create_role_alias(roleAlias=name, roleArn=role_arn, credentialDurationSeconds=duration)
    if policy is not None:
        put_role_policy(fleet, role_arn, policy, tmp_path)
    return name


def get_credentials(fleet, device, alias, thing=None, cert=None):
    """What the token exchange service sends: GET over mutual TLS with the thing name header."""
    return requests.get(
        f"{fleet.endpoints['credentials']}/role-aliases/{alias}/credentials",
        headers={"x-amzn-iot-thingname": thing or device.name},
        cert=cert or (str(device.cert), str(device.key)),
        verify=fleet.root_ca,
        timeout=30,
    )


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def test_endpoints_and_describe_endpoint_name_the_credentials_provider(fleet, iot):
    url = fleet.endpoints["credentials"]
    assert url.startswith("https://127.0.0.1:")
    assert fleet.endpoints["dataPlane"] == url
    host = iot.describe_endpoint(endpointType="iot:CredentialProvider")["endpointAddress"]
    assert host == "localhost"


def test_a_things_certificate_gets_credentials_boto3_uses_within_the_roles_policy(fleet, iot, tmp_path):
    alias = role_alias(fleet, iot, tmp_path)
    device = Device(fleet, iot, tmp_path, policy=assume_policy())
    before = datetime.datetime.now(datetime.timezone.utc)
    r = get_credentials(fleet, device, alias)
    assert r.status_code == 200, r.text
    creds = r.json()["credentials"]
    assert set(creds) == {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}
    assert creds["accessKeyId"].startswith("ASIA")
    assert creds["expiration"].endswith("Z")
    expires = datetime.datetime.strptime(creds["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    lifetime = (expires - before).total_seconds()
    assert 800 < lifetime <= 901, lifetime

    temp = fleet.client(
        "iot",
        access_key=creds["accessKeyId"],
        secret_key=creds["secretAccessKey"],
        session_token=creds["sessionToken"],
    )
    assert temp.describe_thing(thingName=device.name)["thingName"] == device.name
    assert any(t["thingName"] == device.name for t in temp.list_things()["things"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        temp.delete_thing(thingName=device.name)
    assert error_code(e) == "AccessDeniedException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(botocore.exceptions.ClientError) as e:
        temp.create_keys_and_certificate(setAsActive=True)
    assert error_code(e) == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fleet.client(
            "iot-data",
            access_key=creds["accessKeyId"],
            secret_key=creds["secretAccessKey"],
            session_token=creds["sessionToken"],
        ).publish(topic="devices/x/t", payload=b"{}")
    assert error_code(e) == "AccessDeniedException"
    # The thing is still there: the refused call did nothing.
    assert iot.describe_thing(thingName=device.name)["thingName"] == device.name

    # The key without its token, or with another token, is not accepted.
    forged = fleet.client(
        "iot", access_key=creds["accessKeyId"], secret_key=creds["secretAccessKey"], session_token="x" + creds["sessionToken"]
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        forged.list_things()
    assert error_code(e) == "UnrecognizedClientException"
    bare = fleet.client("iot", access_key=creds["accessKeyId"], secret_key=creds["secretAccessKey"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bare.list_things()
    assert error_code(e) == "UnrecognizedClientException"


def test_a_role_without_a_policy_grants_nothing(fleet, iot, tmp_path):
    alias = role_alias(fleet, iot, tmp_path, policy=None)
    device = Device(fleet, iot, tmp_path, policy=assume_policy())
    r = get_credentials(fleet, device, alias)
    assert r.status_code == 200, r.text
    c = r.json()["credentials"]
    temp = fleet.client("iot", access_key=c["accessKeyId"], secret_key=c["secretAccessKey"], session_token=c["sessionToken"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        temp.describe_thing(thingName=device.name)
    assert error_code(e) == "AccessDeniedException"


def test_a_revoked_certificate_gets_no_credentials(fleet, iot, tmp_path):
    alias = role_alias(fleet, iot, tmp_path)
    device = Device(fleet, iot, tmp_path, policy=assume_policy())
    assert get_credentials(fleet, device, alias).status_code == 200
    iot.update_certificate(certificateId=device.cert_id, newStatus="REVOKED")
    r = get_credentials(fleet, device, alias)
    assert r.status_code == 403
    assert r.json() == {"message": "Access Denied"}


def test_a_thing_not_attached_to_the_certificate_gets_no_credentials(fleet, iot, tmp_path):
    alias = role_alias(fleet, iot, tmp_path)
    device = Device(fleet, iot, tmp_path, policy=assume_policy())
    other = Device(fleet, iot, tmp_path, policy=assume_policy())
    r = get_credentials(fleet, device, alias, thing=other.name)
    assert r.status_code == 403
    assert r.json() == {"message": "Invalid thing name passed"}


def test_a_policy_without_assume_role_gets_no_credentials(fleet, iot, tmp_path):
    alias = role_alias(fleet, iot, tmp_path)
    plain = Device(fleet, iot, tmp_path)
    r = get_credentials(fleet, plain, alias)
    assert r.status_code == 403
    assert r.json() == {"message": "Access Denied"}
    # A policy naming another alias does not cover this one.
    narrow = Device(fleet, iot, tmp_path, policy=assume_policy("arn:aws:iot:*:*:rolealias/other"))
    r = get_credentials(fleet, narrow, alias)
    assert r.status_code == 403


def test_an_unknown_role_alias_is_refused(fleet, iot, tmp_path):
    device = Device(fleet, iot, tmp_path, policy=assume_policy())
    r = get_credentials(fleet, device, "no-such-alias")
    assert r.status_code == 404
    assert r.json() == {"message": "Role alias does not exist"}


def test_the_data_plane_requires_a_client_certificate_from_the_fleet_ca(fleet, iot, tmp_path):
    device = Device(fleet, iot, tmp_path, policy=assume_policy())
    alias = role_alias(fleet, iot, tmp_path)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(
            f"{fleet.endpoints['credentials']}/role-aliases/{alias}/credentials",
            headers={"x-amzn-iot-thingname": device.name},
            verify=fleet.root_ca,
            timeout=30,
        )
