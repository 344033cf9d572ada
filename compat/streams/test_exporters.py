"""Exports end to end: the unmodified SDK defines exports on `lichen stream-manager`, records go to
a local moto server (Kinesis, S3; checked with boto3), an HTTP sink, and local IoT Analytics /
IoT SiteWise fakes that check every request. Also: the endpoint is down while 100 000 records are
appended and the server is killed with SIGKILL part way; every acknowledged record arrives."""

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from stream_manager import (
    ExportDefinition,
    ExportFormat,
    HTTPConfig,
    IoTAnalyticsConfig,
    IoTSiteWiseConfig,
    KinesisConfig,
    MessageStreamDefinition,
    Persistence,
    ReadMessagesOptions,
    S3ExportTaskDefinition,
    S3ExportTaskExecutorConfig,
    StatusConfig,
    StatusLevel,
    StatusMessage,
    StrategyOnFull,
    StreamManagerClient,
)
from stream_manager.data import (
    AssetPropertyValue,
    PutAssetPropertyValueEntry,
    Quality,
    TimeInNanos,
    Variant,
)
from stream_manager.util import Util
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lichen_support import free_port, wait_for  # noqa: E402

VENV_BIN = Path(sys.executable).parent






@pytest.fixture
def moto():
    port = free_port()
    exe = VENV_BIN / "moto_server"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
            return True
        except Exception:
            return False

    try:
        wait_for(up, 30, "moto_server")
        yield url
    finally:
        proc.kill()
        proc.wait()


def boto(service, url):
    import boto3

    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def aws_env(url="http://127.0.0.1:1"):
    return {
        "STREAM_MANAGER_EXPORTER_KINESIS_ENDPOINT": url,
        "STREAM_MANAGER_EXPORTER_S3_ENDPOINT": url,
        "STREAM_MANAGER_EXPORTER_IOT_ANALYTICS_ENDPOINT": url,
        "STREAM_MANAGER_EXPORTER_IOT_SITEWISE_ENDPOINT": url,
        "STREAM_MANAGER_EXPORTER_AWS_REGION": "us-east-1",
        "STREAM_MANAGER_EXPORTER_AWS_ACCESS_KEY_ID": "testing",
        "STREAM_MANAGER_EXPORTER_AWS_SECRET_ACCESS_KEY": "testing",
        "STREAM_MANAGER_EXPORTER_MAX_RETRY_INTERVAL_MILLIS": "500",
    }


class Recorder:
    """A local HTTP endpoint that records every request and answers with `respond(request)`."""

    def __init__(self, port=0, respond=None):
        self.requests = []
        self.lock = threading.Lock()
        recorder = self
        respond = respond or (lambda req: (200, b"{}"))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = {"method": "POST", "path": self.path, "headers": dict(self.headers), "body": body}
                with recorder.lock:
                    recorder.requests.append(req)
                status, out = respond(req)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders():
    made = []

    def make(**kw):
        r = Recorder(**kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def stream(name, exports, **kw):
    kw.setdefault("strategy_on_full", StrategyOnFull.OverwriteOldestData)
    return MessageStreamDefinition(name=name, export_definition=exports, **kw)


def export_status(client, stream_name, identifier):
    info = client.describe_message_stream(stream_name)
    return next(s for s in info.export_statuses if s.export_config_identifier == identifier)


def test_kinesis_put_records_reach_moto(start_server, moto):
    kinesis = boto("kinesis", moto)
    kinesis.create_stream(StreamName="ks", ShardCount=1)
    wait_for(lambda: kinesis.describe_stream(StreamName="ks")["StreamDescription"]["StreamStatus"] == "ACTIVE")
    server = start_server(env=aws_env(moto))
    client = StreamManagerClient(port=server.port)
    try:
        client.create_message_stream(
            stream("k", ExportDefinition(kinesis=[KinesisConfig(identifier="k1", kinesis_stream_name="ks", batch_size=10)]))
        )
        sent = [f"record-{i}".encode() for i in range(25)]
        for p in sent:
            client.append_message("k", p)
        wait_for(lambda: export_status(client, "k", "k1").last_exported_sequence_number == 24, what="kinesis export")
        shard = kinesis.describe_stream(StreamName="ks")["StreamDescription"]["Shards"][0]["ShardId"]
        it = kinesis.get_shard_iterator(StreamName="ks", ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        got = kinesis.get_records(ShardIterator=it, Limit=1000)["Records"]
        assert [r["Data"] for r in got] == sent
        status = export_status(client, "k", "k1")
        assert status.exported_messages_count == 25
        assert status.exported_bytes_from_stream == sum(len(p) for p in sent)
        assert not status.error_message
    finally:
        client.close()


def test_s3_tasks_upload_single_and_multipart_with_statuses(start_server, moto, tmp_path):
    s3 = boto("s3", moto)
    s3.create_bucket(Bucket="lichen-bucket")
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(3000))
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(11 * 1024 * 1024 + 17))  # three parts of >= 5 MiB
    server = start_server(env=aws_env(moto))
    client = StreamManagerClient(port=server.port)
    try:
        client.create_message_stream(
            MessageStreamDefinition(
                name="status", strategy_on_full=StrategyOnFull.OverwriteOldestData, persistence=Persistence.Memory
            )
        )
        client.create_message_stream(
            stream(
                "tasks",
                ExportDefinition(
                    s3_task_executor=[
                        S3ExportTaskExecutorConfig(
                            identifier="s3",
                            status_config=StatusConfig(status_level=StatusLevel.INFO, status_stream_name="status"),
                        )
                    ]
                ),
            )
        )
        tasks = [
            S3ExportTaskDefinition(input_url=f"file://{small}", bucket="lichen-bucket", key="a/small.bin"),
            S3ExportTaskDefinition(
                input_url=f"file://{large}", bucket="lichen-bucket", key="b/large.bin", user_metadata={"kind": "big"}
            ),
            S3ExportTaskDefinition(input_url=f"file://{tmp_path}/missing", bucket="lichen-bucket", key="c/none"),
        ]
        seqs = [client.append_message("tasks", Util.validate_and_serialize_to_json_bytes(t)) for t in tasks]

        def terminal():
            msgs = client.read_messages("status", ReadMessagesOptions(desired_start_sequence_number=0, min_message_count=1, max_message_count=100, read_timeout_millis=1000))
            decoded = [Util.deserialize_json_bytes_to_obj(m.payload, StatusMessage) for m in msgs]
            done = {d.status_context.sequence_number: d for d in decoded if d.status.name in ("Success", "Failure")}
            return (done, decoded) if len(done) == 3 else None

        done, decoded = wait_for(terminal, 120, "three terminal S3 statuses")
        assert done[seqs[0]].status.name == "Success"
        assert done[seqs[1]].status.name == "Success"
        assert done[seqs[2]].status.name == "Failure"
        assert "missing" in done[seqs[2]].message
        assert {d.status.name for d in decoded} >= {"InProgress", "Success", "Failure"}
        assert all(d.status_context.export_identifier == "s3" and d.status_context.stream_name == "tasks" for d in decoded)
        assert s3.get_object(Bucket="lichen-bucket", Key="a/small.bin")["Body"].read() == small.read_bytes()
        obj = s3.get_object(Bucket="lichen-bucket", Key="b/large.bin")
        assert obj["Body"].read() == large.read_bytes()
        assert obj["Metadata"] == {"kind": "big"}
        # moto marks multipart objects by their ETag suffix: "<md5>-<parts>".
        assert obj["ETag"].strip('"').endswith("-3")
        assert large.exists() and small.exists()
    finally:
        client.close()


def test_http_json_batched_and_raw(start_server, recorders):
    sink = recorders()
    server = start_server()
    client = StreamManagerClient(port=server.port)
    try:
        uri = f"http://127.0.0.1:{sink.port}/in"
        client.create_message_stream(
            stream(
                "h",
                ExportDefinition(
                    http=[
                        HTTPConfig(identifier="batched", uri=uri + "/batched", batch_size=5, export_format=ExportFormat.JSON_BATCHED),
                        HTTPConfig(identifier="raw", uri=uri + "/raw", export_format=ExportFormat.RAW_NOT_BATCHED),
                    ]
                ),
            )
        )
        sent = [f"m{i}".encode() for i in range(12)]
        for p in sent:
            client.append_message("h", p)
        wait_for(lambda: export_status(client, "h", "batched").last_exported_sequence_number == 11, what="batched export")
        wait_for(lambda: export_status(client, "h", "raw").last_exported_sequence_number == 11, what="raw export")
        reqs = sink.snapshot()
        batched = [r for r in reqs if r["path"] == "/in/batched"]
        raw = [r for r in reqs if r["path"] == "/in/raw"]
        items = [i for r in batched for i in json.loads(r["body"])]
        assert all(len(json.loads(r["body"])) <= 5 for r in batched)
        assert [base64.b64decode(i["payload"]) for i in items] == sent
        assert [i["sequenceNumber"] for i in items] == list(range(12))
        assert all(i["streamName"] == "h" for i in items)
        assert [r["body"] for r in raw] == sent
    finally:
        client.close()


def verify_sigv4(req, port, service):
    """Recomputes the request's SigV4 signature with botocore and compares."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {k.lower(): v for k, v in req["headers"].items()}
    auth = headers.get("authorization", "")
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=testing/"), auth
    assert f"/us-east-1/{service}/aws4_request" in auth, auth
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "host" in signed and "x-amz-date" in signed
    amz_date = headers["x-amz-date"]
    request = AWSRequest(
        method=req["method"],
        url=f"http://127.0.0.1:{port}{req['path']}",
        data=req["body"],
        headers={h: headers[h] for h in signed if h != "host"},
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials("testing", "testing"), service, "us-east-1")
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    assert auth.split("Signature=")[1] == signer.signature(string_to_sign, request)


def test_iot_analytics_and_sitewise_requests_are_signed_and_shaped(start_server, recorders):
    def respond(req):
        if req["path"] == "/messages/batch":
            return 200, b'{"batchPutMessageErrorEntries": []}'
        return 200, b'{"errorEntries": []}'

    fake = recorders(respond=respond)
    url = f"http://127.0.0.1:{fake.port}"
    server = start_server(env=aws_env(url))
    client = StreamManagerClient(port=server.port)
    try:
        client.create_message_stream(
            stream(
                "iota",
                ExportDefinition(iot_analytics=[IoTAnalyticsConfig(identifier="a", iot_channel="chan", iot_msg_id_prefix="px-", batch_size=3)]),
            )
        )
        client.create_message_stream(
            stream("sw", ExportDefinition(iot_sitewise=[IoTSiteWiseConfig(identifier="s", batch_size=10)]))
        )
        for i in range(4):
            client.append_message("iota", json.dumps({"n": i}).encode())
        entry = PutAssetPropertyValueEntry(
            entry_id="e1",
            property_alias="/plant/temp",
            property_values=[
                AssetPropertyValue(
                    value=Variant(double_value=21.5),
                    timestamp=TimeInNanos(time_in_seconds=1700000000, offset_in_nanos=5),
                    quality=Quality.GOOD,
                )
            ],
        )
        client.append_message("sw", Util.validate_and_serialize_to_json_bytes(entry))
        client.append_message("sw", b"not json: skipped for good")
        wait_for(lambda: export_status(client, "iota", "a").last_exported_sequence_number == 3, what="iot analytics export")
        wait_for(lambda: export_status(client, "sw", "s").last_exported_sequence_number == 1, what="sitewise export")

        for r in fake.snapshot():
            service = "iotanalytics" if r["path"] == "/messages/batch" else "iotsitewise"
            verify_sigv4(r, fake.port, service)
            assert r["headers"]["Content-Type"] == "application/json"
        iota = [json.loads(r["body"]) for r in fake.snapshot() if r["path"] == "/messages/batch"]
        assert all(b["channelName"] == "chan" and len(b["messages"]) <= 3 for b in iota)
        msgs = [m for b in iota for m in b["messages"]]
        assert [json.loads(base64.b64decode(m["payload"])) for m in msgs] == [{"n": i} for i in range(4)]
        ids = [m["messageId"] for m in msgs]
        assert len(set(ids)) == 4 and all(i.startswith("px-") for i in ids)

        sw = [r for r in fake.snapshot() if r["path"] == "/properties"]
        assert len(sw) == 1
        body = json.loads(sw[0]["body"])
        assert body == {
            "entries": [
                {
                    "entryId": "e1",
                    "propertyAlias": "/plant/temp",
                    "propertyValues": [
                        {"value": {"doubleValue": 21.5}, "timestamp": {"timeInSeconds": 1700000000, "offsetInNanos": 5}, "quality": "GOOD"}
                    ],
                }
            ]
        }
        status = export_status(client, "sw", "s")
        # The malformed record is passed but not counted as exported bytes.
        assert status.exported_bytes_from_stream == len(Util.validate_and_serialize_to_json_bytes(entry))
    finally:
        client.close()


def test_failures_are_reported_and_retried(start_server, recorders):
    port = free_port()
    server = start_server(env=aws_env())
    client = StreamManagerClient(port=server.port)
    try:
        client.create_message_stream(stream("r", ExportDefinition(http=[HTTPConfig(identifier="h", uri=f"http://127.0.0.1:{port}/x")])))
        client.append_message("r", b"one")
        wait_for(lambda: export_status(client, "r", "h").error_message, what="an export error message")
        assert export_status(client, "r", "h").last_exported_sequence_number == -1
        sink = recorders(port=port)
        wait_for(lambda: export_status(client, "r", "h").last_exported_sequence_number == 0, what="the retried export")
        assert [r["body"] for r in sink.snapshot()] == [b"one"]
        assert not export_status(client, "r", "h").error_message
    finally:
        client.close()


def test_offline_endpoint_and_sigkill_lose_no_acknowledged_record(start_server, recorders, tmp_path):
    # 100 000 by default; LICHEN_OFFLINE_RECORDS sets another count (CI may run fewer).
    total = int(os.environ.get("LICHEN_OFFLINE_RECORDS", "100000"))
    port = free_port()
    store = tmp_path / "store"
    server = start_server(store_root=store, env=aws_env())
    with StreamManagerClient(port=server.port) as client:
        client.create_message_stream(
            stream(
                "offline",
                ExportDefinition(http=[HTTPConfig(identifier="sink", uri=f"http://127.0.0.1:{port}/in", batch_size=500, export_format=ExportFormat.JSON_BATCHED)]),
                persistence=Persistence.File,
            )
        )
    acked = {}  # payload -> sequence number
    attempts = [0]
    done = threading.Event()
    restarted = threading.Event()
    stop = threading.Event()
    errors = []

    def connect():
        # A short request timeout: an append in flight when the server dies gets no answer.
        return StreamManagerClient(port=server.port, request_timeout=10)

    def writer():
        c = None
        i = 0
        try:
            while len(acked) < total and not stop.is_set():
                try:
                    if c is None:
                        c = connect()
                    payload = f"rec-{i}".encode()
                    i += 1
                    attempts[0] = i
                    acked[payload] = c.append_message("offline", payload)
                    if i % 10000 == 0:
                        print(f"{i} appended", flush=True)
                except Exception as e:  # the server is being killed: this append is not acknowledged
                    errors.append(repr(e))
                    print(f"append {i} failed: {e!r}", flush=True)
                    # The SDK client does not always notice that its connection died (a reset
                    # while it reads leaves it "connected" and failing forever): start a new one
                    # once the server is back, as an application would.
                    if c is not None:
                        try:
                            c.close()
                        except Exception:
                            pass
                        c = None
                    # Reconnecting in a tight loop while nothing listens can make a client socket
                    # connect to itself on the server's port; wait for the restart instead.
                    if not restarted.wait(60):
                        break
                    time.sleep(0.05)
        finally:
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
            done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(acked) >= total // 2 or done.is_set(), 300, "half of the appends")
        try:
            server.restart(signal.SIGKILL)
        finally:
            restarted.set()
        wait_for(done.is_set, 300, "the rest of the appends")
        assert len(acked) >= total, f"only {len(acked)} of {total} appends acknowledged; errors: {errors[-5:]}"
    finally:
        stop.set()
        restarted.set()
        t.join(30)
    sink = recorders(port=port)
    expected_seqs = set(acked.values())
    seen = {}  # sequence number -> payloads, as delivered
    order = []
    parsed = [0]

    def delivered_all():
        # Parse only the requests that arrived since the last look.
        requests = sink.snapshot()
        for r in requests[parsed[0]:]:
            for item in json.loads(r["body"]):
                order.append(item["sequenceNumber"])
                seen.setdefault(item["sequenceNumber"], []).append(base64.b64decode(item["payload"]))
        parsed[0] = len(requests)
        return expected_seqs.issubset(seen.keys())

    wait_for(delivered_all, 300, "the backlog to arrive")
    duplicates = len(order) - len(set(order))
    print(
        f"\nappended (acknowledged) {len(acked)} of {attempts[0]} attempts; {len(errors)} appends failed during "
        f"the SIGKILL restart; exported {len(order)} records, {len(set(order))} distinct, {duplicates} duplicates"
    )
    for payload, seq in acked.items():
        assert seq in seen, f"acknowledged record {payload!r} (seq {seq}) was never exported"
        assert seen[seq][0] == payload
    # In order within the stream: first deliveries come in increasing sequence order.
    firsts = []
    known = set()
    for s in order:
        if s not in known:
            known.add(s)
            firsts.append(s)
    assert firsts == sorted(firsts)
