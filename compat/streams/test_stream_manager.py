"""The unmodified `stream_manager` SDK (1.1.2) against Lichen's stream manager."""

import signal
import socket
import struct
import threading
import time

import cbor2
import pytest
from stream_manager import (
    ExportDefinition,
    HTTPConfig,
    InvalidRequestException,
    IoTSiteWiseConfig,
    KinesisConfig,
    MessageStreamDefinition,
    NotEnoughMessagesException,
    Persistence,
    ReadMessagesOptions,
    RequestPayloadTooLargeException,
    ResourceNotFoundException,
    StrategyOnFull,
    StreamManagerClient,
    UnknownOperationException,
    UpdateNotAllowedException,
)
from stream_manager.exceptions import ConnectFailedException


def definition(name, **kw):
    kw.setdefault("strategy_on_full", StrategyOnFull.RejectNewData)
    return MessageStreamDefinition(name=name, **kw)


def seqs(messages):
    return [m.sequence_number for m in messages]


# ---- stream lifecycle ------------------------------------------------------------------------


def test_create_list_describe_delete(client):
    assert client.list_streams() == []
    exports = ExportDefinition(
        kinesis=[KinesisConfig(identifier="k1", kinesis_stream_name="ks", batch_size=10)],
        iot_sitewise=[IoTSiteWiseConfig(identifier="sw1", priority=2)],
    )
    client.create_message_stream(
        definition(
            "s1",
            max_size=4096,
            stream_segment_size=1024,
            time_to_live_millis=3_600_000,
            strategy_on_full=StrategyOnFull.OverwriteOldestData,
            persistence=Persistence.File,
            flush_on_write=True,
            export_definition=exports,
        )
    )
    client.create_message_stream(definition("s2", persistence=Persistence.Memory))
    assert sorted(client.list_streams()) == ["s1", "s2"]

    info = client.describe_message_stream("s1")
    d = info.definition
    assert (d.name, d.max_size, d.stream_segment_size, d.time_to_live_millis) == ("s1", 4096, 1024, 3_600_000)
    assert d.strategy_on_full == StrategyOnFull.OverwriteOldestData
    assert d.persistence == Persistence.File
    assert d.flush_on_write is True
    assert d.export_definition.kinesis[0].kinesis_stream_name == "ks"
    assert d.export_definition.kinesis[0].batch_size == 10
    assert d.export_definition.iot_sitewise[0].identifier == "sw1"
    assert d.export_definition.iot_sitewise[0].priority == 2
    statuses = {s.export_config_identifier: s for s in info.export_statuses}
    assert set(statuses) == {"k1", "sw1"}
    assert statuses["k1"].exported_messages_count == 0
    assert info.storage_status.total_bytes == 0

    client.append_message("s1", b"abc")
    info = client.describe_message_stream("s1")
    assert info.storage_status.oldest_sequence_number == 0
    assert info.storage_status.newest_sequence_number == 0
    assert info.storage_status.total_bytes > 3

    client.delete_message_stream("s1")
    assert client.list_streams() == ["s2"]
    with pytest.raises(ResourceNotFoundException):
        client.describe_message_stream("s1")
    # The name can be used again and starts from sequence number 0.
    client.create_message_stream(definition("s1"))
    assert client.append_message("s1", b"again") == 0


def test_update_replaces_the_definition(client):
    client.create_message_stream(
        definition("u", export_definition=ExportDefinition(http=[HTTPConfig(identifier="h1", uri="http://127.0.0.1:9/")]))
    )
    client.append_message("u", b"x" * 100)
    client.update_message_stream(
        definition(
            "u",
            max_size=1 << 20,
            time_to_live_millis=120_000,
            strategy_on_full=StrategyOnFull.OverwriteOldestData,
            export_definition=ExportDefinition(kinesis=[KinesisConfig(identifier="k2", kinesis_stream_name="ks")]),
        )
    )
    info = client.describe_message_stream("u")
    assert info.definition.max_size == 1 << 20
    assert info.definition.time_to_live_millis == 120_000
    assert info.definition.strategy_on_full == StrategyOnFull.OverwriteOldestData
    assert [s.export_config_identifier for s in info.export_statuses] == ["k2"]
    assert info.definition.export_definition.http is None


# ---- append and read -------------------------------------------------------------------------


def test_append_and_read_with_options(client):
    client.create_message_stream(definition("r"))
    for i in range(10):
        assert client.append_message("r", f"m{i}".encode()) == i
    # Defaults: one message from the start.
    only = client.read_messages("r")
    assert seqs(only) == [0] and only[0].payload == b"m0" and only[0].stream_name == "r"
    assert only[0].ingest_time > 1_600_000_000_000
    got = client.read_messages(
        "r", ReadMessagesOptions(desired_start_sequence_number=3, min_message_count=2, max_message_count=4)
    )
    assert seqs(got) == [3, 4, 5, 6]
    assert [m.payload for m in got] == [b"m3", b"m4", b"m5", b"m6"]
    # Fewer than max but at least min: what is there.
    got = client.read_messages("r", ReadMessagesOptions(desired_start_sequence_number=8, max_message_count=100))
    assert seqs(got) == [8, 9]
    # Reads do not consume.
    assert seqs(client.read_messages("r", ReadMessagesOptions(max_message_count=3))) == [0, 1, 2]
    with pytest.raises(NotEnoughMessagesException):
        client.read_messages("r", ReadMessagesOptions(desired_start_sequence_number=10))
    with pytest.raises(NotEnoughMessagesException):
        client.read_messages("r", ReadMessagesOptions(desired_start_sequence_number=8, min_message_count=3))


def test_binary_payloads_round_trip(client):
    client.create_message_stream(definition("bin", persistence=Persistence.Memory))
    payloads = [bytes(range(256)), b"\x00", bytes(200_000)]
    for p in payloads:
        client.append_message("bin", p)
    got = client.read_messages("bin", ReadMessagesOptions(min_message_count=3, max_message_count=3))
    assert [m.payload for m in got] == payloads


def test_read_waits_for_appends(client, server):
    client.create_message_stream(definition("w"))
    writer = StreamManagerClient(port=server.port)

    def append_later():
        time.sleep(0.3)
        writer.append_message("w", b"late-1")
        writer.append_message("w", b"late-2")

    t = threading.Thread(target=append_later)
    t.start()
    got = client.read_messages("w", ReadMessagesOptions(min_message_count=2, max_message_count=2, read_timeout_millis=10_000))
    t.join()
    writer.close()
    assert [m.payload for m in got] == [b"late-1", b"late-2"]


def test_read_times_out_with_not_enough_messages(client):
    client.create_message_stream(definition("t"))
    client.append_message("t", b"one")
    with pytest.raises(NotEnoughMessagesException):
        client.read_messages("t", ReadMessagesOptions(min_message_count=2, max_message_count=2, read_timeout_millis=300))
    # The connection is still good afterwards.
    assert client.append_message("t", b"two") == 1


def test_long_poll_does_not_block_the_connection(client):
    client.create_message_stream(definition("lp"))
    result = {}

    def reader():
        result["got"] = client.read_messages("lp", ReadMessagesOptions(read_timeout_millis=20_000))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.2)
    # Same client, same connection, while the read is parked on the server.
    assert client.list_streams() == ["lp"]
    assert client.append_message("lp", b"wake") == 0
    t.join(timeout=20)
    assert [m.payload for m in result["got"]] == [b"wake"]


def test_concurrent_flush_on_write_appends(client, server):
    client.create_message_stream(definition("f", flush_on_write=True))
    clients = [StreamManagerClient(port=server.port) for _ in range(4)]
    numbers = []
    lock = threading.Lock()

    def work(c):
        for i in range(25):
            n = c.append_message("f", b"durable")
            with lock:
                numbers.append(n)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    assert sorted(numbers) == list(range(100))


# ---- full streams and retention --------------------------------------------------------------


def test_reject_new_data_when_full(client):
    client.create_message_stream(definition("full", max_size=1024, stream_segment_size=1024))
    appended = 0
    with pytest.raises(InvalidRequestException):
        for _ in range(100):
            client.append_message("full", b"x" * 100)
            appended += 1
    assert 5 <= appended < 10
    got = client.read_messages("full", ReadMessagesOptions(max_message_count=100))
    assert seqs(got) == list(range(appended))
    # A record that could never fit is refused as too large.
    with pytest.raises(RequestPayloadTooLargeException):
        client.append_message("full", b"y" * 2000)


def test_overwrite_oldest_data_keeps_the_newest(client):
    client.create_message_stream(
        definition("ow", max_size=4096, stream_segment_size=1024, strategy_on_full=StrategyOnFull.OverwriteOldestData)
    )
    for i in range(200):
        assert client.append_message("ow", b"x" * 100) == i
    status = client.describe_message_stream("ow").storage_status
    assert status.total_bytes <= 4096
    assert status.newest_sequence_number == 199
    assert status.oldest_sequence_number > 0
    got = client.read_messages("ow", ReadMessagesOptions(max_message_count=1000))
    assert seqs(got) == list(range(status.oldest_sequence_number, 200))


def test_ttl_expiry(client):
    # The SDK's minimum TTL is 60 s, so this test waits a little over a minute.
    client.create_message_stream(definition("ttl", time_to_live_millis=60_000, stream_segment_size=1024))
    for _ in range(30):
        client.append_message("ttl", b"x" * 100)
    assert len(client.read_messages("ttl", ReadMessagesOptions(max_message_count=100))) == 30
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if client.describe_message_stream("ttl").storage_status.total_bytes == 0:
            break
        time.sleep(1)
    with pytest.raises(NotEnoughMessagesException):
        client.read_messages("ttl")
    # Numbers are never reused after expiry.
    assert client.append_message("ttl", b"new") == 30


# ---- errors ----------------------------------------------------------------------------------


def test_documented_error_statuses(client):
    client.create_message_stream(definition("e"))
    with pytest.raises(InvalidRequestException):
        client.create_message_stream(definition("e"))
    for call in (
        lambda: client.append_message("missing", b"x"),
        lambda: client.read_messages("missing"),
        lambda: client.describe_message_stream("missing"),
        lambda: client.delete_message_stream("missing"),
        lambda: client.update_message_stream(definition("missing")),
    ):
        with pytest.raises(ResourceNotFoundException):
            call()
    with pytest.raises(UpdateNotAllowedException):
        client.update_message_stream(definition("e", persistence=Persistence.Memory))
    client.append_message("e", b"z" * 2000)
    with pytest.raises(UpdateNotAllowedException):
        client.update_message_stream(definition("e", max_size=1024))
    with pytest.raises(InvalidRequestException):
        client.create_message_stream(
            definition(
                "dup",
                export_definition=ExportDefinition(
                    kinesis=[
                        KinesisConfig(identifier="same", kinesis_stream_name="a"),
                        KinesisConfig(identifier="same", kinesis_stream_name="b"),
                    ]
                ),
            )
        )


def test_authentication(start_server, monkeypatch):
    server = start_server(tokens=["good-token"])
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "bad-token")
    with pytest.raises(ConnectFailedException):
        StreamManagerClient(port=server.port)
    monkeypatch.delenv("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    with pytest.raises(ConnectFailedException):
        StreamManagerClient(port=server.port)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "good-token")
    c = StreamManagerClient(port=server.port)
    assert c.list_streams() == []
    c.close()


# ---- persistence and restarts ----------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_file_streams_survive_restart_and_clients_reconnect(client, server, sig):
    client.create_message_stream(definition("keep", flush_on_write=True))
    client.create_message_stream(definition("mem", persistence=Persistence.Memory))
    for i in range(5):
        client.append_message("keep", f"k{i}".encode())
    client.append_message("mem", b"gone")
    server.restart(sig)
    # The same client object: it reconnects on its next call.
    for _ in range(50):
        try:
            names = client.list_streams()
            break
        except Exception:
            time.sleep(0.1)
    assert names == ["keep"]
    got = client.read_messages("keep", ReadMessagesOptions(max_message_count=10))
    assert [m.payload for m in got] == [f"k{i}".encode() for i in range(5)]
    assert client.append_message("keep", b"next") == 5


# ---- raw protocol: what the SDK cannot send --------------------------------------------------


def frame(op, payload):
    body = cbor2.dumps(payload)
    return struct.pack(">iB", len(body) + 1, op) + body


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_frame(sock):
    length, op = struct.unpack(">iB", read_exact(sock, 5))
    return op, cbor2.loads(read_exact(sock, length - 1))


def raw_connect(port, version=1, protocol="1.1.0"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(bytes([version]) + frame(1, {"requestId": "c", "protocolVersion": protocol, "sdkVersion": "raw"}))
    assert read_exact(s, 1) == b"\x01"
    op, resp = read_frame(s)
    assert op == 6
    return s, resp


def test_connect_version_and_protocol_version_statuses(server):
    s, resp = raw_connect(server.port)
    assert resp["status"] == 0 and resp["protocolVersion"] == "1.1.0"
    s.close()
    for kwargs, status in (({"version": 2}, 8), ({"protocol": "2.0.0"}, 10), ({"protocol": "garbage"}, 11)):
        s, resp = raw_connect(server.port, **kwargs)
        assert resp["status"] == status, kwargs
        assert "errorMessage" in resp
        s.close()


def test_unknown_operation_and_bad_requests(server):
    s, _ = raw_connect(server.port)
    s.sendall(frame(0, {"requestId": "u1"}))
    assert read_frame(s) == (17, {"requestId": "u1", "status": 18, "errorMessage": "operation 0 is not supported by this server"})
    s.sendall(frame(99, {"requestId": "u2"}))
    op, resp = read_frame(s)
    assert (op, resp["status"]) == (17, 18)
    # min > max, which the SDK refuses to send, is an invalid request on the server too.
    s.sendall(frame(2, {"requestId": "c1", "definition": {"name": "raw", "strategyOnFull": 0}}))
    assert read_frame(s)[1]["status"] == 0
    s.sendall(frame(5, {"requestId": "r1", "streamName": "raw", "readMessagesOptions": {"minMessageCount": 3, "maxMessageCount": 2}}))
    op, resp = read_frame(s)
    assert (op, resp["requestId"], resp["status"]) == (10, "r1", 3)
    # A wrongly typed field is status 3 naming the field.
    s.sendall(frame(4, {"requestId": "a1", "name": "raw", "payload": "not bytes"}))
    op, resp = read_frame(s)
    assert (op, resp["status"]) == (9, 3) and "payload" in resp["errorMessage"]
    s.close()


def test_malformed_frames_close_only_their_connection(server, client):
    client.create_message_stream(definition("ok"))
    for garbage in (struct.pack(">iB", -5, 4), struct.pack(">iB", 3, 4) + b"\xff\xff", frame(4, [1, 2, 3])):
        s, _ = raw_connect(server.port)
        s.sendall(garbage)
        assert s.recv(100) == b""  # closed by the server
        s.close()
    assert client.append_message("ok", b"still fine") == 0


def test_unknown_operation_surfaces_in_the_sdk(server):
    # The SDK maps a status-18 response to UnknownOperationException.
    from stream_manager.utilinternal import UtilInternal
    from stream_manager.data import UnknownOperationError

    with pytest.raises(UnknownOperationException):
        UtilInternal.raise_on_error_response(
            UnknownOperationError.from_dict({"requestId": "x", "status": 18, "errorMessage": "no"})
        )
