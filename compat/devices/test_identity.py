"""A client device is the thing its certificate is bound to: the client id must be that thing's
name (certificate CN, or the explicit `thingCertificates` mapping), and must be a valid thing
name, so no device can take another's groups or widen `${iot:Connection.Thing.ThingName}`."""

import ssl
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

# paho reports a 3.1.1 CONNACK return code as its MQTT 5 equivalent: 0x05 (not authorized) as
# 0x87, 0x02 (identifier rejected) as 0x85; anything else would come back as another value.
NOT_AUTHORIZED = {5: 0x87, 3: 0x87}
BAD_CLIENT_ID = {5: 0x85, 3: 0x85}


class Device:
    """A paho client (MQTT 5 or 3.1.1) with a device certificate that records what happened."""

    def __init__(self, core, client_id, cert, version=5):
        self.version = version
        self.events = {}
        self.cond = threading.Condition()
        protocol = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        ctx = ssl.create_default_context(cafile=core.ca_path)
        ctx.load_cert_chain(*cert)
        self.c.tls_set_context(ctx)
        self.c.on_connect = lambda c, u, f, rc, p: self._set("connack", (rc.value, p))
        self.c.on_disconnect = lambda c, u, f, rc, p: self._set("disconnect", rc.value)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._set(("suback", mid), [r.value for r in rcs])
        self.c.on_publish = lambda c, u, mid, rc, p: self._set(("puback", mid), rc.value)
        self.port = core.port

    def _set(self, k, v):
        with self.cond:
            self.events[k] = v
            self.cond.notify_all()

    def wait(self, pred, timeout=10):
        with self.cond:
            assert self.cond.wait_for(pred, timeout), f"timed out; events={self.events}"

    def connect(self):
        """The CONNACK reason code (0 = accepted)."""
        self.c.connect("localhost", self.port, keepalive=30)
        self.c.loop_start()
        self.wait(lambda: "connack" in self.events)
        return self.events["connack"][0]

    def publish(self, topic, payload, qos=1):
        info = self.c.publish(topic, payload, qos=qos)
        self.wait(lambda: ("puback", info.mid) in self.events or "disconnect" in self.events)
        return self.events.get(("puback", info.mid))

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.mark.parametrize("version", [5, 3])
def test_a_device_cannot_connect_as_another_thing(core, devices, version):
    d = Device(core, "sensor2", devices["sensor1"], version)
    try:
        assert d.connect() == NOT_AUTHORIZED[version]
    finally:
        d.close()
    own = Device(core, "sensor1", devices["sensor1"], version)
    try:
        assert own.connect() == 0
    finally:
        own.close()


@pytest.mark.parametrize("client_id", ["*", "sensor*", "Thing*", "a/b", "sensor1/x", "sensor+", "sensor#", "x" * 129])
def test_a_client_id_that_is_not_a_thing_name_is_refused(core, devices, client_id):
    d = Device(core, client_id, devices["sensor1"])
    try:
        assert d.connect() == BAD_CLIENT_ID[5]
    finally:
        d.close()


def test_a_client_id_that_is_not_a_thing_name_is_refused_on_3_1_1(core, devices):
    d = Device(core, "sensor*", devices["sensor1"], 3)
    try:
        assert d.connect() == BAD_CLIENT_ID[3]
    finally:
        d.close()


@pytest.mark.parametrize("client_id", ["sensor*", "sensor2", "*"])
def test_the_thing_name_variable_cannot_reach_another_devices_topic(core, devices, client_id):
    """sensor1 may publish to things/sensor1/data only, whichever client id it picks."""
    d = Device(core, client_id, devices["sensor1"])
    try:
        rc = d.connect()
        if rc == 0:
            assert d.publish("things/sensor2/data", b"forged") == 0x87
        else:
            assert rc in (0x85, 0x87)
    finally:
        d.close()
    owner = Device(core, "sensor2", devices["sensor2"])
    try:
        assert owner.connect() == 0
        assert owner.publish("things/sensor2/data", b"mine") in (0, 0x10)
    finally:
        owner.close()


def test_an_explicit_mapping_binds_a_certificate_to_a_thing(core, devices):
    mapped = Device(core, "sensor-mapped", devices["mapped"])
    try:
        assert mapped.connect() == 0
        assert mapped.publish("things/sensor-mapped/data", b"mine") in (0, 0x10)
    finally:
        mapped.close()
    # A mapped certificate is that thing's only: its CN no longer names a thing.
    by_cn = Device(core, "sensor-cn", devices["mapped"])
    try:
        assert by_cn.connect() == 0x87
    finally:
        by_cn.close()
    # A thing with listed certificates accepts no other, even one whose CN names it.
    impostor = Device(core, "sensor-mapped", devices["impostor"])
    try:
        assert impostor.connect() == 0x87
    finally:
        impostor.close()
