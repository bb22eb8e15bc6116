"""The dashboard's forms, read into the same shapes the APIs take, so that the same rules give
the same messages (a campaign form becomes a Campaigns API document, see `campaign_document`)."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, SecretStr, field_validator

from clarion.dashboard.models import Role

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class UserCreate(BaseModel):
    email: str = Field(max_length=254)
    name: str = Field(default="", max_length=200)
    # Length is what makes a password strong; no composition rules (NIST SP 800-63B §5.1.1).
    password: SecretStr = Field(min_length=10, max_length=1024)
    role: Role = Role.VIEWER

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip()
        if not _EMAIL.fullmatch(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value.lower()
