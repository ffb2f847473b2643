"""Shared fixtures of the unit tier."""

from __future__ import annotations
