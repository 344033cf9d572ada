"""Fixtures: a real `lichen core run` with `lichen.Inference` serving a real ONNX model (the
text-orientation classifier that ships in the rapidocr-onnxruntime wheel, copied from the venv at
set-up, never committed), the sample `lichen.ImageClassification` component classifying images
generated here, and a driver component: an unmodified awsiotsdk GreengrassCoreIPCClientV2
program that runs the Python snippets the test drops in its mailbox (as compat/ipc's drivers do),
with the sample's `lichen_inference` helper module importable.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lichen_support import lichen_bin, wait_for  # noqa: E402

REPO = HERE.parents[1]
PYTHON = os.environ.get("LICHEN_PYTHON") or str(REPO / ".venv" / "bin" / "python")
SAMPLE = REPO / "components" / "lichen.ImageClassification"
SAMPLE_ARTIFACTS = SAMPLE / "artifacts" / "lichen.ImageClassification" / "1.0.0"
MODEL_COMPONENT = "test.OrientationModel"
MODEL = "orientation"
RESULTS_TOPIC = "ml/test/image-classification"
IMAGE_TOPIC = "test/images"
# rapidocr's direction classifier: BGR, 48x192, (pixel/255 - 0.5) / 0.5; classes 0° and 180°.
PREPROCESS = {
    "width": 192,
    "height": 48,
    "channelOrder": "bgr",
    "scale": 1 / 255,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}


def model_file():
    """The classifier inside the installed rapidocr-onnxruntime wheel."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("rapidocr-onnxruntime is not installed in the venv (tests/requirements.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert path.is_file(), f"no {path}"
    return path


def worker_bin():
    path = Path(lichen_bin()).with_name("lichen-inference")
    if not path.exists():
        pytest.fail(f"no {path}: run `cargo build -p lichen --bins` (feature `inference`)")
    return path


DRIVER = r'''
import json, os, sys, threading, time, traceback
sys.path.insert(0, sys.argv[2])
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import BinaryMessage, JsonMessage, PublishMessage
import lichen_inference

box = sys.argv[1]
ipc = GreengrassCoreIPCClientV2()
lock = threading.Lock()
records = {}

def on_message(topic):
    def handle(event):
        if event.json_message is not None:
            msg = event.json_message.message
        else:
            msg = json.loads(bytes(event.binary_message.message))
        with lock:
            records.setdefault(topic, []).append(msg)
    return handle

def record(topic):
    """Starts keeping every message on `topic`."""
    with lock:
        if topic in records:
            return
        records[topic] = []
    ipc.subscribe_to_topic(topic=topic, on_stream_event=on_message(topic))

def recorded(topic):
    with lock:
        return list(records.get(topic, []))

env = {"ipc": ipc, "li": lichen_inference, "record": record, "recorded": recorded, "json": json,
       "time": time, "PublishMessage": PublishMessage, "JsonMessage": JsonMessage,
       "BinaryMessage": BinaryMessage, "state": {}}

def write(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, default=str)
    os.rename(path + ".tmp", path)

write(os.path.join(box, "ready"), {"pid": os.getpid()})
done = set()
while True:
    for name in sorted(os.listdir(box)):
        if not name.endswith(".py") or name in done:
            continue
        done.add(name)
        env.pop("result", None)
        try:
            exec(open(os.path.join(box, name)).read(), env)
            answer = {"result": env.get("result")}
        except Exception as e:
            answer = {"exception": type(e).__name__, "message": str(e), "trace": traceback.format_exc()}
        write(os.path.join(box, name[:-3] + ".json"), answer)
    time.sleep(0.01)
'''

PUBSUB_ALL = {
    "aws.greengrass.ipc.pubsub": {
        "test.Driver:pubsub:1": {"operations": ["*"], "resources": ["*"]}
    }
}


class Driver:
    """The driver component's mailbox."""

    def __init__(self, box):
        self.box, self.seq = Path(box), 0

    def run(self, code, timeout=120):
        """Runs `code` in the component (it sets `result`); returns `result`."""
        self.seq += 1
        stem = f"{self.seq:05d}"
        (self.box / f"{stem}.tmp").write_text(code)
        os.rename(self.box / f"{stem}.tmp", self.box / f"{stem}.py")
        answer = self.box / f"{stem}.json"
        wait_for(answer.exists, timeout, f"the driver's answer to command {stem}")
        value = json.loads(answer.read_text())
        if "exception" in value:
            raise AssertionError(f"driver command {stem} raised: {value['trace']}")
        return value["result"]


def recipe(name, version="1.0.0", run=None, config=None, deps=None):
    doc = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentConfiguration": {"DefaultConfiguration": config or {}},
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": run} if run else {}}],
    }
    if deps:
        doc["ComponentDependencies"] = deps
    return json.dumps(doc, indent=1)


class Core:
    def __init__(self, root, work, proc):
        self.root, self.work, self.proc = Path(root), Path(work), proc

    def cli(self, *args, check=True, timeout=600):
        r = subprocess.run(
            [lichen_bin(), *args, "--root", str(self.root)], capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(f"lichen {args} failed ({r.returncode}): {r.stdout}\n{r.stderr}\n{self.log()[-4000:]}")
        return r

    def deploy(self, *args, check=True):
        """`lichen deployment create --wait --json …` → (returncode, parsed output)."""
        r = self.cli("deployment", "create", "--wait", "--json", *args, check=check)
        try:
            return r.returncode, json.loads(r.stdout)
        except ValueError:
            return r.returncode, r.stdout + r.stderr

    def log(self):
        p = self.root / "logs" / "lichen.log"
        return p.read_text() if p.exists() else ""

    def workers(self):
        """PIDs of the lichen-inference processes this core started (its descendants)."""
        exe = str(worker_bin().resolve())
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if os.readlink(d / "exe") != exe:
                    continue
                pid = int(d.name)
                # Walk up to our core.
                p = pid
                while p > 1 and p != self.proc.pid:
                    stat = (Path("/proc") / str(p) / "stat").read_text()
                    p = int(stat.rsplit(")", 1)[1].split()[1])
                if p == self.proc.pid:
                    found.append(pid)
            except OSError:
                continue
        return found

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_image(path, text, upside_down):
    """A 384x96 picture of `text`, upright or turned by 180°."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (384, 96), "white")
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 60)
    except OSError:
        font = ImageFont.load_default(size=60)
    ImageDraw.Draw(img).text((10, 10), text, fill="black", font=font)
    if upside_down:
        img = img.rotate(180)
    img.save(path)


@pytest.fixture(scope="session")
def core(tmp_path_factory):
    """The core with the model, the sample classifier and the driver deployed."""
    worker_bin()
    root = tmp_path_factory.mktemp("core")
    work = tmp_path_factory.mktemp("ws")
    recipes, artifacts = work / "recipes", work / "artifacts"
    recipes.mkdir()
    # The model: an ordinary component whose artifact is the .onnx file.
    (artifacts / MODEL_COMPONENT / "1.0.0").mkdir(parents=True)
    shutil.copy(model_file(), artifacts / MODEL_COMPONENT / "1.0.0" / "model.onnx")
    (recipes / f"{MODEL_COMPONENT}-1.0.0.json").write_text(recipe(MODEL_COMPONENT))
    # The sample component as committed.
    shutil.copytree(SAMPLE_ARTIFACTS, artifacts / "lichen.ImageClassification" / "1.0.0")
    for r in (SAMPLE / "recipes").iterdir():
        shutil.copy(r, recipes / r.name)
    # The driver, with the helper module beside it.
    (artifacts / "test.Driver" / "1.0.0").mkdir(parents=True)
    (artifacts / "test.Driver" / "1.0.0" / "driver.py").write_text(DRIVER)
    box = work / "box"
    box.mkdir()
    run = f"{PYTHON} -u {{artifacts:path}}/driver.py {box} {SAMPLE_ARTIFACTS}"
    (recipes / "test.Driver-1.0.0.json").write_text(recipe("test.Driver", run=run, config={"accessControl": PUBSUB_ALL}))
    images = work / "images"
    images.mkdir()
    write_image(images / "a-upright.png", "Hello World", False)
    write_image(images / "b-upside-down.png", "LICHEN 42", True)
    (work / "labels.txt").write_text("0\n180\n")

    proc = subprocess.Popen(
        [lichen_bin(), "core", "run", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "LICHEN_LOG": os.environ.get("LICHEN_LOG", "info")},
    )
    core = Core(root, work, proc)
    try:
        deadline = time.monotonic() + 60
        while "ready in" not in (proc.stdout.readline() or ""):
            assert proc.poll() is None and time.monotonic() < deadline, "core did not become ready"
        core.recipes, core.artifacts, core.images = recipes, artifacts, images
        updates = {
            "lichen.Inference": {
                "MERGE": {
                    "models": {
                        MODEL: {
                            "modelComponent": MODEL_COMPONENT,
                            "artifact": "model.onnx",
                            "preprocess": PREPROCESS,
                        }
                    }
                }
            },
            "lichen.ImageClassification": {
                "MERGE": {
                    "Model": MODEL,
                    "ImageDirectory": str(images),
                    "InferenceInterval": 2,
                    "PublishResultsOnTopic": RESULTS_TOPIC,
                    "LabelsFile": str(work / "labels.txt"),
                    "TopK": 2,
                    "ImageTopic": IMAGE_TOPIC,
                    "Python": PYTHON,
                }
            },
        }
        core.first = core.deploy(
            "--recipe-dir", str(recipes), "--artifact-dir", str(artifacts),
            "--merge", f"lichen.Inference=1.0.0,{MODEL_COMPONENT}=1.0.0,lichen.ImageClassification=1.0.0,test.Driver=1.0.0",
            "--update-config", json.dumps(updates),
        )
        assert core.first[0] == 0, f"the deployment failed: {core.first[1]}\n{core.log()[-4000:]}"
        wait_for(lambda: (box / "ready").exists(), 60, "the driver component to connect")
        core.driver = Driver(box)
    except BaseException:
        print(core.log()[-6000:])
        core.stop()
        raise
    yield core
    workers = core.workers()
    core.stop()
    if os.environ.get("LICHEN_KEEP_LOG"):
        print(core.log())
    # The worker reads its stdin from the core: it ends with the core.
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in workers), 30, "the workers to exit with the core")
