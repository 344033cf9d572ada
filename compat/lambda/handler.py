"""A Lambda function for unmodified awslambdaric: it answers each event on local pub/sub
(`lambda/answers`) through the awsiotsdk IPC client, and sleeps when asked (to be timed out)."""

import json
import os
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import BinaryMessage, PublishMessage

ipc = GreengrassCoreIPCClientV2()


def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    answer = {
        "n": event.get("n"),
        "topic": context.client_context.custom["subject"] if context.client_context else None,
        "pid": os.getpid(),
        "function": context.function_name,
        "requestId": context.aws_request_id,
        "env": os.environ.get("GREETING"),
    }
    ipc.publish_to_topic(topic="lambda/answers", publish_message=PublishMessage(binary_message=BinaryMessage(message=json.dumps(answer).encode())))
    return answer
