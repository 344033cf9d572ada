"""A function written for Greengrass V1 runs on a real core with the unmodified V1
`greengrasssdk` (from PyPI, in its own venv: it conflicts with `stream-manager` in the suite's):
`client('iot-data').publish` reaches local pub/sub and `client('secretsmanager')
.get_secret_value` reads a secret created on the fleet with boto3, within the component's
accessControl (a secret it has no policy for is refused)."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fleet_core import cores  # noqa: F401 (fixture)
from test_credentials import put_role_policy
from test_lambda import Rig, lambda_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402

VENV = Path.home() / ".cache" / "lichen-compat" / "greengrasssdk-venv"
SM = "aws.greengrass.SecretManager"
NAME = "com.example.V1Fn"


@pytest.fixture(scope="session")
def v1_python():
    """A venv with greengrasssdk and awslambdaric from PyPI, kept under ~/.cache."""
    python = VENV / "bin" / "python"
    ready = VENV / ".installed"
    if not ready.exists():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        p = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "greengrasssdk==1.6.1", "awslambdaric"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if p.returncode != 0:
            pytest.skip(f"greengrasssdk could not be installed from PyPI (is it reachable?): {p.stderr[-500:]}")
        ready.write_text("ok")
    return python


def test_a_v1_function_publishes_and_reads_secrets_with_greengrasssdk(v1_python, fleet, iot, tmp_path, cores):  # noqa: F811
    secret = f"v1-{uuid.uuid4().hex}"
    sm = fleet.client("secretsmanager")
    arn = sm.create_secret(Name="v1/password", SecretString=secret)["ARN"]
    other = sm.create_secret(Name="v1/other", SecretString="not for this function")["ARN"]

    alias = f"alias-{uuid.uuid4().hex[:8]}"
    role_arn = f"arn:aws:iam::{'1' * 12}:role/{alias}-role"
    iot.create_role_alias(roleAlias=alias, roleArn=role_arn, credentialDurationSeconds=900)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}
    put_role_policy(fleet, role_arn, policy, tmp_path)
    thing = f"core-{uuid.uuid4().hex[:6]}"
    p = subprocess.run(
        [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(tmp_path / "enrolled"), "--role-alias", alias],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    rig = Rig(tmp_path, cores, tmp_path / "enrolled" / "config.yaml")
    lambda_recipe(rig.recipes, rig.artifacts, NAME, pinned=True, timeout=20, topic="events/v1", handler="v1_handler.handler", source="v1_handler.py", python=v1_python)
    # The function needs the secret manager running (a V1 function's recipe would name it).
    path = rig.recipes / f"{NAME}.json"
    recipe = json.loads(path.read_text())
    recipe["ComponentDependencies"][SM] = {"VersionRequirement": ">=2.0.0", "DependencyType": "HARD"}
    path.write_text(json.dumps(recipe))
    config = {
        SM: {"MERGE": {"cloudSecrets": [{"arn": arn}, {"arn": other}], "lichen": {"endpoint": fleet.api}}},
        NAME: {"MERGE": {"accessControl": {SM: {f"{NAME}:secrets:1": {
            "operations": ["aws.greengrass#GetSecretValue"],
            "resources": [arn],
        }}}}},
    }
    rig.deploy(NAME, update_config=config)

    rig.send("events/v1", {"n": 1, "secret": arn})
    rig.send("events/v1", {"n": 2, "secret": other})
    rig.send("events/v1", {"n": 3, "burst": 20})
    wait_for(lambda: len(rig.answers()) >= 22, 90, f"22 answers\n{rig.component_log(NAME)}")
    # Every publish of a burst arrives (the listener's SDK runs its callbacks on a thread pool,
    # so the file's order is not the wire's).
    assert sorted(a["seq"] for a in rig.answers() if a["n"] == 3) == list(range(20))
    answers = {a["n"]: a for a in rig.answers()}
    assert answers[1].get("value") == secret, answers[1]
    assert answers[1]["arn"] == arn and "AWSCURRENT" in answers[1]["stages"]
    # A policy for another secret does not cover this one.
    assert "SecretsManagerError" in answers[2].get("error", ""), answers[2]
    assert "403" in answers[2]["error"] and "value" not in answers[2]
