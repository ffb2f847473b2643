"""The deployed dask-gateway-server configuration (the `gateway` container).

Read from the same schema as the hub (gridhub.hub.settings.Settings: GRIDHUB_*
environment, or the YAML file in GRIDHUB_CONFIG_FILE), so the deployer edits
one `.env`; an unknown or misspelled key stops the gateway with a message
naming it. Secrets: the hub's gateway service token, Traefik's provider token
and the facility certificate come from the shared secrets directory
(FACILITY_SHARED_SECRETS, the `secrets` volume, read-only: the hub's
gridhub-init writes it); the DB encryption key is the gateway's own, in its
state (from the settings, else generated once).

Paths and addresses fixed by the container layout (docker-compose.yml) are
environment variables that are not settings:

  FACILITY_GATEWAY_HOST   the gateway's host name on the internal network (gateway)
  FACILITY_HUB_API_URL    the hub's API (http://hub:8081/hub/api)
  FACILITY_DIRACX_STATE   the embedded DiracX's state volume (its facility identity)
  FACILITY_EMBEDDED_DIRACX_URL  the embedded DiracX (http://dirac:8000)
  FACILITY_SCHEDULER_NETWORK  Docker network for per-cluster scheduler containers
                          (set by every shipped deployment); unset: schedulers are
                          processes of the gateway (tests, a trusted single user)
  FACILITY_SCHEDULER_IMAGE  the image scheduler containers run: the notebook
                          image, the environment the graphs they unpickle come from
  FACILITY_PROJECT        the compose project: scheduler containers' names and labels
  FACILITY_MONITORING_SECRETS  the monitoring volume (Prometheus' metrics token)
"""

import base64
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from gridhub.gateway.backend import default_cluster_options
from gridhub.hub.secrets import MONITORING_ENV, load_or_create, monitoring_dir, shared_dir
from gridhub.hub.settings import SettingsError, load_settings

c = get_config()  # noqa: F821  (provided by traitlets)

try:
    s = load_settings()
except SettingsError as exc:
    print(f"gridhub: {exc}", file=sys.stderr, flush=True)
    sys.exit(2)


def _secret(name: str, configured, generate=None) -> str:
    value = configured.get_secret_value() if configured is not None else None
    return load_or_create(s.state_dir, name, value, generate=generate)


def _fernet_key() -> str:
    # an older GridHub kept it in the shared volume: the gateway takes it over
    legacy = shared_dir(s.state_dir) / "gateway_db_encrypt_key"
    if legacy.is_file() and legacy.resolve() != (state / "secrets" / legacy.name).resolve():
        return legacy.read_text().strip()
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


state = Path(s.state_dir)
host = os.environ.get("FACILITY_GATEWAY_HOST", "gateway")
port = 8000
prefix = "/services/dask-gateway"
public = urlsplit(s.public_url)

# --- the API, its proxy (Traefik), users (JupyterHub) ---
c.DaskGateway.address = f"0.0.0.0:{port}"
c.DaskGateway.log_level = s.log_level
c.DaskGateway.backend_class = "gridhub.gateway.backend.DiracBackend"
if os.environ.get("FACILITY_SCHEDULER_NETWORK"):
    # user code never runs where the gateway's secrets are: a container per
    # scheduler (gridhub/gateway/containers.py)
    c.DaskGateway.backend_class = "gridhub.gateway.containers.DockerDiracBackend"
    project = os.environ.get("FACILITY_PROJECT", "gridhub")
    c.SchedulerContainers.network = os.environ["FACILITY_SCHEDULER_NETWORK"]
    c.SchedulerContainers.image = os.environ.get(
        "FACILITY_SCHEDULER_IMAGE", "gridhub/notebook:latest"
    )
    c.SchedulerContainers.name_prefix = f"{project}-scheduler-"
    # started ahead: a new cluster's scheduler skips docker start and its imports
    c.SchedulerContainers.pool_size = s.gateway_scheduler_pool
    # each cluster's own network takes a /28 of these (cluster_networks.py)
    c.SchedulerContainers.subnets = s.gateway_scheduler_subnets
    # compose's own labels: `docker compose down --remove-orphans` removes them too
    c.SchedulerContainers.labels = {
        "com.docker.compose.project": project,
        "com.docker.compose.service": "scheduler",
        "com.docker.compose.oneoff": "False",
    }
c.Proxy.externally_managed = True  # Traefik polls /api/v1/traefik
c.Proxy.prefix = prefix
c.Proxy.gateway_url = f"http://{host}:{port}"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = os.environ.get(
    "FACILITY_HUB_API_URL", "http://hub:8081/hub/api"
)
c.JupyterHubAuthenticator.jupyterhub_api_token = _secret("gateway_api_token", s.gateway_api_token)
c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"

# --- state: clusters and their job ids survive a gateway restart ---
b = c.DiracBackend
b.db_url = f"sqlite:///{state / 'gateway.sqlite'}"
b.db_encrypt_keys = [_secret("gateway_db_encrypt_key", s.gateway_db_encrypt_key, _fernet_key)]
b.stop_clusters_on_shutdown = False
b.state_dir = str(state / "dirac-backend")
b.clusters_directory = str(state / "clusters")
b.api_url = f"http://{host}:{port}/api"
b.traefik_token = _secret("traefik_provider_token", s.traefik_provider_token)
# Prometheus' token for the metrics routes (the hub's gridhub-init writes it to
# the monitoring volume, read-only here); without it: gateway admins only
metrics_token = monitoring_dir(state) / "metrics_token"
if os.environ.get(MONITORING_ENV) and metrics_token.is_file():
    b.metrics_token = metrics_token.read_text().strip()

# --- schedulers and the reverse path, reached by Traefik on the internal network ---
# Schedulers unpickle the task graphs notebooks send (numpy, awkward, coffea
# objects): in containers they run the notebook image's Python (on its PATH);
# as processes of the gateway (tests, a trusted single user), the gateway's.
# Their preload keeps host names in worker addresses: PUBLIC_HOST has another
# address on the grid network than here (see the module).
c.DiracClusterConfig.scheduler_cmd = [
    "python" if os.environ.get("FACILITY_SCHEDULER_NETWORK") else sys.executable,
    "-m",
    "distributed.cli.dask_scheduler",
    "--preload",
    "gridhub.gateway.named_addresses",
]
b.scheduler_host = "0.0.0.0"  # noqa: S104  (the internal network only)
b.tunnel_listen_address = "0.0.0.0:8022"
b.tunnel_forward_host = "0.0.0.0"  # noqa: S104
b.tunnel_advertise_host = host
# Grid workers dial Traefik's public Dask port by the public host name.
if s.gateway_proxy_address:
    b.public_dask_address = s.gateway_proxy_address.split("://", 1)[-1]
else:
    b.public_dask_address = f"{public.hostname}:8786"
ca = shared_dir(state) / "tls" / "facility.crt"
if ca.exists():  # self-signed: workers get it in the sandbox
    b.facility_ca_file = str(ca)

# --- DIRAC ---
if s.diracx_url:
    b.diracx_url = s.diracx_url
    if s.diracx_token_file:  # the deployer's choice: one robot identity for every user
        b.diracx_token_file = str(s.diracx_token_file)
    else:  # each user's own DiracX login, handed over by the hub (docs/dirac-backend.md)
        b.diracx_user_logins = True
        b.diracx_login_handoff_token = c.JupyterHubAuthenticator.jupyterhub_api_token
        b.diracx_login_url = f"{s.public_url}/hub/dirac-login"
else:
    b.diracx_url = os.environ.get("FACILITY_EMBEDDED_DIRACX_URL", "http://dirac:8000")
    b.diracx_embedded_state_dir = os.environ.get("FACILITY_DIRACX_STATE", "/srv/gridhub/dirac")
    # each user's DIRAC group from their hub groups (empty: the embedded default)
    b.diracx_groups = s.diracx_groups

# --- what users may ask for ---
b.cluster_options = default_cluster_options(
    max_cores=s.gateway_max_cores,
    max_memory_gib=s.gateway_max_memory,
    max_workers=s.gateway_max_workers,
    sites=s.grid_sites,
    images=[s.gateway_worker_image or ""],
)
b.group_limits = s.gateway_group_limits
# every grid job: sites whose workers never connect directly (gridhub.tunnel.direct_peers)
if s.direct_peers_off:
    b.worker_environment = {"GRIDHUB_DIRECT_PEERS_OFF": ",".join(s.direct_peers_off)}
c.DiracClusterConfig.idle_timeout = s.gateway_idle_timeout
c.DiracClusterConfig.cluster_max_workers = s.gateway_max_workers
