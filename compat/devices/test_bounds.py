"""The client-device broker's bounds: packet size (128 KiB by default, `emqx.mqtt.max_packet_size`),
subscriptions per client (`emqx.zone.external.max_subscriptions`), retained messages by count and
bytes (`brokerLimits`), each refused the MQTT way for the client's protocol version."""

import time

import pytest

from test_identity import Device

PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97


def test_the_default_packet_bound_is_128_kib(core, devices):
    d = Device(core, "sensor1", devices["sensor1"])
    try:
        assert d.connect() == 0
        assert d.events["connack"][1].MaximumPacketSize == 131072
        assert d.publish("allowed/small", b"x" * 100_000) in (0, 0x10)
        d.c.publish("allowed/big", b"x" * 200_000, qos=1)
        d.wait(lambda: "disconnect" in d.events)
        assert d.events["disconnect"] == PACKET_TOO_LARGE
    finally:
        d.close()


def test_an_oversize_publish_closes_a_3_1_1_connection(core, devices):
    d = Device(core, "sensor1", devices["sensor1"], version=3)
    try:
        assert d.connect() == 0
        info = d.c.publish("allowed/big", b"x" * 200_000, qos=1)
        d.wait(lambda: "disconnect" in d.events)
        assert ("puback", info.mid) not in d.events
    finally:
        d.close()


def test_a_configured_packet_bound_holds(bounded_core, devices):
    d = Device(bounded_core, "bounded1", devices["bounded"])
    try:
        assert d.connect() == 0
        assert d.events["connack"][1].MaximumPacketSize == 4096
        d.c.publish("t/big", b"x" * 5000, qos=0)
        d.wait(lambda: "disconnect" in d.events)
        assert d.events["disconnect"] == PACKET_TOO_LARGE
    finally:
        d.close()


@pytest.mark.parametrize("version", [5, 3])
def test_subscriptions_per_client_are_bounded(bounded_core, devices, version):
    d = Device(bounded_core, "bounded1", devices["bounded"], version)
    try:
        assert d.connect() == 0
        codes = []
        for i in range(4):
            _, mid = d.c.subscribe(f"s/{i}", qos=1)
            d.wait(lambda: ("suback", mid) in d.events)
            codes.append(d.events[("suback", mid)][0])
        assert codes[:3] == [1, 1, 1]
        assert codes[3] == (QUOTA_EXCEEDED if version == 5 else 0x80)
        # Subscribing again to a filter already held is a replacement, not a new one.
        _, mid = d.c.subscribe("s/0", qos=0)
        d.wait(lambda: ("suback", mid) in d.events)
        assert d.events[("suback", mid)] == [0]
    finally:
        d.close()


def test_retained_messages_are_bounded_by_count_and_bytes(bounded_core, devices):
    d = Device(bounded_core, "bounded1", devices["bounded"])
    try:
        assert d.connect() == 0
        for topic in ("r/a", "r/b"):
            info = d.c.publish(topic, b"keep", qos=1, retain=True)
            d.wait(lambda: ("puback", info.mid) in d.events)
            assert d.events[("puback", info.mid)] in (0, 0x10)
        # A third topic is over the count; replacing a retained topic is not.
        info = d.c.publish("r/c", b"keep", qos=1, retain=True)
        d.wait(lambda: ("puback", info.mid) in d.events)
        assert d.events[("puback", info.mid)] == QUOTA_EXCEEDED
        info = d.c.publish("r/a", b"again", qos=1, retain=True)
        d.wait(lambda: ("puback", info.mid) in d.events)
        assert d.events[("puback", info.mid)] in (0, 0x10)
        # Over the byte bound (1000) even within the count.
        info = d.c.publish("r/b", b"x" * 1200, qos=1, retain=True)
        d.wait(lambda: ("puback", info.mid) in d.events)
        assert d.events[("puback", info.mid)] == QUOTA_EXCEEDED
        # Clearing frees room.
        info = d.c.publish("r/b", b"", qos=1, retain=True)
        d.wait(lambda: ("puback", info.mid) in d.events)
        info = d.c.publish("r/c", b"keep", qos=1, retain=True)
        d.wait(lambda: ("puback", info.mid) in d.events)
        assert d.events[("puback", info.mid)] in (0, 0x10)
    finally:
        d.close()
    # Only r/a and r/c are retained.
    got = []
    s = Device(bounded_core, "bounded1", devices["bounded"])
    s.c.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    try:
        assert s.connect() == 0
        _, mid = s.c.subscribe("r/#", qos=1)
        s.wait(lambda: ("suback", mid) in s.events)
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert sorted(got) == [("r/a", b"again"), ("r/c", b"keep")]
    finally:
        s.close()


def test_a_retained_publish_over_quota_closes_a_3_1_1_connection(bounded_core, devices):
    d = Device(bounded_core, "bounded1", devices["bounded"], version=3)
    try:
        assert d.connect() == 0
        d.c.publish("r/big", b"x" * 2000, qos=1, retain=True)
        d.wait(lambda: "disconnect" in d.events)
    finally:
        d.close()
