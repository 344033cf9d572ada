"""The driver component of bench/lambda.py (unmodified awsiotsdk IPC client): publishes events
to TOPIC and times the function's answers on `lambda/answers`.

usage: lambda_driver.py OUT MODE COUNT TOPIC [PAUSE_S]
  MODE seq:   one event at a time (each answered before the next), PAUSE_S between them
  MODE blast: COUNT events at once; the time until all are answered
Writes {"latencies_ms": [...]} or {"seconds": s, "count": n} to OUT.
"""

import json
import os
import sys
import threading
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage

out, mode, count, topic = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
ipc = GreengrassCoreIPCClientV2()
answered = {}
cond = threading.Condition()


def on_answer(event):
    a = json.loads(bytes(event.binary_message.message))
    with cond:
        answered[a["n"]] = time.perf_counter()
        cond.notify_all()


ipc.subscribe_to_topic(topic="lambda/answers", on_stream_event=on_answer)


def send(n):
    ipc.publish_to_topic(topic=topic, publish_message=PublishMessage(json_message=JsonMessage(message={"n": n})))


result = {}
if mode == "seq":
    lat = []
    for n in range(count):
        t0 = time.perf_counter()
        send(n)
        with cond:
            cond.wait_for(lambda: n in answered, timeout=60)
        lat.append((answered[n] - t0) * 1000.0)
        time.sleep(pause)
    result = {"latencies_ms": lat}
else:
    t0 = time.perf_counter()
    for n in range(count):
        send(n)
    with cond:
        cond.wait_for(lambda: len(answered) >= count, timeout=300)
    result = {"seconds": max(answered.values()) - t0, "count": len(answered)}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(result, f)
os.replace(tmp, out)
time.sleep(3600)
