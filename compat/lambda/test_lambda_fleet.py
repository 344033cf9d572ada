"""A Lambda deployment package becomes a component version on the fleet: `lichen fleet lambda
publish` stores the zip (there is no Lambda service), unmodified boto3 calls greengrassv2
CreateComponentVersion with `lambdaFunction`, the fleet generates the Greengrass-style Lambda
recipe, and a real core runs that recipe and artifact under unmodified `awslambdaric`."""

import json
import subprocess
import time
import sys
import zipfile
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from fleet_core import cores  # noqa: F401 (fixture)
from test_lambda import Rig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402

HERE = Path(__file__).resolve().parent
NAME = "com.example.FleetFn"


def publish_function(fleet, tmp_path, name="FleetFn"):
    z = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.write(HERE / "handler.py", "handler.py")
    p = subprocess.run(
        [lichen_bin(), "fleet", "lambda", "publish", "--root", str(fleet.root), "--name", name, "--zip", str(z), "--handler", "handler.handler"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_a_published_function_becomes_a_lambda_component_that_a_core_runs(fleet, tmp_path, cores):  # noqa: F811
    arn = publish_function(fleet, tmp_path)
    assert arn.startswith("arn:aws:lambda:") and arn.endswith(":function:FleetFn:1"), arn
    # A second publish is the next version.
    assert publish_function(fleet, tmp_path).endswith(":function:FleetFn:2")
    gg = fleet.client("greengrassv2")
    created = gg.create_component_version(
        lambdaFunction={
            "lambdaArn": arn,
            "componentName": NAME,
            "componentVersion": "1.0.0",
            "componentPlatforms": [{"name": "Linux", "attributes": {"os": "linux"}}],
            "componentLambdaParameters": {
                "eventSources": [{"topic": "events/fleet", "type": "PUB_SUB"}, {"topic": "devices/+/cmd", "type": "IOT_CORE"}],
                "pinned": True,
                "timeoutInSeconds": 10,
                "maxIdleTimeInSeconds": 30,
                "maxInstancesCount": 2,
                "maxQueueSize": 50,
                "environmentVariables": {"GREETING": "hello"},
                "execArgs": [sys.executable, "-m", "awslambdaric"],
                "linuxProcessParams": {"isolationMode": "NoContainer"},
            },
        }
    )
    assert created["componentName"] == NAME and created["componentVersion"] == "1.0.0"
    assert created["status"]["componentState"] == "DEPLOYABLE", created["status"]
    described = gg.describe_component(arn=created["arn"])
    assert described["status"]["componentState"] == "DEPLOYABLE"
    assert described["publisher"] == "AWS Lambda"
    recipe = json.loads(gg.get_component(arn=created["arn"], recipeOutputFormat="JSON")["recipe"])
    assert recipe["ComponentType"] == "aws.greengrass.lambda"
    assert recipe["ComponentSource"] == arn
    assert {"aws.greengrass.LambdaLauncher", "aws.greengrass.TokenExchangeService"} <= set(recipe["ComponentDependencies"])
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert config["pubsubTopics"] == {"0": {"topic": "events/fleet", "type": "PUB_SUB"}, "1": {"topic": "devices/+/cmd", "type": "IOT_CORE"}}
    assert (config["pinned"], config["timeoutInSeconds"], config["maxQueueSize"]) == (True, 10, 50)
    assert config["containerMode"] == "NoContainer"
    assert config["lambdaExecutionParameters"]["EnvironmentVariables"] == {"GREETING": "hello"}
    assert config["accessControl"]["aws.greengrass.ipc.pubsub"][f"{NAME}:pubsub:1"]["resources"] == ["events/fleet"]
    assert config["accessControl"]["aws.greengrass.ipc.mqttproxy"][f"{NAME}:mqttproxy:1"]["resources"] == ["devices/+/cmd"]
    [manifest] = recipe["Manifests"]
    assert manifest["Lifecycle"]["setenv"]["AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER"] == "handler.handler"
    [artifact] = manifest["Artifacts"]
    assert artifact["URI"] == "s3://lichen-lambda/functions/FleetFn/1/lambda-artifact.zip"
    assert artifact["Unarchive"] == "ZIP" and artifact["Algorithm"] == "SHA-256" and artifact["Digest"]

    # The generated recipe and the stored package, deployed to a real core.
    rig = Rig(tmp_path, cores)
    (rig.recipes / f"{NAME}.json").write_text(json.dumps(recipe))
    art = rig.artifacts / NAME / "1.0.0"
    art.mkdir(parents=True)
    fleet.client("s3").download_file("lichen-lambda", "functions/FleetFn/1/lambda-artifact.zip", str(art / "lambda-artifact.zip"))
    answers_policy = {
        "accessControl": {
            "aws.greengrass.ipc.pubsub": {
                f"{NAME}:answers": {"operations": ["aws.greengrass#PublishToTopic"], "resources": ["lambda/answers"]}
            }
        }
    }
    rig.deploy(NAME, update_config={NAME: {"MERGE": answers_policy}})
    rig.send("events/fleet", {"n": 7})
    wait_for(lambda: rig.answers(), 60, f"an answer\n{rig.component_log(NAME)}")
    [a] = rig.answers()
    assert (a["n"], a["topic"], a["env"], a["function"]) == (7, "events/fleet", "hello", "FleetFn")


def test_unpublished_and_malformed_function_arns_are_refused_by_name(fleet, tmp_path):
    gg = fleet.client("greengrassv2")
    account = publish_function(fleet, tmp_path, "Known").split(":")[4]
    with pytest.raises(ClientError) as e:
        gg.create_component_version(lambdaFunction={"lambdaArn": f"arn:aws:lambda:us-east-1:{account}:function:Nope:1"})
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "lichen fleet lambda publish" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        gg.create_component_version(lambdaFunction={"lambdaArn": f"arn:aws:lambda:us-east-1:{account}:function:Known:$LATEST"})
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "lambdaArn" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        gg.create_component_version(
            lambdaFunction={
                "lambdaArn": f"arn:aws:lambda:us-east-1:{account}:function:Known:1",
                "componentLambdaParameters": {"eventSources": [{"topic": "t", "type": "KAFKA"}]},
            }
        )
    assert "eventSources[0]" in e.value.response["Error"]["Message"]
    # Without execArgs the runtime names the command; the default version is the function's.
    created = gg.create_component_version(lambdaFunction={"lambdaArn": f"arn:aws:lambda:us-east-1:{account}:function:Known:1"})
    assert (created["componentName"], created["componentVersion"]) == ("Known", "1.0.0")
    recipe = json.loads(gg.get_component(arn=created["arn"], recipeOutputFormat="JSON")["recipe"])
    setenv = recipe["Manifests"][0]["Lifecycle"]["setenv"]
    assert json.loads(setenv["AWS_GREENGRASS_LAMBDA_EXEC_ARGS"]) == ["python3", "-m", "awslambdaric"]


def test_a_cloud_deployment_of_the_generated_component_runs_the_function(fleet, iot, tmp_path, cores):  # noqa: F811
    thing = "lambda-fleet-core"
    p = subprocess.run(
        [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(tmp_path / "enrolled")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    arn = publish_function(fleet, tmp_path, "CloudFleetFn")
    gg = fleet.client("greengrassv2")
    name = "com.example.CloudFleetFn"
    gg.create_component_version(
        lambdaFunction={
            "lambdaArn": arn,
            "componentName": name,
            "componentVersion": "1.0.0",
            "componentLambdaParameters": {
                "eventSources": [{"topic": "events/cloud-fleet", "type": "PUB_SUB"}],
                "pinned": False,
                "timeoutInSeconds": 10,
                "environmentVariables": {"GREETING": "from the fleet"},
                "execArgs": [sys.executable, "-m", "awslambdaric"],
                "linuxProcessParams": {"isolationMode": "NoContainer"},
            },
        }
    )
    # The listener is local; the function comes with a cloud deployment (resolved, its
    # package downloaded through the data plane) that also grants its answers topic.
    rig = Rig(tmp_path, cores, tmp_path / "enrolled" / "config.yaml")
    wait_for(lambda: "connected to the cloud" in rig.core.log(), 60, "the core to connect to the fleet")
    rig.deploy()
    answers_policy = {"accessControl": {"aws.greengrass.ipc.pubsub": {
        f"{name}:answers": {"operations": ["aws.greengrass#PublishToTopic"], "resources": ["lambda/answers"]}
    }}}
    gg.create_deployment(
        targetArn=iot.describe_thing(thingName=thing)["thingArn"],
        components={name: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": json.dumps(answers_policy)}}},
    )
    n = 0

    def answered():
        nonlocal n
        n += 1
        rig.send("events/cloud-fleet", {"n": n})
        time.sleep(0.5)
        return rig.answers()

    wait_for(answered, 120, f"an answer\n{rig.core.log()}\n{rig.component_log(name)}")
    a = rig.answers()[0]
    assert (a["topic"], a["env"], a["function"]) == ("events/cloud-fleet", "from the fleet", "CloudFleetFn")
