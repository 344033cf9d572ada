"""`aws.greengrass.SecretManager` on a real core enrolled with a real fleet: a secret created on
the fleet with boto3 is fetched with the token exchange's credentials, read by a component
through the unmodified awsiotsdk IPC client, refused to a component without the policy, still
readable after the fleet stops and the core restarts, and never on disk in plain text."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from fleet_core import Core, cores  # noqa: F401 (fixture)
from test_credentials import put_role_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402

READER = Path(__file__).resolve().parent / "secret_reader.py"
SM = "aws.greengrass.SecretManager"
ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}],
}


def enroll(fleet, thing, out, alias):
    p = subprocess.run(
        [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(out), "--role-alias", alias],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr


def reader(recipes, name, out, secret_id, allowed_arn=None, stage=None):
    cmd = " ".join([sys.executable, "-u", str(READER), str(out), secret_id, *([stage] if stage else [])])
    r = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": "1.0.0",
        "ComponentDependencies": {SM: {"VersionRequirement": ">=2.0.0"}},
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": cmd}}],
    }
    if allowed_arn:
        r["ComponentConfiguration"] = {
            "DefaultConfiguration": {
                "accessControl": {
                    SM: {
                        f"{name}:secrets:1": {
                            "policyDescription": "read the database password",
                            "operations": ["aws.greengrass#GetSecretValue"],
                            "resources": [allowed_arn],
                        }
                    }
                }
            }
        }
    (recipes / f"{name}.json").write_text(json.dumps(r))


def enrolled_core(fleet, iot, tmp_path, cores):
    """A started core enrolled with the fleet, its role alias allowed ROLE_POLICY (900 s
    credentials); registered in `cores` so the fixture stops it."""
    alias = f"alias-{uuid.uuid4().hex[:8]}"
    role_arn = f"arn:aws:iam::{'1' * 12}:role/{alias}-role"
    iot.create_role_alias(roleAlias=alias, roleArn=role_arn, credentialDurationSeconds=900)
    put_role_policy(fleet, role_arn, ROLE_POLICY, tmp_path)
    enroll(fleet, f"core-{uuid.uuid4().hex[:6]}", tmp_path / "enrolled", alias)
    work = tmp_path / "core"
    work.mkdir()
    core = Core(work / "root", tmp_path / "enrolled" / "config.yaml", work)
    cores.append(core)
    core.start()
    return core


def deploy(core, recipes, merge, config=None):
    args = [lichen_bin(), "deployment", "create", "--wait", "--json", "--root", str(core.root), "--recipe-dir", str(recipes)]
    for m in merge:
        args += ["--merge", m]
    if config:
        args += ["--update-config", json.dumps(config)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"deployment failed: {p.stdout}{p.stderr}"


def result(path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def files_containing(root, needle):
    hits = []
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            try:
                if needle in open(p, "rb").read():
                    hits.append(p)
            except OSError:
                pass
    return hits


def test_a_fleet_secret_reaches_an_allowed_component_only_and_survives_offline_encrypted(fleet, iot, tmp_path, cores):  # noqa: F811
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    sm = fleet.client("secretsmanager")
    arn = sm.create_secret(Name="db/password", SecretString="old-" + secret)["ARN"]
    sm.put_secret_value(SecretId=arn, SecretString=secret)
    other_arn = sm.create_secret(Name="db/other", SecretString="another secret")["ARN"]

    core = enrolled_core(fleet, iot, tmp_path, cores)

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    allowed, denied, previous, by_name = (tmp_path / n for n in ("allowed.json", "denied.json", "previous.json", "byname.json"))
    other_policy = tmp_path / "otherpolicy.json"
    reader(recipes, "com.example.Allowed", allowed, arn, allowed_arn=arn)
    reader(recipes, "com.example.Denied", denied, arn)
    reader(recipes, "com.example.Previous", previous, arn, allowed_arn=arn, stage="AWSPREVIOUS")
    reader(recipes, "com.example.ByName", by_name, "db/password", allowed_arn=arn)
    # A policy for another secret of this device does not cover this one.
    reader(recipes, "com.example.OtherPolicy", other_policy, arn, allowed_arn=other_arn)
    cloud_secrets = [{"arn": arn, "labels": ["AWSPREVIOUS"]}, {"arn": other_arn}]
    config = {SM: {"MERGE": {"cloudSecrets": cloud_secrets, "lichen": {"endpoint": fleet.api}}}}
    deploy(
        core,
        recipes,
        [
            "com.example.Allowed=1.0.0",
            "com.example.Denied=1.0.0",
            "com.example.Previous=1.0.0",
            "com.example.ByName=1.0.0",
            "com.example.OtherPolicy=1.0.0",
        ],
        config,
    )
    for p in (allowed, denied, previous, by_name, other_policy):
        wait_for(lambda p=p: result(p), 60, f"{p.name}\n{core.log()}")
    assert result(allowed) == {"value": secret, "versionStage": ["AWSCURRENT"], "secretId": arn, "versionId": result(allowed)["versionId"]}
    assert result(denied) == {"error": "UnauthorizedError"}
    assert result(other_policy) == {"error": "UnauthorizedError"}
    assert result(previous)["value"] == "old-" + secret and result(previous)["versionStage"] == ["AWSPREVIOUS"]
    assert result(by_name)["value"] == secret

    # The fleet goes away and the core restarts: the encrypted store answers.
    fleet.stop()
    core.stop()
    core.start()
    later = tmp_path / "later.json"
    reader(recipes, "com.example.Later", later, arn, allowed_arn=arn)
    deploy(core, recipes, ["com.example.Later=1.0.0"])
    wait_for(lambda: result(later), 60, f"later.json\n{core.log()}")
    assert result(later)["value"] == secret

    core.stop()
    assert files_containing(core.root, secret.encode()) == []
    assert (core.root / "secrets" / "secrets.json").exists()
    assert os.stat(core.root / "secrets" / "secrets.json").st_mode & 0o777 == 0o600


def test_a_new_value_on_the_fleet_reaches_components_at_the_periodic_refresh(fleet, iot, tmp_path, cores):  # noqa: F811
    sm = fleet.client("secretsmanager")
    arn = sm.create_secret(Name="rotating", SecretString="first-value")["ARN"]
    core = enrolled_core(fleet, iot, tmp_path, cores)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    first = tmp_path / "first.json"
    reader(recipes, "com.example.First", first, arn, allowed_arn=arn)
    # Every 0.02 min (1.2 s).
    config = {SM: {"MERGE": {"cloudSecrets": [{"arn": arn}], "periodicRefreshIntervalMin": 0.02, "lichen": {"endpoint": fleet.api}}}}
    deploy(core, recipes, ["com.example.First=1.0.0"], config)
    wait_for(lambda: result(first), 60, f"first.json\n{core.log()}")
    assert result(first)["value"] == "first-value"

    sm.put_secret_value(SecretId=arn, SecretString="second-value")
    # Each sync rewrites the store (fresh nonces): after two rewrites, one sync began after the put.
    store = core.root / "secrets" / "secrets.json"
    for _ in range(2):
        before = store.read_bytes()
        wait_for(lambda before=before: store.read_bytes() != before, 30, "a periodic refresh")
    assert "second-value" not in store.read_text()
    second = tmp_path / "second.json"
    reader(recipes, "com.example.Second", second, arn, allowed_arn=arn)
    fleet.stop()  # answered from the refreshed store, not by a fetch on demand
    deploy(core, recipes, ["com.example.Second=1.0.0"])
    wait_for(lambda: result(second), 60, f"second.json\n{core.log()}")
    assert result(second)["value"] == "second-value"


def test_a_deployment_syncs_the_secrets_again(fleet, iot, tmp_path, cores):  # noqa: F811
    sm = fleet.client("secretsmanager")
    arn = sm.create_secret(Name="on-deploy", SecretString="first-value")["ARN"]
    core = enrolled_core(fleet, iot, tmp_path, cores)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    config = {SM: {"MERGE": {"cloudSecrets": [{"arn": arn}], "lichen": {"endpoint": fleet.api}}}}
    deploy(core, recipes, [f"{SM}=2.2.2"], config)
    store = core.root / "secrets" / "secrets.json"
    wait_for(lambda: store.exists(), 30, "the first sync")

    sm.put_secret_value(SecretId=arn, SecretString="second-value")
    before = store.read_bytes()
    (recipes / "com.example.Unrelated.json").write_text(json.dumps({
        "RecipeFormatVersion": "2020-01-25", "ComponentName": "com.example.Unrelated", "ComponentVersion": "1.0.0",
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": "true"}}],
    }))
    deploy(core, recipes, ["com.example.Unrelated=1.0.0"])
    wait_for(lambda: store.read_bytes() != before, 30, f"the sync after the deployment\n{core.log()}")
    fleet.stop()
    out = tmp_path / "after.json"
    reader(recipes, "com.example.After", out, arn, allowed_arn=arn)
    deploy(core, recipes, ["com.example.After=1.0.0"])
    wait_for(lambda: result(out), 60, f"after.json\n{core.log()}")
    assert result(out)["value"] == "second-value"
