"""lichen.Inference on a real core: the sample classifier deployed with a real model classifies
generated images and publishes results; requests over IPC local pub/sub with a correlation id
(the sample's `lichen_inference` helper) get outputs equal to onnxruntime's; a wrong shape gets
an error answer and the service keeps serving; a killed worker is restarted; a corrupt model
fails its deployment with a clear cause and changes nothing."""

import json
import os
import signal
import shutil

import numpy as np
import onnxruntime

from conftest import IMAGE_TOPIC, MODEL, MODEL_COMPONENT, RESULTS_TOPIC, model_file, recipe, write_image
from lichen_support import wait_for

REQUEST = f"lichen/inference/{MODEL}/request"
RESPONSE = f"lichen/inference/{MODEL}/response"


def deterministic_input():
    return np.random.RandomState(7).uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)


def infer_code(array, timeout=60):
    """Driver snippet: one request through the helper; result = outputs or {"error": …}."""
    return f"""
client = state.get("client") or li.InferenceClient(ipc, {MODEL!r})
state["client"] = client
try:
    result = client.infer(inputs=[li.tensor({list(array.shape)}, {array.ravel().tolist()!r})], timeout={timeout})
except li.InferenceError as e:
    result = {{"error": {{"code": e.code, "message": e.message}}}}
"""


def test_the_sample_classifies_generated_images_and_publishes_the_top_results(core):
    core.driver.run(f"record({RESULTS_TOPIC!r}); result = True")

    def both():
        seen = {}
        for msg in core.driver.run(f"result = recorded({RESULTS_TOPIC!r})"):
            seen.setdefault(msg["image"], msg)
        return seen if {"a-upright.png", "b-upside-down.png"} <= seen.keys() else None

    seen = wait_for(both, 180, "classification results for both images")
    upright, flipped = seen["a-upright.png"], seen["b-upside-down.png"]
    for msg in (upright, flipped):
        assert msg["inference-type"] == "image-classification"
        assert msg["model"] == MODEL
        assert len(msg["inference-results"]) == 2
    assert upright["inference-results"][0]["Label"] == "0", upright
    assert flipped["inference-results"][0]["Label"] == "180", flipped
    assert float(upright["inference-results"][0]["Score"]) > 0.9
    assert float(flipped["inference-results"][0]["Score"]) > 0.9


def test_the_sample_classifies_images_announced_on_its_topic(core, tmp_path):
    write_image(tmp_path / "c-announced.png", "quick brown", True)
    tmp_path.chmod(0o755)
    core.driver.run(f"record({RESULTS_TOPIC!r}); result = True")
    message = {"image": {"path": str(tmp_path / "c-announced.png")}}
    core.driver.run(
        f"ipc.publish_to_topic(topic={IMAGE_TOPIC!r}, "
        f"publish_message=PublishMessage(json_message=JsonMessage(message={message!r}))); result = True"
    )
    found = wait_for(
        lambda: [m for m in core.driver.run(f"result = recorded({RESULTS_TOPIC!r})") if m["image"] == "c-announced.png"],
        120,
        "the result for the announced image",
    )
    assert found[0]["inference-results"][0]["Label"] == "180", found


def test_tensor_requests_over_ipc_match_onnxruntime(core):
    x = deterministic_input()
    outputs = core.driver.run(infer_code(x))
    assert "error" not in outputs, outputs
    session = onnxruntime.InferenceSession(str(model_file()))
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert outputs[0]["dtype"] == "f32"
    assert outputs[0]["shape"] == list(want.shape)
    np.testing.assert_allclose(np.array(outputs[0]["data"]).reshape(want.shape), want, atol=1e-4)


def test_an_image_sent_as_base64_is_preprocessed_by_the_service(core):
    data = (core.images / "b-upside-down.png").read_bytes()
    code = f"""
import base64
client = state.get("client") or li.InferenceClient(ipc, {MODEL!r})
state["client"] = client
result = client.infer(image_bytes=base64.b64decode({__import__("base64").b64encode(data).decode()!r}), timeout=60)
"""
    outputs = core.driver.run(code)
    scores = outputs[0]["data"]
    assert scores[1] > scores[0], scores


def test_a_wrong_shape_gets_an_error_answer_and_the_next_request_succeeds(core):
    # The model takes [N, 3, H, W]: one channel is wrong.
    bad = np.zeros((1, 1, 48, 192), dtype=np.float32)
    answer = core.driver.run(infer_code(bad))
    assert answer["error"]["code"] == "InvalidInput", answer
    message = answer["error"]["message"]
    # Names the input, what the model expects and what came.
    assert "'x'" in message and "[1, 1, 48, 192]" in message and "3" in message, message
    # A dtype the model does not take.
    code = f"""
client = state["client"]
try:
    result = client.infer(inputs=[li.tensor([1, 3, 48, 192], [0] * (3 * 48 * 192), dtype="i64")], timeout=60)
except li.InferenceError as e:
    result = {{"error": {{"code": e.code, "message": e.message}}}}
"""
    answer = core.driver.run(code)
    assert answer["error"]["code"] == "InvalidInput" and "'x'" in answer["error"]["message"], answer
    # Not JSON at all: answered with a null id, and the service goes on.
    core.driver.run(f"""
record({RESPONSE!r})
ipc.publish_to_topic(topic={REQUEST!r}, publish_message=PublishMessage(binary_message=BinaryMessage(message=b"not json")))
result = True
""")
    refused = wait_for(
        lambda: [m for m in core.driver.run(f"result = recorded({RESPONSE!r})") if m.get("id") is None],
        60,
        "the answer to a request that is not JSON",
    )
    assert refused[0]["error"]["code"] == "InvalidRequest", refused
    outputs = core.driver.run(infer_code(deterministic_input()))
    assert "error" not in outputs and len(outputs[0]["data"]) == 2, outputs


def test_a_killed_worker_is_restarted_and_serves_again(core):
    assert "error" not in core.driver.run(infer_code(deterministic_input()))
    workers = core.workers()
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)
    wait_for(lambda: core.workers() and core.workers() != workers, 60, "a new worker")

    def served():
        r = core.driver.run(infer_code(deterministic_input()))
        if "error" in r:
            # While it restarts the service says so; anything else is a failure.
            assert r["error"]["code"] in ("WorkerExited", "WorkerUnavailable"), r
            return None
        return r

    outputs = wait_for(served, 120, "an answer from the restarted worker")
    assert len(outputs[0]["data"]) == 2
    assert core.proc.poll() is None, "the core died with its worker"


def test_a_corrupt_model_fails_its_deployment_with_a_clear_cause_and_changes_nothing(core):
    art = core.artifacts / MODEL_COMPONENT / "2.0.0"
    art.mkdir(parents=True)
    good = model_file().read_bytes()
    # Cut in the middle: a protobuf that ends inside a field.
    (art / "model.onnx").write_bytes(good[: len(good) // 2])
    (core.recipes / f"{MODEL_COMPONENT}-2.0.0.json").write_text(recipe(MODEL_COMPONENT, "2.0.0"))
    rc, out = core.deploy(
        "--recipe-dir", str(core.recipes), "--artifact-dir", str(core.artifacts),
        "--merge", f"{MODEL_COMPONENT}=2.0.0", check=False,
    )
    assert rc != 0, out
    text = json.dumps(out)
    assert "FAILED_NO_STATE_CHANGE" in text, text
    assert "lichen.Inference" in text and f"model {MODEL}" in text, text
    stored = core.root / "packages" / "artifacts" / MODEL_COMPONENT / "2.0.0" / "model.onnx"
    assert str(stored) in text, text
    assert "cannot load model" in text, text
    # Nothing changed: version 1.0.0 is deployed and served.
    details = json.loads(core.cli("component", "details", MODEL_COMPONENT, "--json").stdout)
    assert details["version"] == "1.0.0", details
    outputs = core.driver.run(infer_code(deterministic_input()))
    assert "error" not in outputs, outputs
    shutil.rmtree(art)


def test_a_new_version_of_the_model_component_is_loaded_from_its_own_artifacts(core):
    art = core.artifacts / MODEL_COMPONENT / "3.0.0"
    art.mkdir(parents=True)
    shutil.copy(model_file(), art / "model.onnx")
    (core.recipes / f"{MODEL_COMPONENT}-3.0.0.json").write_text(recipe(MODEL_COMPONENT, "3.0.0"))
    before = core.workers()
    rc, out = core.deploy(
        "--recipe-dir", str(core.recipes), "--artifact-dir", str(core.artifacts),
        "--merge", f"{MODEL_COMPONENT}=3.0.0",
    )
    assert rc == 0, out
    # lichen.Inference's configuration did not change; the model component's version did.
    wait_for(lambda: core.workers() and core.workers() != before, 60, "a worker for the new model file")
    # Answers come from 3.0.0's file: with 1.0.0's gone, a fresh worker still loads the model.
    (core.root / "packages" / "artifacts" / MODEL_COMPONENT / "1.0.0" / "model.onnx").unlink()
    workers = core.workers()
    os.kill(workers[0], signal.SIGKILL)
    wait_for(lambda: core.workers() and core.workers() != workers, 60, "a new worker")

    def served():
        r = core.driver.run(infer_code(deterministic_input()))
        if "error" in r:
            assert r["error"]["code"] in ("WorkerExited", "WorkerUnavailable"), r
            return None
        return r

    outputs = wait_for(served, 120, "an answer from the new model")
    assert len(outputs[0]["data"]) == 2


def test_a_model_whose_component_is_not_deployed_fails_the_deployment(core):
    update = {"lichen.Inference": {"MERGE": {"models": {"other": {"modelComponent": "com.example.Absent", "artifact": "m.onnx"}}}}}
    rc, out = core.deploy("--merge", "lichen.Inference=1.0.0", "--update-config", json.dumps(update), check=False)
    assert rc != 0, out
    text = json.dumps(out)
    assert "FAILED_NO_STATE_CHANGE" in text and "model other" in text and "com.example.Absent" in text, text
    # A malformed configuration is refused the same way, naming the key.
    update = {"lichen.Inference": {"MERGE": {"models": {"other": {"artifact": "relative.onnx"}}}}}
    rc, out = core.deploy("--merge", "lichen.Inference=1.0.0", "--update-config", json.dumps(update), check=False)
    assert rc != 0 and "models.other.artifact" in json.dumps(out), out
    assert "error" not in core.driver.run(infer_code(deterministic_input()))
