"""Extra routes of the embedded server only (imported once DiracX is loaded).

No ``from __future__ import annotations`` here: FastAPI reads these
annotations at runtime.
"""

from typing import Annotated, Any

from DIRACCommon.WorkloadManagementSystem.DB.JobDBUtils import extractJDL
from diracx.core.properties import JOB_ADMINISTRATOR
from diracx.db.sql import JobDB
from diracx.routers.utils.users import AuthorizedUserInfo, verify_dirac_access_token
from diracx.tasks.plumbing.depends import auto_inject
from fastapi import Depends, HTTPException
from fastapi.responses import RedirectResponse


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


async def well_known_alias() -> RedirectResponse:
    return RedirectResponse("/.well-known/openid-configuration")


def add_gridhub_routes(app: Any) -> None:
    """``GET /api/gridhub/jobs/{job_id}/jdl`` for job administrators.

    DiracX 0.7 has no job-matching endpoint (which, in DIRAC, hands a pilot
    its job's JDL), so the local site, our stand-in for a grid site, reads
    the JDL here.  Only in the embedded server.  Also
    ``/api/.well-known/openid-configuration``, redirecting to DiracX's
    ``/.well-known/openid-configuration``.
    """
    app.add_api_route(
        "/api/.well-known/openid-configuration",
        well_known_alias,
        methods=["GET"],
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
