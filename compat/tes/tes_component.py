"""A component that knows nothing of Lichen: boto3 with its default credential chain (the
container-credentials variables the core injects, nothing else), calling the fleet's `iot` API.

usage: tes_component.py OUT ENDPOINT_URL THING ROUNDS PAUSE_S
Writes one JSON line per round to OUT: what it saw of the environment, the access key boto3
used, and DescribeThing's answer or the error.
"""

import json
import os
import sys
import time

import boto3
import botocore.exceptions

out, endpoint, thing, rounds, pause = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
for i in range(rounds):
    line = {
        "round": i,
        "fullUri": os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        "hasToken": bool(os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")),
        "awsKeysInEnv": [k for k in os.environ if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")],
    }
    try:
        session = boto3.session.Session()
        creds = session.get_credentials()
        line["accessKey"] = creds.get_frozen_credentials().access_key if creds else None
        iot = session.client("iot", endpoint_url=endpoint)
        line["thingName"] = iot.describe_thing(thingName=thing)["thingName"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        line["error"] = f"{type(e).__name__}: {e}"
    with open(out, "a") as f:
        f.write(json.dumps(line) + "\n")
    time.sleep(pause)
