"""Lambda components on a real core: a recipe in the form Greengrass generates for a Lambda
function (ComponentType aws.greengrass.lambda, the lambda-artifact.zip package, the
DefaultConfiguration keys), run by the core behind the AWS Lambda Runtime API with the
unmodified `awslambdaric` runtime client. Events come from local pub/sub; the function answers
through the unmodified awsiotsdk IPC client; pinned and on-demand instances; a stuck invocation
is ended at its timeout and the next one is served."""

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from fleet_core import Core, cores  # noqa: F401 (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import lichen_bin, wait_for  # noqa: E402

HERE = Path(__file__).resolve().parent


def lambda_recipe(recipes, artifacts, name, pinned, timeout, topic, kind="PUB_SUB", handler="handler.handler", source="handler.py", python=sys.executable):
    art = artifacts / name / "1.0.0"
    art.mkdir(parents=True)
    with zipfile.ZipFile(art / "lambda-artifact.zip", "w") as z:
        z.write(HERE / source, source)
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": "1.0.0",
        "ComponentType": "aws.greengrass.lambda",
        "ComponentSource": f"arn:aws:lambda:us-east-1:123456789012:function:{name}:1",
        "ComponentDependencies": {
            "aws.greengrass.LambdaLauncher": {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "HARD"},
            "aws.greengrass.LambdaRuntimes": {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "SOFT"},
        },
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                "lambdaExecutionParameters": {"EnvironmentVariables": {"GREETING": "hello"}},
                "containerParams": {"memorySize": 16384, "mountROSysfs": False, "volumes": {}, "devices": {}},
                "containerMode": "NoContainer",
                "timeoutInSeconds": timeout,
                "maxInstancesCount": 4,
                "inputPayloadEncodingType": "json",
                "maxQueueSize": 1000,
                "pinned": pinned,
                "maxIdleTimeInSeconds": 60,
                "statusTimeoutInSeconds": 60,
                "pubsubTopics": {"0": {"topic": topic, "type": kind}},
                "accessControl": {
                    "aws.greengrass.ipc.pubsub": {
                        f"{name}:pubsub:1": {
                            "policyDescription": "events in, answers out",
                            "operations": ["aws.greengrass#SubscribeToTopic", "aws.greengrass#PublishToTopic"],
                            "resources": ["*"],
                        }
                    },
                    "aws.greengrass.ipc.mqttproxy": {
                        f"{name}:mqttproxy:1": {
                            "policyDescription": "events from the cloud",
                            "operations": ["aws.greengrass#SubscribeToIoTCore"],
                            "resources": ["*"],
                        }
                    },
                },
            }
        },
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": {
                    "setenv": {
                        "AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER": handler,
                        "AWS_GREENGRASS_LAMBDA_ARTIFACT_PATH": "{artifacts:decompressedPath}/lambda-artifact",
                        "AWS_GREENGRASS_LAMBDA_ARN": f"arn:aws:lambda:us-east-1:123456789012:function:{name}:1",
                        "AWS_GREENGRASS_LAMBDA_EXEC_ARGS": json.dumps([str(python), "-m", "awslambdaric"]),
                    },
                    "Run": '"$LICHEN_EXE" lambda launch',
                },
                "Artifacts": [{"URI": "greengrass:lambda-artifact.zip", "Unarchive": "ZIP"}],
            }
        ],
    }
    (recipes / f"{name}.json").write_text(json.dumps(recipe))


def listener_recipe(recipes, out, inbox):
    name = "com.example.Listener"
    cmd = " ".join([sys.executable, "-u", str(HERE / "listener.py"), str(out), str(inbox)])
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": "1.0.0",
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                "accessControl": {
                    "aws.greengrass.ipc.pubsub": {
                        f"{name}:pubsub:1": {
                            "policyDescription": "drive the functions",
                            "operations": ["aws.greengrass#SubscribeToTopic", "aws.greengrass#PublishToTopic"],
                            "resources": ["*"],
                        }
                    }
                }
            }
        },
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": cmd}}],
    }
    (recipes / f"{name}.json").write_text(json.dumps(recipe))
    return name


class Rig:
    def __init__(self, tmp_path, cores, config_file=None):  # noqa: F811
        self.tmp = tmp_path
        self.recipes, self.artifacts = tmp_path / "recipes", tmp_path / "artifacts"
        self.recipes.mkdir()
        self.artifacts.mkdir()
        config = config_file or tmp_path / "config.yaml"
        if config_file is None:
            config.write_text("system:\n  thingName: lambda-core\n")
        work = tmp_path / "core"
        work.mkdir()
        self.core = Core(work / "root", config, work)
        cores.append(self.core)
        self.core.start()
        self.out, self.inbox = tmp_path / "answers.jsonl", tmp_path / "inbox.txt"
        self.listener = listener_recipe(self.recipes, self.out, self.inbox)

    def deploy(self, *names, update_config=None):
        args = [lichen_bin(), "deployment", "create", "--wait", "--json", "--root", str(self.core.root)]
        args += ["--recipe-dir", str(self.recipes), "--artifact-dir", str(self.artifacts)]
        if update_config:
            args += ["--update-config", json.dumps(update_config)]
        for n in (self.listener, *names):
            args += ["--merge", f"{n}=1.0.0"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, f"deployment failed: {p.stdout}{p.stderr}\n{self.core.log()}"
        wait_for(lambda: Path(str(self.out) + ".ready").exists(), 60, "the listener to subscribe")

    def send(self, topic, event):
        with open(self.inbox, "a") as f:
            f.write(f"{topic} {json.dumps(event)}\n")

    def answers(self):
        return [json.loads(x) for x in self.out.read_text().splitlines()] if self.out.exists() else []

    def component_log(self, name):
        p = self.core.root / "logs" / f"{name}.log"
        return p.read_text() if p.exists() else ""


@pytest.fixture
def rig(tmp_path, cores):  # noqa: F811
    return Rig(tmp_path, cores)


def test_a_pinned_function_answers_every_event_from_one_instance(rig):
    name = "com.example.PinnedFn"
    lambda_recipe(rig.recipes, rig.artifacts, name, pinned=True, timeout=10, topic="events/pinned")
    rig.deploy(name)
    for n in range(3):
        rig.send("events/pinned", {"n": n})
    wait_for(lambda: len(rig.answers()) >= 3, 60, f"three answers\n{rig.component_log(name)}")
    answers = sorted(rig.answers(), key=lambda a: a["n"])
    assert [a["n"] for a in answers] == [0, 1, 2]
    assert {a["topic"] for a in answers} == {"events/pinned"}
    assert {a["env"] for a in answers} == {"hello"}
    assert len({a["pid"] for a in answers}) == 1
    assert len({a["requestId"] for a in answers}) == 3
    assert answers[0]["function"] == name


def test_on_demand_instances_run_concurrently(rig):
    name = "com.example.OnDemandFn"
    lambda_recipe(rig.recipes, rig.artifacts, name, pinned=False, timeout=30, topic="events/ondemand/#")
    rig.deploy(name)
    for n in range(3):
        rig.send(f"events/ondemand/{n}", {"n": n, "sleep": 2})
    wait_for(lambda: len(rig.answers()) >= 3, 90, f"three answers\n{rig.component_log(name)}")
    answers = rig.answers()
    assert sorted(a["topic"] for a in answers) == ["events/ondemand/0", "events/ondemand/1", "events/ondemand/2"]
    # Three events that each take 2 s arrived together: more than one instance served them.
    assert len({a["pid"] for a in answers}) >= 2


def test_a_stuck_invocation_is_ended_at_its_timeout_and_the_next_is_served(rig):
    name = "com.example.TimeoutFn"
    lambda_recipe(rig.recipes, rig.artifacts, name, pinned=True, timeout=2, topic="events/timeout")
    rig.deploy(name)
    rig.send("events/timeout", {"n": 1, "sleep": 600})
    wait_for(lambda: "timed out" in rig.component_log(name), 60, f"the timeout\n{rig.component_log(name)}")
    rig.send("events/timeout", {"n": 2})
    wait_for(lambda: any(a["n"] == 2 for a in rig.answers()), 60, f"the next answer\n{rig.component_log(name)}")
    time.sleep(0.5)
    assert [a["n"] for a in rig.answers()] == [2]


def test_a_function_is_invoked_by_messages_from_iot_core(fleet, iot, tmp_path, cores):  # noqa: F811
    thing = "lambda-cloud-core"
    p = subprocess.run(
        [lichen_bin(), "fleet", "enroll", "--root", str(fleet.root), "--thing", thing, "--out", str(tmp_path / "enrolled")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    rig = Rig(tmp_path, cores, tmp_path / "enrolled" / "config.yaml")
    wait_for(lambda: "connected to the cloud" in rig.core.log(), 60, "the core to connect to the fleet")
    name = "com.example.CloudFn"
    topic = f"devices/{thing}/commands"
    lambda_recipe(rig.recipes, rig.artifacts, name, pinned=True, timeout=10, topic=topic, kind="IOT_CORE")
    rig.deploy(name)
    data = fleet.client("iot-data")
    # The subscription reaches the fleet shortly after the deployment: publish until answered.
    n = 0

    def answered():
        nonlocal n
        data.publish(topic=topic, qos=1, payload=json.dumps({"n": n}).encode())
        n += 1
        time.sleep(0.5)
        return rig.answers()

    wait_for(answered, 60, f"an answer to a cloud message\n{rig.component_log(name)}")
    a = rig.answers()[0]
    assert a["topic"] == topic and a["env"] == "hello"


def test_a_function_that_cannot_load_reports_its_init_error(rig):
    name = "com.example.BrokenFn"
    lambda_recipe(rig.recipes, rig.artifacts, name, pinned=True, timeout=10, topic="events/broken", handler="nosuch.handler")
    rig.deploy(name)
    rig.send("events/broken", {"n": 1})
    wait_for(lambda: "failed to start" in rig.component_log(name), 60, f"the init error\n{rig.component_log(name)}")
    # The launcher reports what the runtime posted to /runtime/init/error.
    reported = [line for line in rig.component_log(name).splitlines() if "failed to start" in line]
    assert "Runtime.ImportModuleError" in reported[0], reported
    assert rig.answers() == []
