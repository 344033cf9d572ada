"""The log manager (`aws.greengrass.LogManager`) on a real core enrolled with a real fleet: a
component's log lines reach the fleet's CloudWatch Logs API — with SigV4 and temporary
credentials the core gets from the fleet's credentials provider with its certificate — and are
read back with boto3 `logs` and the `aws logs` CLI. With the fleet stopped the lines stay on the
core and arrive once it is back; none is lost, and duplicates (at-least-once) are counted.
"""

import json
import re
import subprocess
import time

from conftest import _fleet
from lichen_support import lichen_bin, wait_for

THING = "obs-logs-core"
COMPONENT = "com.example.Chatty"
REGION = "us-east-1"
GROUP = f"/aws/greengrass/UserComponent/{REGION}/{COMPONENT}"
SYSTEM_GROUP = f"/aws/greengrass/GreengrassSystemComponent/{REGION}/System"
ROLE_ARN = "arn:aws:iam::123456789012:role/GreengrassLogs"


def setup_credentials(fleet, core, tmp_path):
    """A role alias for the core, a role allowed to write logs, and the certificate allowed to
    assume it — as on AWS."""
    iot = fleet.client("iot")
    iot.create_role_alias(roleAlias="GreengrassCoreTokenExchangeRoleAlias", roleArn=ROLE_ARN)
    iot.create_policy(policyName="assume-role", policyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
                       "Resource": "arn:aws:iot:*:*:rolealias/GreengrassCoreTokenExchangeRoleAlias"}],
    }))
    iot.attach_policy(policyName="assume-role", target=core.enrolled["certificateArn"])
    policy = tmp_path / "role-policy.json"
    policy.write_text(json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow",
                       "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                                  "logs:DescribeLogStreams"],
                       "Resource": "arn:aws:logs:*:*:log-group:/aws/greengrass/*"}],
    }))
    p = subprocess.run([lichen_bin(), "fleet", "role", "put", "--root", str(fleet.root), "--role-arn", ROLE_ARN,
                        "--policy-file", str(policy)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def deploy(core, fleet):
    recipes, artifacts = core.work / "recipes", core.work / "artifacts"
    recipes.mkdir()
    artifacts.mkdir()
    run = "i=0; while true; do i=$((i+1)); echo \"chatty line $i\"; sleep 0.1; done"
    (recipes / f"{COMPONENT}.json").write_text(json.dumps({
        "RecipeFormatVersion": "2020-01-25", "ComponentName": COMPONENT, "ComponentVersion": "1.0.0",
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": run}}],
    }))
    config = {
        "periodicUploadIntervalSec": 1,
        "logsUploaderConfiguration": {
            "systemLogsConfiguration": {"uploadToCloudWatch": "true", "minimumLogLevel": "INFO"},
            "componentLogsConfigurationMap": {COMPONENT: {"minimumLogLevel": "INFO"}},
        },
        "lichen": {"logsEndpoint": fleet.api},
    }
    core.cli("deployment", "create", "--wait", "--json", "--recipe-dir", str(recipes), "--artifact-dir",
             str(artifacts), "--merge", f"{COMPONENT}=1.0.0", "--merge", "aws.greengrass.LogManager=2.3.7",
             "--update-config", json.dumps({"aws.greengrass.LogManager": {"MERGE": config}}))


def numbers(logs):
    """Every `chatty line N` in the group, through FilterLogEvents' paginator."""
    out = []
    for page in logs.get_paginator("filter_log_events").paginate(logGroupName=GROUP, filterPattern='"chatty line"'):
        for e in page["events"]:
            m = re.search(r"chatty line (\d+)$", e["message"])
            assert m, e["message"]
            out.append(int(m.group(1)))
    return out


def test_component_logs_reach_the_fleet_and_survive_an_outage(make_fleet, make_core, tmp_path):
    fleet = make_fleet(pinned=True)
    cred = fleet.endpoints["credentials"].removeprefix("https://")
    core = make_core(fleet, THING, {"iotCredEndpoint": cred,
                                    "iotRoleAlias": "GreengrassCoreTokenExchangeRoleAlias"})
    setup_credentials(fleet, core, tmp_path)
    core.start()
    deploy(core, fleet)
    logs = fleet.client("logs")

    def have_group():
        try:
            return logs.describe_log_streams(logGroupName=GROUP)["logStreams"]
        except logs.exceptions.ResourceNotFoundException:
            return None

    streams = wait_for(have_group, 60, f"the component's log group\n{core.log()[-3000:]}")
    stream = streams[0]["logStreamName"]
    assert re.fullmatch(rf"/\d{{4}}/\d{{2}}/\d{{2}}/thing/{THING}", stream), stream
    wait_for(lambda: len(numbers(logs)) >= 5, 30, "five lines")
    got = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True, limit=50)["events"]
    chatty = [e["message"] for e in got if "chatty line" in e["message"]]
    assert [m.split("stdout: ", 1)[1] for m in chatty[:5]] == [f"chatty line {i}" for i in range(1, 6)], chatty[:5]
    # The core's own log goes to the System group.
    wait_for(lambda: logs.describe_log_groups(logGroupNamePrefix=SYSTEM_GROUP)["logGroups"], 30, "the System group")

    # The aws CLI reads the same.
    p = subprocess.run([_fleet.aws_cli(), "--endpoint-url", fleet.api, "logs", "filter-log-events",
                        "--log-group-name", GROUP, "--filter-pattern", '"chatty line 3"'],
                       env=fleet.cli_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert any(e["message"].endswith("chatty line 3") for e in json.loads(p.stdout)["events"])

    # Outage: lines written meanwhile stay on the core.
    before = max(numbers(logs))
    fleet.stop()
    time.sleep(3)
    local = (core.root / "logs" / f"{COMPONENT}.log").read_text()
    written_during = max(int(n) for n in re.findall(r"chatty line (\d+)", local))
    assert written_during > before + 10
    fleet.start()
    logs = fleet.client("logs")
    wait_for(lambda: max(numbers(logs)) >= written_during, 60, f"lines written during the outage\n{core.log()[-3000:]}")
    seen = numbers(logs)
    top = max(seen)
    missing = sorted(set(range(1, top + 1)) - set(seen))
    duplicates = len(seen) - len(set(seen))
    print(f"\nlog lines delivered: {len(set(seen))}, duplicates: {duplicates}, missing: {len(missing)}")
    assert not missing, f"lines lost: {missing[:20]}"
