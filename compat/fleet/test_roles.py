"""Users and roles on a real `lichen fleet serve`: users made with `lichen fleet user`, their access
keys used by unmodified boto3 clients. A viewer reads; an operator runs the fleet (things, components,
deployments) but writes no policy; an admin does everything; a role change or a deletion applies to
the next request. Each test runs on both registry stores."""

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin  # noqa: E402


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_store(request):
    """Every test here runs on both registry stores (see conftest.py)."""
    return request.param


RECIPE = """RecipeFormatVersion: '2020-01-25'
ComponentName: com.example.Roles
ComponentVersion: '1.0.0'
Manifests:
  - Platform:
      os: linux
    Lifecycle:
      run: echo roles
"""

POLICY = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]})


def user_cli(fleet, *args, stdin=None, check=True):
    """`lichen fleet user <args>` on the fleet's registry (its root, or its PostgreSQL database)."""
    env = dict(os.environ, LICHEN_FLEET_ROOT=str(fleet.root))
    if fleet.database:
        env["LICHEN_FLEET_DATABASE"] = fleet.database
    p = subprocess.run([lichen_bin(), "fleet", "user", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, f"lichen fleet user {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return p


def user_with_key(fleet, tmp_path, name, role):
    """Creates user `name` with `role` and an access key written to a folder; its (id, secret)."""
    p = user_cli(fleet, "create", name, "--role", role)
    assert len(p.stdout.strip()) >= 40, "a generated password is printed"
    out = tmp_path / f"{name}-credentials"
    user_cli(fleet, "create-access-key", name, "--out", str(out))
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    assert oct((out / "credentials").stat().st_mode & 0o777) == "0o600"
    c = configparser.ConfigParser()
    c.read(out / "credentials")
    return c["default"]["aws_access_key_id"], c["default"]["aws_secret_access_key"]


def refused(call, code="AccessDeniedException"):
    with pytest.raises(ClientError) as e:
        call()
    err = e.value.response["Error"]
    assert err["Code"] == code, e.value.response
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, e.value.response
    return err.get("Message", "")


def test_a_viewer_reads_but_changes_nothing(fleet, tmp_path):
    admin_iot = fleet.client("iot")
    admin_iot.create_thing(thingName="seen")
    fleet.client("s3").create_bucket(Bucket="artifacts")
    key = user_with_key(fleet, tmp_path, "viewer1", "viewer")
    iot = fleet.client("iot", *key)
    gg = fleet.client("greengrassv2", *key)
    s3 = fleet.client("s3", *key)

    assert [t["thingName"] for t in iot.list_things()["things"]] == ["seen"]
    assert iot.describe_thing(thingName="seen")["thingName"] == "seen"
    assert gg.list_deployments()["deployments"] == []
    assert gg.list_components()["components"] == []
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["artifacts"]

    m = refused(lambda: iot.create_thing(thingName="not-made"))
    assert "iot:CreateThing" in m and "operator" in m, m
    m = refused(
        lambda: gg.create_deployment(
            targetArn=admin_iot.describe_thing(thingName="seen")["thingArn"],
            components={"com.example.Roles": {"componentVersion": "1.0.0"}},
        )
    )
    assert "greengrass:CreateDeployment" in m and "operator" in m, m
    refused(lambda: gg.create_component_version(inlineRecipe=RECIPE.encode()))
    # S3 answers in its own XML shape and code.
    refused(lambda: s3.put_object(Bucket="artifacts", Key="a.txt", Body=b"x"), code="AccessDenied")
    with pytest.raises(ClientError):
        admin_iot.describe_thing(thingName="not-made")
    assert fleet.client("s3").list_objects_v2(Bucket="artifacts").get("KeyCount", 0) == 0


def test_an_operator_deploys_but_writes_no_policy(fleet, tmp_path):
    key = user_with_key(fleet, tmp_path, "op1", "operator")
    iot = fleet.client("iot", *key)
    gg = fleet.client("greengrassv2", *key)
    group = iot.create_thing_group(thingGroupName="line-1")
    iot.create_thing(thingName="press-1")
    iot.add_thing_to_thing_group(thingGroupName="line-1", thingName="press-1")
    gg.create_component_version(inlineRecipe=RECIPE.encode())
    d = gg.create_deployment(targetArn=group["thingGroupArn"], components={"com.example.Roles": {"componentVersion": "1.0.0"}})
    assert gg.get_deployment(deploymentId=d["deploymentId"])["targetArn"] == group["thingGroupArn"]
    cert = iot.create_keys_and_certificate(setAsActive=True)

    m = refused(lambda: iot.create_policy(policyName="p", policyDocument=POLICY))
    assert "iot:CreatePolicy" in m and "admin" in m, m
    refused(lambda: iot.create_role_alias(roleAlias="a", roleArn="arn:aws:iam::123456789012:role/r"))
    sm = fleet.client("secretsmanager", *key)
    refused(lambda: sm.create_secret(Name="db", SecretString="x"))

    # The admin writes the policy; the operator attaches it to a device certificate.
    fleet.client("iot").create_policy(policyName="p", policyDocument=POLICY)
    iot.attach_policy(policyName="p", target=cert["certificateArn"])
    assert [p["policyName"] for p in iot.list_attached_policies(target=cert["certificateArn"])["policies"]] == ["p"]


def test_admin_keys_do_everything_and_roles_apply_at_once(fleet, tmp_path):
    # The fleet's own admin key and a second admin's.
    for key in [(fleet.access_key, fleet.secret_key), user_with_key(fleet, tmp_path, "admin2", "admin")]:
        iot = fleet.client("iot", *key)
        name = f"p-{key[0]}"
        iot.create_policy(policyName=name, policyDocument=POLICY)
        iot.delete_policy(policyName=name)
        sm = fleet.client("secretsmanager", *key)
        sm.create_secret(Name=f"s-{key[0]}", SecretString="v")
        assert sm.get_secret_value(SecretId=f"s-{key[0]}")["SecretString"] == "v"

    key = user_with_key(fleet, tmp_path, "promoted", "viewer")
    iot = fleet.client("iot", *key)
    refused(lambda: iot.create_thing(thingName="t"))
    user_cli(fleet, "set-role", "promoted", "--role", "operator")
    iot.create_thing(thingName="t")
    user_cli(fleet, "set-role", "promoted", "--role", "viewer")
    refused(lambda: iot.delete_thing(thingName="t"))
    users = [json.loads(line) for line in user_cli(fleet, "list").stdout.splitlines()]
    assert {u["name"]: u["role"] for u in users} == {"admin": "admin", "admin2": "admin", "promoted": "viewer"}
    user_cli(fleet, "delete", "promoted")
    refused(lambda: iot.list_things(), code="UnrecognizedClientException")
    # The last admin stays.
    user_cli(fleet, "delete", "admin2")
    p = user_cli(fleet, "set-role", "admin", "--role", "viewer", check=False)
    assert p.returncode != 0 and "last admin" in p.stderr, p.stderr
    audit = [json.loads(line) for line in subprocess.run(
        [lichen_bin(), "fleet", "audit", "--root", str(fleet.root), *(["--database", fleet.database] if fleet.database else [])],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()]
    ops = [(e["operation"], e["resource"]) for e in audit if e["resource"] == "promoted"]
    assert ops == [("CreateUser", "promoted"), ("SetUserRole", "promoted"), ("SetUserRole", "promoted"), ("DeleteUser", "promoted")]


def test_the_console_password_is_made_at_first_start_and_kept(fleet):
    f = fleet.root / "admin" / "console-password"
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert oct(f.parent.stat().st_mode & 0o777) == "0o700"
    first = f.read_text().strip()
    assert len(first) >= 40
    fleet.stop()
    fleet.start()
    assert f.read_text().strip() == first
    # The password is the user admin's: `set-password` from stdin replaces it (and is checked).
    p = user_cli(fleet, "set-password", "admin", "--password-stdin", stdin="short\n", check=False)
    assert p.returncode != 0 and "password" in p.stderr, p.stderr
    user_cli(fleet, "set-password", "admin", "--password-stdin", stdin="a-new-long-password\n")
    users = [json.loads(line) for line in user_cli(fleet, "list").stdout.splitlines()]
    assert users[0]["name"] == "admin" and users[0]["role"] == "admin"
