"""lichen.ImageClassification: classifies images with lichen.Inference and publishes the top
results, as Greengrass's DLRImageClassification sample does.

Every InferenceInterval seconds it classifies ImageName in ImageDirectory (or every .jpg, .jpeg
and .png there), and any image announced on ImageTopic at once; each result is published on
PublishResultsOnTopic (local pub/sub; also AWS IoT Core with PublishResultsToIoTCore) as
{"timestamp", "inference-type": "image-classification", "inference-description",
 "inference-results": [{"Label", "Score"}], "image"}.
Configuration changes apply at once. Standard library and awsiotsdk only.
"""

import datetime
import json
import math
import os
import sys
import threading
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage, QOS

from lichen_inference import InferenceClient, InferenceError, top_k

EXTENSIONS = (".jpg", ".jpeg", ".png")


def log(*args):
    print(datetime.datetime.now().isoformat(timespec="seconds"), *args, file=sys.stderr, flush=True)


def as_bool(v):
    return v is True or str(v).strip().lower() in ("true", "1", "yes")


def labels_from(path):
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [x / s for x in e]


class Classifier:
    def __init__(self, ipc):
        self.ipc = ipc
        self.lock = threading.Lock()
        self.client = None
        self.image_sub = None
        self.wake = threading.Event()
        self.reload()
        ipc.subscribe_to_configuration_update(
            key_path=[], on_stream_event=lambda _e: (self.reload(), self.wake.set())
        )

    def reload(self):
        conf = self.ipc.get_configuration(key_path=[]).value
        with self.lock:
            old = getattr(self, "conf", {})
            self.conf = conf
            try:
                self.labels = labels_from(conf.get("LabelsFile"))
            except OSError as e:
                log(f"LabelsFile {conf.get('LabelsFile')!r}: {e}; classes are named by index")
                self.labels = None
            if self.client is None or old.get("Model") != conf.get("Model"):
                if self.client is not None:
                    self.client.close()
                self.client = InferenceClient(self.ipc, conf.get("Model") or "image-classification")
            topic = conf.get("ImageTopic") or ""
            if topic != old.get("ImageTopic", ""):
                if self.image_sub is not None:
                    self.image_sub.close()
                    self.image_sub = None
                if topic:
                    _, self.image_sub = self.ipc.subscribe_to_topic(
                        topic=topic, on_stream_event=self.on_image
                    )

    def on_image(self, event):
        msg = event.json_message.message if event.json_message is not None else None
        if msg is None and event.binary_message is not None:
            try:
                msg = json.loads(bytes(event.binary_message.message))
            except ValueError:
                log("a message on ImageTopic is not JSON; ignored")
                return
        image = (msg or {}).get("image") if isinstance(msg, dict) else None
        if not isinstance(image, dict):
            log('a message on ImageTopic has no "image": {"path"} or {"base64"}; ignored')
            return
        name = image.get("path") or "topic-image"
        threading.Thread(target=self.classify, args=(name, image), daemon=True).start()

    def images(self):
        conf = self.conf
        folder = conf.get("ImageDirectory") or ""
        name = conf.get("ImageName") or ""
        if name:
            return [os.path.join(folder, name)]
        try:
            return sorted(
                os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(EXTENSIONS)
            )
        except OSError as e:
            log(f"ImageDirectory {folder!r}: {e}")
            return []

    def classify(self, name, image):
        with self.lock:
            conf, labels, client = self.conf, self.labels, self.client
        k = int(conf.get("TopK") or 5)
        try:
            answer = client.request({"image": image}, float(conf.get("RequestTimeout") or 30))
        except TimeoutError as e:
            log(f"{name}: {e}")
            return
        if "error" in answer:
            err = InferenceError(answer["error"].get("code"), answer["error"].get("message"))
            log(f"{name}: {err}")
            return
        scores = answer["outputs"][0]["data"]
        if as_bool(conf.get("Softmax")):
            scores = softmax(scores)
        results = [
            {"Label": labels[i] if labels and i < len(labels) else str(i), "Score": f"{s:.5f}"}
            for i, s in top_k(scores, k)
        ]
        message = {
            "timestamp": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f"),
            "inference-type": "image-classification",
            "inference-description": f"Top {k} predictions",
            "inference-results": results,
            "image": os.path.basename(name),
            "model": answer.get("model"),
            "durationMs": answer.get("durationMs"),
        }
        topic = conf.get("PublishResultsOnTopic") or "ml/lichen/image-classification"
        self.ipc.publish_to_topic(
            topic=topic, publish_message=PublishMessage(json_message=JsonMessage(message=message))
        )
        if as_bool(conf.get("PublishResultsToIoTCore")):
            self.ipc.publish_to_iot_core(
                topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=json.dumps(message).encode()
            )
        log(f"{name}: {results[:1]}")

    def run(self):
        while True:
            for path in self.images():
                self.classify(path, {"path": os.path.abspath(path)})
            interval = float(self.conf.get("InferenceInterval") or 3600)
            self.wake.wait(interval)
            self.wake.clear()


def main():
    ipc = GreengrassCoreIPCClientV2()
    Classifier(ipc).run()


if __name__ == "__main__":
    main()
