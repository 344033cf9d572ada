"""IPC pub/sub bench as a Greengrass component with the unmodified awsiotsdk client (bench/ipc.sh).

Two GreengrassCoreIPCClientV2 connections of one component: one publishes binary messages on
`bench/py`, the other subscribes. For 64 B and 8 KiB payloads: throughput (16 publishes in
flight, counted at the subscriber) and publish->event latency p50/p99 with one message in flight.
Writes a JSON list to argv[1].
"""

import json
import os
import sys
import threading
import time

from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

out, messages = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5000
IN_FLIGHT = 16
pub, sub = GreengrassCoreIPCClientV2(), GreengrassCoreIPCClientV2()
lock = threading.Condition()
received = []


def on_event(e):
    now = time.perf_counter_ns()
    with lock:
        received.append((now, int.from_bytes(e.binary_message.message[:8], "big")))
        lock.notify_all()


def message(size):
    body = bytearray(b"\x5a" * max(size, 8))
    body[:8] = time.perf_counter_ns().to_bytes(8, "big")
    return model.PublishMessage(binary_message=model.BinaryMessage(message=bytes(body)))


results = []
for size in (64, 8192):
    _, op = sub.subscribe_to_topic(
        topic="bench/py", receive_mode=model.ReceiveMode.RECEIVE_ALL_MESSAGES, on_stream_event=on_event
    )
    with lock:
        received.clear()
    start = time.perf_counter_ns()
    pending = []
    for _ in range(messages):
        pending.append(pub.publish_to_topic_async(topic="bench/py", publish_message=message(size)))
        if len(pending) >= IN_FLIGHT:
            pending.pop(0).result()
    for f in pending:
        f.result()
    with lock:
        lock.wait_for(lambda: len(received) >= messages, timeout=10)
        got, last = len(received), received[-1][0] if received else start
    rate = got / ((last - start) / 1e9)
    rounds = max(100, min(messages // 10, 2000))
    latencies = []
    for _ in range(rounds):
        with lock:
            received.clear()
        pub.publish_to_topic(topic="bench/py", publish_message=message(size))
        with lock:
            lock.wait_for(lambda: received, timeout=10)
            now, stamp = received[0]
        latencies.append((now - stamp) / 1000)
    latencies.sort()
    op.close()
    r = {
        "client": "python", "payload": size, "messages": messages, "received": got,
        "msgs_per_s": round(rate), "p50_us": latencies[len(latencies) // 2],
        "p99_us": latencies[int((len(latencies) - 1) * 0.99)],
    }
    print(json.dumps(r), flush=True)
    results.append(r)
with open(out + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
os.rename(out + ".tmp", out)
pub.close()
sub.close()
