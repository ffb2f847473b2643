"""images/hub/shared/gridhub_init.py as a module: the images run it by path
(it is not part of the gridhub package), so the tests load it the same way."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PATH = Path(__file__).resolve().parents[1] / "images" / "hub" / "shared" / "gridhub_init.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gridhub_init", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
