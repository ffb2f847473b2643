"""Async client for DiracX 0.7 (the REST API of DIRAC).

from gridhub.dirac import DiracXClient, RefreshingToken
async with DiracXClient(url, RefreshingToken.from_file(url, path)) as dx:
    (job_id,) = await dx.submit_jdl([jdl])
"""

from .client import DiracXClient, extract_sandbox, make_sandbox
from .errors import (
    DiracXError,
    DiracXForbidden,
    DiracXJDLRejected,
    DiracXTokenExpired,
    DiracXUnreachable,
    SandboxChecksumMismatch,
)
from .models import FINAL_STATES, JobState
from .tokens import (
    DiracXLoginRequired,
    LegacyExchangeToken,
    RefreshingToken,
    TokenSource,
    UserLoginToken,
    write_credentials,
)

__all__ = [
    "FINAL_STATES",
    "DiracXClient",
    "DiracXError",
    "DiracXForbidden",
    "DiracXJDLRejected",
    "DiracXLoginRequired",
    "DiracXTokenExpired",
    "DiracXUnreachable",
    "JobState",
    "LegacyExchangeToken",
    "RefreshingToken",
    "SandboxChecksumMismatch",
    "TokenSource",
    "UserLoginToken",
    "extract_sandbox",
    "make_sandbox",
    "write_credentials",
]
