"""The V1 functions protocol client `greengrasssdk` calls: POST work to a function, GET its
result, on the launcher's loopback port (`GG_DAEMON_PORT`), authorized by the instance's
`AWS_CONTAINER_AUTHORIZATION_TOKEN`."""

import collections
import urllib.error
import urllib.request

from greengrass_common.env_vars import AUTH_TOKEN, GG_DAEMON_PORT

WorkResult = collections.namedtuple("WorkResult", ["payload", "func_err"])


class IPCException(Exception):
    pass


class IPCClient:
    def __init__(self, endpoint="localhost", port=None):
        host = "127.0.0.1" if endpoint == "localhost" else endpoint
        self.base = "http://{}:{}/2016-11-01/functions/".format(host, port or GG_DAEMON_PORT)

    def _send(self, method, function_arn, body=None, headers=None):
        request = urllib.request.Request(self.base + function_arn, data=body, method=method)
        request.add_header("Authorization", AUTH_TOKEN or "")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with urllib.request.urlopen(request, timeout=90) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            raise IPCException("{} {}: HTTP {}: {}".format(method, function_arn, e.code, e.read().decode(errors="replace")))
        except OSError as e:
            raise IPCException("{} {}: {}".format(method, function_arn, e))

    def post_work(self, function_arn, payload, client_context=None, invocation_type="RequestResponse"):
        if isinstance(payload, str):
            payload = payload.encode()
        elif hasattr(payload, "read"):
            payload = payload.read()
        if isinstance(client_context, bytes):
            client_context = client_context.decode()
        headers = {"X-Amz-Invocation-Type": invocation_type}
        if client_context:
            headers["X-Amz-Client-Context"] = client_context
        _, response_headers, _ = self._send("POST", function_arn, payload or b"", headers)
        return response_headers.get("X-Amz-InvocationId")

    def get_work_result(self, function_arn, invocation_id):
        _, headers, body = self._send("GET", function_arn, None, {"X-Amz-InvocationId": invocation_id})
        return WorkResult(payload=body, func_err=headers.get("X-Amz-Function-Error") or "")
