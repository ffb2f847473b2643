"""GridHub: a JupyterHub analysis facility whose Dask workers are DIRAC grid jobs."""

__version__ = "0.1.0"
