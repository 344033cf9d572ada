"""The fleet's Device Shadow service with unmodified clients: awsiotsdk's `iotshadow` client on a
device's MQTT connection (mutual TLS with a certificate the fleet issued), boto3 `iot-data` over
SigV4 for operators, and a plain HTTPS client with the device certificate on the data plane (the
path a core's shadow sync takes).
"""

import http.client
import json
import ssl
import uuid

import pytest
from awsiot import iotshadow
from botocore.exceptions import ClientError
from shadow_devices import ShadowDevice


@pytest.fixture
def dev(fleet, iot, tmp_path):
    d = ShadowDevice(fleet, iot, tmp_path)
    d.watch()
    yield d
    d.stop()


@pytest.fixture
def data(fleet):
    return fleet.client("iot-data")


def read(resp):
    return json.loads(resp["payload"].read())


def test_desired_from_boto3_reaches_the_device_as_delta_and_reported_clears_it(dev, data):
    data.update_thing_shadow(thingName=dev.name, payload=json.dumps({"state": {"desired": {"color": "green", "n": 2}}}))
    delta = dev.next("update/delta")
    assert isinstance(delta, iotshadow.ShadowDeltaUpdatedEvent)
    assert delta.state == {"color": "green", "n": 2}
    assert delta.version == 1
    assert set(delta.metadata) == {"color", "n"}

    token = uuid.uuid4().hex
    dev.update(reported={"color": "green", "n": 2.0}, token=token)
    accepted = dev.next("update/accepted")
    while accepted.client_token != token:  # the boto3 update was accepted first
        accepted = dev.next("update/accepted")
    assert accepted.version == 2
    assert accepted.state.reported == {"color": "green", "n": 2.0}
    dev.nothing("update/delta")

    doc = read(data.get_thing_shadow(thingName=dev.name))
    assert doc["state"] == {"desired": {"color": "green", "n": 2}, "reported": {"color": "green", "n": 2.0}}
    assert "delta" not in doc["state"]
    assert doc["version"] == 2
    assert doc["metadata"]["reported"]["color"]["timestamp"] > 0


def test_a_stale_version_is_rejected_with_409(dev):
    dev.update(reported={"a": 1})
    dev.update(reported={"a": 2})
    assert dev.next("update/accepted").version == 1
    assert dev.next("update/accepted").version == 2
    dev.update(reported={"a": 3}, version=1, token="stale")
    rejected = dev.next("update/rejected")
    assert isinstance(rejected, iotshadow.ErrorResponse)
    assert (rejected.code, rejected.message, rejected.client_token) == (409, "Version conflict", "stale")
    dev.update(reported={"a": 3}, version=2, token="current")
    ok = dev.next("update/accepted")
    assert (ok.version, ok.client_token) == (3, "current")


def test_an_oversize_document_is_rejected_with_413(dev, data):
    dev.update(reported={"big": "x" * 9000}, token="big")
    rejected = dev.next("update/rejected")
    assert (rejected.code, rejected.message, rejected.client_token) == (
        413,
        "The payload exceeds the maximum size allowed",
        "big",
    )
    with pytest.raises(ClientError) as e:
        data.get_thing_shadow(thingName=dev.name)
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_get_delete_and_the_version_after_delete(dev, data):
    dev.get(token="g0")
    missing = dev.next("get/rejected")
    assert (missing.code, missing.client_token) == (404, "g0")
    assert missing.message == f"No shadow exists with name: '{dev.name}'"

    dev.update(desired={"mode": "eco"}, reported={"mode": "eco"})
    dev.next("update/accepted")
    dev.get(token="g1")
    got = dev.next("get/accepted")
    assert isinstance(got, iotshadow.GetShadowResponse)
    assert (got.state.desired, got.state.reported, got.state.delta, got.version, got.client_token) == (
        {"mode": "eco"},
        {"mode": "eco"},
        None,
        1,
        "g1",
    )

    dev.delete(token="d1")
    deleted = dev.next("delete/accepted")
    assert (deleted.version, deleted.client_token) == (1, "d1")
    dev.delete(token="d2")
    assert dev.next("delete/rejected").code == 404

    # Deleting does not reset the version: the next document continues from it.
    dev.update(reported={"mode": "boost"})
    assert dev.next("update/accepted").version == 2
    with pytest.raises(ClientError) as e:
        data.delete_thing_shadow(thingName=dev.name, shadowName="never")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_documents_carry_previous_and_current(dev):
    dev.update(reported={"t": 1})
    first = dev.next("update/documents")
    assert isinstance(first, iotshadow.ShadowUpdatedEvent)
    assert first.previous is None
    assert first.current.state.reported == {"t": 1} and first.current.version == 1
    dev.update(reported={"t": None, "u": [1, 2]})
    second = dev.next("update/documents")
    assert second.previous.state.reported == {"t": 1} and second.previous.version == 1
    assert second.current.state.reported == {"u": [1, 2]} and second.current.version == 2


def test_named_shadows_over_mqtt_and_rest(dev, data):
    for name in ("config", "telemetry"):
        dev.watch(shadow=name)
        dev.update(reported={"shadow": name}, shadow=name)
        assert dev.next("update/accepted", shadow=name).state.reported == {"shadow": name}
    data.update_thing_shadow(thingName=dev.name, shadowName="config", payload=b'{"state":{"desired":{"rate":5}}}')
    delta = dev.next("update/delta", shadow="config")
    assert delta.state == {"rate": 5}
    dev.nothing("update/delta")  # the classic shadow saw nothing

    names = data.list_named_shadows_for_thing(thingName=dev.name)
    assert names["results"] == ["config", "telemetry"]
    page = data.list_named_shadows_for_thing(thingName=dev.name, pageSize=1)
    assert page["results"] == ["config"] and page["nextToken"]
    rest = data.list_named_shadows_for_thing(thingName=dev.name, pageSize=1, nextToken=page["nextToken"])
    assert rest["results"] == ["telemetry"] and "nextToken" not in rest

    doc = read(data.get_thing_shadow(thingName=dev.name, shadowName="config"))
    assert doc["state"]["delta"] == {"rate": 5}
    dev.delete(shadow="telemetry")
    dev.next("delete/accepted", shadow="telemetry")
    assert data.list_named_shadows_for_thing(thingName=dev.name)["results"] == ["config"]


def test_boto3_sees_what_the_device_reported_and_gets_the_service_errors(dev, data):
    dev.update(reported={"temp": 21.5, "nested": {"a": {"b": True}}})
    dev.next("update/accepted")
    doc = read(data.get_thing_shadow(thingName=dev.name))
    assert doc["state"]["reported"] == {"temp": 21.5, "nested": {"a": {"b": True}}}
    cases = [
        (b"not json", 400, "InvalidRequestException", "Invalid JSON"),
        (b'{"state":{"reported":{}},"version":7}', 409, "ConflictException", "Version conflict"),
        (b'{"nostate":1}', 400, "InvalidRequestException", "Missing required node: state"),
        (
            b'{"state":{"desired":{"1":{"2":{"3":{"4":{"5":{"6":{}}}}}}}}}',
            400,
            "InvalidRequestException",
            "JSON contains too many levels of nesting; maximum is 6",
        ),
    ]
    for payload, status, code, message in cases:
        with pytest.raises(ClientError) as e:
            data.update_thing_shadow(thingName=dev.name, payload=payload)
        err = e.value.response
        assert (err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"], err["Error"]["Message"]) == (
            status,
            code,
            message,
        ), payload


def test_a_device_cannot_use_another_things_shadow(fleet, iot, tmp_path, dev, data):
    other = ShadowDevice(fleet, iot, tmp_path)
    try:
        other.watch()
        data.update_thing_shadow(thingName=other.name, payload=b'{"state":{"desired":{"x":1}}}')
        other.next("update/delta")
        # Its policy lets `dev` neither subscribe to nor publish on the other thing's topics:
        # AWS IoT closes an MQTT 3.1.1 connection that publishes where it may not.
        intruder = iotshadow.IotShadowClient(dev.connection)
        with pytest.raises(Exception):
            intruder.subscribe_to_shadow_delta_updated_events(
                iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=other.name), 1, print
            )[0].result(5)
        doc = read(data.get_thing_shadow(thingName=other.name))
        assert doc["version"] == 1
    finally:
        other.stop()


def https(fleet, device, method, path, body=None):
    host, port = fleet.endpoints["dataPlane"].removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=fleet.root_ca)
    ctx.load_cert_chain(str(device.cert), str(device.key))
    conn = http.client.HTTPSConnection("localhost", int(port), context=ctx, timeout=15)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.getheader("x-amzn-ErrorType"), json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_the_data_plane_serves_shadows_to_the_device_certificate(fleet, iot, tmp_path, dev, data):
    """What a core's shadow sync calls: iot-data REST with the device certificate, no SigV4."""
    status, _, accepted = https(fleet, dev.device, "POST", f"/things/{dev.name}/shadow?name=sync", b'{"state":{"reported":{"up":true}}}')
    assert (status, accepted["version"], accepted["state"]) == (200, 1, {"reported": {"up": True}})
    status, _, doc = https(fleet, dev.device, "GET", f"/things/{dev.name}/shadow?name=sync")
    assert (status, doc["state"]) == (200, {"reported": {"up": True}})
    assert read(data.get_thing_shadow(thingName=dev.name, shadowName="sync"))["version"] == 1
    status, _, names = https(fleet, dev.device, "GET", f"/api/things/shadow/ListNamedShadowsForThing/{dev.name}")
    assert (status, names["results"]) == (200, ["sync"])
    status, kind, body = https(fleet, dev.device, "GET", f"/things/{dev.name}/shadow")
    assert (status, kind, body["message"]) == (404, "ResourceNotFoundException", f"No shadow exists with name: '{dev.name}'")
    status, _, _ = https(fleet, dev.device, "DELETE", f"/things/{dev.name}/shadow?name=sync")
    assert status == 200
    # Another thing's shadow is outside the certificate's policy.
    status, kind, _ = https(fleet, dev.device, "GET", "/things/someone-else/shadow")
    assert (status, kind) == (403, "ForbiddenException")
