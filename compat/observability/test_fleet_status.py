"""Fleet status you can trust: a real core enrolled with a real fleet is HEALTHY while it is
connected and reporting, UNHEALTHY (with the reason) once it is killed or stops reporting, and
HEALTHY again when it is back; AWS IoT lifecycle events are published on
`$aws/events/presence/connected|disconnected/<clientId>` in AWS's shape.

GetCoreDevice / ListCoreDevices are read with boto3 `greengrassv2`; Lichen's additions
(`statusReason`, `connectivity`) are read from the same responses' raw JSON.
"""

import json
import queue
import signal
import time

from fleet_devices import Device
from lichen_support import wait_for

THING = "obs-core-1"

WATCHER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/$aws/events/presence/*"},
        {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/$aws/events/presence/*"},
    ],
}


def raw_core_device(gg, thing):
    """GetCoreDevice through boto3, returning (parsed, raw JSON body)."""
    seen = {}

    def keep(http_response, **_):
        seen["body"] = http_response.content

    gg.meta.events.register("after-call.greengrassv2.GetCoreDevice", keep)
    try:
        parsed = gg.get_core_device(coreDeviceThingName=thing)
    finally:
        gg.meta.events.unregister("after-call.greengrassv2.GetCoreDevice", keep)
    return parsed, json.loads(seen["body"])


def status_of(gg, thing):
    try:
        return gg.get_core_device(coreDeviceThingName=thing)["status"]
    except gg.exceptions.ResourceNotFoundException:
        return None


def listed(gg, status):
    return [d["coreDeviceThingName"] for d in gg.list_core_devices(status=status)["coreDevices"]]


class Watcher:
    """An awsiotsdk MQTT 3.1.1 device subscribed to the lifecycle events."""

    def __init__(self, fleet, tmp_path):
        from awscrt import mqtt

        iot = fleet.client("iot")
        self.device = Device(fleet, iot, tmp_path, name="presence-watcher", policy=WATCHER_POLICY)
        self.events = queue.Queue()
        self.conn = self.device.mqtt3()
        self.conn.connect().result(15)
        sub, _ = self.conn.subscribe(
            topic="$aws/events/presence/+/+",
            qos=mqtt.QoS.AT_LEAST_ONCE,
            callback=lambda topic, payload, **kw: self.events.put((topic, json.loads(payload))),
        )
        sub.result(15)

    def next_for(self, client_id, event_type, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {event_type} lifecycle event for {client_id}"
            topic, ev = self.events.get(timeout=left)
            if ev.get("clientId") == client_id and ev.get("eventType") == event_type:
                return topic, ev

    def close(self):
        self.conn.disconnect().result(15)


def test_a_killed_core_is_unhealthy_and_disconnected_until_it_comes_back(make_fleet, make_core, tmp_path):
    fleet = make_fleet("--device-stale-after", "600")
    gg = fleet.client("greengrassv2")
    watcher = Watcher(fleet, tmp_path)
    try:
        core = make_core(fleet, THING).start()
        topic, ev = watcher.next_for(THING, "connected", 60)
        assert topic == f"$aws/events/presence/connected/{THING}"
        assert set(ev) >= {"clientId", "timestamp", "eventType", "sessionIdentifier", "principalIdentifier",
                           "ipAddress", "versionNumber"}
        assert ev["ipAddress"] == "127.0.0.1"
        wait_for(lambda: status_of(gg, THING) == "HEALTHY", 60, f"{THING} HEALTHY\n{fleet.output()}")
        parsed, raw = raw_core_device(gg, THING)
        assert raw["connectivity"]["connected"] is True
        assert "statusReason" not in raw
        assert THING in listed(gg, "HEALTHY") and THING not in listed(gg, "UNHEALTHY")

        core.kill9()
        topic, gone = watcher.next_for(THING, "disconnected", 60)
        assert topic == f"$aws/events/presence/disconnected/{THING}"
        assert gone["disconnectReason"] == "CONNECTION_LOST"
        assert gone["sessionIdentifier"] == ev["sessionIdentifier"]
        assert gone["clientInitiatedDisconnect"] is False
        # Well within the stale bound (600 s): it is the disconnect that counts.
        wait_for(lambda: status_of(gg, THING) == "UNHEALTHY", 30, f"{THING} UNHEALTHY after kill -9")
        _, raw = raw_core_device(gg, THING)
        assert raw["statusReason"] == "DISCONNECTED"
        assert raw["connectivity"]["connected"] is False
        assert raw["connectivity"]["disconnectReason"] == "CONNECTION_LOST"
        assert THING in listed(gg, "UNHEALTHY") and THING not in listed(gg, "HEALTHY")

        core.start()
        _, back = watcher.next_for(THING, "connected", 60)
        assert back["sessionIdentifier"] != ev["sessionIdentifier"]
        wait_for(lambda: status_of(gg, THING) == "HEALTHY", 60, f"{THING} HEALTHY again")
        assert THING in listed(gg, "HEALTHY")
    finally:
        watcher.close()


def test_a_core_that_stops_reporting_turns_unhealthy_within_the_bound(make_fleet, make_core):
    # The core reports every second; the fleet allows 4 s. A stopped core keeps its TCP
    # connection (the kernel holds it) but reports nothing: only the bound can tell.
    fleet = make_fleet("--device-stale-after", "4")
    gg = fleet.client("greengrassv2")
    core = make_core(
        fleet, THING, {"fleetStatusService": {"periodicStatusPublishIntervalSeconds": 1}}
    ).start()
    wait_for(lambda: status_of(gg, THING) == "HEALTHY", 60, f"{THING} HEALTHY\n{fleet.output()}")
    # Reporting keeps it HEALTHY past the bound.
    first = gg.get_core_device(coreDeviceThingName=THING)["lastStatusUpdateTimestamp"]
    wait_for(
        lambda: gg.get_core_device(coreDeviceThingName=THING)["lastStatusUpdateTimestamp"] > first,
        30, "a newer fleet status",
    )
    assert status_of(gg, THING) == "HEALTHY"

    core.signal(signal.SIGSTOP)
    wait_for(lambda: status_of(gg, THING) == "UNHEALTHY", 60, f"{THING} UNHEALTHY once stopped")
    _, raw = raw_core_device(gg, THING)
    assert raw["statusReason"] == "STATUS_STALE", raw
    assert raw["connectivity"]["connected"] is True

    core.signal(signal.SIGCONT)
    wait_for(lambda: status_of(gg, THING) == "HEALTHY", 60, f"{THING} HEALTHY once resumed")
