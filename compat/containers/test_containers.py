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


SUBSCRIBER = r'''
import sys, time
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
out = sys.argv[1]
client = GreengrassCoreIPCClientV2()
def on(event):
    open(out, "wb").write(bytes(event.binary_message.message))
client.subscribe_to_topic(topic="containers/hello", on_stream_event=on)
while True:
    time.sleep(1)
'''


def test_a_containerised_awsiotsdk_component_publishes_to_a_host_component(engine, registry, python_image, core, tmp_path):
    import sys
    from lichen_support import wait_for
    recipes, artifacts = tmp_path / "r", tmp_path / "a"
    recipes.mkdir()
    pubsub = lambda name, op: {"aws.greengrass.ipc.pubsub": {f"{name}:1": {
        "operations": [f"aws.greengrass#{op}"], "resources": ["containers/hello"]}}}
    got = tmp_path / "got"
    (artifacts / "test.HostSub" / "1.0.0").mkdir(parents=True)
    (artifacts / "test.HostSub" / "1.0.0" / "sub.py").write_text(SUBSCRIBER)
    (recipes / "sub.json").write_text(json.dumps({
        "RecipeFormatVersion": "2020-01-25", "ComponentName": "test.HostSub", "ComponentVersion": "1.0.0",
        "ComponentConfiguration": {"DefaultConfiguration": {"accessControl": pubsub("test.HostSub", "SubscribeToTopic")}},
        "Manifests": [{"Platform": {"os": "linux"},
                       "Lifecycle": {"Run": f"{sys.executable} -u {{artifacts:path}}/sub.py {got}"}}],
    }))
    sock = "$AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
    run = (f"docker run --rm --network none -v {sock}:{sock} -e SVCUID "
           f"-e AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT -e PYTHONPATH=/app/site "
           f"{python_image} /bin/python3 -u /app/pub.py")
    (recipes / "pub.json").write_text(json.dumps({
        "RecipeFormatVersion": "2020-01-25", "ComponentName": "test.BoxPub", "ComponentVersion": "1.0.0",
        "ComponentDependencies": {DAM: {"VersionRequirement": "^2.0.0"}, "test.HostSub": {}},
        "ComponentConfiguration": {"DefaultConfiguration": {"accessControl": pubsub("test.BoxPub", "PublishToTopic")}},
        "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {"Run": run},
                       "Artifacts": [{"URI": f"docker:{python_image}"}]}],
    }))
    rc, d = core.deploy("--recipe-dir", str(recipes), "--artifact-dir", str(artifacts),
                        "--merge", "test.HostSub=1.0.0", "--merge", "test.BoxPub=1.0.0")
    assert rc == 0, d
    wait_for(lambda: got.exists() and got.read_bytes() == b"from-container", 120,
             f"the container's message:\n{core.log('test.BoxPub')[-3000:]}")


def test_a_private_registry_uses_the_login_from_the_component_configuration(engine, private_registry, core, tmp_path):
    registry, (user, password) = private_registry
    image, _ = push(engine, registry, "private", login=(user, password))
    run = run_line(image, "private-ok")
    no_login = write_recipe(tmp_path / "n", "test.Private", "1.0.0", image, run)
    rc, d = core.deploy("--recipe-dir", no_login, "--merge", "test.Private=1.0.0")
    assert rc != 0, d
    assert "test.Private@1.0.0" in json.dumps(d), d
    recipes = write_recipe(tmp_path / "r", "test.Private", "1.0.1", image, run)
    doc_path = tmp_path / "r" / "test.Private-1.0.1.json"
    doc = json.loads(doc_path.read_text())
    doc["ComponentConfiguration"] = {"DefaultConfiguration": {"dockerRegistryCredentials": {
        registry.addr: {"username": user, "password": password}}}}
    doc_path.write_text(json.dumps(doc))
    rc, d = core.deploy("--recipe-dir", recipes, "--merge", "test.Private=1.0.1")
    assert rc == 0, d
    assert engine.has_image(image)
