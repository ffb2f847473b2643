"""dask-gateway integration: the DIRAC backend (``gridhub.gateway.backend``)."""
