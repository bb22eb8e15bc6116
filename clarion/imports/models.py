"""Flat-file import sources: where an app's audience files are, how to read them, and what
became of each file (never ingested twice) and of each run (the history)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime, utcnow


class OnChange(StrEnum):
    """What a new or changed file means for its audience."""

    REPLACE = "replace"  # the file is the whole audience
    APPLY_CHANGES = "apply_changes"  # lines added to the file are added, lines removed removed


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNCHANGED = "unchanged"  # re-uploaded with the same content: nothing to apply


class ImportSource(Base):
    __tablename__ = "import_sources"
    __table_args__ = (
        UniqueConstraint("app_id", "name"),
        Index("ix_import_sources_next_poll_at", "next_poll_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    name: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(String(2048))  # never holds a password
    credentials: Mapped[str | None] = mapped_column(Text)  # Fernet-encrypted JSON
    pattern: Mapped[str] = mapped_column(String(255), default="*")
    # Exactly one of: a fixed audience name, or a regular expression over the file name whose
    # group "name" (or first group) is the audience's name.
    audience_name: Mapped[str | None] = mapped_column(String(255))
    audience_pattern: Mapped[str | None] = mapped_column(String(255))
    id_kind: Mapped[str] = mapped_column(String(16))
    header: Mapped[bool] = mapped_column(Boolean, default=True)
    delimiter: Mapped[str] = mapped_column(String(1), default=",")
    id_column: Mapped[str] = mapped_column(String(255), default="1")
    encoding: Mapped[str] = mapped_column(String(32), default="utf-8")
    on_change: Mapped[str] = mapped_column(String(16), default=OnChange.REPLACE.value)
    delete_after: Mapped[bool] = mapped_column(Boolean, default=False)
    poll_interval_seconds: Mapped[int] = mapped_column(default=3600)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_poll_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # The process polling the source now, until when: two processes never poll one source.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ImportFile(Base):
    """A remote file as last ingested, so that it is never ingested twice: skipped while its
    fingerprint (ETag, or size and mtime) is unchanged, not applied when its content hash is."""

    __tablename__ = "import_files"
    __table_args__ = (UniqueConstraint("source_id", "path"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("import_sources.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(2048))
    fingerprint: Mapped[str | None] = mapped_column(String(256))
    sha256: Mapped[str | None] = mapped_column(String(64))
    audience_name: Mapped[str | None] = mapped_column(String(255))
    # apply_changes: the audience (id, generation) the file's ids were applied to; if it has
    # been deleted or replaced since, the file's previous content no longer stands in it.
    audience_id: Mapped[int | None] = mapped_column()
    audience_generation: Mapped[int | None] = mapped_column()
    ingested_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A file whose content failed is not read again until its fingerprint changes.
    failed_fingerprint: Mapped[str | None] = mapped_column(String(256))


class ImportFileMember(Base):
    """The ids of a file as last ingested (sources in apply_changes mode): what a changed file
    is compared with. No foreign key, for the reason AudienceMember has none; deleted with
    their source by clarion.imports.service."""

    __tablename__ = "import_file_members"

    # The type of import_files.id, which it holds (as its migration created it).
    file_id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    member_id: Mapped[str] = mapped_column(String(512), primary_key=True)


class ImportRun(Base):
    """One file read (or one failed attempt to reach the source), for the run history."""

    __tablename__ = "import_runs"
    __table_args__ = (Index("ix_import_runs_source_started", "source_id", "started_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("import_sources.id", ondelete="CASCADE"))
    path: Mapped[str | None] = mapped_column(String(2048))
    audience_name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING.value)
    lines_read: Mapped[int] = mapped_column(default=0)
    ids_accepted: Mapped[int] = mapped_column(default=0)
    ids_rejected: Mapped[int] = mapped_column(default=0)
    first_rejections: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonValue)
    # The audience's size once the file applied; apply_changes also counts what changed.
    nb_ids: Mapped[int | None] = mapped_column()
    added: Mapped[int | None] = mapped_column()
    removed: Mapped[int | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(String(1024))
    indexing_token: Mapped[str | None] = mapped_column(String(36))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
