"""Devices for the fleet suites: a thing with created keys, certificate and policy (boto3 against
the control plane), and sessions with the unmodified AWS IoT Device SDK (awsiotsdk, MQTT 3.1.1 and
MQTT 5) on the fleet's device endpoint.
"""

import json
import threading
import uuid
from concurrent.futures import Future

from awscrt import mqtt, mqtt5
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
    """A thing with an ACTIVE created certificate and a policy (by default DEVICE_POLICY: connect
    as itself, publish, subscribe and receive under `devices/<its name>/`) attached."""

    def __init__(self, fleet, iot, tmp_path, name=None, policy=None):
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
        policy_name = f"{self.name}-policy"
        iot.create_policy(policyName=policy_name, policyDocument=json.dumps(policy or DEVICE_POLICY))
        iot.attach_policy(policyName=policy_name, target=self.cert_arn)
        iot.attach_thing_principal(thingName=self.name, principal=self.cert_arn)

    @classmethod
    def existing(cls, fleet, name, cert, key):
        """A device whose certificate was made elsewhere (fleet provisioning, enroll)."""
        d = cls.__new__(cls)
        d.fleet, d.name, d.cert, d.key = fleet, name, cert, key
        return d

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


