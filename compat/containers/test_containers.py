"""`docker:` artifacts and `docker run` lifecycles through a real core, Docker engine and registry."""

import json

from conftest import push

DAM = "aws.greengrass.DockerApplicationManager"


def write_recipe(dirpath, name, version, image, run):
    dirpath.mkdir(parents=True, exist_ok=True)
    doc = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentDependencies": {DAM: {"VersionRequirement": "~2.0.0"}},
        "Manifests": [{
            "Platform": {"os": "linux"},
            "Lifecycle": {"Run": run},
            "Artifacts": [{"URI": f"docker:{image}"}],
        }],
    }
    (dirpath / f"{name}-{version}.json").write_text(json.dumps(doc))
    return str(dirpath)


def run_line(image, text):
    return f"docker run --rm --network none {image} sh -c 'echo {text}'"


def test_a_component_pulls_and_runs_its_image(engine, registry, core, tmp_path):
    image, _ = push(engine, registry, "run")
    assert not engine.has_image(image)
    recipes = write_recipe(tmp_path / "r", "test.Box", "1.0.0", image, run_line(image, "hello-from-box"))
    rc, d = core.deploy("--recipe-dir", recipes, "--merge", "test.Box=1.0.0")
    assert rc == 0, d
    assert engine.has_image(image)
    from lichen_support import wait_for
    wait_for(lambda: "hello-from-box" in core.log("test.Box"), 60, "the container's output")
    assert "pulling image" in core.log(), core.log()[-3000:]


def test_a_cached_image_deploys_with_the_registry_down(engine, registry, make_core, tmp_path):
    image, _ = push(engine, registry, "cached")
    recipes = write_recipe(tmp_path / "r", "test.Cached", "1.0.0", image, run_line(image, "cached-ok"))
    first = make_core("first")
    rc, d = first.deploy("--recipe-dir", recipes, "--merge", "test.Cached=1.0.0")
    assert rc == 0, d
    registry.stop()
    try:
        second = make_core("second")
        rc, d = second.deploy("--recipe-dir", recipes, "--merge", "test.Cached=1.0.0")
        assert rc == 0, d
        assert "image present: not pulled" in second.log(), second.log()[-3000:]
        from lichen_support import wait_for
        wait_for(lambda: "cached-ok" in second.log("test.Cached"), 60, "the container's output")
    finally:
        registry.start()


def test_removal_cleans_the_image(engine, registry, core, tmp_path):
    image, _ = push(engine, registry, "removed")
    recipes = write_recipe(tmp_path / "r", "test.Gone", "1.0.0", image, "sleep 600")
    rc, d = core.deploy("--recipe-dir", recipes, "--merge", "test.Gone=1.0.0")
    assert rc == 0, d
    assert engine.has_image(image)
    rc, d = core.deploy("--remove", "test.Gone")
    assert rc == 0, d
    # Garbage collection follows the recorded result.
    from lichen_support import wait_for
    wait_for(lambda: not engine.has_image(image), 60, f"{image} removed:\n{core.log()[-3000:]}")


def test_a_wrong_digest_fails_clearly_and_changes_nothing(engine, registry, core, tmp_path):
    image, digest = push(engine, registry, "digest")
    keep = write_recipe(tmp_path / "r", "test.Keep", "1.0.0", image, "sleep 600")
    rc, d = core.deploy("--recipe-dir", keep, "--merge", "test.Keep=1.0.0")
    assert rc == 0, d
    before = core.cli("component", "list", "--json").stdout
    repo = image.rsplit(":", 1)[0]
    wrong = f"{repo}@sha256:{'0' * 64}"
    bad = write_recipe(tmp_path / "b", "test.Bad", "1.0.0", wrong, "sleep 600")
    rc, d = core.deploy("--recipe-dir", bad, "--merge", "test.Bad=1.0.0")
    assert rc != 0, d
    text = json.dumps(d)
    assert "test.Bad@1.0.0" in text and "sha256:" + "0" * 64 in text, text
    assert core.cli("component", "list", "--json").stdout == before
    # The right digest deploys.
    right = write_recipe(tmp_path / "g", "test.Bad", "1.0.1", f"{repo}@{digest}", "sleep 600")
    rc, d = core.deploy("--recipe-dir", right, "--merge", "test.Bad=1.0.1")
    assert rc == 0, d
