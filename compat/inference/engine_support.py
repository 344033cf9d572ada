"""Drives the lichen-inference engine from Python through its `infer` example (JSON lines on
stdin/stdout; see crates/inference/examples/infer.rs), for the parity tests and bench/inference.py.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.int64): "i64", np.dtype(np.int32): "i32", np.dtype(np.uint8): "u8"}
_NUMPY = {"f32": np.float32, "i64": np.int64, "i32": np.int32, "u8": np.uint8}


def infer_bin(profile="debug"):
    """The `infer` example: $LICHEN_INFER_BIN, else beside $LICHEN_BIN's profile, else this tree's."""
    if os.environ.get("LICHEN_INFER_BIN"):
        return Path(os.environ["LICHEN_INFER_BIN"])
    if os.environ.get("LICHEN_BIN") and profile == "debug":
        return Path(os.environ["LICHEN_BIN"]).parent / "examples" / "infer"
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    return Path(target) / profile / "examples" / "infer"


def model_path(package, *parts):
    """A model file inside an installed PyPI package (never committed to the repository)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed in the venv (tests/requirements.txt)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"no {path}")
    return path


def classifier_model():
    return model_path("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")


def silero_model():
    return model_path("silero_vad", "data", "silero_vad.onnx")


def to_wire(a):
    a = np.asarray(a)
    return {"shape": list(a.shape), "dtype": _DTYPES[a.dtype], "data": a.ravel().tolist()}


def from_wire(t):
    return np.asarray(t["data"], dtype=_NUMPY[t["dtype"]]).reshape(t["shape"])


class Engine:
    """One `infer` process holding one loaded model."""

    def __init__(self, binary=None):
        binary = Path(binary or infer_bin())
        if not binary.exists():
            raise FileNotFoundError(
                f"no {binary}: run `cargo build -p lichen-inference --example infer` "
                "(or set LICHEN_INFER_BIN)"
            )
        self.proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def request(self, req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"infer exited with {self.proc.wait()}")
        return json.loads(line)

    def load(self, path, **options):
        return self.request({"op": "load", "path": str(path), "options": options})

    def run_raw(self, inputs):
        return self.request({"op": "run", "inputs": [to_wire(a) for a in inputs]})

    def run(self, inputs):
        answer = self.run_raw(inputs)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return [from_wire(t) for t in answer["outputs"]]

    def bench(self, inputs, warmup, iterations, concurrency=1):
        return self.request(
            {
                "op": "bench",
                "inputs": [to_wire(a) for a in inputs],
                "warmup": warmup,
                "iterations": iterations,
                "concurrency": concurrency,
            }
        )

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ort_session(path, threads=1, providers=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def classifier_inputs(seed, batch=1):
    """Deterministic classifier input: rapidocr's 3x48x192 normalised to [-1, 1]."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=(batch, 3, 48, 192)).astype(np.float32)]


def speech_like(seed, samples):
    """Deterministic audio in [-1, 1]: two tones with an envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed)
    tone = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1330 * t)
    return (env * tone + 0.05 * rng.standard_normal(samples)).astype(np.float32)
