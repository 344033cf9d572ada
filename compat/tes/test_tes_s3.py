"""`s3://` artifacts of a cloud deployment fetched from S3 itself with the token exchange's
credentials (the nucleus's `lichen.s3Endpoint`), as the Greengrass nucleus's S3 downloader does,
instead of through GetComponentVersionArtifact: the fleet's S3 API stands in for AWS S3, the
role's policy decides which objects the core may fetch, and unmodified boto3 publishes and
deploys."""

import base64
import json
import sys
import uuid
from pathlib import Path

import yaml
from fleet_core import Core, cores  # noqa: F401 (fixture)
from test_credentials import put_role_policy  # compat/fleet helpers
from test_tes import enroll

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import wait_for  # noqa: E402

BUCKET = "tes-artifacts"


def core_with_s3_endpoint(fleet, iot, tmp_path, cores, allowed_prefix):  # noqa: F811
    alias = f"alias-{uuid.uuid4().hex[:8]}"
    role_arn = f"arn:aws:iam::{'1' * 12}:role/{alias}-role"
    iot.create_role_alias(roleAlias=alias, roleArn=role_arn, credentialDurationSeconds=900)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{BUCKET}/{allowed_prefix}*"},
    ]}
    put_role_policy(fleet, role_arn, policy, tmp_path)
    thing = f"core-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "enrolled"
    enroll(fleet, thing, out, "--role-alias", alias)
    config = yaml.safe_load((out / "config.yaml").read_text())
    nucleus = config["services"]["aws.greengrass.Nucleus"]["configuration"]
    nucleus.setdefault("lichen", {})["s3Endpoint"] = fleet.api
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "core"
    work.mkdir()
    core = Core(work / "root", out / "config.yaml", work)
    cores.append(core)
    core.start()
    wait_for(lambda: "connected to the cloud" in core.log(), 60, f"the core to connect\n{core.log()}")
    return thing, core


def publish(fleet, name, key, out):
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": "1.0.0",
        "Manifests": [{
            "Platform": {"os": "*"},
            "Lifecycle": {"Run": f"cp {{artifacts:path}}/{Path(key).name} {out}"},
            "Artifacts": [{"URI": f"s3://{BUCKET}/{key}"}],
        }],
    }
    gg = fleet.client("greengrassv2")
    gg.create_component_version(inlineRecipe=json.dumps(recipe).encode())
    return gg


def test_s3_artifacts_of_a_cloud_deployment_come_from_s3_with_the_token_exchange_credentials(fleet, iot, tmp_path, cores):  # noqa: F811
    s3 = fleet.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    body = base64.b64encode(uuid.uuid4().bytes)
    s3.put_object(Bucket=BUCKET, Key="devices/hello.txt", Body=body)
    thing, core = core_with_s3_endpoint(fleet, iot, tmp_path, cores, "devices/")
    out = tmp_path / "copied.txt"
    gg = publish(fleet, "com.example.FromS3", "devices/hello.txt", out)
    thing_arn = iot.describe_thing(thingName=thing)["thingArn"]
    gg.create_deployment(targetArn=thing_arn, components={"com.example.FromS3": {"componentVersion": "1.0.0"}})
    wait_for(lambda: out.exists() and out.read_bytes() == body, 120, f"the artifact on the core\n{core.log()}")
    assert "artifact downloaded from S3 with the token exchange's credentials" in core.log()


def test_an_artifact_the_role_may_not_read_fails_the_deployment_by_name(fleet, iot, tmp_path, cores):  # noqa: F811
    s3 = fleet.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="private/hello.txt", Body=b"not for devices")
    thing, core = core_with_s3_endpoint(fleet, iot, tmp_path, cores, "devices/")
    out = tmp_path / "copied.txt"
    gg = publish(fleet, "com.example.Private", "private/hello.txt", out)
    thing_arn = iot.describe_thing(thingName=thing)["thingArn"]
    gg.create_deployment(targetArn=thing_arn, components={"com.example.Private": {"componentVersion": "1.0.0"}})
    wait_for(lambda: "s3://tes-artifacts/private/hello.txt" in core.log() and "403" in core.log(), 120, f"the refusal\n{core.log()}")
    assert not out.exists()
