"""The fleet's `secretsmanager` subset through unmodified boto3: versions and the AWSCURRENT /
AWSPREVIOUS labels, lookups by name, ARN, version id and label, listing and deletion, the error
shapes botocore turns into exceptions, and temporary credentials scoped by the role's policy."""

import uuid

import botocore.exceptions
import pytest


# Both registry stores (`lichen fleet role put` reads SQLite only, so the credentials test is
# SQLite's).
BOTH_STORES = pytest.mark.parametrize("fleet_store", ["sqlite", "postgres"])


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


@BOTH_STORES
def test_versions_move_the_current_and_previous_labels(fleet):
    sm = fleet.client("secretsmanager")
    made = sm.create_secret(Name="db/password", SecretString="first", Description="the db")
    assert made["ARN"].startswith("arn:aws:secretsmanager:us-east-1:") and ":secret:db/password-" in made["ARN"]
    v1 = made["VersionId"]
    got = sm.get_secret_value(SecretId="db/password")
    assert (got["SecretString"], got["VersionId"], got["VersionStages"]) == ("first", v1, ["AWSCURRENT"])
    assert got["ARN"] == made["ARN"] and got["Name"] == "db/password"

    v2 = sm.put_secret_value(SecretId=made["ARN"], SecretString="second")["VersionId"]
    assert sm.get_secret_value(SecretId=made["ARN"])["SecretString"] == "second"
    prev = sm.get_secret_value(SecretId="db/password", VersionStage="AWSPREVIOUS")
    assert (prev["SecretString"], prev["VersionId"]) == ("first", v1)
    assert sm.get_secret_value(SecretId="db/password", VersionId=v2)["VersionStages"] == ["AWSCURRENT"]

    v3 = sm.put_secret_value(SecretId="db/password", SecretBinary=b"\x00\xffthird")["VersionId"]
    assert sm.get_secret_value(SecretId="db/password")["SecretBinary"] == b"\x00\xffthird"
    stages = sm.describe_secret(SecretId="db/password")["VersionIdsToStages"]
    assert stages == {v1: [], v2: ["AWSPREVIOUS"], v3: ["AWSCURRENT"]}

    # A retried request (same token, same value) is the same version; another value is refused.
    token = str(uuid.uuid4())
    a = sm.put_secret_value(SecretId="db/password", SecretString="x", ClientRequestToken=token)
    b = sm.put_secret_value(SecretId="db/password", SecretString="x", ClientRequestToken=token)
    assert a["VersionId"] == b["VersionId"] == token
    with pytest.raises(botocore.exceptions.ClientError) as e:
        sm.put_secret_value(SecretId="db/password", SecretString="y", ClientRequestToken=token)
    assert code(e) == "ResourceExistsException"


@BOTH_STORES
def test_list_delete_and_errors(fleet):
    sm = fleet.client("secretsmanager")
    for n in ("a", "b", "c"):
        sm.create_secret(Name=f"list-{n}", SecretString=n)
    names = [s["Name"] for p in sm.get_paginator("list_secrets").paginate(PaginationConfig={"PageSize": 2}) for s in p["SecretList"]]
    assert names == ["list-a", "list-b", "list-c"]
    with pytest.raises(sm.exceptions.ResourceExistsException):
        sm.create_secret(Name="list-a", SecretString="again")
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.get_secret_value(SecretId="nope")
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.get_secret_value(SecretId="list-a", VersionStage="AWSPREVIOUS")
    deleted = sm.delete_secret(SecretId="list-b")
    assert deleted["Name"] == "list-b" and deleted["DeletionDate"]
    with pytest.raises(sm.exceptions.InvalidRequestException):
        sm.get_secret_value(SecretId="list-b")
    assert [s["Name"] for s in sm.list_secrets()["SecretList"]] == ["list-a", "list-c"]
    sm.delete_secret(SecretId="list-c", ForceDeleteWithoutRecovery=True)
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.describe_secret(SecretId="list-c")


def test_temporary_credentials_read_only_the_secrets_the_role_allows(fleet, iot, tmp_path):
    from fleet_devices import Device
    from test_credentials import assume_policy, get_credentials, role_alias

    sm = fleet.client("secretsmanager")
    allowed = sm.create_secret(Name="allowed", SecretString="yes")["ARN"]
    sm.create_secret(Name="other", SecretString="no")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": allowed}],
    }
    alias = role_alias(fleet, iot, tmp_path, policy=policy)
    device = Device(fleet, iot, tmp_path, policy=assume_policy())
    c = get_credentials(fleet, device, alias).json()["credentials"]
    temp = fleet.client("secretsmanager", c["accessKeyId"], c["secretAccessKey"], c["sessionToken"])
    assert temp.get_secret_value(SecretId="allowed")["SecretString"] == "yes"
    assert temp.get_secret_value(SecretId=allowed)["SecretString"] == "yes"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        temp.get_secret_value(SecretId="other")
    assert code(e) == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        temp.create_secret(Name="mine", SecretString="z")
    assert code(e) == "AccessDeniedException"
