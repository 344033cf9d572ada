"""Client devices against a real core: TLS with client certificates, device-group policies,
the unmodified awsiotsdk MQTT 5 client, and the four client-device IPC operations."""

import json
import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion


def tls_context(core, cert=None):
    ctx = ssl.create_default_context(cafile=core.ca_path)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


class Client:
    """A paho MQTT 5 client that records what happened."""

    def __init__(self, core, client_id, cert=None, host="localhost"):
        self.events = {}
        self.messages = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.tls_set_context(tls_context(core, cert))
        self.c.on_connect = lambda c, u, f, rc, p: self._set("connack", rc.value)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._set(("suback", mid), [r.value for r in rcs])
        self.c.on_publish = lambda c, u, mid, rc, p: self._set(("puback", mid), rc.value)
        self.c.on_message = lambda c, u, m: self._add(m)
        self.host, self.port = host, core.port

    def _set(self, k, v):
        with self.cond:
            self.events[k] = v
            self.cond.notify_all()

    def _add(self, m):
        with self.cond:
            self.messages.append((m.topic, m.payload))
            self.cond.notify_all()

    def wait(self, pred, timeout=10):
        with self.cond:
            assert self.cond.wait_for(pred, timeout), f"timed out; events={self.events} messages={self.messages}"

    def connect(self):
        self.c.connect(self.host, self.port, keepalive=30)
        self.c.loop_start()
        self.wait(lambda: "connack" in self.events)
        return self.events["connack"]

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_a_client_without_a_certificate_is_refused(core):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sensor1", protocol=mqtt.MQTTv5)
    c.tls_set_context(tls_context(core))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        c.connect("localhost", core.port)
        # TLS 1.3 reports the missing certificate on the first read.
        for _ in range(50):
            rc = c.loop(timeout=0.1)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"loop rc {rc}")


def test_a_certificate_from_an_unknown_ca_is_refused(core, devices):
    c = Client(core, "sensor1", devices["stranger"])
    with pytest.raises((ssl.SSLError, ConnectionError, OSError, AssertionError)):
        c.c.connect("localhost", core.port)
        for _ in range(50):
            rc = c.c.loop(timeout=0.1)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"loop rc {rc}")
        assert "connack" in c.events and c.events["connack"] != 0


def test_a_device_outside_every_group_is_refused_at_connect(core, devices):
    c = Client(core, "intruder", devices["intruder"])
    try:
        rc = c.connect()
        assert rc == 0x87, f"CONNACK reason {rc:#x}"
    finally:
        c.close()


def test_the_server_certificate_names_localhost_and_127_0_0_1(core, devices):
    c = Client(core, "sensor1", devices["sensor1"], host="127.0.0.1")
    try:
        assert c.connect() == 0
    finally:
        c.close()


def test_an_allowed_device_publishes_and_subscribes_per_policy(core, devices):
    c = Client(core, "sensor1", devices["sensor1"])
    try:
        assert c.connect() == 0
        _, ok = c.c.subscribe("allowed/#", qos=1)
        _, denied = c.c.subscribe("forbidden/#", qos=1)
        c.wait(lambda: ("suback", ok) in c.events and ("suback", denied) in c.events)
        assert c.events[("suback", ok)] == [1]
        assert c.events[("suback", denied)][0] in (0x87, 0x80)
        info = c.c.publish("forbidden/x", b"no", qos=1)
        c.wait(lambda: ("puback", info.mid) in c.events)
        assert c.events[("puback", info.mid)] == 0x87
        info = c.c.publish("things/sensor1/data", b"mine", qos=1)
        c.wait(lambda: ("puback", info.mid) in c.events)
        assert c.events[("puback", info.mid)] in (0, 0x10)
        info = c.c.publish("things/sensor2/data", b"not mine", qos=1)
        c.wait(lambda: ("puback", info.mid) in c.events)
        assert c.events[("puback", info.mid)] == 0x87
        c.c.publish("allowed/hello", b"world", qos=1)
        c.wait(lambda: ("allowed/hello", b"world") in c.messages)
    finally:
        c.close()


def test_the_unmodified_awsiotsdk_mqtt5_client_round_trips(core, devices):
    from awscrt import mqtt5
    from awsiot import mqtt5_client_builder

    connected, received = threading.Event(), []
    got = threading.Event()

    def on_message(data):
        received.append((data.publish_packet.topic, bytes(data.publish_packet.payload)))
        got.set()

    client = mqtt5_client_builder.mtls_from_path(
        endpoint="127.0.0.1",
        port=core.port,
        cert_filepath=devices["sdk"][0],
        pri_key_filepath=devices["sdk"][1],
        ca_filepath=core.ca_path,
        client_id="sdk-client",
        on_publish_received=on_message,
        on_lifecycle_connection_success=lambda d: connected.set(),
    )
    client.start()
    try:
        assert connected.wait(20), "awsiotsdk MQTT 5 client did not connect"
        sub = client.subscribe(
            mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription("allowed/#", mqtt5.QoS.AT_LEAST_ONCE)])
        ).result(10)
        assert sub.reason_codes[0] == mqtt5.SubackReasonCode.GRANTED_QOS_1
        pub = client.publish(
            mqtt5.PublishPacket(topic="allowed/sdk", payload=b"hello sdk", qos=mqtt5.QoS.AT_LEAST_ONCE)
        ).result(10)
        assert pub.puback.reason_code == mqtt5.PubackReasonCode.SUCCESS
        assert got.wait(10)
        assert received[0] == ("allowed/sdk", b"hello sdk")
        denied = client.publish(
            mqtt5.PublishPacket(topic="forbidden/sdk", payload=b"x", qos=mqtt5.QoS.AT_LEAST_ONCE)
        ).result(10)
        assert denied.puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED
    finally:
        client.stop()
        time.sleep(0.2)


def _component_result(core, name, timeout=60):
    path = core.work / f"{name}.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{name} wrote no result; core log:\n{core.log()[-4000:]}"
        time.sleep(0.2)
    return json.loads(path.read_text())


def test_a_component_calls_the_four_client_device_operations(core, devices):
    r = _component_result(core, "test.CdaClient")
    assert r["verify_device"] is True
    assert r["verify_stranger"] is False
    assert r["token_stranger"]["error"] == "InvalidCredentialError"
    assert r["token_other_thing"]["error"] == "InvalidCredentialError", r["token_other_thing"]
    assert r["token_wildcard"]["error"] == "InvalidCredentialError", r["token_wildcard"]
    # Topic filters compare as strings: `allowed/#` is allowed, `allowed/x` is not.
    assert r["connect"] is True
    assert r["publish_allowed"] is True
    assert r["publish_forbidden"] is False
    assert r["bad_token"]["error"] == "InvalidClientDeviceAuthTokenError"
    upd = r["certificate_updates"]
    assert "BEGIN CERTIFICATE" in upd["certificate"]
    assert upd["privateKey"] is True
    assert upd["ca"] == [open(core.ca_path).read()]


def test_a_component_without_a_policy_is_unauthorized(core):
    r = _component_result(core, "test.CdaNoPolicy")
    for op in ("verify_device", "verify_stranger", "token_stranger", "certificate_updates"):
        assert r[op]["error"] == "UnauthorizedError", (op, r[op])
