"""A Lambda function written for Greengrass V1: it reads a secret and publishes its answer with
the unmodified V1 `greengrasssdk` only (no awsiotsdk)."""

import json

import greengrasssdk

iot = greengrasssdk.client("iot-data")
secrets = greengrasssdk.client("secretsmanager")


def handler(event, context):
    if event.get("burst"):
        for i in range(event["burst"]):
            iot.publish(topic="lambda/answers", payload=json.dumps({"n": event.get("n"), "seq": i}))
        return None
    answer = {"n": event.get("n"), "secretId": event.get("secret")}
    try:
        got = secrets.get_secret_value(SecretId=event["secret"])
        answer.update(value=got.get("SecretString"), arn=got["ARN"], stages=got["VersionStages"])
    except Exception as e:  # the SDK's SecretsManagerError carries the core's refusal
        answer["error"] = f"{type(e).__name__}: {e}"
    iot.publish(topic="lambda/answers", payload=json.dumps(answer))
    return answer
