"""Shared fixtures of the unit tier."""

from __future__ import annotations

import gridhub_init_module
import pytest


@pytest.fixture(scope="session")
def gridhub_init():
    """images/hub/shared/gridhub_init.py, loaded by path as the images run it."""
    return gridhub_init_module.load()
