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


def big_image(engine, tmp_path):
    """The busybox rootfs plus 4 MiB of random bytes (no compression shrinks them): a pull with
    several MiB to count."""
    import os
    import shutil
    import tarfile
    tar_path = tmp_path / "big.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(shutil.which("busybox"), arcname="bin/busybox")
        info = tarfile.TarInfo("bin/sh")
        info.type, info.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(info)
        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(4 << 20))
        tar.add(blob, arcname="data/blob")
    engine.docker("import", str(tar_path), "lichen-test/big:src")
    return "lichen-test/big:src"


def test_pull_progress_is_in_the_deployment_status(engine, registry, core, tmp_path):
    source = big_image(engine, tmp_path)
    image, _ = push(engine, registry, "big", image=source)
    # Without the source image the engine has none of the layers: each one is downloaded.
    engine.docker("rmi", source)
    assert not engine.has_image(image)
    recipes = write_recipe(tmp_path / "r", "test.Big", "1.0.0", image, run_line(image, "big-ok"))
    rc, d = core.deploy("--recipe-dir", recipes, "--merge", "test.Big=1.0.0")
    assert rc == 0, d
    progress = d["deploymentStatusDetails"]["progress"]
    assert progress["component"] == "test.Big@1.0.0", progress
    assert progress["artifact"] == f"docker:{image}", progress
    assert progress["done"] is True, progress
    assert progress["layersTotal"] >= 1 and progress["layersDone"] == progress["layersTotal"], progress
    # The layer is gzip-compressed random bytes: still over 4 MiB to download.
    assert progress["bytesTotal"] >= 4 << 20 and progress["bytesDone"] == progress["bytesTotal"], progress
    # The CLI's status shows it, and the record on disk kept it.
    text = core.cli("deployment", "status", d["deploymentId"]).stdout
    line = next((ln for ln in text.splitlines() if "pulled:" in ln), None)
    assert line is not None, text
    assert f"test.Big@1.0.0 docker:{image} {progress['layersDone']}/{progress['layersTotal']} layers" in line, text
    assert "MiB" in line, text


class HeldBlobs:
    """A pass-through proxy in front of the registry that sends the first MiB of each big blob and
    then holds the rest until `release()`: the pull is mid-way for as long as the test needs."""

    def __init__(self, upstream):
        import http.client
        import http.server
        import threading
        self.released = threading.Event()
        held = self.released

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                conn = http.client.HTTPConnection(upstream, timeout=60)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read() if self.command != "HEAD" else b""
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.end_headers()
                if "/blobs/" in self.path and len(data) > 2 << 20:
                    self.wfile.write(data[:1 << 20])
                    self.wfile.flush()
                    held.wait(120)
                    self.wfile.write(data[1 << 20:])
                else:
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self):
        self.released.set()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_status_read_during_a_pull_shows_its_progress(engine, registry, core, tmp_path):
    from lichen_support import wait_for
    source = big_image(engine, tmp_path)
    pushed, _ = push(engine, registry, "held", image=source)
    engine.docker("rmi", source)
    proxy = HeldBlobs(registry.addr)
    try:
        image = pushed.replace(registry.addr, proxy.addr)
        recipes = write_recipe(tmp_path / "r", "test.Held", "1.0.0", image, run_line(image, "held-ok"))
        out = core.cli("deployment", "create", "--json", "--recipe-dir", recipes,
                       "--merge", "test.Held=1.0.0").stdout
        deployment = json.loads(out)["deploymentId"]

        def status():
            return json.loads(core.cli("deployment", "status", deployment, "--json").stdout)
        # The big layer cannot finish while the proxy holds it: the record must show it under way.
        wait_for(lambda: "progress" in status()["deploymentStatusDetails"], 60, "pull progress in the record")
        during = status()
        progress = during["deploymentStatusDetails"]["progress"]
        assert during["status"] == "IN_PROGRESS", during
        assert progress["component"] == "test.Held@1.0.0" and progress["done"] is False, progress
        assert progress["layersTotal"] >= 1 and progress["layersDone"] < progress["layersTotal"], progress
        text = core.cli("deployment", "status", deployment).stdout
        assert f"pulling: test.Held@1.0.0 docker:{image}" in text, text
        proxy.release()
        wait_for(lambda: status()["status"] == "SUCCEEDED", 120, "the deployment to succeed")
        final = status()["deploymentStatusDetails"]["progress"]
        assert final["done"] is True and final["layersDone"] == final["layersTotal"], final
    finally:
        proxy.close()


COMPOSE = """version: "3.7"
services:
  box:
    image: {image}
    network_mode: none
    stop_grace_period: 1s
    command: ["sh", "-c", "echo compose-up-ok; exec sleep 1000"]
"""


def test_a_component_runs_and_stops_a_compose_project(engine, registry, core, tmp_path):
    """Run is `docker-compose … up` on a compose file shipped as an artifact; Shutdown is `… down`."""
    import shutil
    import pytest
    from lichen_support import wait_for
    if not shutil.which("docker-compose"):
        pytest.skip("not installed: docker-compose (./scripts/test installs it as root)")
    image, _ = push(engine, registry, "compose")
    artifacts = tmp_path / "a" / "test.Compose" / "1.0.0"
    artifacts.mkdir(parents=True)
    (artifacts / "compose.yaml").write_text(COMPOSE.format(image=image))
    compose = "docker-compose -p lichencompose -f {artifacts:path}/compose.yaml"
    recipes = tmp_path / "r"
    recipes.mkdir()
    (recipes / "test.Compose-1.0.0.json").write_text(json.dumps({
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "test.Compose",
        "ComponentVersion": "1.0.0",
        "ComponentDependencies": {DAM: {"VersionRequirement": "~2.0.0"}},
        "Manifests": [{
            "Platform": {"os": "linux"},
            "Lifecycle": {
                "Run": f"{compose} up --no-color",
                "Shutdown": f"{compose} down",
            },
            "Artifacts": [{"URI": f"docker:{image}"}, {"URI": "s3://bucket/compose.yaml"}],
        }],
    }))
    rc, d = core.deploy("--recipe-dir", str(recipes), "--artifact-dir", str(tmp_path / "a"),
                        "--merge", "test.Compose=1.0.0")
    assert rc == 0, d

    def containers():
        return engine.docker("ps", "-aq", "--filter", "label=com.docker.compose.project=lichencompose").stdout.split()
    wait_for(lambda: "compose-up-ok" in core.log("test.Compose"), 90, "the compose service's output")
    assert len(containers()) == 1
    rc, d = core.deploy("--remove", "test.Compose")
    assert rc == 0, d
    # Shutdown's `down` removes the project's container.
    wait_for(lambda: not containers(), 90, f"the compose project down:\n{core.log('test.Compose')[-3000:]}")
