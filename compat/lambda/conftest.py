"""The Lambda suite starts real `lichen core run` processes (compat/fleet's Core helper) and, for
IoT Core event sources, a real `lichen fleet serve` (compat/fleet's fixtures, loaded from there)."""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "fleet"))
sys.path.insert(0, str(HERE.parent))

_spec = importlib.util.spec_from_file_location("fleet_fixtures", HERE.parent / "fleet" / "conftest.py")
fleet_fixtures = importlib.util.module_from_spec(_spec)
sys.modules["fleet_fixtures"] = fleet_fixtures
_spec.loader.exec_module(fleet_fixtures)

# Re-exported so pytest finds them in this suite.
fleet = fleet_fixtures.fleet
fleet_root = fleet_fixtures.fleet_root
fleet_database = fleet_fixtures.fleet_database
fleet_store = fleet_fixtures.fleet_store
postgres_server = fleet_fixtures.postgres_server
iot = fleet_fixtures.iot
