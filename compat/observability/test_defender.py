"""Device Defender: a real core deploys `aws.greengrass.DeviceDefender`; its reports reach the
fleet on `$aws/things/<thing>/defender/metrics/json` in AWS's document shape, are stored, and a
value over a bound of the thing's group (a `defender.<metric>.max` attribute) is flagged.
"""

import json
import sqlite3

from lichen_support import wait_for

THING = "obs-defender-core"
DEFENDER = "aws.greengrass.DeviceDefender"


def latest(fleet):
    with sqlite3.connect(f"file:{fleet.root / 'fleet.db'}?mode=ro", uri=True) as c:
        row = c.execute(
            "SELECT report_id, document, violations FROM defender_reports WHERE thing_name = ? "
            "ORDER BY report_id DESC LIMIT 1", (THING,)).fetchone()
    return None if row is None else (row[0], json.loads(row[1]), json.loads(row[2]))


def test_reports_arrive_in_aws_shape_and_group_bounds_flag_them(make_fleet, make_core):
    fleet = make_fleet()
    iot = fleet.client("iot")
    core = make_core(fleet, THING).start()
    # Any listening TCP port is over this group's bound (the fleet itself listens here).
    iot.create_thing_group(thingGroupName="locked-down", thingGroupProperties={
        "attributePayload": {"attributes": {"defender.listening_tcp_ports.max": "0",
                                            "defender.ipc_authorization_failures.max": "1000"}}})
    iot.add_thing_to_thing_group(thingGroupName="locked-down", thingName=THING)
    core.cli("deployment", "create", "--wait", "--json", "--merge", f"{DEFENDER}=3.1.1",
             "--update-config", json.dumps({DEFENDER: {"MERGE": {"SampleIntervalSeconds": 1}}}))

    report_id, doc, violations = wait_for(lambda: latest(fleet), 30, f"a Defender report\n{core.log()[-2000:]}")
    assert doc["header"]["version"] == "1.0" and doc["header"]["report_id"] == report_id
    m = doc["metrics"]
    assert m["listening_tcp_ports"]["total"] == len(m["listening_tcp_ports"]["ports"]) > 0
    assert {"interface", "port"} <= set(m["listening_tcp_ports"]["ports"][0])
    assert set(m["listening_udp_ports"]) == {"ports", "total"}
    assert set(m["network_stats"]) == {"bytes_in", "bytes_out", "packets_in", "packets_out"}
    est = m["tcp_connections"]["established_connections"]
    assert est["total"] == len(est["connections"]) > 0  # at least the core's own link
    assert all({"local_interface", "local_port", "remote_addr"} <= set(c) for c in est["connections"])
    assert fleet.mqtt_port in {int(c["remote_addr"].rsplit(":", 1)[1]) for c in est["connections"]}
    assert set(doc["custom_metrics"]) == {"local_broker_authorization_failures", "ipc_authorization_failures"}
    assert [v["metric"] for v in violations] == ["listening_tcp_ports"]
    assert violations[0]["group"] == "locked-down" and violations[0]["bound"] == 0

    # Reports keep coming, with increasing ids.
    wait_for(lambda: latest(fleet)[0] > report_id, 30, "a later report")
