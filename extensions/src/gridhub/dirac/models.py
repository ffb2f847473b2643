"""Small typed views of DiracX responses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: States after which a job never runs again.
FINAL_STATES = frozenset({"Done", "Failed", "Killed", "Deleted", "Completed"})


class JobState(BaseModel):
    """The three status fields of a job."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    status: str = Field(alias="Status")
    minor_status: str = Field(default="", alias="MinorStatus")
    application_status: str = Field(default="", alias="ApplicationStatus")

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES


class TokenResponse(BaseModel):
    """What /api/auth/token and /api/auth/legacy-exchange return."""

    access_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105
    refresh_token: str | None = None


class SandboxUpload(BaseModel):
    """POST /api/jobs/sandbox: the PFN and, if not yet stored, a presigned S3 POST."""

    pfn: str
    url: str | None = None
    fields: dict[str, str] = {}
