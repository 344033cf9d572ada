"""Test clients: a thin paho-mqtt 2 wrapper, and raw-socket helpers for what paho will not send."""

import queue
import socket
import struct
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

TIMEOUT = 10


class Client:
    """A paho client running its network loop in a thread, collecting messages in a queue."""

    def __init__(self, port, version, client_id="", clean=True, session_expiry=None, keepalive=60, will=None):
        self.port, self.version = port, version
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present = None
        self.connect_rc = None
        self.disconnect_rc = None
        self.subacks = {}
        self.sub_events = {}
        kwargs = {"client_id": client_id, "protocol": mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311}
        if version != 5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        # paho reconnects on its own after a drop; tests want to see the drop, not a new session.
        self.c.reconnect_delay_set(min_delay=60, max_delay=120)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = self._on_subscribe
        if will:
            topic, payload, qos, props = will
            self.c.will_set(topic, payload, qos, properties=props)
        connect_kwargs = {"keepalive": keepalive}
        if version == 5:
            connect_kwargs["clean_start"] = clean
            if session_expiry is not None:
                p = Properties(PacketTypes.CONNECT)
                p.SessionExpiryInterval = session_expiry
                connect_kwargs["properties"] = p
        self.c.connect("127.0.0.1", port, **connect_kwargs)
        self.c.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"

    def _on_connect(self, c, userdata, flags, rc, props):
        self.session_present = flags.session_present
        self.connect_rc = rc
        self.connected.set()

    def _on_disconnect(self, c, userdata, flags, rc, props):
        self.disconnect_rc = rc
        self.disconnected.set()

    def _on_subscribe(self, c, userdata, mid, rcs, props):
        self.subacks[mid] = rcs
        self.sub_events.setdefault(mid, threading.Event()).set()

    def subscribe(self, topic, qos=1, no_local=False, retain_as_published=False, retain_handling=0, sub_id=None):
        props = None
        if self.version == 5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=retain_as_published, retainHandling=retain_handling)
            if sub_id is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            rc, mid = self.c.subscribe(topic, options=opts, properties=props)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        ev = self.sub_events.setdefault(mid, threading.Event())
        assert ev.wait(TIMEOUT), "no SUBACK"
        return self.subacks[mid]

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()
        return info

    def get(self, timeout=TIMEOUT):
        return self.messages.get(timeout=timeout)

    def expect_none(self, wait=1.0):
        """Asserts that no message arrives within `wait` seconds (a bounded wait for an absence)."""
        try:
            m = self.messages.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {m.topic}: {m.payload!r}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def round_trip(sub, pub, topic):
    """Checks the broker still routes between `pub` and `sub` on `topic`."""
    pub.publish(topic, b"ping", qos=1)
    m = sub.get()
    assert (m.topic, m.payload) == (topic, b"ping")


# --- raw packets ---------------------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id, version=4, keepalive=60, clean=True, will=None, will_props=b"", props=b""):
    flags = 0x02 if clean else 0
    payload = mqtt_str(client_id)
    if will:
        topic, message, qos = will
        flags |= 0x04 | (qos << 3)
        if version == 5:
            payload += varint(len(will_props)) + will_props
        payload += mqtt_str(topic) + mqtt_str(message)
    vh = mqtt_str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        vh += varint(len(props)) + props
    body = vh + payload
    return b"\x10" + varint(len(body)) + body


def prop_u32(ident, value):
    return bytes([ident]) + struct.pack("!I", value)


class RawClient:
    """A client on a bare socket, for wills, keep-alive and malformed or oversized packets."""

    def __init__(self, port, client_id, version=4, **kwargs):
        self.version = version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.sendall(connect_packet(client_id, version=version, **kwargs))
        first = self.sock.recv(1)
        assert first == b"\x20", f"expected CONNACK, got {first!r}"
        length = self.sock.recv(1)[0]
        rest = b""
        while len(rest) < length:
            rest += self.sock.recv(length - len(rest))
        assert rest[1] == 0, f"CONNACK refused with {rest[1]:#x}"

    def send(self, data):
        self.sock.sendall(data)

    def read_until_closed(self, timeout=TIMEOUT):
        """Reads until the broker closes the connection; returns what it sent before closing."""
        self.sock.settimeout(timeout)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(4096)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
        raise AssertionError("broker kept the connection open")

    def drop(self):
        """Closes the socket without DISCONNECT (an abnormal end: the will is due)."""
        self.sock.close()

    def disconnect(self):
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()
