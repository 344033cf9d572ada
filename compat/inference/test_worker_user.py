"""A root core with `runWithDefault.posixUser` set runs the inference worker as that user (it
decodes images and runs models that requests and deployments bring): the worker's uid is
nobody's, a model component's owner-only artifact is handed to its (same) user and loads, and a
model file only root may read fails the deployment with the file and the refusal named."""

import json
import os
import pwd
import shutil
import subprocess

import pytest

from conftest import MODEL, MODEL_COMPONENT, PREPROCESS, model_file, recipe, worker_bin
from lichen_support import child_uids, reachable_binaries, running_core, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: only a root core runs its worker as another user"
)


def deploy(bin_dir, root, recipes, artifacts, model):
    update = {"lichen.Inference": {"MERGE": {"models": {MODEL: model}}}}
    return subprocess.run(
        [str(bin_dir / "lichen"), "deployment", "create", "--wait", "--json", "--root", str(root),
         "--recipe-dir", str(recipes), "--artifact-dir", str(artifacts),
         "--merge", f"lichen.Inference=1.0.0,{MODEL_COMPONENT}=1.0.0",
         "--update-config", json.dumps(update)],
        capture_output=True, text=True, timeout=180,
    )


def test_the_worker_runs_as_the_component_user_and_reads_only_what_it_may():
    worker_bin()
    nobody = pwd.getpwnam("nobody")
    with reachable_binaries("lichen-inference-user-", "lichen-inference") as (base, bin_dir):
        recipes, artifacts = base / "recipes", base / "artifacts"
        recipes.mkdir()
        (artifacts / MODEL_COMPONENT / "1.0.0").mkdir(parents=True)
        source = artifacts / MODEL_COMPONENT / "1.0.0" / "model.onnx"
        shutil.copy(model_file(), source)
        source.chmod(0o600)  # copied into the root as an owner-only artifact
        (recipes / f"{MODEL_COMPONENT}-1.0.0.json").write_text(recipe(MODEL_COMPONENT))
        private = base / "private"
        private.mkdir(mode=0o700)
        shutil.copy(model_file(), private / "model.onnx")
        config = base / "config.json"
        config.write_text(json.dumps({
            "services": {"aws.greengrass.Nucleus": {"configuration": {"runWithDefault": {"posixUser": "nobody"}}}}
        }))
        root = base / "root"
        with running_core(root, config=config, binary=bin_dir / "lichen") as core:
            log = root / "logs" / "lichen.log"

            # A file only root may read: the worker, as nobody, cannot load it.
            r = deploy(bin_dir, root, recipes, artifacts,
                       {"artifact": str(private / "model.onnx"), "preprocess": PREPROCESS})
            assert r.returncode != 0, r.stdout
            cause = json.loads(r.stdout)["deploymentStatusDetails"]["deploymentFailureCause"]
            assert str(private / "model.onnx") in cause and "ermission denied" in cause, cause

            # The model component's own artifact, owner-only: handed to its user, loaded and served.
            r = deploy(bin_dir, root, recipes, artifacts,
                       {"modelComponent": MODEL_COMPONENT, "artifact": "model.onnx", "preprocess": PREPROCESS})
            assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{log.read_text()[-4000:]}"
            installed = root / "packages" / "artifacts" / MODEL_COMPONENT / "1.0.0" / "model.onnx"
            st = installed.stat()
            assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o400)
            wait_for(lambda: child_uids(core.pid, "lichen-inference"), 60,
                     "the serving worker:\n" + log.read_text()[-4000:])
            assert child_uids(core.pid, "lichen-inference") == [(nobody.pw_uid, nobody.pw_uid)]
            # The serving worker, as nobody, loaded the handed-over file.
            wait_for(lambda: "model loaded" in log.read_text(), 60, "the model loaded:\n" + log.read_text()[-4000:])
            assert "model not loaded" not in log.read_text()
