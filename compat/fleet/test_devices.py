"""The unmodified AWS IoT Device SDK (awsiotsdk, MQTT 3.1.1 and MQTT 5) against the fleet's device
endpoint, with things, certificates and policies made through the control plane by boto3.

Each device is a thing with its own created keys and certificate and a policy that lets it connect
as itself and publish, subscribe and receive under `devices/<its name>/`.
"""

import json
import threading
import uuid
from concurrent.futures import Future

import pytest
from awscrt import io, mqtt, mqtt5
from awsiot import mqtt5_client_builder, mqtt_connection_builder

TIMEOUT = 15

DEVICE_POLICY = {
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
            "Resource": "arn:aws:iot:*:*:topic/devices/${iot:Connection.Thing.ThingName}/*",
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": "arn:aws:iot:*:*:topicfilter/devices/${iot:Connection.Thing.ThingName}/*",
        },
    ],
}


class Device:
    """A thing with an ACTIVE created certificate and the device policy attached."""

    def __init__(self, fleet, iot, tmp_path, name=None):
        self.fleet = fleet
        self.name = name or f"dev-{uuid.uuid4().hex[:8]}"
        iot.create_thing(thingName=self.name)
        keys = iot.create_keys_and_certificate(setAsActive=True)
        self.cert_id = keys["certificateId"]
        self.cert_arn = keys["certificateArn"]
        self.cert = tmp_path / f"{self.name}.pem.crt"
        self.key = tmp_path / f"{self.name}.pem.key"
        self.cert.write_text(keys["certificatePem"])
        self.key.write_text(keys["keyPair"]["PrivateKey"])
        self.key.chmod(0o600)
        policy = f"{self.name}-policy"
        iot.create_policy(policyName=policy, policyDocument=json.dumps(DEVICE_POLICY))
        iot.attach_policy(policyName=policy, target=self.cert_arn)
        iot.attach_thing_principal(thingName=self.name, principal=self.cert_arn)

    def mqtt3(self, client_id=None, **kw):
        return mqtt_connection_builder.mtls_from_path(
            endpoint="localhost",
            port=self.fleet.mqtt_port,
            cert_filepath=str(self.cert),
            pri_key_filepath=str(self.key),
            ca_filepath=self.fleet.root_ca,
            client_id=client_id or self.name,
            clean_session=True,
            keep_alive_secs=30,
            **kw,
        )

    def mqtt5(self, client_id=None, **kw):
        return mqtt5_client_builder.mtls_from_path(
            endpoint="localhost",
            port=self.fleet.mqtt_port,
            cert_filepath=str(self.cert),
            pri_key_filepath=str(self.key),
            ca_filepath=self.fleet.root_ca,
            client_id=client_id or self.name,
            **kw,
        )


def settle(future, value):
    if not future.done():
        future.set_result(value)


class Session5:
    """An MQTT 5 client started and connected (or refused), with what it saw."""

    def __init__(self, device, client_id=None):
        self.connected = Future()
        self.received = Future()
        self.disconnected = threading.Event()
        self.stopped = threading.Event()

        def on_failure(data):
            reason = data.connack_packet.reason_code if data.connack_packet else None
            settle(self.connected, {"reason": None if reason is None else int(reason), "error": str(data.exception)})

        self.client = device.mqtt5(
            client_id=client_id,
            on_lifecycle_connection_success=lambda data: settle(self.connected, True),
            on_lifecycle_connection_failure=on_failure,
            on_lifecycle_disconnection=lambda data: self.disconnected.set(),
            on_lifecycle_stopped=lambda data: self.stopped.set(),
            on_publish_received=lambda data: settle(
                self.received, [data.publish_packet.topic, bytes(data.publish_packet.payload).decode()]
            ),
        )
        self.client.start()
        self.outcome = self.connected.result(TIMEOUT)

    def subscribe(self, topic):
        suback = self.client.subscribe(
            subscribe_packet=mqtt5.SubscribePacket(
                subscriptions=[mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)]
            )
        ).result(TIMEOUT)
        return [int(c) for c in suback.reason_codes]

    def publish(self, topic, payload):
        done = self.client.publish(
            mqtt5.PublishPacket(topic=topic, payload=payload.encode(), qos=mqtt5.QoS.AT_LEAST_ONCE)
        ).result(TIMEOUT)
        return int(done.puback.reason_code)

    def stop(self):
        self.client.stop()
        self.stopped.wait(TIMEOUT)


class Session3:
    """An MQTT 3.1.1 connection, connected (or refused), with what it saw."""

    def __init__(self, device, client_id=None):
        self.received = Future()
        self.interrupted = threading.Event()
        self.connection = device.mqtt3(
            client_id=client_id,
            on_connection_interrupted=lambda connection, error, **kw: self.interrupted.set(),
        )
        try:
            self.connection.connect().result(TIMEOUT)
            self.outcome = True
        except Exception as e:  # the SDK raises on a refused CONNACK or a failed handshake
            self.outcome = {"error": f"{type(e).__name__}: {e}"}

    def subscribe(self, topic):
        subscribed, _ = self.connection.subscribe(
            topic=topic,
            qos=mqtt.QoS.AT_LEAST_ONCE,
            callback=lambda topic, payload, **kw: settle(self.received, [topic, payload.decode()]),
        )
        return int(subscribed.result(TIMEOUT)["qos"])

    def publish(self, topic, payload, wait=TIMEOUT):
        published, _ = self.connection.publish(topic=topic, payload=payload, qos=mqtt.QoS.AT_LEAST_ONCE)
        published.result(wait)

    def stop(self):
        try:
            self.connection.disconnect().result(TIMEOUT)
        except Exception:
            pass


def session(version, device, client_id=None):
    return Session3(device, client_id) if version == 3 else Session5(device, client_id)


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
