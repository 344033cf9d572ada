"""End-to-end: a real core, mosquitto as the cloud, components on the unmodified awsiotsdk."""

import json
import time
from collections import defaultdict
from pathlib import Path

from conftest import core_config, wait_for, write_recipe

COUNT = 10_000


def test_round_trip_authorization_and_reconnect(tmp_path, certs, mosquitto, tester, make_core):
    broker = mosquitto().start()
    core = make_core(core_config(certs, broker.port)).start()
    wait_for(lambda: core.connections() >= 1, 30, "the core to connect to mosquitto")

    echo_out = str(tmp_path / "echo.out")
    denied_out = str(tmp_path / "denied.json")
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "com.example.Echo", ["echo", echo_out], ["roundtrip/#"])
    write_recipe(recipes, "com.example.NoPolicy", ["unauthorized", denied_out], None)
    core.deploy(recipes, "com.example.Echo=1.0.0", "com.example.NoPolicy=1.0.0")
    wait_for(lambda: Path(echo_out + ".ready").exists(), 60, "the echo component to subscribe")

    cloud = tester(broker.port).connect()
    cloud.subscribe("roundtrip/up")

    def round_trip(text):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cloud.publish("roundtrip/down", text.encode())
            try:
                return wait_for(
                    lambda: [p for t, p in cloud.received() if p == b"echo:" + text.encode()], 2, f"echo of {text}"
                )
            except AssertionError:
                continue
        raise AssertionError(f"no echo of {text!r}; component saw: {Path(echo_out).read_text() if Path(echo_out).exists() else ''}")

    round_trip("hello-before-restart")

    # Without a policy both operations are refused.
    denied = json.loads(wait_for(lambda: Path(denied_out).exists() and Path(denied_out).read_text(), 60, "denied.json"))
    assert denied["publish"].startswith("UnauthorizedError"), denied
    assert denied["subscribe"].startswith("UnauthorizedError"), denied

    # The cloud goes away and comes back on the same port: the component's stream stays open and
    # the core restores its subscription.
    cloud.close()
    broker.stop()
    wait_for(lambda: "cloud connection lost" in core.log(), 30, "the core to notice the broker stopped")
    broker.start()
    wait_for(lambda: core.connections() >= 2, 30, "the core to reconnect")
    cloud = tester(broker.port, client_id="tester-2").connect()
    cloud.subscribe("roundtrip/up")
    round_trip("hello-after-restart")
    seen = Path(echo_out).read_text().splitlines()
    assert "hello-after-restart" in seen


def test_offline_publishes_survive_kill9(tmp_path, certs, mosquitto, tester, make_core):
    # A persistent session on the cloud side, so the broker keeps messages for the test's subscriber.
    broker = mosquitto().start()
    sub = tester(broker.port, client_id="offline-sub", clean=False).connect()
    sub.subscribe("offline/#")
    sub.close()
    broker.stop()

    core = make_core(core_config(certs, broker.port, spooler={"maxSizeInBytes": 4_000_000})).start()
    progress = str(tmp_path / "progress")
    recipes = write_recipe(tmp_path / "recipes", "com.example.Producer", ["produce", progress, COUNT, "offline"], ["offline/#"])
    core.deploy(recipes, "com.example.Producer=1.0.0")

    def progress_now():
        try:
            return int(Path(progress).read_text())
        except (OSError, ValueError):
            return 0

    wait_for(lambda: progress_now() >= COUNT // 2, 300, "half of the messages to be published")
    killed_at = progress_now()
    core.kill9()
    print(f"core killed with SIGKILL after {killed_at} acknowledged publishes")
    core.start()  # the deployment is kept: the producer starts again and resumes
    wait_for(lambda: Path(progress + ".done").exists(), 300, "the producer to finish")
    assert core.connections() == 0, "the cloud was down the whole time"

    started = time.monotonic()
    broker.start()
    sub = tester(broker.port, client_id="offline-sub", clean=False).connect()

    def distinct():
        return {json.loads(p)["i"] for _, p in sub.received()}

    wait_for(lambda: len(distinct()) >= COUNT, 300, f"all {COUNT} messages at the subscriber")
    elapsed = time.monotonic() - started
    received = sub.received()
    missing = set(range(COUNT)) - distinct()
    assert not missing, f"lost: {sorted(missing)[:20]}"
    per_topic = defaultdict(list)
    for topic, payload in received:
        per_topic[topic].append(json.loads(payload)["i"])
    for topic, values in per_topic.items():
        assert all(v % 4 == int(topic[-1]) for v in values), topic
        firsts = list(dict.fromkeys(values))
        assert firsts == sorted(firsts), f"{topic}: out of order"
    duplicates = len(received) - COUNT
    print(f"{COUNT} delivered in {elapsed:.1f} s after reconnect; {duplicates} duplicates")


def test_full_spool_refuses_and_keeps_what_it_holds(tmp_path, certs, mosquitto, tester, make_core):
    broker = mosquitto().start()
    sub = tester(broker.port, client_id="full-sub", clean=False).connect()
    sub.subscribe("full/#")
    sub.close()
    broker.stop()

    core = make_core(core_config(certs, broker.port, spooler={"maxSizeInBytes": 20_000})).start()
    out = str(tmp_path / "fill.json")
    recipes = write_recipe(tmp_path / "recipes", "com.example.Fill", ["fill", out, "full/data"], ["full/#"])
    core.deploy(recipes, "com.example.Fill=1.0.0")
    result = json.loads(wait_for(lambda: Path(out).exists() and Path(out).read_text(), 120, "the filler's result"))
    print(f"spool full after {result['ok']} messages: {result['error']}")
    assert result["ok"] > 10
    assert result["error"] is not None and "ServiceError" in result["error"], result
    assert "spooler full" in result["error"], result
    assert "of 20000 bytes used" in result["error"], result

    broker.start()
    sub = tester(broker.port, client_id="full-sub", clean=False).connect()
    expected = {f"{n:08d}".encode() * 25 for n in range(result["ok"])}
    wait_for(lambda: {p for _, p in sub.received()} >= expected, 60, "every accepted message at the subscriber")
