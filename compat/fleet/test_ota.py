"""Over-the-air deployments end to end with real processes: `lichen fleet serve`, `lichen core run`
processes enrolled with `lichen fleet enroll --group`, a component whose script artifact is
uploaded through the fleet's S3 API and published with boto3, deployed to the thing group; each
core resolves it and downloads the artifact over the mutual-TLS data plane, runs it, and reports
its job execution's status back to the fleet.
"""

from lichen_support import wait_for
from ota_support import APP, details, gg, job_deploy, ota_cores, publish, s3, wait_execution  # noqa: F401 (fixtures)

GROUP = "ota-fleet"


def test_a_component_published_with_boto3_runs_on_every_core_of_the_group(fleet, iot, s3, gg, ota_cores):
    cores = [ota_cores(f"core{i}", GROUP) for i in (1, 2, 3)]
    publish(s3, gg, "1.0.0")
    job = job_deploy(iot, GROUP, {APP: "1.0.0"})
    for c in cores:
        e = wait_execution(iot, job, c.thing, why=f"\n{c.log()[-3000:]}")
        assert details(e)["detailed-deployment-status"] == "SUCCESSFUL", (e, c.log()[-3000:])
    for c in cores:
        wait_for(lambda c=c: c.running_version() == "1.0.0", 30, f"{c.thing} to run 1.0.0")
        assert c.runs() == [f"1.0.0 {c.thing}"]
