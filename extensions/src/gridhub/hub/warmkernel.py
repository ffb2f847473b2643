"""The class notebook's kernel, started with the server, its imports done (a Jupyter
server extension).

In a masterclass everyone opens the class notebook in the same minute, and its first
cell paid for a kernel start and the notebook's imports (numpy, matplotlib, awkward, the
facility's own modules: seconds of CPU each) at that moment, on the shared cores. With
``GRIDHUB_WARM_NOTEBOOK`` (a path in the server, e.g. ``01-dimuon.ipynb``) the server,
once started, starts a kernel for that notebook, imports in it every module the
notebook's code cells import at top level (``importlib.import_module``, silently: the
student's namespace, output and execution count are untouched; a module that fails to
import is skipped, the student's own cell will show its error), and then records a
session for the notebook with that kernel: JupyterLab opening the notebook finds the
session and attaches to the kernel, so the first cell runs at once. A session on the
notebook therefore means its kernel is warm. The hub sets the variable in masterclass
mode (gridhub.hub.config); without it this extension does nothing.
"""

from __future__ import annotations

import ast
import asyncio
import os
import posixpath

from jupyter_core.utils import ensure_async

ENV = "GRIDHUB_WARM_NOTEBOOK"
TIMEOUT = 300.0  # seconds for the kernel to come up and import (a loaded host at spawn)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    src = src if isinstance(src, str) else "".join(src)
    # IPython magics and shell escapes are not Python: leave them out of the parse
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines()
    )


def imported_modules(notebook: dict) -> list[str]:
    """Modules the notebook's code cells import at top level, in order, once each
    (``from a import b`` gives ``a`` and ``a.b``, which may be a submodule)."""
    found: list[str] = []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        try:
            tree = ast.parse(_source(cell))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.append(node.module)
                found += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
    return list(dict.fromkeys(found))


def warm_code(modules: list[str]) -> str:
    """Code importing ``modules`` without binding a name in the user's namespace."""
    return (
        "def _gridhub_warm(names):\n"
        "    import importlib\n"
        "    for name in names:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except Exception:\n"
        "            pass  # (an attribute, not a submodule; or a broken import)\n"
        f"_gridhub_warm({modules!r})\n"
        "del _gridhub_warm\n"
    )


async def warm(serverapp, path: str) -> str | None:
    """Start and warm the kernel of the notebook at ``path``; its kernel id, or None
    when the notebook is missing or already has a session."""
    log = serverapp.log
    contents, sessions = serverapp.contents_manager, serverapp.session_manager
    if not await ensure_async(contents.file_exists(path)):
        log.info("gridhub.hub.warmkernel: no %s, no warm kernel", path)
        return None
    if await sessions.session_exists(path=path):
        return None
    model = await ensure_async(contents.get(path, content=True, type="notebook"))
    modules = imported_modules(model["content"])
    name = posixpath.basename(path)
    session_id = sessions.new_session_id()
    kernel_id = await sessions.start_kernel_for_session(
        session_id=session_id, path=path, name=name, type="notebook", kernel_name=None
    )
    client = serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=TIMEOUT)
        reply = await client.execute_interactive(
            warm_code(modules),
            silent=True,
            store_history=False,
            timeout=TIMEOUT,
            output_hook=lambda msg: None,
        )
        status = reply["content"]["status"]
    finally:
        client.stop_channels()
    # the session last: whoever finds it finds a warm kernel
    await sessions.create_session(path=path, name=name, type="notebook", kernel_id=kernel_id)
    log.info(
        "gridhub.hub.warmkernel: kernel %s of %s warm (%d modules, %s)",
        kernel_id, path, len(modules), status,
    )  # fmt: skip
    return kernel_id


def _jupyter_server_extension_points():
    return [{"module": "gridhub.hub.warmkernel"}]


def _load_jupyter_server_extension(serverapp) -> None:
    if not os.environ.get(ENV):
        serverapp.log.info("gridhub.hub.warmkernel: %s not set, no warm kernel", ENV)


async def _start_jupyter_server_extension(serverapp) -> None:
    path = os.environ.get(ENV)
    if not path:
        return

    async def run() -> None:
        try:
            await warm(serverapp, path)
        except Exception:  # the server works without it: the student's cell starts one
            serverapp.log.exception("gridhub.hub.warmkernel: warming %s failed", path)

    # in the background: the server answers the hub meanwhile
    serverapp.gridhub_warm_task = asyncio.ensure_future(run())
