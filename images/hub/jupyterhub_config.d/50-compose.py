"""The compose facility's glue (loaded through GRIDHUB_EXTRA_CONFIG_DIR, after
hub_config/jupyterhub_config.py has applied the validated settings).

Only what follows from the container layout of docker-compose.yml, never a
deployer choice (those are settings):

- Traefik runs in its own container: the hub's routes go on its `websecure`
  entrypoint, its API is reached on `auth_api` (GRIDHUB_PROXY_API_URL).
- Volumes are the compose project's (FACILITY_PROJECT): each user's home is
  `<project>_home-<user>`; the facility certificate bundle and the masterclass
  notebooks are mounted read-only from `<project>_certs` / `<project>_masterclass`
  (the hub's own paths mean nothing to the Docker daemon), and so is the
  analysis-cache store's certificate from `<project>_lake-store-ca`. A new home gets
  its notebooks at the server's start (gridhub.hub.homecopy).
- User containers carry the compose project label, so
  `docker compose down --remove-orphans` removes them too (without Docker's
  auto-remove, which would race it).
"""

import os
from urllib.parse import urlsplit

from gridhub.hub.settings import load_settings

STORE = "lake-store"  # docker-compose.yml's analysis-cache service
STORE_CA = "/etc/gridhub/lake-store-ca"

c = get_config()  # noqa: F821  (provided by traitlets)
project = os.environ.get("FACILITY_PROJECT")
settings = load_settings()

if project:
    c.TraefikFileProviderProxy.traefik_entrypoint = "websecure"
    c.TraefikFileProviderProxy.traefik_api_entrypoint = "auth_api"

if project and settings.spawner == "docker":
    d = c.DockerSpawner
    d.use_internal_ip = True
    d.name_template = f"{project}-jupyter-{{username}}"
    d.volumes = {
        f"{project}_home-{{username}}": "/home/jovyan",
        f"{project}_certs": {"bind": "/etc/gridhub/certs", "mode": "ro"},
    }
    # (a subconfig's `c` starts empty: update() merges into the settings' env)
    env = {}
    bundle = "/etc/gridhub/certs/ca-bundle.pem"
    # the gateway API is reached over HTTPS with the facility's (self-signed) cert
    env.update(SSL_CERT_FILE=bundle, REQUESTS_CA_BUNDLE=bundle, GRIDHUB_FACILITY_CA=bundle)
    # the analysis cache's store of this file's facility (lake-store): its TLS
    # certificate (self-signed, made on its first start) from the volume it
    # writes, read-only, as the XRootD client's CA directory; a store elsewhere
    # (GRIDHUB_ANALYSIS_CACHE_URL) is trusted as the image trusts it
    if settings.analysis_cache_url and urlsplit(settings.analysis_cache_url).hostname == STORE:
        d.volumes[f"{project}_lake-store-ca"] = {"bind": STORE_CA, "mode": "ro"}
        env["X509_CERT_DIR"] = STORE_CA
    # prepared notebooks go into a new home once, as the user (gridhub.hub.homecopy),
    # then the server starts: a student gets the class's, a physicist the
    # notebook image's examples ($GRIDHUB_EXAMPLES, set by the image)
    if settings.mode == "masterclass":
        d.volumes[f"{project}_masterclass"] = {"bind": "/srv/gridhub/masterclass", "mode": "ro"}
        env["GRIDHUB_MASTERCLASS_NOTEBOOKS"] = "/srv/gridhub/masterclass"
        copy = 'masterclass "$GRIDHUB_MASTERCLASS_NOTEBOOKS"'
    else:
        copy = 'examples "$GRIDHUB_EXAMPLES"'
    d.cmd = [
        "sh",
        "-c",
        f'python -m gridhub.hub.homecopy {copy} "$HOME" || true; exec jupyterhub-singleuser "$@"',
        "jupyterhub-singleuser",
    ]
    c.Spawner.environment.update(env)
    d.extra_create_kwargs = {
        "labels": {
            "org.gridhub.facility": project,
            "com.docker.compose.project": project,
            "com.docker.compose.service": "notebook",
            "com.docker.compose.oneoff": "False",
        }
    }
    # No Docker auto-remove: `compose down --remove-orphans` kills and removes
    # these containers itself, and an auto-removal it set off would race its
    # remove ("removal ... already in progress", "No such container"). A
    # stopped server is still removed: DockerSpawner.stop removes it (remove=True).
    # (update: the settings set cpu_shares there, gridhub.hub.lowpriority)
    d.extra_host_config.update({"init": True, "auto_remove": False})
