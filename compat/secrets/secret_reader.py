"""A component reading a secret through the unmodified awsiotsdk GreengrassCoreIPCClientV2.

usage: secret_reader.py OUT SECRET_ID [VERSION_STAGE]
Writes {"value": …, "versionStage": […], "secretId": …} or {"error": <shape>} to OUT (never to
its log: the secret must not land under the core root in plain text).
"""

import json
import os
import sys

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

out, secret_id = sys.argv[1], sys.argv[2]
stage = sys.argv[3] if len(sys.argv) > 3 else None
client = GreengrassCoreIPCClientV2()
try:
    r = client.get_secret_value(secret_id=secret_id, version_stage=stage)
    result = {
        "value": r.secret_value.secret_string,
        "versionStage": r.version_stage,
        "secretId": r.secret_id,
        "versionId": r.version_id,
    }
except Exception as e:  # the error's shape is what the test checks
    result = {"error": type(e).__name__}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    f.write(json.dumps(result))
os.replace(tmp, out)
client.close()
