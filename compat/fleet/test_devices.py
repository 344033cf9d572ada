"""The unmodified AWS IoT Device SDK (awsiotsdk, MQTT 3.1.1 and MQTT 5) against the fleet's device
endpoint, with things, certificates and policies made through the control plane by boto3.

Each device is a thing with its own created keys and certificate and a policy that lets it connect
as itself and publish, subscribe and receive under `devices/<its name>/`.
"""

import pytest
from awscrt import io, mqtt
from fleet_devices import TIMEOUT, Device, Session5, session


@pytest.fixture
def device(fleet, iot, tmp_path):
    return Device(fleet, iot, tmp_path)


def test_endpoints_name_the_device_endpoint(fleet):
    assert fleet.mqtt_port, f"endpoints.json names no mqtt listener: {fleet.endpoints}"


@pytest.mark.parametrize("version", [3, 5])
def test_device_round_trips_a_message_under_its_policy(fleet, device, version):
    s = session(version, device)
    try:
        assert s.outcome is True, f"the device was refused: {s.outcome}\n{fleet.output()}"
        topic = f"devices/{device.name}/telemetry"
        granted = s.subscribe(topic)
        assert granted in (1, [1]), f"SUBACK {granted}"
        if version == 5:
            assert s.publish(topic, "hello") < 0x80
        else:
            s.publish(topic, "hello")
        assert s.received.result(TIMEOUT) == [topic, "hello"]
    finally:
        s.stop()


def test_refused_without_a_certificate(fleet, device):
    """TLS without a client certificate: the handshake fails, nothing connects."""
    opts = io.TlsContextOptions()
    opts.override_default_trust_store_from_path(ca_filepath=fleet.root_ca)
    opts.alpn_list = ["x-amzn-mqtt-ca"]
    client = mqtt.Client(None, io.ClientTlsContext(opts))
    connection = mqtt.Connection(
        client=client, host_name="localhost", port=fleet.mqtt_port, client_id=device.name, clean_session=True
    )
    with pytest.raises(Exception):
        connection.connect().result(TIMEOUT)


def test_alpn_x_amzn_mqtt_ca_is_accepted(fleet, device):
    """What the SDK offers on port 443: the same listener accepts it."""
    opts = io.TlsContextOptions.create_client_with_mtls_from_path(str(device.cert), str(device.key))
    opts.override_default_trust_store_from_path(ca_filepath=fleet.root_ca)
    opts.alpn_list = ["x-amzn-mqtt-ca"]
    connection = mqtt.Connection(
        client=mqtt.Client(None, io.ClientTlsContext(opts)),
        host_name="localhost",
        port=fleet.mqtt_port,
        client_id=device.name,
        clean_session=True,
    )
    connection.connect().result(TIMEOUT)
    connection.disconnect().result(TIMEOUT)


@pytest.mark.parametrize("version", [3, 5])
def test_refused_with_a_client_id_it_may_not_use(fleet, device, version):
    s = session(version, device, client_id="someone-else")
    try:
        assert s.outcome is not True, "a device connected under a client id its policy does not allow"
        if version == 5:
            assert s.outcome["reason"] == 0x87, s.outcome
    finally:
        s.stop()


@pytest.mark.parametrize("version", [3, 5])
def test_publish_outside_its_policy_is_refused(fleet, device, version):
    s = session(version, device)
    try:
        assert s.outcome is True, s.outcome
        other = "devices/another-device/telemetry"
        if version == 5:
            assert s.publish(other, "nope") == 0x87
        else:
            # MQTT 3.1.1 has no negative PUBACK: the broker closes the connection, as AWS IoT does.
            try:
                s.publish(other, "nope", wait=3)
            except Exception:
                pass
            assert s.interrupted.wait(TIMEOUT), "an MQTT 3.1.1 device publishing outside its policy stayed connected"
    finally:
        s.stop()


@pytest.mark.parametrize("version", [3, 5])
def test_revoked_certificate_is_disconnected_then_refused(fleet, iot, device, version):
    s = session(version, device)
    try:
        assert s.outcome is True, s.outcome
        iot.update_certificate(certificateId=device.cert_id, newStatus="REVOKED")
        went = s.interrupted if version == 3 else s.disconnected
        assert went.wait(TIMEOUT), f"the device stayed connected after its certificate was revoked\n{fleet.output()}"
    finally:
        s.stop()
    again = session(version, device)
    try:
        assert again.outcome is not True, "a revoked certificate connected"
    finally:
        again.stop()


def test_iot_data_publish_reaches_the_subscribed_device(fleet, device):
    s = Session5(device)
    try:
        assert s.outcome is True, s.outcome
        topic = f"devices/{device.name}/commands"
        assert s.subscribe(topic) == [1]
        fleet.client("iot-data").publish(topic=topic, qos=1, payload=b'{"do":"reboot"}')
        assert s.received.result(TIMEOUT) == [topic, '{"do":"reboot"}']
    finally:
        s.stop()
