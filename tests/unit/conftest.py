"""Shared fixtures of the unit tier."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def gridhub_init():
    """images/hub/shared/gridhub_init.py, loaded by path as the images run it."""
    path = REPO / "images" / "hub" / "shared" / "gridhub_init.py"
    spec = importlib.util.spec_from_file_location("gridhub_init", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
