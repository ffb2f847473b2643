"""Prometheus text exposition format (version 0.0.4), by hand.

The gateway and dirac images do not carry prometheus_client, and gauges
computed at scrape time are a few lines of text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: (name, type, help, {((label, value), ...): sample}); the keys' tuple
#: shapes vary by metric (Mapping's key type is invariant)
Metric = tuple[str, str, str, Mapping[Any, float]]


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(metrics: list[Metric]) -> str:
    lines = []
    for name, kind, help_text, samples in metrics:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in sorted(samples.items()):
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
            # 15 digits: byte counters stay exact (":g" would print 3.1527e+06)
            number = f"{value:.15g}"
            lines.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")
    return "\n".join(lines) + "\n"
