"""Telemetry: a real core deploys `aws.greengrass.telemetry.NucleusEmitter` with a Prometheus port
and an MQTT topic to the fleet; both `/metrics` endpoints (the core's loopback one, the fleet's
`--metrics`) are parsed with `prometheus_client`'s text parser.
"""

import json
import urllib.request

from lichen_support import free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

THING = "obs-telemetry-core"
EMITTER = "aws.greengrass.telemetry.NucleusEmitter"


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.headers["content-type"].startswith("text/plain")
            text = r.read().decode()
    except OSError:
        return None
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, name, **labels):
    """A sample's value by sample name (counters' samples end in `_total`; their family does not)."""
    for f in families.values():
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


BUSY = """RecipeFormatVersion: '2020-01-25'
ComponentName: obs.Busy
ComponentVersion: '1.0.0'
Manifests:
  - Lifecycle:
      Run: "python3 -c 'import time; b = bytearray(24 << 20); t = time.time(); [0 for _ in iter(lambda: time.time() - t > 0.5, True)]; time.sleep(3600)'"
"""


def test_core_and_fleet_metrics_parse_with_prometheus_client(make_fleet, make_core, tmp_path):
    fleet_port, core_port = free_port(), free_port()
    fleet = make_fleet("--metrics", f"127.0.0.1:{fleet_port}")
    core = make_core(fleet, THING).start()
    config = {
        "telemetryPublishIntervalMs": 500,
        "mqttTopic": "$aws/things/{iot:thingName}/lichen/telemetry",
        "lichen": {"prometheusPort": core_port},
    }
    # A generic component that holds 24 MiB and spins for half a second: its cgroup's figures.
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "busy.yaml").write_text(BUSY)
    core.cli("deployment", "create", "--wait", "--json", "--recipe-dir", str(recipes),
             "--merge", f"{EMITTER}=1.0.9", "--merge", "obs.Busy=1.0.0",
             "--update-config", json.dumps({EMITTER: {"MERGE": config}}))

    core_metrics = wait_for(
        lambda: (m := scrape(core_port)) and "lichen_cpu_usage_percent" in m and m, 30, "the core's /metrics")
    assert 0 <= value(core_metrics, "lichen_cpu_usage_percent") <= 100
    assert value(core_metrics, "lichen_memory_total_bytes") > value(core_metrics, "lichen_memory_used_bytes") > 0
    assert value(core_metrics, "lichen_open_fds") > 0
    assert value(core_metrics, "lichen_disk_total_bytes") > 0
    assert value(core_metrics, "lichen_network_receive_bytes_total", interface="lo") > 0
    assert core_metrics["lichen_component_restarts"].type == "counter"
    assert value(core_metrics, "lichen_components", state="RUNNING") is not None
    # Per-component memory and CPU from the component's cgroup (the suite runs as root).
    busy = wait_for(
        lambda: (m := scrape(core_port)) and (value(m, "lichen_component_cpu_seconds_total", component="obs.Busy") or 0) >= 0.3 and m,
        30, "obs.Busy's CPU time on the core's /metrics")
    assert value(busy, "lichen_component_memory_bytes", component="obs.Busy") >= 24 << 20
    assert busy["lichen_component_cpu_seconds"].type == "counter"

    fleet_metrics = wait_for(
        lambda: (m := scrape(fleet_port)) and value(m, "lichen_device_cpu_usage_percent", thing=THING) is not None and m,
        30, "the core's telemetry on the fleet's /metrics")
    assert value(fleet_metrics, "lichen_fleet_connected_devices") >= 1
    assert value(fleet_metrics, "lichen_fleet_telemetry_messages_total") >= 1
    assert value(fleet_metrics, "lichen_device_memory_used_bytes", thing=THING) > 0
    assert value(fleet_metrics, "lichen_device_network_receive_bytes_total", thing=THING, interface="lo") > 0
    healthy = wait_for(lambda: value(scrape(fleet_port), "lichen_fleet_core_devices", status="HEALTHY") == 1, 30,
                       "the core counted HEALTHY")
    assert healthy
