"""Traefik's metrics entrypoint, open to Prometheus' token only.

Traefik listens on every network it is on, the users' too, so its metrics
entrypoint (``metrics``, :8083; images/traefik/traefik.yml.tmpl) serves only
through a router of the file provider with basic auth: user ``prometheus``,
password the facility's ``metrics_token`` (the one Prometheus also presents to
the hub and the gateway). gridhub-init writes that router into Traefik's
dynamic directory; Traefik holds only the bcrypt hash. The data lake's
exporter holds only the token's SHA-256 (gridhub.lake_metrics.verifier).
"""

from __future__ import annotations

import bcrypt
import yaml

USER = "prometheus"
FILE = "metrics.yml"


def traefik_metrics_yml(token: str, previous: str | None = None) -> str:
    """The dynamic configuration; ``previous`` (the file as it is) is kept when its
    hash still matches ``token``, so a restart does not make Traefik reload."""
    if previous and _hash_matches(previous, token):
        return previous
    hashed = bcrypt.hashpw(token.encode(), bcrypt.gensalt()).decode()
    config = {
        "http": {
            "routers": {
                "gridhub-metrics": {
                    "entryPoints": ["metrics"],
                    "rule": "Path(`/metrics`)",
                    "service": "prometheus@internal",
                    "middlewares": ["gridhub-metrics-auth"],
                }
            },
            "middlewares": {"gridhub-metrics-auth": {"basicAuth": {"users": [f"{USER}:{hashed}"]}}},
        }
    }
    head = "# written by gridhub-init: Traefik's metrics for Prometheus' token only\n"
    return head + yaml.safe_dump(config, sort_keys=False)


def _hash_matches(text: str, token: str) -> bool:
    try:
        users = yaml.safe_load(text)["http"]["middlewares"]["gridhub-metrics-auth"]["basicAuth"][
            "users"
        ]
        user, _, hashed = users[0].partition(":")
        return user == USER and bcrypt.checkpw(token.encode(), hashed.encode())
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, yaml.YAMLError):
        return False
