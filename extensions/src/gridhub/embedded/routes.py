"""Extra routes of the embedded server only (imported once DiracX is loaded).

No ``from __future__ import annotations`` here: FastAPI reads these
annotations at runtime.
"""

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

from DIRACCommon.WorkloadManagementSystem.DB.JobDBUtils import extractJDL
from diracx.core.models import ScalarSearchOperator, VectorSearchOperator, VectorSearchSpec
from diracx.core.properties import JOB_ADMINISTRATOR
from diracx.db.os import JobParametersDB
from diracx.db.sql import JobDB
from diracx.routers.utils.users import AuthorizedUserInfo, verify_dirac_access_token
from diracx.tasks.plumbing.depends import auto_inject
from diracx.testing.mock_osdb import MockOSDBMixin
from fastapi import Depends, HTTPException
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict

from .users import USER_GROUP

log = logging.getLogger("gridhub.embedded")


async def job_jdl(
    job_id: int,
    job_db: JobDB,
    user: Annotated[AuthorizedUserInfo, Depends(verify_dirac_access_token)],
) -> dict[str, Any]:
    if JOB_ADMINISTRATOR not in user.properties:
        raise HTTPException(403, "JobAdministrator property required")
    jdls = await job_db.get_job_jdls([job_id])
    if job_id not in jdls:
        raise HTTPException(404, f"job {job_id} not found")
    return {"job_id": job_id, "jdl": extractJDL(jdls[job_id])}


#: the job parameters the accounting reads (the local site writes them, localsite.Usage)
ACCOUNTING_PARAMETERS = [
    "TotalCPUTime(s)",
    "CPUTime(ms)",
    "WallClockTime(s)",
    "MemoryUsed(kb)",
    "BytesRead",
    "BytesWritten",
    "ExitStatus",
    "AccountingSite",
]
MAX_ACCOUNTING_JOBS = 1000


class AccountingQuery(BaseModel):
    job_ids: list[int]


async def job_accounting(
    body: AccountingQuery,
    job_db: JobDB,
    job_parameters_db: JobParametersDB,
    user: Annotated[AuthorizedUserInfo, Depends(verify_dirac_access_token)],
) -> dict[str, Any]:
    """The accounting job parameters of the jobs asked for: all for a job
    administrator, else only the caller's own jobs (403 naming the others)."""
    ids = sorted(set(body.job_ids))
    if len(ids) > MAX_ACCOUNTING_JOBS:
        raise HTTPException(
            422, f"at most {MAX_ACCOUNTING_JOBS} job ids per request, got {len(ids)}"
        )
    if not ids:
        return {"parameters": {}}
    in_ids: VectorSearchSpec = {
        "parameter": "JobID",
        "operator": VectorSearchOperator.IN,
        "values": ids,
    }
    if JOB_ADMINISTRATOR not in user.properties:
        _, own = await job_db.search(
            ["JobID"],
            [
                in_ids,
                {
                    "parameter": "Owner",
                    "operator": ScalarSearchOperator.EQUAL,
                    "value": user.preferred_username,
                },
                {"parameter": "VO", "operator": ScalarSearchOperator.EQUAL, "value": user.vo},
            ],
            [],
        )
        others = sorted(set(ids) - {int(j["JobID"]) for j in own})
        if others:
            raise HTTPException(403, f"not your jobs (or no such jobs): {others[:20]}")
    rows = await job_parameters_db.search(["JobID", *ACCOUNTING_PARAMETERS], [in_ids], [])
    found = {int(r.pop("JobID")): r for r in rows if r.get("JobID") is not None}
    if isinstance(job_parameters_db, MockOSDBMixin):
        # the embedded server's sqlite stand-in for OpenSearch (DiracX's
        # MockOSDBMixin) leaves JobID empty (its upsert skips JobParametersDB's
        # metadata): its documents are keyed by doc_id, looked up one by one
        for job_id in sorted(set(ids) - set(found)):
            doc = await job_parameters_db.search(
                ACCOUNTING_PARAMETERS,
                [{"parameter": "doc_id", "operator": "eq", "value": job_id}],
                [],
            )
            if doc:
                found[job_id] = doc[0]
    return {
        "parameters": {
            str(k): {n: v for n, v in r.items() if v is not None} for k, r in found.items()
        }
    }


async def well_known_alias() -> RedirectResponse:
    return RedirectResponse("/.well-known/openid-configuration")


class UserRegistration(BaseModel):
    # anything else (properties, say) is refused: hub users' groups have
    # NormalUser alone, whatever a request asks for
    model_config = ConfigDict(extra="forbid")

    hub_user: str
    group: str = USER_GROUP


def user_registration(state_dir: Path, config_source: Any) -> Any:
    """``POST /api/gridhub/users`` (see users.py): the facility registers a
    hub user in a DIRAC group of the CS; answers once DiracX reads the new CS."""
    from diracx.core.config.schema import Config

    from . import CS_DIR, load_facility
    from .users import GroupError, UserNameError, register_in_cs, user_sub

    facility = load_facility(state_dir)
    lock = asyncio.Lock()

    async def register(
        body: UserRegistration,
        user: Annotated[AuthorizedUserInfo, Depends(verify_dirac_access_token)],
    ) -> dict[str, str]:
        # the facility's own identity only, not any job administrator
        if user.sub != f"{facility.vo}:{facility.sub}" or JOB_ADMINISTRATOR not in user.properties:
            raise HTTPException(403, "only the facility registers users")
        async with lock:
            try:
                name, changed = await asyncio.to_thread(
                    register_in_cs, state_dir / CS_DIR, facility, body.hub_user, body.group
                )
            except (UserNameError, GroupError) as exc:
                raise HTTPException(422, str(exc)) from None
            if changed:
                log.info("Registered a hub user as DIRAC user %s in %s", name, body.group)
                # DiracX caches the CS revision (5 s): read the new one now,
                # so the user's token can be had as soon as we answer
                sub = user_sub(body.hub_user)
                for _ in range(20):
                    config_source.clear_caches()
                    cs: Config = await asyncio.to_thread(config_source.read)
                    group = cs.registry[facility.vo].groups.get(body.group)
                    if group is not None and sub in group.users:
                        break
                    await asyncio.sleep(0.25)
                else:
                    raise HTTPException(
                        503, f"the CS does not show DIRAC user {name} in {body.group} yet"
                    )
        return {"username": name, "group": body.group, "vo": facility.vo}

    return register


def add_gridhub_routes(app: Any, state_dir: Path | None = None) -> None:
    """``GET /api/gridhub/jobs/{job_id}/jdl`` for job administrators.

    DiracX 0.7 has no job-matching endpoint (which, in DIRAC, hands a pilot
    its job's JDL), so the local site, our stand-in for a grid site, reads
    the JDL here.  Only in the embedded server.  Also
    ``/api/.well-known/openid-configuration``, redirecting to DiracX's
    ``/.well-known/openid-configuration``. With ``state_dir``, also
    ``POST /api/gridhub/users`` (users.py).
    """
    app.add_api_route(
        "/api/.well-known/openid-configuration",
        well_known_alias,
        methods=["GET"],
        include_in_schema=False,
        tags=["gridhub"],
    )
    # DiracX 0.7 writes job parameters (PATCH /api/jobs/metadata) but has no
    # route to read them back; this one stands in for DIRAC's accounting
    # (docs/accounting.md), embedded server only
    app.add_api_route(
        "/api/gridhub/accounting/jobs",
        auto_inject(job_accounting),
        methods=["POST"],
        include_in_schema=False,
        tags=["gridhub"],
    )
    app.add_api_route(
        "/api/gridhub/jobs/{job_id}/jdl",
        auto_inject(job_jdl),
        methods=["GET"],
        include_in_schema=False,
        tags=["gridhub"],
    )
    if state_dir is not None:
        from diracx.core.config import ConfigSource

        source = getattr(app.dependency_overrides.get(ConfigSource.create), "__self__", None)
        if source is None:
            raise RuntimeError("DiracX's configuration source is not where it was expected")
        app.add_api_route(
            "/api/gridhub/users",
            user_registration(Path(state_dir), source),
            methods=["POST"],
            include_in_schema=False,
            tags=["gridhub"],
        )
