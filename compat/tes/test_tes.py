"""`aws.greengrass.TokenExchangeService` on a real core enrolled with a real fleet: a component
that depends on it calls the fleet's `iot` API with unmodified boto3 and only the variables the
core injects; a component that does not depend on it gets no endpoint; credentials are fetched
again before they expire; the loopback endpoint refuses callers without a component token.
"""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from fleet_core import Core, cores  # noqa: F401 (fixture)
from test_credentials import put_role_policy  # compat/fleet helpers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402

COMPONENT = Path(__file__).resolve().parent / "tes_component.py"
TES = "aws.greengrass.TokenExchangeService"
ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["iot:DescribeThing"], "Resource": "*"}],
}


def make_alias(fleet, iot, tmp_path, duration=900):
    name = f"alias-{uuid.uuid4().hex[:8]}"
    role_arn = f"arn:aws:iam::{'1' * 12}:role/{name}-role"
    iot.create_role_alias(roleAlias=name, roleArn=role_arn, credentialDurationSeconds=duration)
    put_role_policy(fleet, role_arn, ROLE_POLICY, tmp_path)
    return name


def enroll(fleet, thing, out, *extra):
    p = subprocess.run(
        [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"lichen fleet enroll failed ({p.returncode}): {p.stderr}"
    return json.loads(p.stdout)


def recipe(recipes, name, args, depends=True):
    cmd = " ".join([sys.executable, "-u", str(COMPONENT), *map(str, args)])
    r = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": "1.0.0",
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": cmd}}],
    }
    if depends:
        r["ComponentDependencies"] = {TES: {"VersionRequirement": ">=2.0.0", "DependencyType": "HARD"}}
    (recipes / f"{name}.json").write_text(json.dumps(r))


def deploy(core, recipes, merge, config=None):
    args = [lichen_bin(), "deployment", "create", "--wait", "--json", "--root", str(core.root), "--recipe-dir", str(recipes)]
    for m in merge:
        args += ["--merge", m]
    if config:
        args += ["--update-config", json.dumps(config)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"deployment failed: {p.stdout}{p.stderr}"


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def start_core(fleet, iot, tmp_path, cores, alias):  # noqa: F811
    thing = f"core-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "enrolled"
    made = enroll(fleet, thing, out, "--role-alias", alias)
    assert made["roleAliasPolicyName"] == f"{thing}-role-alias-policy"
    work = tmp_path / "core"
    work.mkdir()
    core = Core(work / "root", out / "config.yaml", work)
    cores.append(core)
    core.start()
    return thing, core


def test_enroll_with_role_alias_writes_the_token_exchange_settings(fleet, iot, tmp_path):
    import yaml

    alias = make_alias(fleet, iot, tmp_path)
    made = enroll(fleet, "tes-enroll", tmp_path / "out", "--role-alias", alias)
    nucleus = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["services"]["aws.greengrass.Nucleus"]["configuration"]
    port = fleet.endpoints["credentials"].rsplit(":", 1)[1]
    assert nucleus["iotRoleAlias"] == alias
    assert nucleus["iotCredEndpoint"] == f"127.0.0.1:{port}"
    policies = {p["policyName"] for p in iot.list_attached_policies(target=made["certificateArn"])["policies"]}
    assert policies == {made["policyName"], made["roleAliasPolicyName"]}
    doc = json.loads(iot.get_policy(policyName=made["roleAliasPolicyName"])["policyDocument"])
    assert doc["Statement"][0]["Action"] == "iot:AssumeRoleWithCertificate"
    assert doc["Statement"][0]["Resource"].endswith(f":rolealias/{alias}")


def test_a_dependent_component_calls_the_fleet_with_boto3_and_only_injected_credentials(fleet, iot, tmp_path, cores):  # noqa: F811
    alias = make_alias(fleet, iot, tmp_path)
    thing, core = start_core(fleet, iot, tmp_path, cores, alias)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    with_tes, without = tmp_path / "with.jsonl", tmp_path / "without.jsonl"
    recipe(recipes, "com.example.WithTes", [with_tes, fleet.api, thing, 1, 0])
    recipe(recipes, "com.example.WithoutTes", [without, fleet.api, thing, 1, 0], depends=False)
    deploy(core, recipes, ["com.example.WithTes=1.0.0", "com.example.WithoutTes=1.0.0"])

    wait_for(lambda: lines(with_tes) and lines(without), 60, f"both components to report\n{core.log()}")
    seen = lines(with_tes)[0]
    assert seen["fullUri"].startswith("http://localhost:") and seen["fullUri"].endswith("/2016-11-01/credentialprovider/")
    assert seen["hasToken"] and seen["awsKeysInEnv"] == []
    assert "error" not in seen, seen
    assert seen["thingName"] == thing
    assert seen["accessKey"].startswith("ASIA")

    other = lines(without)[0]
    assert other["fullUri"] is None
    assert "NoCredentialsError" in other["error"], other

    # The endpoint itself: no token, a wrong token, a wrong path, a wrong method.
    url = seen["fullUri"]
    assert requests.get(url, timeout=10).status_code == 403
    assert requests.get(url, headers={"Authorization": "not-a-token"}, timeout=10).status_code == 403
    assert requests.get(url.replace("credentialprovider", "other"), timeout=10).status_code == 400
    assert requests.post(url, timeout=10).status_code == 405


def test_credentials_are_fetched_again_before_they_expire(fleet, iot, tmp_path, cores):  # noqa: F811
    # The fleet's shortest alias lifetime is 900 s; a refresh margin of 898 s makes the core's
    # cache due after ~2 s, so a few rounds of a component cross a refresh.
    alias = make_alias(fleet, iot, tmp_path, duration=900)
    thing, core = start_core(fleet, iot, tmp_path, cores, alias)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    out = tmp_path / "rounds.jsonl"
    recipe(recipes, "com.example.Rounds", [out, fleet.api, thing, 6, 1.0])
    deploy(core, recipes, ["com.example.Rounds=1.0.0"], {TES: {"MERGE": {"lichen": {"refreshMarginSec": 898}}}})

    wait_for(lambda: len(lines(out)) >= 6, 90, f"six rounds\n{core.log()}")
    rounds = lines(out)
    assert all("error" not in r and r["thingName"] == thing for r in rounds), rounds
    keys = [r["accessKey"] for r in rounds]
    assert len(set(keys)) >= 2, keys
    assert core.log().count("token exchange: fetched credentials") >= 2


def test_a_role_alias_the_certificate_may_not_assume_is_refused_to_the_component(fleet, iot, tmp_path, cores):  # noqa: F811
    alias = make_alias(fleet, iot, tmp_path)
    thing, core = start_core(fleet, iot, tmp_path, cores, alias)
    iot.detach_policy(policyName=f"{thing}-role-alias-policy", target=iot.list_thing_principals(thingName=thing)["principals"][0])
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    out = tmp_path / "denied.jsonl"
    recipe(recipes, "com.example.Denied", [out, fleet.api, thing, 1, 0])
    deploy(core, recipes, ["com.example.Denied=1.0.0"])
    wait_for(lambda: lines(out), 60, f"the component to report\n{core.log()}")
    assert "CredentialRetrievalError" in lines(out)[0]["error"], lines(out)
    assert "answered 403" in core.log()


def test_a_new_role_alias_takes_effect_without_waiting_for_expiry(fleet, iot, tmp_path, cores):  # noqa: F811
    alias = make_alias(fleet, iot, tmp_path)
    thing, core = start_core(fleet, iot, tmp_path, cores, alias)
    # A second alias whose role may do nothing; the device may assume it too.
    other = f"alias-{uuid.uuid4().hex[:8]}"
    iot.create_role_alias(roleAlias=other, roleArn=f"arn:aws:iam::{'1' * 12}:role/{other}-role", credentialDurationSeconds=900)
    cert = iot.list_thing_principals(thingName=thing)["principals"][0]
    iot.create_policy(policyName="assume-any", policyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate", "Resource": "*"}],
    }))
    iot.attach_policy(policyName="assume-any", target=cert)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    recipe(recipes, "com.example.First", [first, fleet.api, thing, 1, 0])
    deploy(core, recipes, ["com.example.First=1.0.0"])
    wait_for(lambda: lines(first), 60, f"the first component\n{core.log()}")
    assert lines(first)[0].get("thingName") == thing, lines(first)

    deploy(core, recipes, ["aws.greengrass.Nucleus=2.14.0"], {"aws.greengrass.Nucleus": {"MERGE": {"iotRoleAlias": other}}})
    recipe(recipes, "com.example.Second", [second, fleet.api, thing, 1, 0])
    deploy(core, recipes, ["com.example.Second=1.0.0"])
    wait_for(lambda: lines(second), 60, f"the second component\n{core.log()}")
    assert "AccessDenied" in lines(second)[0].get("error", ""), lines(second)


def test_without_the_default_policy_only_components_allowed_get_credentials_may_have_them(fleet, iot, tmp_path, cores):  # noqa: F811
    alias = make_alias(fleet, iot, tmp_path)
    thing, core = start_core(fleet, iot, tmp_path, cores, alias)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    allowed, refused = tmp_path / "allowed.jsonl", tmp_path / "refused.jsonl"
    recipe(recipes, "com.example.Allowed", [allowed, fleet.api, thing, 1, 0])
    recipe(recipes, "com.example.Refused", [refused, fleet.api, thing, 1, 0])
    policy = {TES: {"com.example.Allowed:tes:1": {"operations": ["getCredentials"], "resources": ["*"]}}}
    config = {
        TES: {"MERGE": {"lichen": {"requireAccessControl": True}}},
        "com.example.Allowed": {"MERGE": {"accessControl": policy}},
    }
    deploy(core, recipes, ["com.example.Allowed=1.0.0", "com.example.Refused=1.0.0"], config)
    wait_for(lambda: lines(allowed) and lines(refused), 60, f"both components to report\n{core.log()}")
    assert lines(allowed)[0].get("thingName") == thing, lines(allowed)
    # Both depend on the service and hold a token; only the policy tells them apart.
    other = lines(refused)[0]
    assert other["fullUri"] and other["hasToken"], other
    assert "CredentialRetrievalError" in other["error"], other
    assert "403" in other["error"], other
