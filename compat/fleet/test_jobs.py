"""AWS IoT Jobs on a real `lichen fleet serve`: boto3 / the `aws` CLI create and watch jobs, and
devices take them with the unmodified AWS IoT Device SDK's jobs client (`IotJobsClientV2` over
MQTT 5 with mutual TLS and a real device certificate), or with plain MQTT for the namespaced
topics the Greengrass nucleus uses.
"""

import json
import queue
import uuid

import pytest
from awscrt import mqtt5, mqtt_request_response
from awsiot import V2ServiceException, iotjobs, ServiceStreamOptions

from fleet_devices import TIMEOUT, Device, settle
from lichen_support import wait_for

from concurrent.futures import Future

JOBS_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}",
        },
        {
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*",
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*",
        },
    ],
}

DOC = {"operation": "install", "version": "1.2.3"}


class JobsDevice:
    """A device connected over MQTT 5 with the SDK's IotJobsClientV2, plus every publish it
    receives on its raw subscriptions."""

    def __init__(self, device):
        self.device = device
        self.name = device.name
        self.messages = queue.Queue()
        connected = Future()
        self.client = device.mqtt5(
            on_lifecycle_connection_success=lambda data: settle(connected, True),
            on_lifecycle_connection_failure=lambda data: settle(connected, str(data.exception)),
            on_publish_received=lambda data: self.messages.put(
                (data.publish_packet.topic, json.loads(bytes(data.publish_packet.payload)))
            ),
        )
        self.client.start()
        assert connected.result(TIMEOUT) is True
        self.jobs = iotjobs.IotJobsClientV2(
            self.client,
            mqtt_request_response.ClientOptions(
                max_request_response_subscriptions=4,
                max_streaming_subscriptions=2,
                operation_timeout_in_seconds=TIMEOUT,
            ),
        )

    def next_stream(self):
        events = queue.Queue()
        subscribed = Future()

        def status(event):
            if event.type == mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
                settle(subscribed, True)

        stream = self.jobs.create_next_job_execution_changed_stream(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=self.name),
            ServiceStreamOptions(incoming_event_listener=events.put, subscription_status_listener=status),
        )
        stream.open()
        subscribed.result(TIMEOUT)
        return stream, events

    def start_next(self, **kw):
        return self.jobs.start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.name, **kw)
        ).result(TIMEOUT)

    def update(self, job_id, status, **kw):
        return self.jobs.update_job_execution(
            iotjobs.UpdateJobExecutionRequest(thing_name=self.name, job_id=job_id, status=status, **kw)
        ).result(TIMEOUT)

    def pending(self):
        return self.jobs.get_pending_job_executions(
            iotjobs.GetPendingJobExecutionsRequest(thing_name=self.name)
        ).result(TIMEOUT)

    def subscribe(self, topic):
        self.client.subscribe(
            subscribe_packet=mqtt5.SubscribePacket(
                subscriptions=[mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)]
            )
        ).result(TIMEOUT)

    def publish(self, topic, body):
        self.client.publish(
            mqtt5.PublishPacket(topic=topic, payload=json.dumps(body).encode(), qos=mqtt5.QoS.AT_LEAST_ONCE)
        ).result(TIMEOUT)

    def expect(self, topic, timeout=TIMEOUT):
        """The next message on `topic` (others are skipped)."""
        while True:
            t, body = self.messages.get(timeout=timeout)
            if t == topic:
                return body

    def stop(self):
        self.client.stop()


@pytest.fixture
def devices(fleet, iot, tmp_path):
    made = []

    def make(name=None):
        d = JobsDevice(Device(fleet, iot, tmp_path, name=name, policy=JOBS_POLICY))
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def thing_arn(iot, name):
    return iot.describe_thing(thingName=name)["thingArn"]


def group(iot, things, name=None):
    name = name or f"g-{uuid.uuid4().hex[:8]}"
    arn = iot.create_thing_group(thingGroupName=name)["thingGroupArn"]
    for t in things:
        iot.add_thing_to_thing_group(thingGroupName=name, thingName=t)
    return name, arn


def job_id():
    return f"job-{uuid.uuid4().hex[:10]}"


def test_device_takes_a_job_with_the_sdk_jobs_client(fleet, iot, devices):
    dev = devices()
    _, garn = group(iot, [dev.name])
    stream, events = dev.next_stream()
    jid = job_id()
    created = iot.create_job(jobId=jid, targets=[garn], document=json.dumps(DOC), description="install 1.2.3")
    assert created["jobId"] == jid and created["jobArn"].endswith(f":job/{jid}")

    # notify-next announces the new job with its document.
    event = events.get(timeout=TIMEOUT)
    assert event.execution.job_id == jid
    assert event.execution.job_document == DOC
    assert event.execution.status == "QUEUED"

    pending = dev.pending()
    assert [j.job_id for j in pending.queued_jobs] == [jid]

    started = dev.start_next(status_details={"step": "download"})
    assert started.execution.job_id == jid
    assert started.execution.status == "IN_PROGRESS"
    assert started.execution.job_document == DOC
    version = started.execution.version_number

    updated = dev.update(jid, "IN_PROGRESS", status_details={"progress": "50"}, expected_version=version,
                         include_job_execution_state=True)
    assert updated.execution_state.status == "IN_PROGRESS"
    assert updated.execution_state.status_details == {"step": "download", "progress": "50"}
    assert updated.execution_state.version_number == version + 1

    # A stale expectedVersion is refused, with the current state.
    with pytest.raises(V2ServiceException) as e:
        dev.update(jid, "SUCCEEDED", expected_version=version)
    assert e.value.modeled_error.code == "VersionMismatch"
    assert e.value.modeled_error.execution_state.version_number == version + 1

    dev.update(jid, "SUCCEEDED", status_details={"progress": "100"}, expected_version=version + 1)

    # Terminal: no further change.
    with pytest.raises(V2ServiceException) as e:
        dev.update(jid, "IN_PROGRESS")
    assert e.value.modeled_error.code == "TerminalStateReached"

    # The next execution is gone: notify-next says so (no execution).
    while True:
        event = events.get(timeout=TIMEOUT)
        if event.execution is None:
            break

    ex = iot.describe_job_execution(jobId=jid, thingName=dev.name)["execution"]
    assert ex["status"] == "SUCCEEDED"
    assert ex["statusDetails"]["detailsMap"] == {"step": "download", "progress": "100"}
    assert ex["thingArn"] == thing_arn(iot, dev.name)
    assert ex["versionNumber"] == version + 2
    summaries = iot.list_job_executions_for_job(jobId=jid)["executionSummaries"]
    assert [(s["thingArn"], s["jobExecutionSummary"]["status"]) for s in summaries] == [
        (thing_arn(iot, dev.name), "SUCCEEDED")
    ]
    for_thing = iot.list_job_executions_for_thing(thingName=dev.name)["executionSummaries"]
    assert [s["jobId"] for s in for_thing] == [jid]

    job = wait_for(
        lambda: (j := iot.describe_job(jobId=jid)["job"])["status"] == "COMPLETED" and j, 10, "job COMPLETED"
    )
    assert job["jobProcessDetails"]["numberOfSucceededThings"] == 1
    assert job["targets"] == [garn]
    assert json.loads(iot.get_job_document(jobId=jid)["document"]) == DOC
    assert jid in [j["jobId"] for j in iot.list_jobs()["jobs"]]
    # The CLI parses and prints the same shapes.
    cli = fleet.aws("describe-job-execution", "--job-id", jid, "--thing-name", dev.name)
    assert cli["execution"]["status"] == "SUCCEEDED"
    assert fleet.aws("describe-job", "--job-id", jid)["job"]["status"] == "COMPLETED"
    del stream


def test_a_device_sees_only_its_own_jobs(fleet, iot, devices):
    a, b = devices(), devices()
    iot.create_job(jobId=(jid := job_id()), targets=[thing_arn(iot, b.name)], document=json.dumps(DOC))
    # a asks about b's execution on a topic its policy lets it use only for itself: refused by
    # the policy; on its own topic a has nothing.
    assert a.pending().queued_jobs == []
    assert [j.job_id for j in b.pending().queued_jobs] == [jid]
    with pytest.raises(V2ServiceException) as e:
        a.update(jid, "IN_PROGRESS")
    assert e.value.modeled_error.code == "ResourceNotFound"


def test_cancel_job_and_execution(fleet, iot, devices):
    dev = devices()
    iot.create_thing(thingName=(other := f"idle-{uuid.uuid4().hex[:6]}"))
    jid = job_id()
    iot.create_job(jobId=jid, targets=[thing_arn(iot, dev.name), thing_arn(iot, other)], document=json.dumps(DOC))
    dev.start_next()
    iot.cancel_job(jobId=jid, reasonCode="OPERATOR_STOP", comment="bad build")
    job = iot.describe_job(jobId=jid)["job"]
    assert (job["status"], job["reasonCode"], job["comment"], job["forceCanceled"]) == (
        "CANCELED", "OPERATOR_STOP", "bad build", False)
    assert iot.describe_job_execution(jobId=jid, thingName=other)["execution"]["status"] == "CANCELED"
    # Without force the device's IN_PROGRESS execution runs on.
    assert iot.describe_job_execution(jobId=jid, thingName=dev.name)["execution"]["status"] == "IN_PROGRESS"
    iot.cancel_job(jobId=jid, force=True)
    ex = iot.describe_job_execution(jobId=jid, thingName=dev.name)["execution"]
    assert (ex["status"], ex["forceCanceled"]) == ("CANCELED", True)
    with pytest.raises(V2ServiceException) as e:
        dev.update(jid, "SUCCEEDED")
    assert e.value.modeled_error.code == "TerminalStateReached"

    # CancelJobExecution: a QUEUED one at once; an IN_PROGRESS one needs force.
    j2 = job_id()
    iot.create_job(jobId=j2, targets=[thing_arn(iot, dev.name), thing_arn(iot, other)], document=json.dumps(DOC))
    iot.cancel_job_execution(jobId=j2, thingName=other)
    assert iot.describe_job_execution(jobId=j2, thingName=other)["execution"]["status"] == "CANCELED"
    dev.start_next()
    with pytest.raises(iot.exceptions.InvalidStateTransitionException):
        iot.cancel_job_execution(jobId=j2, thingName=dev.name)
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.cancel_job_execution(jobId=j2, thingName=dev.name, force=True, expectedVersion=99)
    iot.cancel_job_execution(jobId=j2, thingName=dev.name, force=True)
    assert iot.describe_job_execution(jobId=j2, thingName=dev.name)["execution"]["status"] == "CANCELED"
    assert iot.describe_job(jobId=j2)["job"]["status"] == "COMPLETED"

    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job(jobId="no-such-job")
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_job(jobId=j2, targets=[thing_arn(iot, other)], document=json.dumps(DOC))
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(jobId=job_id(), targets=[thing_arn(iot, other)], document="not json")
    iot.delete_job(jobId=j2)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job(jobId=j2)


def test_abort_criteria_cancel_the_rest_of_the_rollout(fleet, iot, devices):
    ok, bad = devices(), devices()
    iot.create_thing(thingName=(late := f"late-{uuid.uuid4().hex[:6]}"))
    _, garn = group(iot, [ok.name, bad.name, late])
    jid = job_id()
    iot.create_job(
        jobId=jid,
        targets=[garn],
        document=json.dumps(DOC),
        abortConfig={"criteriaList": [
            {"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 50, "minNumberOfExecutedThings": 2}
        ]},
    )
    ok.start_next()
    ok.update(jid, "SUCCEEDED")
    assert iot.describe_job(jobId=jid)["job"]["status"] == "IN_PROGRESS"
    bad.start_next()
    bad.update(jid, "FAILED", status_details={"error": "install failed"})
    job = iot.describe_job(jobId=jid)["job"]
    assert job["status"] == "CANCELED"
    assert job["reasonCode"] == "FAILED_THRESHOLD_EXCEEDED"
    assert job["abortConfig"]["criteriaList"][0]["failureType"] == "FAILED"
    statuses = {
        s["thingArn"].rsplit("/", 1)[1]: s["jobExecutionSummary"]["status"]
        for s in iot.list_job_executions_for_job(jobId=jid)["executionSummaries"]
    }
    assert statuses == {ok.name: "SUCCEEDED", bad.name: "FAILED", late: "CANCELED"}


def test_rollout_releases_executions_at_its_rate(fleet, iot):
    things = [f"r{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for t in things:
        iot.create_thing(thingName=t)
    _, garn = group(iot, things)
    jid = job_id()
    iot.create_job(jobId=jid, targets=[garn], document=json.dumps(DOC),
                   jobExecutionsRolloutConfig={"maximumPerMinute": 1})
    # One a minute: the first is out, the others wait (and are not visible to their devices).
    assert len(iot.list_job_executions_for_job(jobId=jid)["executionSummaries"]) == 1
    job = iot.describe_job(jobId=jid)["job"]
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 1
    assert job["jobProcessDetails"]["processingTargets"] == [garn]
    assert job["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 1}
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(jobId=job_id(), targets=[garn], document="{}",
                       jobExecutionsRolloutConfig={"exponentialRate": {
                           "baseRatePerMinute": 5, "incrementFactor": 2,
                           "rateIncreaseCriteria": {}}})


def test_continuous_job_reaches_a_thing_added_later(fleet, iot, devices):
    first = devices()
    gname, garn = group(iot, [first.name])
    jid = job_id()
    iot.create_job(jobId=jid, targets=[garn], document=json.dumps(DOC), targetSelection="CONTINUOUS")
    later = devices()
    stream, events = later.next_stream()
    assert later.pending().queued_jobs == []
    iot.add_thing_to_thing_group(thingGroupName=gname, thingName=later.name)
    event = events.get(timeout=TIMEOUT)
    assert event.execution.job_id == jid
    later.start_next()
    later.update(jid, "SUCCEEDED")
    assert iot.describe_job_execution(jobId=jid, thingName=later.name)["execution"]["status"] == "SUCCEEDED"
    # CONTINUOUS jobs stay IN_PROGRESS for the next newcomer.
    assert iot.describe_job(jobId=jid)["job"]["status"] == "IN_PROGRESS"
    del stream


def test_namespaced_jobs_stay_on_namespaced_topics(fleet, iot, devices):
    dev = devices()
    base = f"$aws/things/{dev.name}/jobs"
    ns = "namespace-aws-gg-deployment"
    dev.subscribe(f"{base}/notify-next-{ns}")
    dev.subscribe(f"{base}/$next/{ns}/get/+")
    plain = job_id()
    gg = job_id()
    iot.create_job(jobId=gg, targets=[thing_arn(iot, dev.name)], document=json.dumps(DOC),
                   namespaceId="aws-gg-deployment")
    note = dev.expect(f"{base}/notify-next-{ns}")
    assert note["execution"]["jobId"] == gg
    assert isinstance(note["timestamp"], int) and note["timestamp"] < 10**11  # epoch seconds
    # Plain topics do not show the namespaced job.
    assert dev.pending().queued_jobs == []
    iot.create_job(jobId=plain, targets=[thing_arn(iot, dev.name)], document=json.dumps({"x": 1}))
    assert [j.job_id for j in dev.pending().queued_jobs] == [plain]

    dev.publish(f"{base}/$next/{ns}/get", {"clientToken": "t1"})
    got = dev.expect(f"{base}/$next/{ns}/get/accepted")
    assert (got["clientToken"], got["execution"]["jobId"], got["execution"]["jobDocument"]) == ("t1", gg, DOC)
    dev.subscribe(f"{base}/{gg}/{ns}/update/+")
    dev.publish(f"{base}/{gg}/{ns}/update", {"clientToken": "t2", "status": "IN_PROGRESS", "expectedVersion": 1})
    assert dev.expect(f"{base}/{gg}/{ns}/update/accepted")["clientToken"] == "t2"
    dev.publish(f"{base}/{gg}/{ns}/update", {"clientToken": "t3", "status": "SUCCEEDED", "expectedVersion": 1})
    rejected = dev.expect(f"{base}/{gg}/{ns}/update/rejected")
    assert (rejected["code"], rejected["executionState"]["versionNumber"]) == ("VersionMismatch", 2)
    # The namespaced job through the plain update topic: not found there.
    with pytest.raises(V2ServiceException) as e:
        dev.update(gg, "SUCCEEDED")
    assert e.value.modeled_error.code == "ResourceNotFound"
    ex = iot.describe_job_execution(jobId=gg, thingName=dev.name)["execution"]
    assert ex["status"] == "IN_PROGRESS"
    assert iot.describe_job(jobId=gg)["job"]["namespaceId"] == "aws-gg-deployment"


def test_statuses_survive_kill_9(fleet, iot, devices):
    dev = devices()
    iot.create_thing(thingName=(other := f"q-{uuid.uuid4().hex[:6]}"))
    jid = job_id()
    iot.create_job(jobId=jid, targets=[thing_arn(iot, dev.name), thing_arn(iot, other)], document=json.dumps(DOC))
    dev.start_next(status_details={"step": "download"})
    acked = dev.update(jid, "IN_PROGRESS", status_details={"progress": "70"}, include_job_execution_state=True)
    version = acked.execution_state.version_number
    dev.stop()
    fleet.kill9()
    fleet.start()
    iot = fleet.client("iot")  # the restarted fleet listens on new ports
    ex = iot.describe_job_execution(jobId=jid, thingName=dev.name)["execution"]
    assert (ex["status"], ex["versionNumber"]) == ("IN_PROGRESS", version)
    assert ex["statusDetails"]["detailsMap"] == {"step": "download", "progress": "70"}
    assert iot.describe_job_execution(jobId=jid, thingName=other)["execution"]["status"] == "QUEUED"
    again = JobsDevice(dev.device)
    try:
        again.update(jid, "SUCCEEDED", expected_version=version)
    finally:
        again.stop()
    assert iot.describe_job_execution(jobId=jid, thingName=dev.name)["execution"]["status"] == "SUCCEEDED"
