"""GridHub's JupyterHub configuration.  Do not edit per deployment.

Layering, in this fixed order:

1. built-in defaults                (gridhub.hub.config.apply_defaults)
2. the deployer's settings          (GRIDHUB_* env / .env, or the YAML file named by
                                     GRIDHUB_CONFIG_FILE), validated against one schema
                                     (gridhub.hub.settings.Settings); invalid settings stop
                                     the hub with a message naming the key
3. jupyterhub_config.d/*.py         (sorted; plain JupyterHub config for the rare cases
                                     the schema does not cover), then the directory named
                                     by GRIDHUB_EXTRA_CONFIG_DIR, if set
"""

import os
import sys
from pathlib import Path

from gridhub.hub.config import apply_defaults, apply_settings
from gridhub.hub.secrets import load_secrets
from gridhub.hub.settings import SettingsError, load_settings

c = get_config()  # noqa: F821  (provided by traitlets)
here = Path(__file__).resolve().parent

try:
    settings = load_settings()
except SettingsError as exc:
    print(f"gridhub: {exc}", file=sys.stderr, flush=True)
    sys.exit(2)

apply_defaults(c)
apply_settings(c, settings, load_secrets(settings), here)

_dirs = [here / "jupyterhub_config.d"]
if os.environ.get("GRIDHUB_EXTRA_CONFIG_DIR"):
    _dirs.append(Path(os.environ["GRIDHUB_EXTRA_CONFIG_DIR"]))
for _dir in _dirs:
    for _file in sorted(_dir.glob("*.py")):
        load_subconfig(str(_file))  # noqa: F821  (provided by traitlets)
