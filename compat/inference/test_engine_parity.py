"""The lichen-inference engine (tract) against onnxruntime on the real small models that ship in
PyPI packages: rapidocr's MobileNetV3-style text-direction classifier and silero-vad. Both run on
the same deterministic inputs; every output must agree within 1e-4. The engine runs in its own
process through the crate's `infer` example (see engine_support.py).
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine_support import Engine, classifier_inputs, classifier_model, ort_session, silero_model, speech_like

TOLERANCE = 1e-4


@pytest.fixture
def engine():
    with Engine() as e:
        yield e


def assert_close(ours, theirs, what):
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != onnxruntime's {theirs.shape}"
    diff = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)))) if ours.size else 0.0
    assert diff <= TOLERANCE, f"{what}: max |tract - onnxruntime| = {diff:.3g} > {TOLERANCE}"


def test_engine_classifier_matches_onnxruntime(engine):
    path = classifier_model()
    loaded = engine.load(path, threads=1)
    assert "error" not in loaded, loaded
    assert loaded["inputs"] == [{"name": "x", "dtype": "f32", "shape": [None, 3, None, None]}]
    assert loaded["outputs"][0]["dtype"] == "f32"
    ort = ort_session(path)
    for seed, batch in [(1, 1), (2, 1), (3, 4), (4, 1)]:
        inputs = classifier_inputs(seed, batch)
        (theirs,) = ort.run(None, {"x": inputs[0]})
        (ours,) = engine.run(inputs)
        assert_close(ours, theirs, f"classifier seed {seed} batch {batch}")
        assert np.array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))
    # A width the first runs did not use: a plan of its own, the same answers.
    wide = np.random.default_rng(9).uniform(-1, 1, size=(1, 3, 48, 320)).astype(np.float32)
    assert_close(engine.run([wide])[0], ort.run(None, {"x": wide})[0], "classifier 48x320")


@pytest.mark.parametrize("rate,window", [(16000, 512), (8000, 256)])
def test_engine_silero_vad_stream_matches_onnxruntime(engine, rate, window):
    path = silero_model()
    loaded = engine.load(path, threads=1)
    assert "error" not in loaded, loaded
    assert [i["name"] for i in loaded["inputs"]] == ["input", "state", "sr"]
    assert loaded["inputs"][2] == {"name": "sr", "dtype": "i64", "shape": []}
    ort = ort_session(path)
    audio = speech_like(rate, window * 12)
    sr = np.array(rate, dtype=np.int64)
    ours_state = np.zeros((2, 1, 128), dtype=np.float32)
    their_state = ours_state.copy()
    for step in range(12):
        chunk = audio[step * window : (step + 1) * window][None, :]
        theirs, their_state_next = ort.run(None, {"input": chunk, "state": their_state, "sr": sr})
        # Each side carries its own state: drift would compound and show.
        ours, ours_state_next = engine.run([chunk, ours_state, sr])
        assert_close(ours, theirs, f"silero {rate} Hz step {step} probability")
        assert_close(ours_state_next, their_state_next, f"silero {rate} Hz step {step} state")
        ours_state, their_state = ours_state_next, their_state_next


def test_engine_wrong_shape_is_an_error_answer_and_the_engine_keeps_serving(engine):
    path = silero_model()
    assert "error" not in engine.load(path, threads=1)
    bad = engine.run_raw([np.zeros((1, 512), np.float32), np.zeros((3, 1, 128), np.float32), np.array(16000)])
    assert bad["error"]["kind"] == "shape", bad
    assert "'state'" in bad["error"]["message"] and "[2, ?, 128]" in bad["error"]["message"], bad
    wrong_type = engine.run_raw([np.zeros((1, 512), np.float32), np.zeros((2, 1, 128), np.float32), np.array(1.5, np.float32)])
    assert wrong_type["error"]["kind"] == "input" and "'sr'" in wrong_type["error"]["message"], wrong_type
    ok = engine.run([np.zeros((1, 512), np.float32), np.zeros((2, 1, 128), np.float32), np.array(16000)])
    assert ok[0].shape == (1, 1)


def test_engine_corrupt_model_fails_load_naming_file_and_cause(engine, tmp_path):
    whole = silero_model().read_bytes()
    truncated = tmp_path / "silero_truncated.onnx"
    truncated.write_bytes(whole[: len(whole) // 3])
    answer = engine.load(truncated)
    assert answer["error"]["kind"] == "load", answer
    message = answer["error"]["message"]
    assert str(truncated) in message and "decode" in message, message
    copy = tmp_path / "silero.onnx"
    shutil.copy(silero_model(), copy)
    assert "error" not in engine.load(copy), "a good model loads after a bad one"


def test_engine_onnxruntime_backend_matches_tract(engine, monkeypatch):
    """The optional backend (cargo feature `onnxruntime`, the wheel's shared library loaded at
    run time) gives the same answers as tract; skipped when `infer` was built without it."""
    import onnxruntime

    lib = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    assert lib, "the onnxruntime wheel ships no libonnxruntime.so"
    engine.close()
    monkeypatch.setenv("ORT_DYLIB_PATH", str(lib[0]))
    path = classifier_model()
    inputs = classifier_inputs(5, 2)
    with Engine() as ours:
        answer = ours.load(path, threads=1, backend="onnxruntime")
        if "error" in answer and "feature `onnxruntime` is off" in answer["error"]["message"]:
            pytest.skip("infer built without --features onnxruntime")
        assert "error" not in answer, answer
        via_ort = ours.run(inputs)[0]
    with Engine() as tract:
        assert "error" not in tract.load(path, threads=1)
        via_tract = tract.run(inputs)[0]
    assert_close(via_tract, via_ort, "tract vs lichen's onnxruntime backend")
