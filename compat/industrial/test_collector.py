"""lichen.IndustrialCollector on a real core against a real pymodbus device: values are polled,
scaled, processed by an asset model (a unit-converting transform, a condition and windowed
metrics) and exported through the built-in stream manager to an IoT SiteWise fake that checks
every entry. The exporter down: collection goes on and everything arrives later. The device
stopped: BAD values are reported for each point, GOOD ones resume after it restarts."""

import time

import pytest
from industrial_support import (
    ModbusDevice,
    SiteWiseFake,
    deploy,
    free_port,
    log_tail,
    running_core,
    stream_manager_config,
    wait_for,
)

P = "/plant1/boiler1"


def collector_config(modbus_port):
    tc = [{"name": "tc", "value": {"propertyId": "TempC"}}]
    return {
        "sources": [{
            "name": "boiler-plc",
            "type": "ModbusTcp",
            "endpoint": {"host": "127.0.0.1", "port": modbus_port, "unitId": 1, "timeoutMs": 1000},
            "reconnect": {"initialDelayMs": 200, "maxDelayMs": 1000},
            "measurementDataStreamPrefix": P,
            "points": [
                {"alias": "/tempF", "kind": "holding", "address": 0, "dataType": "uint16", "scale": 0.1, "pollIntervalMs": 200},
                {"alias": "/pressure", "kind": "holding", "address": 2, "dataType": "float32", "pollIntervalMs": 200},
                {"alias": "/burner", "kind": "coil", "address": 0, "pollIntervalMs": 200},
            ],
        }],
        "processing": {
            "assetModels": [{
                "assetModelName": "Boiler",
                "assetModelProperties": [
                    {"name": "TempF", "dataType": "DOUBLE", "unit": "degF", "type": {"measurement": {}}},
                    {"name": "TempC", "dataType": "DOUBLE", "unit": "degC", "type": {"transform": {
                        "expression": "convert(tf, 'degF', 'degC')",
                        "variables": [{"name": "tf", "value": {"propertyId": "TempF"}}]}}},
                    {"name": "Hot", "dataType": "BOOLEAN", "type": {"transform": {
                        "expression": "if(tc >= 30, 1, 0)", "variables": tc}}},
                    {"name": "AvgTempC", "dataType": "DOUBLE", "type": {"metric": {
                        "expression": "avg(tc)", "variables": tc, "window": {"tumbling": {"interval": "2s"}}}}},
                    {"name": "CountTempC", "dataType": "INTEGER", "type": {"metric": {
                        "expression": "count(tc)", "variables": tc, "window": {"tumbling": {"interval": "2s"}}}}},
                ],
            }],
            "assets": [{
                "assetName": "Boiler1",
                "assetModelName": "Boiler",
                "properties": [
                    {"name": "TempF", "alias": P + "/tempF"},
                    {"name": "TempC", "alias": P + "/tempC"},
                    {"name": "Hot", "alias": P + "/hot"},
                    {"name": "AvgTempC", "alias": P + "/avgTempC"},
                    {"name": "CountTempC", "alias": P + "/countTempC"},
                ],
            }],
        },
    }


@pytest.fixture
def device():
    d = ModbusDevice()
    yield d
    d.stop()


@pytest.fixture
def sitewise():
    fakes = []

    def make(port=0):
        f = SiteWiseFake(port)
        fakes.append(f)
        return f

    yield make
    for f in fakes:
        f.close()


def start(root, device, sitewise_port):
    sm_port = free_port()
    deploy(root, {
        "aws.greengrass.StreamManager": stream_manager_config(sm_port, sitewise_port),
        "lichen.IndustrialCollector": collector_config(device.port),
    })
    return sm_port


def read_stream(sm_port):
    """Every record of SiteWise_Edge_Stream, flattened to (alias, ns, value, quality)."""
    import json

    from industrial_support import flatten
    from stream_manager import ReadMessagesOptions, StreamManagerClient

    client = StreamManagerClient(port=sm_port)
    try:
        out, seq = [], 0
        while True:
            try:
                msgs = client.read_messages("SiteWise_Edge_Stream", ReadMessagesOptions(
                    desired_start_sequence_number=seq, min_message_count=1, max_message_count=1000,
                    read_timeout_millis=0))
            except Exception:
                break
            if not msgs:
                break
            for m in msgs:
                out += flatten(json.loads(m.payload))
            seq = msgs[-1].sequence_number + 1
        return out
    finally:
        client.close()


def test_values_are_collected_processed_and_exported(tmp_path, device, sitewise):
    fake = sitewise()
    root = tmp_path / "root"
    with running_core(root):
        start(root, device, fake.port)
        wait_for(lambda: len(fake.values(P + "/countTempC")) >= 3, 90, "three windows of metrics:\n" + log_tail(root))
        assert fake.errors == [], fake.errors
        temp_f = {ts: v for _, ts, v, q in fake.values(P + "/tempF")}
        temp_c = {ts: v for _, ts, v, q in fake.values(P + "/tempC")}
        # Scaled: tenths of degF from the register, 50.0 .. 99.0.
        assert temp_f and all(50.0 <= v <= 99.0 and abs(v * 10 - round(v * 10)) < 1e-6 for v in temp_f.values())
        assert len(set(temp_f.values())) > 3, "the device's changing values were not followed"
        # The transform: every Celsius value carries its Fahrenheit input's timestamp.
        assert temp_c
        for ts, c in temp_c.items():
            assert abs(c - (temp_f[ts] - 32) * 5 / 9) < 1e-9
        hot = {ts: v for _, ts, v, _ in fake.values(P + "/hot")}
        assert all(hot[ts] == (temp_c[ts] >= 30) for ts in temp_c)
        # float32 in two registers and a coil.
        pressures = {v for _, _, v, _ in fake.values(P + "/pressure")}
        assert pressures and all(1.0 <= p <= 2.0 for p in pressures)
        assert {v for _, _, v, _ in fake.values(P + "/burner")} <= {True, False}
        # The windowed metrics, stamped with their window's start, over the exported inputs.
        window = 2_000_000_000
        counts = {ts: v for _, ts, v, _ in fake.values(P + "/countTempC")}
        avgs = {ts: v for _, ts, v, _ in fake.values(P + "/avgTempC")}
        full = 0
        for start_ns, n in counts.items():
            assert start_ns % window == 0
            inside = [c for ts, c in temp_c.items() if start_ns <= ts < start_ns + window]
            if n == len(inside):
                full += 1
                assert abs(avgs[start_ns] - sum(inside) / n) < 1e-9
        assert full >= 1, "no window's inputs all reached the export"
        assert all(q == "GOOD" for *_, q in fake.values())


def test_collection_continues_while_the_exporter_is_down(tmp_path, device, sitewise):
    sitewise_port = free_port()
    root = tmp_path / "root"
    with running_core(root):
        sm_port = start(root, device, sitewise_port)
        wait_for(lambda: len([v for v in read_stream(sm_port) if v[0] == P + "/avgTempC"]) >= 2, 90,
                 "values collected while the exporter is down:\n" + log_tail(root))
        stored = read_stream(sm_port)
        first, last = min(ts for _, ts, _, _ in stored), max(ts for _, ts, _, _ in stored)
        assert last - first >= 2_000_000_000, "collection stalled without its exporter"
        fake = sitewise(sitewise_port)

        def all_exported():
            got = {(a, ts, v, q) for a, ts, v, q in fake.values()}
            return all(s in got for s in stored)

        try:
            wait_for(all_exported, 60, "every value stored while the exporter was down to be exported")
        except AssertionError:
            got = {(a, ts, v, q) for a, ts, v, q in fake.values()}
            missing = [s for s in stored if s not in got]
            print("stored", len(stored), "got", len(got), "missing", len(missing), missing[:5], "requests", fake.requests, fake.errors[:3])
            print(log_tail(root, 3000))
            raise
        assert fake.errors == []


def test_device_outages_are_reported_as_bad_values(tmp_path, device, sitewise):
    fake = sitewise()
    root = tmp_path / "root"
    points = [P + "/tempF", P + "/pressure", P + "/burner"]
    with running_core(root):
        start(root, device, fake.port)
        wait_for(lambda: all(any(q == "GOOD" for *_, q in fake.values(a)) for a in points), 90,
                 "GOOD values of every point:\n" + log_tail(root))
        device.stop()
        stopped = time.time_ns()

        def bad(a):
            return [ts for _, ts, v, q in fake.values(a) if q == "BAD" and ts >= stopped]

        # One BAD value per failed poll of each point, not silence.
        wait_for(lambda: all(len(bad(a)) >= 3 for a in points), 60, "BAD values for every point:\n" + log_tail(root))
        assert all(v is None for _, ts, v, q in fake.values() if q == "BAD")
        device.start()
        restarted = time.time_ns()
        wait_for(lambda: all(any(q == "GOOD" and ts > restarted for _, ts, _, q in fake.values(a)) for a in points), 60,
                 "GOOD values after the device came back:\n" + log_tail(root))
        last_bad = max(max(bad(a)) for a in points)
        good_after = [ts for _, ts, _, q in fake.values(P + "/tempF") if q == "GOOD" and ts > last_bad]
        assert good_after, "no GOOD value after the outage"
        # BAD inputs feed no transform: no Celsius value was computed during the outage.
        assert not [ts for _, ts, _, _ in fake.values(P + "/tempC") if stopped + 1_000_000_000 < ts < restarted - 1_000_000_000
                    and not any(t == ts for _, t, _, q in fake.values(P + "/tempF") if q == "GOOD")]
        assert fake.errors == []
