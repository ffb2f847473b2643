"""Container health check for the notebook image (also the Dask worker image).

When the container runs a Jupyter server (jupyter lab, jupyterhub-singleuser),
healthy means that server answers GET <base_url>api with 200. Jupyter writes
its port and base URL into a jpserver-<pid>.json runtime file; we read it
rather than guessing. When the container runs anything else (a Dask worker),
there is no HTTP endpoint to ask and the process being alive is the check.
"""

import json
import sys
import urllib.request
from pathlib import Path


def main() -> int:
    cmdline = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode()
    if "jupyter" not in cmdline:
        return 0
    from jupyter_core.paths import jupyter_runtime_dir

    infos = sorted(Path(jupyter_runtime_dir()).glob("jpserver-*.json"))
    if not infos:
        print("no Jupyter server runtime file yet", file=sys.stderr)
        return 1
    info = json.loads(infos[-1].read_text())
    url = f"http://127.0.0.1:{info['port']}{info.get('base_url', '/')}api"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return 0 if r.status == 200 else 1
    except OSError as e:
        print(f"{url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
