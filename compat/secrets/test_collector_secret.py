"""lichen.IndustrialCollector's OPC UA source logs in with the user name and password of a secret
that `aws.greengrass.SecretManager` fetched from the fleet (SiteWise Edge's `usernameSecretArn`):
a real asyncua server that admits only that user (Basic256Sha256 SignAndEncrypt) gives GOOD
values, and the password is never written under the core's root; with a wrong password in the
secret the server refuses the session and no GOOD value is collected."""

import sys
import time
import uuid
from pathlib import Path

from fleet_core import cores  # noqa: F401 (fixture)
from test_core_secrets import SM, deploy, enrolled_core, files_containing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "industrial"))
from industrial_support import free_port, stream_manager_config, wait_for  # noqa: E402
from test_opcua import ALIASES, OpcUaServer, make_cert, read_stream, source_config, trust_collector  # noqa: E402

COLLECTOR = "lichen.IndustrialCollector"
STREAMS = "aws.greengrass.StreamManager"


def run_with_secret(fleet, iot, tmp_path, cores, secret_password, server_password):  # noqa: F811
    """Deploys the secret manager, stream manager and collector on an enrolled core, the OPC UA
    source's identity a fleet secret holding `secret_password`; the server admits
    operator:`server_password`. Returns (core, stream manager port, server)."""
    sm = fleet.client("secretsmanager")
    arn = sm.create_secret(Name=f"opcua/operator-{uuid.uuid4().hex[:6]}",
                           SecretString=f'{{"username": "operator", "password": "{secret_password}"}}')["ARN"]
    core = enrolled_core(fleet, iot, tmp_path, cores)

    server_der, _, server_key = make_cert(tmp_path / "server", "LichenTestServer", "urn:lichen:test:opcua-server")
    trust = tmp_path / "server-trusts"
    trust.mkdir()
    server = OpcUaServer(server_der, server_key, trust, user=f"operator:{server_password}")
    try:
        sm_port = free_port()
        identity = {"type": "Username", "usernameSecretArn": arn}
        config = {
            SM: {"MERGE": {"cloudSecrets": [{"arn": arn}], "lichen": {"endpoint": fleet.api}}},
            STREAMS: {"MERGE": stream_manager_config(sm_port, free_port())},
            COLLECTOR: {"MERGE": {"sources": [source_config(
                server.url, {"type": "X509", "certificatePath": str(server_der)}, identity)]}},
        }
        recipes = tmp_path / "recipes"
        recipes.mkdir()
        deploy(core, recipes, [f"{SM}=2.2.2", f"{STREAMS}=2.2.1", f"{COLLECTOR}=1.0.0"], config)
        trust_collector(core.root, {"trust": trust})
    except BaseException:
        server.stop()
        raise
    return core, sm_port, server


def test_an_opc_ua_source_logs_in_with_the_user_of_a_fleet_secret(fleet, iot, tmp_path, cores):  # noqa: F811
    password = f"pw-{uuid.uuid4().hex}"
    core, sm_port, server = run_with_secret(fleet, iot, tmp_path, cores, password, password)
    try:
        wait_for(lambda: {a for a, _, _, q in read_stream(sm_port) if q == "GOOD"} >= set(ALIASES) - {ALIASES[3]}, 90,
                 "GOOD values with the secret's user:\n" + core.log())
    finally:
        server.stop()
    core.stop()
    assert files_containing(core.root, password.encode()) == []


def test_a_wrong_password_in_the_secret_is_refused_by_the_server(fleet, iot, tmp_path, cores):  # noqa: F811
    core, sm_port, server = run_with_secret(fleet, iot, tmp_path, cores, "not-the-password", "the-password")
    log = core.root / "logs" / "lichen.IndustrialCollector.log"
    try:
        # The worker presents the secret's user and the server turns the session down; the
        # collector's own log says so, naming the source.
        wait_for(lambda: log.exists() and any("BadUserAccessDenied" in line and "plant-opcua" in line
                                              for line in log.read_text(errors="replace").splitlines()), 60,
                 "the server refusing the secret's user:\n" + core.log())
        time.sleep(3)
        assert [v for v in read_stream(sm_port) if v[3] == "GOOD"] == []
    finally:
        server.stop()
    core.stop()
