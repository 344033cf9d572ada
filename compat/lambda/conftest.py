"""The Lambda suite starts real `lichen core run` processes (compat/fleet's Core helper)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "fleet"))
sys.path.insert(0, str(HERE.parent))
