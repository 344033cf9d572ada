"""The shadow suites run against a real `lichen fleet serve`, started by the fleet suite's fixtures
(compat/fleet/conftest.py), which this file loads and re-exports: `fleet`, `iot`, `fleet_root`,
`fleet_store`, `fleet_database`, `postgres_server`.
"""

import importlib.util
import sys
from pathlib import Path

FLEET_SUITE = Path(__file__).resolve().parents[1] / "fleet"
sys.path.insert(0, str(FLEET_SUITE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

_spec = importlib.util.spec_from_file_location("fleet_suite_conftest", FLEET_SUITE / "conftest.py")
_fleet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fleet)

Fleet = _fleet.Fleet
postgres_server = _fleet.postgres_server
fleet_store = _fleet.fleet_store
fleet_database = _fleet.fleet_database
fleet_root = _fleet.fleet_root
fleet = _fleet.fleet
iot = _fleet.iot
