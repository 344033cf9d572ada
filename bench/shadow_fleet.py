#!/usr/bin/env python3
"""Fleet shadow figures: shadow updates per second through the fleet over MQTT, and the round trip
of one update (publish on `update` → `update/accepted` received), with the unmodified awsiotsdk
`iotshadow` client on devices connected over mutual TLS.

    cargo build --release -p lichen --bins
    .venv/bin/python bench/shadow_fleet.py [--bin target/release/lichen] [--devices 4] [--updates 500]

Steps: start `lichen fleet serve` on a fresh root (SQLite registry); make N things with created
certificates and a shadow policy (boto3); connect each with awsiotsdk (MQTT 3.1.1) and subscribe
to its `update/accepted`; then (1) round trip: one device sends updates one at a time and waits for
each acceptance (median and p99 of --updates); (2) throughput: every device sends --updates
reported updates back to back (QoS 1, not waiting for acceptance), timed from the first publish to
the last acceptance. Every accepted update is one fsynced SQLite transaction.
"""
import argparse
import configparser
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

import boto3
from awscrt import mqtt
from awsiot import iotshadow, mqtt_connection_builder
from botocore.config import Config

POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"},
    ],
})
QOS = mqtt.QoS.AT_LEAST_ONCE


def start_fleet(binary, root):
    log = open(os.path.join(os.path.dirname(root), "fleet.log"), "w")
    p = subprocess.Popen([binary, "fleet", "serve", "--root", root, "--api", "127.0.0.1:0",
                          "--mqtt", "127.0.0.1:0", "--data-plane", "127.0.0.1:0"],
                         stdout=subprocess.DEVNULL, stderr=log)
    path = os.path.join(root, "endpoints.json")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return p, json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise RuntimeError("the fleet did not write endpoints.json")


class Dev:
    def __init__(self, iot, ends, work, name):
        self.name = name
        iot.create_thing(thingName=name)
        keys = iot.create_keys_and_certificate(setAsActive=True)
        cert, key = os.path.join(work, name + ".crt"), os.path.join(work, name + ".key")
        with open(cert, "w") as f:
            f.write(keys["certificatePem"])
        with open(key, "w") as f:
            f.write(keys["keyPair"]["PrivateKey"])
        iot.attach_policy(policyName="bench-shadow", target=keys["certificateArn"])
        iot.attach_thing_principal(thingName=name, principal=keys["certificateArn"])
        self.conn = mqtt_connection_builder.mtls_from_path(
            endpoint="localhost", port=int(ends["mqtt"].rsplit(":", 1)[1]), cert_filepath=cert,
            pri_key_filepath=key, ca_filepath=ends["rootCa"], client_id=name, clean_session=True,
            keep_alive_secs=60)
        self.conn.connect().result(15)
        self.client = iotshadow.IotShadowClient(self.conn)
        self.accepted = queue.Queue()
        f, _ = self.client.subscribe_to_update_shadow_accepted(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=name), QOS,
            lambda r: self.accepted.put(time.perf_counter()))
        f.result(15)

    def send(self, i):
        req = iotshadow.UpdateShadowRequest(
            thing_name=self.name, state=iotshadow.ShadowState(reported={"seq": i, "temp": 20 + i % 7}))
        return self.client.publish_update_shadow(req, QOS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", "target/release/lichen"))
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--updates", type=int, default=500, help="per device")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (fleet.log)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lichen-shadow-bench-")
    root = os.path.join(work, "root")
    fleet, ends = start_fleet(os.path.abspath(args.bin), root)
    devs = []
    try:
        c = configparser.ConfigParser()
        c.read(os.path.join(root, "admin", "credentials"))
        iot = boto3.client("iot", endpoint_url=ends["api"], region_name="us-east-1",
                           aws_access_key_id=c["default"]["aws_access_key_id"],
                           aws_secret_access_key=c["default"]["aws_secret_access_key"],
                           config=Config(retries={"max_attempts": 3}))
        iot.create_policy(policyName="bench-shadow", policyDocument=POLICY)
        devs = [Dev(iot, ends, work, f"shadow-bench-{i}") for i in range(args.devices)]

        one = devs[0]
        rtts = []
        for i in range(args.updates):
            t0 = time.perf_counter()
            one.send(i).result(15)
            t1 = one.accepted.get(timeout=15)
            rtts.append((t1 - t0) * 1000)
        rtts.sort()
        print(f"round trip update → update/accepted, 1 device, {args.updates} updates: "
              f"median {statistics.median(rtts):.2f} ms, p99 {rtts[int(len(rtts) * 0.99) - 1]:.2f} ms")

        total = args.devices * args.updates
        t0 = time.perf_counter()

        def blast(d):
            for i in range(args.updates):
                d.send(i)

        threads = [threading.Thread(target=blast, args=(d,)) for d in devs]
        for t in threads:
            t.start()
        last = t0
        for d in devs:
            for _ in range(args.updates):
                last = max(last, d.accepted.get(timeout=120))
        for t in threads:
            t.join()
        secs = last - t0
        print(f"throughput: {total} updates from {args.devices} devices in {secs:.2f} s = "
              f"{total / secs:.0f} updates/s accepted")
    finally:
        for d in devs:
            try:
                d.conn.disconnect().result(5)
            except Exception:
                pass
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(timeout=30)
        if args.keep:
            print("work folder kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
