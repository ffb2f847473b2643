"""The deployer's configuration: one schema, read from GRIDHUB_* env vars and/or a YAML file.

Every key a deployer may set is a field of :class:`Settings`.  The same key can come from

- the YAML file named by ``GRIDHUB_CONFIG_FILE`` (key ``facility_name``), then
- the environment (``GRIDHUB_FACILITY_NAME``, e.g. from the compose ``.env``), which wins.

Unknown or misspelled keys are rejected with a message naming the key and the closest
valid one.  The facility's mode is derived: ``iam`` when ``iam_issuer`` is set, else
``masterclass``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gridhub import cachepolicy

ENV_PREFIX = "GRIDHUB_"
CONFIG_FILE_ENV = "GRIDHUB_CONFIG_FILE"
# GRIDHUB_* variables that are not settings (they locate the settings, or are set by
# the hub for the processes it starts).
NOT_SETTINGS = frozenset(
    {
        "GRIDHUB_CONFIG_FILE",
        "GRIDHUB_EXTRA_CONFIG_DIR",
        "GRIDHUB_TOKEN_SERVICE_URL",
        "GRIDHUB_TOKEN_FILE_REFRESH_SECONDS",
        "GRIDHUB_MASTERCLASS_NOTEBOOKS",
        "GRIDHUB_WARM_NOTEBOOK",
    }
)

# A kernel's ipc socket is <root>/<user dir, <= 32>/kernel-<uuid>-ipc-<n>; a unix socket
# path holds at most 107 bytes.
RUNTIME_USER_DIR_MAX = 32
RUNTIME_ROOT_MAX = 107 - len(f"/{'u' * RUNTIME_USER_DIR_MAX}/kernel-{'u' * 36}-ipc-999")
_REPO_ROOT = Path(__file__).resolve().parents[4]


def _default_notebooks() -> Path:
    return _REPO_ROOT / "notebooks" / "masterclass"


class SettingsError(Exception):
    """The deployer's configuration is invalid; the message names every bad key."""


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    return value


class Settings(BaseModel):
    """GridHub deployer settings (``GRIDHUB_<KEY>`` in the environment, ``<key>`` in YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- the facility ---
    facility_name: str = Field(
        "GridHub", description="Name shown on the login page and in page titles."
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="URL users type into the browser (scheme://host[:port]); Traefik serves it.",
    )
    state_dir: Path = Field(
        Path("/srv/gridhub/state"),
        description="Directory (a volume in compose) for the hub database and generated secrets.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the hub."
    )
    admin_users: list[str] = Field(
        default_factory=list,
        description="Hub user names that are always admins (comma or space separated).",
    )

    # --- IAM (OpenID Connect) mode ---
    iam_issuer: str | None = Field(
        None,
        description="OIDC issuer URL of the INDIGO IAM instance. Setting it selects IAM mode;"
        " the endpoints come from <issuer>/.well-known/openid-configuration.",
    )
    iam_client_id: str | None = Field(None, description="OIDC client id registered in IAM.")
    iam_client_secret: SecretStr | None = Field(None, description="OIDC client secret.")
    iam_client_auth: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic",
        description="How the hub authenticates to IAM's token endpoint (IAM's default: basic).",
    )
    iam_extra_scopes: list[str] = Field(
        default_factory=list,
        description="Scopes requested on top of 'openid profile email offline_access',"
        " e.g. 'wlcg.groups'.",
    )
    iam_groups_claim: str = Field(
        "groups",
        description="userinfo claim holding the user's groups (IAM: 'groups' or 'wlcg.groups').",
    )
    iam_username_claim: str = Field(
        "preferred_username", description="userinfo claim used as the hub user name."
    )
    iam_allowed_groups: list[str] = Field(
        default_factory=list,
        description="Groups whose members may log in. Empty: every IAM user may log in.",
    )
    iam_admin_groups: list[str] = Field(
        default_factory=list, description="Groups whose members are hub admins."
    )
    token_refresh_age: int = Field(
        60,
        ge=1,
        description="Seconds after which the hub re-checks a user's IAM tokens"
        " (Authenticator.auth_refresh_age).",
    )
    token_refresh_margin: int = Field(
        300,
        ge=1,
        description="Refresh the access token when it has less than this many seconds left"
        " (capped at half the token's lifetime).",
    )
    token_file_interval: int = Field(
        30,
        ge=1,
        description="Seconds between refreshes of BEARER_TOKEN_FILE in each running server.",
    )
    token_service_port: int = Field(
        10101, description="Port of the hub-managed service that hands servers their token."
    )

    # --- masterclass mode ---
    masterclass_access_code: SecretStr | None = Field(
        None,
        description="Code students type as password (8+ characters). Generated once and kept"
        " in the state dir when unset.",
    )
    masterclass_teacher_code: SecretStr | None = Field(
        None,
        description="Password of the teachers (32+ characters). Generated once when unset.",
    )
    masterclass_teachers: list[str] = Field(
        default_factory=list, description="User names of the teachers; they are admins."
    )
    masterclass_pool_size: int = Field(
        0,
        ge=0,
        le=500,
        description="Warm pool: free seats (hub users seat-01, ...) whose servers run before"
        " the students come; a student with the code gets one at login. 0: no pool, servers"
        " start on click.",
    )
    masterclass_pool_concurrency: int = Field(
        5, ge=1, le=50, description="Warm pool: seat servers starting at once, at most."
    )
    # (masterclass login limits: gridhub.hub.students)
    masterclass_class_size: int = Field(
        60,
        ge=1,
        le=1000,
        description="Most students (names) who may join with the access code; the next new"
        " name is told the class is full. Students who joined always come back.",
    )
    masterclass_failed_login_limit: int = Field(
        30,
        ge=0,
        description="Failed logins from one client address within"
        " masterclass_failed_login_window seconds, after which every login from it is"
        " refused until the window passes (0: no limit). A class behind one school NAT"
        " shares it.",
    )
    masterclass_failed_login_window: int = Field(
        600, ge=1, description="Seconds over which failed logins are counted."
    )
    masterclass_teacher_port: int = Field(
        10102,
        description="Port of the teacher's view (hub-managed service at /services/teacher/).",
    )
    masterclass_warm_notebook: str | None = Field(
        None,
        description="The class notebook (a path in the student's home) whose kernel every"
        " masterclass server starts, its imports done, before the student opens it. Default:"
        " the first notebook of masterclass_notebooks_dir; 'none': no warm kernel.",
    )
    masterclass_notebooks_dir: Path = Field(
        default_factory=_default_notebooks,
        description="Notebooks copied once into each new student's home.",
    )

    # --- the user servers ---
    spawner: Literal["docker", "local"] = Field(
        "docker",
        description="'docker': DockerSpawner (the compose facility); 'local': local processes.",
    )
    notebook_image: str = Field(
        "gridhub/notebook:latest", description="Image of the user servers (docker spawner)."
    )
    docker_network: str = Field(
        "gridhub", description="Docker network the user containers join (docker spawner)."
    )
    lake_url: str | None = Field(
        None,
        description="root:// URL of the data lake's XCache that notebooks and grid workers"
        " read through (docs/data-lake.md); the hub then runs the storage-token issuer."
        " Unset: no lake, notebooks read the shipped samples.",
    )
    analysis_cache_url: str | None = Field(
        None,
        description="root:// URL of the analysis cache's store (docs/data-lake.md) that notebooks"
        " put and get their objects on with gridhub.analysiscache ($GRIDHUB_ANALYSIS_CACHE_URL);"
        " needs lake_url (its tokens come from the hub's storage-token issuer). Unset: none.",
    )
    lake_cache_default_expiry: str = Field(
        cachepolicy.DEFAULT_EXPIRY,
        description="Analysis cache on the lake: how long an object lives when its writer names"
        " no expiry (seconds, or a number with s, m, h, d or w).",
    )
    lake_cache_max_expiry: str = Field(
        cachepolicy.MAX_EXPIRY,
        description="Analysis cache: no object lives longer than this after its last write,"
        " whatever its writer asked (the cleaner removes it).",
    )
    local_unix_user: str | None = Field(
        None,
        description="local spawner: run every server as this one unix account, each hub user"
        " in its own home under local_home_root. Unset: one unix account per hub user.",
    )
    local_home_root: Path | None = Field(
        None, description="local spawner with local_unix_user: parent of the per-user homes."
    )
    local_runtime_root: Path = Field(
        Path("/tmp/gridhub-runtime"),  # noqa: S108  (the hub owns it: checked at spawn)
        description="local spawner: parent of each user's JUPYTER_RUNTIME_DIR, where kernels"
        " put their unix sockets (a socket path has at most 107 bytes, so at most"
        f" {RUNTIME_ROOT_MAX} characters).",
    )
    local_python: str | None = Field(
        None,
        description="local spawner: python that runs the servers (needs jupyterhub, jupyterlab"
        " and gridhub); default: the hub's own python.",
    )
    cpu_limit: float | None = Field(2.0, gt=0, description="CPU cores per user server.")
    server_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU priority of user servers and their kernels below the hub's, as a nice"
        " value (0: the hub's, 19: the lowest): when the cores are all busy (a class starting"
        " at once) the hub is served first. Docker: the containers' cpu_shares of that weight"
        " (10: 110 of the hub's 1024); local: nice, for each server's and kernel's session too.",
    )
    mem_limit: str | None = Field("4G", description="Memory per user server, e.g. '4G'.")
    default_url: str = Field("/lab", description="Where a user lands in their server.")
    cull_idle_timeout: int = Field(
        3600, ge=0, description="Stop servers idle for this many seconds (0: never)."
    )
    cull_every: int = Field(
        300, ge=1, description="Seconds between idle-culler passes (default: timeout/2 capped)."
    )
    start_timeout: int = Field(
        120,
        ge=1,
        description="Seconds a server may take to start and answer"
        " (JupyterHub's start_timeout and http_timeout).",
    )

    # --- the hub and its proxy ---
    hub_bind_url: str = Field(
        "http://127.0.0.1:8081", description="Where the hub process listens (internal)."
    )
    hub_connect_host: str | None = Field(
        None,
        description="Host name user servers use to reach the hub and its services"
        " (compose: 'hub'). Default: the host of hub_bind_url.",
    )
    proxy_api_url: str = Field(
        "http://127.0.0.1:8099", description="Traefik API entrypoint (internal)."
    )
    proxy_should_start: bool = Field(
        True, description="The hub starts Traefik itself (false: Traefik runs on its own)."
    )
    traefik_bin: str | None = Field(
        None, description="Path of the traefik binary (default: next to the hub's python)."
    )
    traefik_dynamic_config_file: Path | None = Field(
        None, description="File the hub writes routes to (default: <state_dir>/rules.toml)."
    )

    # --- Dask gateway and DIRAC ---
    gateway_url: str = Field(
        "http://127.0.0.1:8001",
        description="Internal URL of the dask-gateway API; the hub routes"
        " /services/dask-gateway/ to it.",
    )
    gateway_proxy_address: str | None = Field(
        None, description="Dask TLS address clients use for schedulers (e.g. tls://host:8786)."
    )
    diracx_url: str | None = Field(
        None,
        description="URL of an external DiracX. Unset: the embedded DiracX and local site.",
    )
    diracx_token_file: Path | None = Field(
        None,
        description="External DiracX: credentials file (dirac login JSON) of the facility's"
        " robot identity, inside the gateway container; refreshed and rewritten 0600. Set, every"
        " user's jobs go under the robot (the deployer's choice); unset, each user's own DiracX"
        " login (IAM mode, diracx_vo).",
    )
    diracx_vo: str | None = Field(
        None,
        description="External DiracX without a robot: the DIRAC VO users log in to (scope vo:).",
    )
    diracx_groups: dict[str, str] = Field(
        default_factory=dict,
        description="Hub (IAM) group -> DIRAC group a user's jobs go under (JSON, e.g."
        ' {"cms-higgs": "cms_higgs", "default": "cms_user"}; the first listed group the user is'
        ' in, else "default"). External DiracX without a robot: else the VO\'s DefaultGroup;'
        " DiracX must have each user in their group. Embedded DiracX: else gridhub_analysis;"
        ' empty: {"class": "gridhub_class", "default": "gridhub_analysis"}; a missing group is'
        " created with NormalUser alone; the facility's gridhub_user is refused. Taken when a"
        " cluster is created.",
    )
    gateway_max_workers: int = Field(
        8, ge=1, description="Most workers (DIRAC jobs) one Dask cluster may have."
    )
    gateway_max_cores: int = Field(4, ge=1, description="Most cores a user may give one worker.")
    gateway_max_memory: float = Field(
        8.0, gt=0, description="Most memory (GiB) a user may give one worker."
    )
    gateway_idle_timeout: float = Field(
        1800.0, ge=0, description="Stop a Dask cluster idle for this many seconds (0: never)."
    )
    gateway_scheduler_pool: int = Field(
        1,
        ge=0,
        description="Scheduler containers the gateway keeps started ahead (imports done, no"
        " credential yet), each used for one new cluster and replaced in the background: a"
        " cluster's scheduler is up seconds sooner. 0: started when a cluster is created.",
    )
    gateway_scheduler_subnets: str = Field(
        "10.253.0.0/16",
        description="Address range (IPv4 CIDR, /28 or larger) each Dask cluster's own"
        " Docker network takes a /28 from: its scheduler shares it with Traefik and the"
        " gateway only. Pick one no network of the site or the host uses.",
    )
    gateway_stop_clusters_with_server: bool = Field(
        True,
        description="When a user's server stops (stopped, culled or dead), the hub stops"
        " that user's Dask clusters, so their DIRAC jobs end.",
    )
    worker_mem_limit: str = Field(
        "3G",
        description="Local site (embedded mode): memory limit of each worker job container;"
        " its CPU limit is the job's NumberOfProcessors.",
    )
    localsite_max_jobs: int = Field(
        4, ge=1, description="Local site (embedded mode): jobs it runs at the same time."
    )
    gateway_group_limits: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Per hub group, the most clusters, workers and cores one user may hold at"
        " once over all their clusters, and the idle timeout (s) of their clusters (JSON, e.g."
        ' {"class": {"clusters": 1, "workers": 2, "idle_timeout": 900}, "default": {"clusters":'
        ' 3, "cores": 32}}; "default": users in no listed group; the most generous of a'
        " user's groups applies). Empty: no limits beyond the per-cluster ones.",
    )
    grid_sites: dict[str, list[str]] = Field(
        default_factory=dict,
        description="DIRAC sites users may pick for their workers, each with the tags it offers"
        ' (JSON, e.g. {"LCG.GPU.gridhub": ["GPU"]}); a cluster asking for tags no allowed'
        " site offers is refused when created. Embedded mode: also the stand-in sites that"
        " run (docker-compose.override.yml). Empty: any site, tags unchecked.",
    )
    direct_peers_off: list[str] = Field(
        default_factory=list,
        description="DIRAC sites whose grid workers must not connect to each other directly"
        " (say, a site whose firewall isolates its nodes); their transfers take the reverse"
        " path through the facility. '*': every site. Empty: workers of one site talk"
        " directly wherever they reach each other (docs/reverse-path.md).",
    )
    gateway_worker_image: str | None = Field(
        None,
        description="Image grid workers run in (apptainer/singularity at the site; the local"
        " site's containers use its own image setting). Unset: the node's environment.",
    )

    # --- monitoring (docs/monitoring.md) ---
    prometheus_url: str | None = Field(
        None,
        description="Prometheus the admins' monitoring service (/services/monitoring/) reads"
        " and relays (compose: the facility's own, http://prometheus:9090). Unset: no"
        " monitoring service.",
    )
    monitoring_port: int = Field(
        10103,
        description="Port of the admins' monitoring service (hub-managed, /services/monitoring/).",
    )

    # --- secrets (each generated once into the state dir when unset) ---
    cookie_secret: SecretStr | None = Field(None, description="Hub cookie secret (hex).")
    crypt_key: SecretStr | None = Field(
        None, description="JUPYTERHUB_CRYPT_KEY: encrypts auth_state (32 bytes hex)."
    )
    proxy_api_password: SecretStr | None = Field(None, description="Traefik API password.")
    gateway_api_token: SecretStr | None = Field(
        None, description="API token of the dask-gateway hub service."
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Token Prometheus scrapes with: /hub/metrics (read:metrics), the gateway's"
        " metrics and Traefik's metrics entrypoint.",
    )
    traefik_provider_token: SecretStr | None = Field(
        None,
        description="Bearer token Traefik's HTTP provider presents to the gateway for routes.",
    )
    gateway_db_encrypt_key: SecretStr | None = Field(
        None,
        description="Fernet key (urlsafe base64 of 32 bytes) encrypting the gateway DB's"
        " cluster credentials.",
    )

    _split = field_validator(
        "admin_users",
        "iam_extra_scopes",
        "iam_allowed_groups",
        "iam_admin_groups",
        "masterclass_teachers",
        "direct_peers_off",
        mode="before",
    )(_split_list)

    @field_validator("grid_sites", "gateway_group_limits", "diracx_groups", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        return value

    @field_validator("diracx_groups")
    @classmethod
    def _dirac_groups(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        from ..embedded import GROUP
        from ..embedded.users import check_group

        # the embedded DiracX's own group is the facility's, never a user's
        reserved = "" if info.data.get("diracx_url") else GROUP
        for hub_group, group in value.items():
            check_group(group, reserved=reserved, where=f"hub group {hub_group!r}")
        return value

    @field_validator("direct_peers_off")
    @classmethod
    def _site_names(cls, value: list[str]) -> list[str]:
        bad = [
            v
            for v in value
            if v != "*" and not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", v)
        ]
        if bad:
            raise ValueError(f"not DIRAC site names (e.g. LCG.CERN.cern) nor '*': {bad}")
        return value

    @field_validator(
        "public_url", "hub_bind_url", "proxy_api_url", "gateway_url", "iam_issuer", "prometheus_url"
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("lake_url", "analysis_cache_url")
    @classmethod
    def _lake_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("root://", "roots://")):
            raise ValueError(f"must start with root:// or roots://, got {value!r}")
        return value.rstrip("/")

    @field_validator("gateway_scheduler_subnets")
    @classmethod
    def _subnets(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value.strip())
        except ValueError as exc:
            raise ValueError(f"must be an IPv4 network such as 10.253.0.0/16: {exc}") from None
        if net.prefixlen > 28:
            raise ValueError(f"{net} is smaller than one cluster's /28")
        return str(net)

    @field_validator("lake_cache_default_expiry", "lake_cache_max_expiry")
    @classmethod
    def _duration(cls, value: str) -> str:
        cachepolicy.parse_duration(value)
        return value.strip()

    @field_validator("local_runtime_root")
    @classmethod
    def _runtime_root_short(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        if len(str(value)) > RUNTIME_ROOT_MAX:
            raise ValueError(
                f"{value} is longer than {RUNTIME_ROOT_MAX} characters: kernels' unix socket"
                " paths under it would pass the 107-byte limit"
            )
        return value

    @field_validator("masterclass_access_code")
    @classmethod
    def _code_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 8:
            raise ValueError("must be at least 8 characters")
        return value

    @field_validator("cookie_secret")
    @classmethod
    def _cookie_secret_hex(cls, value: SecretStr | None) -> SecretStr | None:
        # the hub reads it with bytes.fromhex: refuse here, naming the key, not at hub start
        if value is not None:
            try:
                bytes.fromhex(value.get_secret_value())
            except ValueError:
                raise ValueError("must be hex (e.g. openssl rand -hex 32)") from None
        return value

    @field_validator("masterclass_teacher_code")
    @classmethod
    def _teacher_code_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.iam_issuer and not self.iam_client_id:
            raise ValueError("iam_issuer is set, so iam_client_id is required")
        if self.local_unix_user and not self.local_home_root:
            raise ValueError("local_unix_user is set, so local_home_root is required")
        if self.masterclass_pool_size and self.iam_issuer:
            raise ValueError("masterclass_pool_size is for masterclass mode, but iam_issuer is set")
        if self.diracx_user_logins and not (self.iam_issuer and self.diracx_vo):
            raise ValueError(
                "diracx_url is set without diracx_token_file, so each user logs in to DiracX:"
                " that needs iam_issuer (the same IAM as DiracX's) and diracx_vo"
                " (or set diracx_token_file for the facility's robot identity)"
            )
        if self.analysis_cache_url and not self.lake_url:
            raise ValueError(
                "analysis_cache_url is set without lake_url: the analysis cache takes tokens of"
                " the hub's storage-token issuer, which runs only with a data lake (lake_url)"
            )
        if cachepolicy.parse_duration(self.lake_cache_default_expiry) > cachepolicy.parse_duration(
            self.lake_cache_max_expiry
        ):
            raise ValueError(
                f"lake_cache_default_expiry ({self.lake_cache_default_expiry}) is longer than"
                f" lake_cache_max_expiry ({self.lake_cache_max_expiry})"
            )
        if self.masterclass_pool_size > self.masterclass_class_size:
            raise ValueError(
                f"masterclass_pool_size ({self.masterclass_pool_size}) is larger than"
                f" masterclass_class_size ({self.masterclass_class_size}): seats nobody may take"
            )
        return self

    @property
    def diracx_user_logins(self) -> bool:
        """An external DiracX and no robot: each user's own DiracX login."""
        return bool(self.diracx_url and not self.diracx_token_file)

    @property
    def mode(self) -> Literal["iam", "masterclass"]:
        return "iam" if self.iam_issuer else "masterclass"

    @property
    def connect_host(self) -> str:
        if self.hub_connect_host:
            return self.hub_connect_host
        from urllib.parse import urlsplit

        return urlsplit(self.hub_bind_url).hostname or "127.0.0.1"


FIELDS = tuple(Settings.model_fields)


def _unknown(key: str, source: str, as_env: bool) -> str:
    valid = [ENV_PREFIX + f.upper() for f in FIELDS] if as_env else list(FIELDS)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown setting {key} (in {source}){hint}"


def load_settings(
    environ: os._Environ[str] | dict[str, str] | None = None, config_file: str | None = None
) -> Settings:
    """Read, check and return the deployer's settings; raise SettingsError naming bad keys."""
    env = os.environ if environ is None else environ
    config_file = config_file or env.get(CONFIG_FILE_ENV)
    raw: dict[str, Any] = {}
    problems: list[str] = []
    origin: dict[str, str] = {}
    if config_file:
        import yaml

        try:
            data = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read {CONFIG_FILE_ENV}={config_file}: {exc}") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{config_file}: the top level must be a mapping of settings")
        for key, value in data.items():
            key = str(key)
            if key not in FIELDS:
                problems.append(_unknown(key, config_file, as_env=False))
                continue
            raw[key] = value
            origin[key] = f"{key} (in {config_file})"
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in FIELDS:
            problems.append(_unknown(name, "the environment", as_env=True))
            continue
        if value == "":
            continue  # an empty line in .env means "use the default"
        raw[key] = value
        origin[key] = f"{name} (in the environment)"
    if not problems:
        try:
            return Settings(**raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc = err["loc"]
                key = str(loc[0]) if loc else ""
                where = origin.get(key, key or "settings")
                problems.append(f"invalid setting {where}: {err['msg']}")
    raise SettingsError("GridHub configuration is invalid:\n  " + "\n  ".join(problems))


def describe() -> str:
    """Every key with its default and description (docs/hub.md is generated from this)."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if name == "masterclass_notebooks_dir":
            default = "<repo>/notebooks/masterclass"
        if isinstance(default, SecretStr) or "secret" in name or "code" in name:
            default = default if default is None else "***"
        lines.append(
            f"| `{ENV_PREFIX}{name.upper()}` / `{name}` | `{default!s}` | {field.description} |"
        )
    return "\n".join(lines)
