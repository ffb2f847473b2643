"""The one Chromium the browser tests drive and how it is launched: the
integration tier (hub_fixtures.chromium), the e2e tier (its ``browser``
fixture) and tests/e2e/prepare-host's check all use this."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

#: Debian's: Playwright cannot download a browser here
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",  # as root
    "--disable-gpu",
    # no calls out of the machine (it has no network but loopback)
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch(playwright: Playwright, executable: str | os.PathLike[str] = CHROMIUM) -> Browser:
    """Headless Chromium from a running Playwright; `executable` may be a
    wrapper that runs it (tests/e2e/browser_netns.py)."""
    return playwright.chromium.launch(executable_path=str(executable), args=ARGS, timeout=60_000)


@contextlib.contextmanager
def launched() -> Iterator[Browser]:
    """Headless Chromium driven by a Playwright of its own, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()
