"""A component that records what arrives on `lambda/answers` (one JSON line each) to OUT, and
publishes each line of the file IN (when it appears) to its topic: `<topic> <json>`."""

import json
import os
import sys
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage

out, inbox = sys.argv[1], sys.argv[2]
ipc = GreengrassCoreIPCClientV2()


def on_message(event):
    with open(out, "a") as f:
        f.write(bytes(event.binary_message.message).decode() + "\n")


ipc.subscribe_to_topic(topic="lambda/answers", on_stream_event=on_message)
with open(out + ".ready", "w") as f:
    f.write("ready")
sent = 0
while True:
    if os.path.exists(inbox):
        lines = open(inbox).read().splitlines()
        for line in lines[sent:]:
            topic, payload = line.split(" ", 1)
            ipc.publish_to_topic(topic=topic, publish_message=PublishMessage(json_message=JsonMessage(message=json.loads(payload))))
        sent = len(lines)
    time.sleep(0.1)
