#!/usr/bin/env python3
"""Fleet OTA figures: N (default 1,000) simulated Greengrass devices — real MQTT 3.1.1 clients
over mutual TLS, each with its own certificate and connected as its thing, plus HTTPS clients of
the fleet's mutual-TLS Greengrass data plane with that same certificate — take one real
deployment to their thing group: notifications per second, time from CreateDeployment until 99%
of the devices are SUCCEEDED (the fleet's own count: DescribeJob on the deployment's job), data
plane requests per second, and the fleet's RSS and CPU while it runs.

    cargo build --release -p lichen -p lichen-mqtt-load
    .venv/bin/python bench/fleet_ota_sim.py [--bin target/release/lichen] [--load target/release/mqtt-load]

Steps: start `lichen fleet serve`; write and register the device certificates as
bench/fleet_jobs.py does, with a policy granting the device's `$aws/things/<thing>/*` topics and
the greengrass data-plane actions; put the things in a group; upload a small artifact (boto3
s3 put_object) and publish one component version naming it with its SHA-256 digest
(greengrassv2 create_component_version); connect every device and subscribe it to its jobs
topics; then greengrassv2 create_deployment to the group. Each device does what a core does
(greengrass-core.md §6.4–6.7): on `notify-namespace-aws-gg-deployment` it asks
`$next/namespace-aws-gg-deployment/get`, reports IN_PROGRESS, POSTs resolveComponentCandidates
with the document's versions as its group's requirements, GETs the artifact's presigned URL from
the data plane, downloads the artifact and checks its SHA-256 against the recipe's digest,
reports SUCCEEDED, and publishes a PARTIAL fleet status on `greengrassv2/health/json`.
"""
import argparse
import asyncio
import base64
import configparser
import hashlib
import json
import os
import resource
import shutil
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

import boto3
from botocore.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet_devices  # noqa: E402
from fleet_jobs import cpu_seconds, packet, read_packet, s  # noqa: E402

NS = "aws-gg-deployment"
GROUP = "bench-ota"
BUCKET = "bench-ota"
COMPONENT = "com.example.BenchOta"

OTA_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/*"},
        {"Effect": "Allow", "Action": ["greengrass:ResolveComponentCandidates",
                                       "greengrass:GetComponentVersionArtifact",
                                       "greengrass:GetDeploymentConfiguration",
                                       "greengrass:ListThingGroupsForCoreDevice"],
         "Resource": "*"},
    ],
})


class Stats:
    def __init__(self):
        self.notified = []      # monotonic times of the first notify with a queued deployment
        self.succeeded = []     # monotonic times of the SUCCEEDED update's acceptance
        self.requests = []      # (start, end) of each data-plane / artifact HTTP request
        self.errors = []


def dechunk(body):
    out, i = bytearray(), 0
    while True:
        j = body.index(b"\r\n", i)
        n = int(body[i:j].split(b";")[0], 16)
        if n == 0:
            return bytes(out)
        out += body[j + 2:j + 2 + n]
        i = j + 2 + n + 2


async def http(url, ctx, sem, stats, method="GET", body=None):
    """One HTTP/1.1 request (Connection: close); (status, body)."""
    u = urllib.parse.urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    path = u.path + ("?" + u.query if u.query else "")
    head = [f"{method} {path} HTTP/1.1", f"Host: {u.netloc}", "Connection: close"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    async with sem:
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection(
            u.hostname, port, ssl=ctx if u.scheme == "https" else None,
            server_hostname="localhost" if u.scheme == "https" else None)
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        raw = await reader.read()
        writer.close()
        stats.requests.append((t0, time.monotonic()))
    header, _, content = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        content = dechunk(content)
    return status, content


async def take_deployment(name, doc, data_plane, ctx, sem, stats):
    """What a core does with a deployment document: resolve, fetch each artifact, check digests."""
    group = doc["configurationArn"].split(":configuration:")[1].rsplit(":", 1)[0]
    candidates = [{"componentName": c, "componentVersion": None,
                   "versionRequirements": {group: spec["version"]}}
                  for c, spec in doc["components"].items()]
    body = json.dumps({"platform": {"name": "linux", "attributes": {"os": "linux", "architecture": "amd64"}},
                       "componentCandidates": candidates}).encode()
    status, out = await http(f"{data_plane}/greengrass/v2/resolveComponentCandidates", ctx, sem, stats,
                             "POST", body)
    if status != 200:
        raise RuntimeError(f"{name}: resolveComponentCandidates {status}: {out[:200]!r}")
    for resolved in json.loads(out)["resolvedComponentVersions"]:
        recipe = json.loads(base64.b64decode(resolved["recipe"]))
        arn = urllib.parse.quote(resolved["arn"], safe="")
        for art in recipe["Manifests"][0].get("Artifacts", []):
            key = art["URI"][len("s3://"):]
            status, out = await http(f"{data_plane}/greengrass/v2/components/{arn}/artifacts/{key}",
                                     ctx, sem, stats)
            if status != 200:
                raise RuntimeError(f"{name}: GetComponentVersionArtifact {status}: {out[:200]!r}")
            status, data = await http(json.loads(out)["preSignedUrl"], ctx, sem, stats)
            if status != 200:
                raise RuntimeError(f"{name}: artifact download {status}")
            if base64.b64encode(hashlib.sha256(data).digest()).decode() != art["Digest"]:
                raise RuntimeError(f"{name}: artifact {art['URI']} does not match its digest")


async def device(name, addr, data_plane, ctx, sem, stats, ready, go):
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="localhost")
    writer.write(packet(0x10, s("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 120) + s(name)))
    first, body = await read_packet(reader)
    if first != 0x20 or body[1] != 0:
        raise RuntimeError(f"{name}: CONNACK {body!r}")
    base = f"$aws/things/{name}/jobs"
    writer.write(packet(0x82, struct.pack("!H", 1) + s(f"{base}/#") + b"\x01"))
    first, body = await read_packet(reader)
    if first != 0x90 or body[2] != 1:
        raise RuntimeError(f"{name}: SUBACK {body!r}")
    ready()
    await go.wait()

    def publish(topic, msg, qos=0):
        if qos:
            writer.write(packet(0x32, s(topic) + struct.pack("!H", 7) + json.dumps(msg).encode()))
        else:
            writer.write(packet(0x30, s(topic) + json.dumps(msg).encode()))

    asked, job, doc, phase = False, None, None, None
    while True:
        first, body = await read_packet(reader)
        if first >> 4 == 4 and phase == "reported":  # PUBACK of the fleet status
            stats.succeeded.append(time.monotonic())
            writer.close()
            return
        if first >> 4 != 3:
            continue
        qos = (first >> 1) & 3
        tlen = struct.unpack("!H", body[:2])[0]
        topic = body[2:2 + tlen].decode()
        rest = body[2 + tlen:]
        if qos:
            writer.write(packet(0x40, rest[:2]))
            rest = rest[2:]
        msg = json.loads(rest)
        if topic == f"{base}/notify-namespace-{NS}" and msg.get("jobs", {}).get("QUEUED") and not asked:
            asked = True
            stats.notified.append(time.monotonic())
            publish(f"{base}/$next/namespace-{NS}/get",
                    {"jobId": "$next", "thingName": name, "includeJobDocument": True, "clientToken": name})
        elif topic == f"{base}/$next/namespace-{NS}/get/accepted" and "execution" in msg and job is None:
            job, doc = msg["execution"]["jobId"], msg["execution"]["jobDocument"]
            phase = "in-progress"
            publish(f"{base}/{job}/namespace-{NS}/update", {"status": "IN_PROGRESS", "statusDetails": {}})
        elif job and topic == f"{base}/{job}/namespace-{NS}/update/accepted":
            if phase == "in-progress":
                try:
                    await take_deployment(name, doc, data_plane, ctx, sem, stats)
                except Exception as e:  # noqa: BLE001 - a failed device is counted, not fatal
                    stats.errors.append(str(e))
                    publish(f"{base}/{job}/namespace-{NS}/update",
                            {"status": "FAILED", "statusDetails": {"error": str(e)[:200]}})
                    phase = "failed"
                    continue
                phase = "succeeded"
                publish(f"{base}/{job}/namespace-{NS}/update", {"status": "SUCCEEDED", "statusDetails": {
                    "detailed-deployment-status": "SUCCESSFUL"}})
            elif phase == "succeeded":
                phase = "reported"
                publish(f"$aws/things/{name}/greengrassv2/health/json", {
                    "ggcVersion": "2.12.0", "platform": "linux", "architecture": "amd64", "thing": name,
                    "overallDeviceStatus": "HEALTHY", "sequenceNumber": 1,
                    "timestamp": int(time.time() * 1000), "messageType": "PARTIAL",
                    "trigger": "THING_GROUP_DEPLOYMENT",
                    "components": [{"componentName": c, "version": spec["version"],
                                    "fleetConfigArns": [doc["configurationArn"]], "isRoot": True,
                                    "status": "RUNNING"} for c, spec in doc["components"].items()],
                    "deploymentInformation": {
                        "status": "SUCCEEDED", "deploymentId": doc["deploymentId"],
                        "fleetConfigurationArnForStatus": doc["configurationArn"],
                        "unchangedRootComponents": [],
                        "statusDetails": {"detailedStatus": "SUCCESSFUL", "failureCause": "",
                                          "errorStack": [], "errorTypes": []}}}, qos=1)
            elif phase == "failed":
                writer.close()
                return
        elif topic.endswith("/rejected"):
            stats.errors.append(f"{name}: {topic}: {msg}")


async def run(args, ends, root, certs, prefix, iot, gg, garn):
    pid = fleet_devices.serving_pid(root)
    stats = Stats()
    connected = 0
    all_ready = asyncio.Event()
    go = asyncio.Event()
    http_sem = asyncio.Semaphore(args.http_concurrency)

    def ready():
        nonlocal connected
        connected += 1
        if connected == args.devices:
            all_ready.set()

    sem = asyncio.Semaphore(args.concurrency)
    tasks = []

    async def start(i):
        name = f"{prefix}{i:05d}"
        c = ssl.create_default_context(cafile=ends["rootCa"])
        c.load_cert_chain(os.path.join(certs, name + ".pem"), os.path.join(certs, name + ".key"))
        async with sem:
            opened = asyncio.Event()
            t = asyncio.create_task(device(name, ends["mqtt"], ends["dataPlane"], c, http_sem, stats,
                                           lambda: (ready(), opened.set()), go))
            tasks.append(t)
            await asyncio.wait([t, asyncio.create_task(opened.wait())], return_when=asyncio.FIRST_COMPLETED)

    t0 = time.monotonic()
    await asyncio.gather(*(start(i) for i in range(args.devices)))
    await asyncio.wait_for(all_ready.wait(), 600)
    print(f"devices connected and subscribed: {connected} in {time.monotonic() - t0:.1f} s")
    rss0, cpu0 = fleet_devices.rss_kib(pid), cpu_seconds(pid)
    go.set()
    created = time.monotonic()
    dep = await asyncio.to_thread(
        gg.create_deployment, targetArn=garn, deploymentName="bench-ota",
        components={COMPONENT: {"componentVersion": "1.0.0"}})
    need = -(-args.devices * 99 // 100)
    deadline = time.monotonic() + args.timeout
    peak = rss0
    job_id = dep.get("iotJobId")
    fleet_t99 = None
    next_poll = 0.0
    while time.monotonic() < deadline:
        peak = max(peak, fleet_devices.rss_kib(pid))
        if time.monotonic() >= next_poll:
            # The fleet's own count, about every 0.25 s (a DescribeJob costs the fleet little).
            job = (await asyncio.to_thread(iot.describe_job, jobId=job_id))["job"]
            if job["jobProcessDetails"]["numberOfSucceededThings"] >= need:
                fleet_t99 = time.monotonic() - created
                break
            next_poll = time.monotonic() + 0.25
        await asyncio.sleep(0.05)
    await asyncio.wait(tasks, timeout=max(1.0, min(30.0, deadline - time.monotonic())))
    peak = max(peak, fleet_devices.rss_kib(pid))
    cpu = cpu_seconds(pid) - cpu0
    total = time.monotonic() - created
    for t in tasks:
        t.cancel()
    job = (await asyncio.to_thread(iot.describe_job, jobId=job_id))["job"]
    effective = await asyncio.to_thread(gg.list_effective_deployments, coreDeviceThingName=f"{prefix}00000")
    deployment = await asyncio.to_thread(gg.get_deployment, deploymentId=dep["deploymentId"])
    done = sorted(stats.succeeded)
    n = stats.notified
    req = stats.requests
    span = (max(e for _, e in req) - min(b for b, _ in req)) if req else 0
    if stats.errors:
        print("first errors:", stats.errors[:5])
    print(json.dumps({
        "devices": args.devices,
        "notified": len(n),
        "notifications_per_second": round(len(n) / (max(n) - created)) if n else 0,
        "seconds_to_99_percent_succeeded_fleet_count": None if fleet_t99 is None else round(fleet_t99, 2),
        "seconds_to_99_percent_succeeded_devices": round(done[need - 1] - created, 2) if len(done) >= need else None,
        "seconds_to_all_succeeded_devices": round(done[-1] - created, 2) if done else None,
        "succeeded_seen_by_devices": len(done),
        "device_errors": len(stats.errors),
        "data_plane_requests": len(req),
        "data_plane_requests_per_second": round(len(req) / span) if span else 0,
        "job_status": job["status"],
        "job_succeeded_things": job["jobProcessDetails"]["numberOfSucceededThings"],
        "deployment_status": deployment["deploymentStatus"],
        "device0_effective": [(d["deploymentId"] == dep["deploymentId"], d["coreDeviceExecutionStatus"])
                              for d in effective["effectiveDeployments"]],
        "fleet_rss_mib_before": round(rss0 / 1024, 1),
        "fleet_rss_mib_peak": round(peak / 1024, 1),
        "fleet_cpu_seconds": round(cpu, 2),
        "fleet_cpu_percent_of_one_core": round(100 * cpu / total, 1),
    }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", "target/release/lichen"))
    ap.add_argument("--load", default="target/release/mqtt-load")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32, help="TLS handshakes at once")
    ap.add_argument("--http-concurrency", type=int, default=32, help="data-plane HTTPS requests at once")
    ap.add_argument("--artifact-bytes", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=4, help="boto3 threads registering devices")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the deployment")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="lichen-fleet-ota-")
    root = os.path.join(work, "root")
    certs = os.path.join(work, "certs")
    prefix = "ota-device-"
    fleet, ends = fleet_devices.start_fleet(os.path.abspath(args.bin), root, [])
    try:
        ca_dir = os.path.join(root, "ca")
        subprocess.run([os.path.abspath(args.load), "device-certs", "--ca-cert", os.path.join(ca_dir, "ca.pem"),
                        "--ca-key", os.path.join(ca_dir, "ca.key"), "--out", certs, "--prefix", prefix,
                        "--devices", str(args.devices)], check=True, capture_output=True)
        c = configparser.ConfigParser()
        c.read(os.path.join(root, "admin", "credentials"))
        creds = (c["default"]["aws_access_key_id"], c["default"]["aws_secret_access_key"])
        with open(ends["rootCa"]) as f:
            ca_pem = f.read()
        fleet_devices.POLICY = OTA_POLICY
        secs, _ = fleet_devices.register(ends["api"], creds, ca_pem, certs, prefix, args.devices, args.threads)
        print(f"registered {args.devices} devices in {secs:.1f} s")
        kw = dict(endpoint_url=ends["api"], region_name="us-east-1", aws_access_key_id=creds[0],
                  aws_secret_access_key=creds[1], config=Config(retries={"max_attempts": 3}))
        iot, gg, s3 = boto3.client("iot", **kw), boto3.client("greengrassv2", **kw), boto3.client("s3", **kw)
        garn = iot.create_thing_group(thingGroupName=GROUP)["thingGroupArn"]
        for i in range(args.devices):
            iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=f"{prefix}{i:05d}")
        payload = os.urandom(args.artifact_bytes)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="app/app.bin", Body=payload)
        recipe = {
            "RecipeFormatVersion": "2020-01-25", "ComponentName": COMPONENT, "ComponentVersion": "1.0.0",
            "ComponentPublisher": "bench",
            "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "sh {artifacts:path}/app.bin"},
                           "Artifacts": [{"URI": f"s3://{BUCKET}/app/app.bin",
                                          "Digest": base64.b64encode(hashlib.sha256(payload).digest()).decode(),
                                          "Algorithm": "SHA-256"}]}],
        }
        out = gg.create_component_version(inlineRecipe=json.dumps(recipe).encode())
        assert out["status"]["componentState"] == "DEPLOYABLE", out
        asyncio.run(run(args, ends, root, certs, prefix, iot, gg, garn))
    finally:
        fleet.send_signal(signal.SIGTERM)
        try:
            fleet.wait(timeout=30)
        except Exception:
            fleet.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
