"""Inference requests to Lichen's `lichen.Inference` from a component, over Greengrass IPC.

Plain local pub/sub with a correlation id: a request is published (PublishToTopic) on
`lichen/inference/<model>/request` as {"id", "inputs": [tensor…]} or {"id", "image": {"path"} |
{"base64"}}; the answer, {"id", "model", "outputs": [tensor…], "durationMs"} or
{"id", "model", "error": {"code", "message"}}, comes on `lichen/inference/<model>/response`, which
this client subscribes to (SubscribeToTopic) once and matches by id. A tensor is
{"shape": [..], "dtype": "f32" | "i64" | "i32" | "u8", "data": [..]} (data row-major, flat).

The component's recipe needs an aws.greengrass.ipc.pubsub accessControl policy allowing both
operations on those topics. Standard library and awsiotsdk only:

    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
    from lichen_inference import InferenceClient, tensor

    ipc = GreengrassCoreIPCClientV2()
    cls = InferenceClient(ipc, "image-classification")
    outputs = cls.infer(image_path="/data/cat.jpg")          # pre-processed per the model's config
    outputs = cls.infer(inputs=[tensor([1, 3, 48, 192], data)])
    scores = outputs[0]["data"]
"""

import base64
import json
import threading
import uuid

from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage


class InferenceError(Exception):
    """The service's error answer: `code` (InvalidInput, InvalidRequest, InvalidImage,
    ModelNotLoaded, WorkerExited, WorkerUnavailable, Busy, InferenceFailed) and its message."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def tensor(shape, data, dtype="f32"):
    """A request tensor: `data` flat, row-major, len(data) == product(shape)."""
    return {"shape": list(shape), "dtype": dtype, "data": list(data)}


def top_k(scores, k):
    """[(index, score)] of the k highest scores, highest first."""
    return sorted(enumerate(scores), key=lambda p: (-p[1], p[0]))[:k]


class InferenceClient:
    """Requests to one model of lichen.Inference; safe to use from several threads."""

    def __init__(self, ipc, model, request_topic=None, response_topic=None):
        self.ipc = ipc
        self.model = model
        self.request_topic = request_topic or f"lichen/inference/{model}/request"
        self.response_topic = response_topic or f"lichen/inference/{model}/response"
        self._lock = threading.Lock()
        self._waiting = {}
        _, self._operation = ipc.subscribe_to_topic(
            topic=self.response_topic, on_stream_event=self._on_answer
        )

    def _on_answer(self, event):
        if event.json_message is not None:
            answer = event.json_message.message
        elif event.binary_message is not None:
            try:
                answer = json.loads(bytes(event.binary_message.message))
            except ValueError:
                return
        else:
            return
        if not isinstance(answer, dict):
            return
        with self._lock:
            slot = self._waiting.get(answer.get("id"))
        if slot is not None:
            slot["answer"] = answer
            slot["done"].set()

    def request(self, body, timeout=30.0):
        """Publishes `body` (an id is added) and returns the whole answer (dict)."""
        rid = uuid.uuid4().hex
        body = dict(body, id=rid)
        slot = {"done": threading.Event(), "answer": None}
        with self._lock:
            self._waiting[rid] = slot
        try:
            self.ipc.publish_to_topic(
                topic=self.request_topic,
                publish_message=PublishMessage(json_message=JsonMessage(message=body)),
            )
            if not slot["done"].wait(timeout):
                raise TimeoutError(
                    f"no answer from lichen.Inference model {self.model} on "
                    f"{self.response_topic} within {timeout} s"
                )
            return slot["answer"]
        finally:
            with self._lock:
                self._waiting.pop(rid, None)

    def infer(self, inputs=None, image_path=None, image_bytes=None, timeout=30.0):
        """Runs the model; returns its output tensors or raises InferenceError."""
        if inputs is not None:
            body = {"inputs": inputs}
        elif image_path is not None:
            body = {"image": {"path": image_path}}
        elif image_bytes is not None:
            body = {"image": {"base64": base64.b64encode(image_bytes).decode("ascii")}}
        else:
            raise ValueError("give inputs, image_path or image_bytes")
        answer = self.request(body, timeout)
        if "error" in answer:
            err = answer["error"] or {}
            raise InferenceError(err.get("code", "Error"), err.get("message", ""))
        return answer["outputs"]

    def close(self):
        self._operation.close()
