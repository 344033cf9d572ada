"""A Greengrass component on the unmodified awsiotsdk GreengrassCoreIPCClientV2.

  component.py OUT CMD_DIR FILTER...
Subscribes to each FILTER with subscribe_to_topic and appends every message it receives to OUT as
a JSON line {"topic", "payload"}; writes OUT.ready once subscribed. Publishes with
publish_to_topic (binary) each command file {"topic", "payload"} that appears in CMD_DIR, then
deletes it.
"""

import json
import os
import sys
import threading
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import BinaryMessage, PublishMessage


def main():
    out, cmd_dir, filters = sys.argv[1], sys.argv[2], sys.argv[3:]
    client = GreengrassCoreIPCClientV2()
    lock = threading.Lock()

    def on_message(event):
        if event.binary_message is not None:
            topic = event.binary_message.context.topic
            payload = bytes(event.binary_message.message).decode()
        else:
            topic = event.json_message.context.topic
            payload = json.dumps(event.json_message.message)
        with lock, open(out, "a") as f:
            f.write(json.dumps({"topic": topic, "payload": payload}) + "\n")

    for f in filters:
        client.subscribe_to_topic(topic=f, on_stream_event=on_message)
    with open(out + ".ready", "w") as f:
        f.write("subscribed")
    while True:
        for name in sorted(os.listdir(cmd_dir)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(cmd_dir, name)
            cmd = json.load(open(path))
            client.publish_to_topic(
                topic=cmd["topic"],
                publish_message=PublishMessage(binary_message=BinaryMessage(message=cmd["payload"].encode())),
            )
            os.remove(path)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
