"""A Greengrass component using the unmodified awsiotsdk GreengrassCoreIPCClientV2.

Modes:
  produce PROGRESS COUNT PREFIX  publish COUNT QoS 1 messages {"i": i} to PREFIX/t<i%4>, resuming
                                 after the number recorded in PROGRESS (written after each publish)
  echo OUT                       subscribe to roundtrip/down; append each payload to OUT and
                                 publish b"echo:" + payload to roundtrip/up
  unauthorized OUT               try PublishToIoTCore and SubscribeToIoTCore; write the outcomes
  fill OUT TOPIC                 publish 200-byte QoS 1 messages until refused; write the outcome
"""

import json
import os
import sys
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import QOS


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def produce(client, progress, count, prefix):
    start = int(open(progress).read()) if os.path.exists(progress) else 0
    for i in range(start, count):
        client.publish_to_iot_core(
            topic_name=f"{prefix}/t{i % 4}", qos=QOS.AT_LEAST_ONCE, payload=json.dumps({"i": i}).encode()
        )
        write_atomic(progress, str(i + 1))
    write_atomic(progress + ".done", "done")


def echo(client, out):
    def on_message(event):
        payload = event.message.payload
        with open(out, "ab") as f:
            f.write(payload + b"\n")
        client.publish_to_iot_core(topic_name="roundtrip/up", qos=QOS.AT_LEAST_ONCE, payload=b"echo:" + payload)

    client.subscribe_to_iot_core(topic_name="roundtrip/down", qos=QOS.AT_LEAST_ONCE, on_stream_event=on_message)
    write_atomic(out + ".ready", "subscribed")
    while True:
        time.sleep(1)


def unauthorized(client, out):
    result = {}
    try:
        client.publish_to_iot_core(topic_name="roundtrip/up", qos=QOS.AT_LEAST_ONCE, payload=b"x")
        result["publish"] = "ok"
    except Exception as e:
        result["publish"] = f"{type(e).__name__}: {e}"
    try:
        client.subscribe_to_iot_core(topic_name="roundtrip/down", qos=QOS.AT_LEAST_ONCE, on_stream_event=lambda e: None)
        result["subscribe"] = "ok"
    except Exception as e:
        result["subscribe"] = f"{type(e).__name__}: {e}"
    write_atomic(out, json.dumps(result))


def fill(client, out, topic):
    n = 0
    error = None
    while n < 100000:
        try:
            client.publish_to_iot_core(topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=f"{n:08d}".encode() * 25)
            n += 1
        except Exception as e:
            error = f"{type(e).__name__}: {getattr(e, 'message', e)}"
            break
    write_atomic(out, json.dumps({"ok": n, "error": error}))


def main():
    mode = sys.argv[1]
    client = GreengrassCoreIPCClientV2()
    if mode == "produce":
        produce(client, sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "echo":
        echo(client, sys.argv[2])
    elif mode == "unauthorized":
        unauthorized(client, sys.argv[2])
    elif mode == "fill":
        fill(client, sys.argv[2], sys.argv[3])
    client.close()


if __name__ == "__main__":
    main()
