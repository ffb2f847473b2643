"""Errors raised by the DiracX client.

Every message names the DiracX server and, when there is one, the job, so a
log line or a message shown to a user says where to look.  Tokens never
appear in messages.
"""

from __future__ import annotations


class DiracXError(Exception):
    """Base class: something went wrong talking to DiracX."""

    def __init__(self, msg: str, server: str, job_id: int | None = None) -> None:
        self.msg = msg
        self.server = server
        self.job_id = job_id
        where = f"DiracX at {server}"
        if job_id is not None:
            where += f", job {job_id}"
        super().__init__(f"{where}: {msg}")


class DiracXUnreachable(DiracXError):
    """No answer from the server (connection refused, timeout, 502/503/504)."""


class DiracXTokenExpired(DiracXError):
    """401 even after refreshing the token: the identity must be renewed."""


class DiracXForbidden(DiracXError):
    """403: the identity may not do this."""


class DiracXJDLRejected(DiracXError):
    """DiracX refused a job submission; ``reason`` is the server's explanation."""

    def __init__(self, msg: str, server: str, job_id: int | None = None, *, reason: str = ""):
        self.reason = reason or msg
        super().__init__(msg, server, job_id)


class SandboxChecksumMismatch(DiracXError):
    """A downloaded sandbox is not what DiracX recorded: its SHA-256 differs
    from the checksum in its PFN (or the PFN carries none).  The sandbox
    store was tampered with, or the download was corrupted: never unpack it."""
