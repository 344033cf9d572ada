"""IPC pub/sub bench between two Greengrass components with the unmodified awsiotsdk client (bench/ipc.sh).

    ipc_py.py --subscriber DIR [messages]    subscribes to `bench/py`, writes DIR/pysub.ready,
                                             measures, writes DIR/python.json
    ipc_py.py --publisher DIR [messages]     waits for DIR/pysub.ready and publishes

Each role is its own component with its own GreengrassCoreIPCClientV2. For 64 B and 8 KiB binary
payloads: throughput with 16 publishes in flight, counted at the subscriber from the first
message's send time to the last arrival, then publish->event latency with one message in flight
(send time written into the payload by the publisher, CLOCK_MONOTONIC, shared by both processes;
the publisher sends the next message once the subscriber acknowledged the last on `bench/pyack`).
"""

import json
import os
import queue
import sys
import time

from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

role, workdir = sys.argv[1], sys.argv[2]
messages = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
IN_FLIGHT = 16
SIZES = (64, 8192)
IDLE_S = 10


def throughput_round(i):
    return i * 10


def latency_round(i):
    return i * 10 + 9


def latency_messages():
    return max(100, min(messages // 10, 2000))


def payload(size, rnd, seq):
    body = bytearray(b"\x5a" * max(size, 16))
    body[:8] = time.monotonic_ns().to_bytes(8, "big")
    body[8:12] = rnd.to_bytes(4, "big")
    body[12:16] = seq.to_bytes(4, "big")
    return model.PublishMessage(binary_message=model.BinaryMessage(message=bytes(body)))


def ack(rnd, seq):
    return model.PublishMessage(
        binary_message=model.BinaryMessage(message=rnd.to_bytes(4, "big") + seq.to_bytes(4, "big"))
    )


client = GreengrassCoreIPCClientV2()
inbox = queue.Queue()


def on_event(e):
    # Runs on the client's event-loop thread: note the time and hand over, nothing else.
    inbox.put((time.monotonic_ns(), e.binary_message.message))


def publisher():
    client.subscribe_to_topic(topic="bench/pyack", on_stream_event=on_event)
    ready = os.path.join(workdir, "pysub.ready")
    while not os.path.exists(ready):
        time.sleep(0.02)

    def wait_ack(rnd, seq):
        want = rnd.to_bytes(4, "big") + seq.to_bytes(4, "big")
        while inbox.get(timeout=60)[1] != want:
            pass

    for i, size in enumerate(SIZES):
        rnd = throughput_round(i)
        pending = []
        for seq in range(messages):
            pending.append(client.publish_to_topic_async(topic="bench/py", publish_message=payload(size, rnd, seq)))
            if len(pending) >= IN_FLIGHT:
                pending.pop(0).result()
        for f in pending:
            f.result()
        wait_ack(rnd, 0)
        rnd = latency_round(i)
        for seq in range(latency_messages()):
            client.publish_to_topic(topic="bench/py", publish_message=payload(size, rnd, seq))
            wait_ack(rnd, seq)


def subscriber():
    client.subscribe_to_topic(
        topic="bench/py", receive_mode=model.ReceiveMode.RECEIVE_ALL_MESSAGES, on_stream_event=on_event
    )
    open(os.path.join(workdir, "pysub.ready"), "w").close()
    results = []
    for i, size in enumerate(SIZES):
        rnd = throughput_round(i)
        got, first, last = 0, None, None
        while got < messages:
            try:
                at, body = inbox.get(timeout=IDLE_S)
            except queue.Empty:
                break
            if int.from_bytes(body[8:12], "big") != rnd:
                continue
            sent = int.from_bytes(body[:8], "big")
            first = sent if first is None else min(first, sent)
            got, last = got + 1, at
        rate = got / ((last - first) / 1e9) if got > 1 else 0
        client.publish_to_topic(topic="bench/pyack", publish_message=ack(rnd, 0))
        rnd = latency_round(i)
        latencies = []
        while len(latencies) < latency_messages():
            at, body = inbox.get(timeout=60)
            if int.from_bytes(body[8:12], "big") != rnd:
                continue
            latencies.append((at - int.from_bytes(body[:8], "big")) / 1000)
            client.publish_to_topic(
                topic="bench/pyack", publish_message=ack(rnd, int.from_bytes(body[12:16], "big"))
            )
        latencies.sort()
        r = {
            "client": "python", "payload": size, "messages": messages, "received": got,
            "msgs_per_s": round(rate), "p50_us": latencies[len(latencies) // 2],
            "p99_us": latencies[int((len(latencies) - 1) * 0.99)],
        }
        print(json.dumps(r), flush=True)
        results.append(r)
    out = os.path.join(workdir, "python.json")
    with open(out + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.rename(out + ".tmp", out)


{"--publisher": publisher, "--subscriber": subscriber}[role]()
client.close()
