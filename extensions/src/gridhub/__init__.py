"""GridHub: a JupyterHub analysis facility whose Dask workers are DIRAC grid jobs."""

from importlib.metadata import PackageNotFoundError, version

try:  # the one place the version is written: extensions/pyproject.toml
    __version__ = version("gridhub")
except PackageNotFoundError:  # a source tree on sys.path without installing it
    __version__ = "0+unknown"


def __getattr__(name: str):
    # `from gridhub import DiracCluster` without importing Dask for every user
    # of the package (the hub, the gateway)
    if name == "DiracCluster":
        from .diraccluster import DiracCluster

        return DiracCluster
    if name == "usage":
        from .accounting import usage

        return usage
    raise AttributeError(f"module 'gridhub' has no attribute {name!r}")
