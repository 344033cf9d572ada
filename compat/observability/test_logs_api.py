"""The fleet's CloudWatch Logs API (`logs`, JSON 1.1) with unmodified boto3 and the `aws logs` CLI:
groups, streams, PutLogEvents, GetLogEvents in both directions, FilterLogEvents with patterns
and paging, Describe…, retention; errors in the shape botocore maps to its exceptions.
"""

import json
import subprocess
import time

import pytest
from conftest import _fleet

GROUP = "/aws/greengrass/UserComponent/us-east-1/com.example.Hello"
STREAM = "/2026/12/03/thing/core-1"


def now_ms():
    return int(time.time() * 1000)


def aws_logs(fleet, *args):
    p = subprocess.run(
        [_fleet.aws_cli(), "--endpoint-url", fleet.api, "logs", *args],
        env=fleet.cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, f"aws logs {' '.join(args)}: {p.stderr}"
    return json.loads(p.stdout)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_put_get_filter_describe_with_boto3_and_the_cli(make_fleet, store, request):
    if store == "postgres":
        url = _fleet.fresh_postgres_database(request.getfixturevalue("postgres_server"))
        fleet = make_fleet("--database", url)
    else:
        fleet = make_fleet()
    logs = fleet.client("logs")
    logs.create_log_group(logGroupName=GROUP)
    with pytest.raises(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=GROUP)
    with pytest.raises(logs.exceptions.ResourceNotFoundException):
        logs.create_log_stream(logGroupName="/nope", logStreamName=STREAM)
    logs.create_log_stream(logGroupName=GROUP, logStreamName=STREAM)
    with pytest.raises(logs.exceptions.ResourceNotFoundException):
        logs.put_log_events(logGroupName=GROUP, logStreamName="other",
                            logEvents=[{"timestamp": now_ms(), "message": "x"}])
    t0 = now_ms() - 60_000
    events = [{"timestamp": t0 + i, "message": f"line {i} {'ERROR' if i % 10 == 0 else 'INFO'}"} for i in range(250)]
    out = logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM, logEvents=events)
    assert "rejectedLogEventsInfo" not in out
    with pytest.raises(logs.exceptions.InvalidParameterException, match="chronological"):
        logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM,
                            logEvents=[{"timestamp": t0 + 5, "message": "b"}, {"timestamp": t0, "message": "a"}])
    # Too new / too old are reported, the rest kept.
    with pytest.raises(logs.exceptions.InvalidParameterException, match="24 hours"):
        logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM, logEvents=[
            {"timestamp": t0 - 2 * 86_400_000, "message": "a"}, {"timestamp": t0, "message": "b"}])
    out = logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM, logEvents=[
        {"timestamp": now_ms() - 20 * 86_400_000, "message": "ancient"},
    ])
    assert out["rejectedLogEventsInfo"] == {"tooOldLogEventEndIndex": 0}
    out = logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM, logEvents=[
        {"timestamp": t0 + 250, "message": "line 250 INFO"},
        {"timestamp": now_ms() + 5 * 3_600_000, "message": "future"},
    ])
    assert out["rejectedLogEventsInfo"] == {"tooNewLogEventStartIndex": 1}

    # Forward from the head, in pages.
    got, token = [], None
    while True:
        kw = {"nextToken": token} if token else {"startFromHead": True}
        page = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, limit=100, **kw)
        if not page["events"]:
            break
        got += [e["message"] for e in page["events"]]
        token = page["nextForwardToken"]
    assert got == [e["message"] for e in events] + ["line 250 INFO"]
    # Without startFromHead: the latest events, then backward.
    tail = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, limit=10)
    assert [e["message"] for e in tail["events"]] == got[-10:]
    before = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, limit=10,
                                 nextToken=tail["nextBackwardToken"])
    assert [e["message"] for e in before["events"]] == got[-20:-10]

    errors = [e for p in logs.get_paginator("filter_log_events").paginate(
        logGroupName=GROUP, filterPattern="ERROR", PaginationConfig={"PageSize": 7}) for e in p["events"]]
    assert [e["message"] for e in errors] == [m for m in got if "ERROR" in m]
    assert all(e["logStreamName"] == STREAM for e in errors)
    phrase = logs.filter_log_events(logGroupName=GROUP, filterPattern='"line 12 " -ERROR')["events"]
    assert [e["message"] for e in phrase] == ["line 12 INFO"]
    with pytest.raises(logs.exceptions.InvalidParameterException, match="not supported"):
        logs.filter_log_events(logGroupName=GROUP, filterPattern="{ $.level = 1 }")

    groups = logs.describe_log_groups(logGroupNamePrefix="/aws/greengrass/")["logGroups"]
    assert [g["logGroupName"] for g in groups] == [GROUP]
    streams = logs.describe_log_streams(logGroupName=GROUP, orderBy="LastEventTime", descending=True)["logStreams"]
    assert streams[0]["logStreamName"] == STREAM and streams[0]["lastEventTimestamp"] == t0 + 250

    logs.put_retention_policy(logGroupName=GROUP, retentionInDays=7)
    assert logs.describe_log_groups(logGroupNamePrefix=GROUP)["logGroups"][0]["retentionInDays"] == 7
    with pytest.raises(logs.exceptions.InvalidParameterException):
        logs.put_retention_policy(logGroupName=GROUP, retentionInDays=2)

    # The aws CLI, paginating filter-log-events itself.
    cli = aws_logs(fleet, "filter-log-events", "--log-group-name", GROUP, "--filter-pattern", "ERROR",
                   "--page-size", "4")
    assert [e["message"] for e in cli["events"]] == [m for m in got if "ERROR" in m]
    cli = aws_logs(fleet, "get-log-events", "--log-group-name", GROUP, "--log-stream-name", STREAM,
                   "--start-from-head", "--limit", "3")
    assert [e["message"] for e in cli["events"]] == got[:3]
