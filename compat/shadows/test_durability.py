"""Shadows are the registry's durable state: an acknowledged update survives kill -9 of the fleet,
and versions continue from what was stored; on SQLite and on PostgreSQL."""

import json

import pytest
from botocore.exceptions import ClientError
from shadow_devices import ShadowDevice


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_store(request):
    return request.param


def test_accepted_updates_survive_kill9(fleet, iot, tmp_path):
    dev = ShadowDevice(fleet, iot, tmp_path)
    try:
        dev.watch()
        dev.watch(shadow="cfg")
        dev.update(desired={"mode": "eco"})
        dev.update(reported={"mode": "eco", "fw": "1.2"})
        dev.update(reported={"rate": 5}, shadow="cfg")
        assert dev.next("update/accepted").version == 1
        assert dev.next("update/accepted").version == 2
        assert dev.next("update/accepted", shadow="cfg").version == 1
    finally:
        dev.stop()

    fleet.kill9()
    fleet.start()
    data = fleet.client("iot-data")
    doc = json.loads(data.get_thing_shadow(thingName=dev.name)["payload"].read())
    assert doc["state"] == {"desired": {"mode": "eco"}, "reported": {"mode": "eco", "fw": "1.2"}}
    assert doc["version"] == 2
    assert data.list_named_shadows_for_thing(thingName=dev.name)["results"] == ["cfg"]

    with pytest.raises(ClientError) as e:
        data.update_thing_shadow(thingName=dev.name, payload=b'{"state":{"reported":{"x":1}},"version":1}')
    assert e.value.response["Error"]["Code"] == "ConflictException"
    accepted = json.loads(
        data.update_thing_shadow(thingName=dev.name, payload=b'{"state":{"reported":{"x":1}},"version":2}')["payload"].read()
    )
    assert accepted["version"] == 3
