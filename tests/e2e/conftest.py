"""e2e fixtures: images built from images/, containers that are always removed,
and a real browser (Playwright driving Debian's /usr/bin/chromium).

tests/e2e/prepare-host has already checked docker, seeded the base image and
checked that Playwright can drive chromium (tests/run calls it).
Reuse: `build_image("hub")` from dockerharness, the `containers` fixture,
the `browser` / `page` fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerharness import (
    Containers,
    build_image,
    leftover_test_containers,
    running_containers,
    screenshot,
)
from headless_chromium import launch


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """e2e fixtures build images and start services, each with its own bounded
    timeout (build_image: GRIDHUB_BUILD_TIMEOUT, docker/compose subprocess
    timeouts, health deadlines). pytest-timeout then bounds only the test
    body, unless a test sets its own timeout marker. The cold builds
    (test_cold_build.py) go first."""
    for item in items:
        in_e2e = Path(str(item.fspath)).is_relative_to(Path(__file__).parent)
        if in_e2e and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(600, func_only=True))
    # the cold builds first: every later build in the session reuses them
    items.sort(key=lambda item: Path(str(item.fspath)).name != "test_cold_build.py")


@pytest.fixture(scope="session")
def notebook_image() -> str:
    """The notebook (and worker) image, built once per session."""
    return build_image("notebook")


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_containers() -> Iterator[None]:
    yield
    left = leftover_test_containers()
    assert not left, f"e2e tests left containers behind: {left}"


@pytest.fixture
def containers() -> Iterator[Containers]:
    """Run containers in a test; all are removed (logs kept in artifacts/)."""
    with running_containers() as c:
        yield c


@pytest.fixture(scope="session")
def playwright():  # type: ignore[no-untyped-def]
    """One Playwright for the session (a second sync_playwright in the same
    thread is refused); every browser is launched from it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright):  # type: ignore[no-untyped-def]
    b = launch(playwright)
    try:
        yield b
    finally:
        b.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def page(browser, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A fresh browser page (1400x900); a failing test leaves a screenshot."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(30_000)
    pg = ctx.new_page()
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            screenshot(pg, f"FAILED-{request.node.name}")
        ctx.close()
