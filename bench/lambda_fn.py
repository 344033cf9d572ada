"""The function bench/lambda.py runs under awslambdaric: it answers each event on local pub/sub."""

import json

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import BinaryMessage, PublishMessage

ipc = GreengrassCoreIPCClientV2()


def handler(event, context):
    msg = PublishMessage(binary_message=BinaryMessage(message=json.dumps({"n": event["n"]}).encode()))
    ipc.publish_to_topic(topic="lambda/answers", publish_message=msg)
    return {"n": event["n"]}
