"""What the providers answered a worker, on the machine's disk the moment it is known, so that a
worker killed before recording it sends again only what was on the wire (decision 0047).

Without it, a kill -9 loses every answer not yet committed to the database: the worker that takes
the batch over cannot tell them from requests never answered and sends them all again. On this
2-core machine a recording commits 351 ms (mean) after its answers came in, and 4 kills of a
worker during a 100,000-install campaign re-sent 3.81 % of it; the issue allows 0.5 %.

Each batch a worker sends has a file in `delivery_journal_dir` named after the batch and its send
(`journal_key`: batch ids alone repeat across databases), opened with O_APPEND. Its first line
says whether the batch's pushes were re-sends already (a retry of unanswered requests, a take-over
without a journal); then each chunk appends, with one write() each, the positions it puts on the
wire before sending them and their answers when they come.
A process killed with -9 leaves what it wrote in the page cache, whole for every other process on
the machine; nothing is fsynced (a write costs a few microseconds), so a crash of the machine
itself loses the file and its batches are re-sent as without a journal. A worker that takes a
batch over reads its file: answered positions are recorded without being sent, positions on the
wire and unanswered are sent again and counted as re-sent, the others are sent for the first time.
A worker on another machine finds no file and counts every accepted push of the batch as re-sent,
as before. The file goes once the batch is done; `sweep` removes the files nobody finished here
(a batch finished on another machine).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from clarion.delivery.providers.base import DeliveryResult, Outcome

log = logging.getLogger(__name__)

_SUFFIX = ".jsonl"
# A journal is a few kB (a line per chunk of 32 devices); a file far larger is not one of ours.
_MAX_READ_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class Journaled:
    """What a batch's journal says of its earlier attempts on this machine."""

    # The pushes of the batch were re-sends from the start: every one sent is counted.
    resend: bool
    answers: dict[int, DeliveryResult] = field(default_factory=dict)
    on_wire: set[int] = field(default_factory=set)  # put on the wire, answered or not

    @property
    def unanswered(self) -> set[int]:
        return self.on_wire - self.answers.keys()


def journal_key(batch_id: int, send_token: str) -> str:
    """A batch's file name: its id, and its send's token hashed (a fixed alphabet and length)."""
    return f"{batch_id}-{hashlib.blake2b(send_token.encode(), digest_size=8).hexdigest()}"


class AnswerJournal:
    """One per worker process; `folder` None: journals nothing (and reads nothing)."""

    def __init__(self, folder: Path | None) -> None:
        self._folder = folder
        self._files: dict[str, int] = {}  # journal_key -> its open file descriptor
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def enabled(self) -> bool:
        return self._folder is not None

    def _path(self, key: str) -> Path:
        assert self._folder is not None
        return self._folder / f"{key}{_SUFFIX}"

    def on_wire(self, key: str, positions: Sequence[int], *, resend: bool) -> None:
        """Before these positions' requests are written: `resend` goes into a new file's
        first line (the batch's pushes are re-sends whatever the journal says)."""
        if self._folder is None:
            return
        line = orjson.dumps({"wire": list(positions)}) + b"\n"
        fd = self._files.get(key)
        if fd is None:
            try:
                fd = os.open(
                    self._path(key),
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as exc:
                log.warning("delivery journal %s unavailable: %s", key, exc)
                return
            self._files[key] = fd
            if os.fstat(fd).st_size == 0:
                line = orjson.dumps({"resend": resend}) + b"\n" + line
        self._write(key, fd, line)

    def answered(
        self, key: str, positions: Sequence[int], results: Sequence[DeliveryResult]
    ) -> bool:
        """These positions' answers, a line for each distinct result (a chunk's are mostly
        one: accepted). Whether they are written (a take-over will not send them again)."""
        fd = self._files.get(key)
        if fd is None:
            return False
        alike: dict[DeliveryResult, list[int]] = defaultdict(list)
        for position, result in zip(positions, results, strict=True):
            alike[result].append(position)
        return self._write(
            key,
            fd,
            b"".join(
                orjson.dumps(
                    {
                        "answered": answered,
                        "outcome": result.outcome.value,
                        "reason": result.reason,
                        "status": result.status,
                        "retry_after": result.retry_after,
                        "unknown": result.unknown_outcome,
                    }
                )
                + b"\n"
                for result, answered in alike.items()
            ),
        )

    def _write(self, key: str, fd: int, data: bytes) -> bool:
        try:
            if os.write(fd, data) == len(data):
                return True
            raise OSError("short write (disk full?)")
        except OSError as exc:
            # A journal missing lines would make a take-over send pushes without counting them
            # as re-sent: no journal at all is the safe fallback.
            log.warning("delivery journal %s dropped: %s", key, exc)
            self.forget(key)
            return False

    def read(self, key: str) -> Journaled | None:
        """The batch's journal on this machine (blocking: call it off the event loop); None when
        there is none, or it is not whole enough to trust (no first line)."""
        if self._folder is None:
            return None
        try:
            with self._path(key).open("rb") as file:
                data = file.read(_MAX_READ_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("delivery journal %s unreadable: %s", key, exc)
            return None
        if len(data) > _MAX_READ_BYTES:
            return None
        lines = data.splitlines()
        journaled: Journaled | None = None
        for number, raw in enumerate(lines, start=1):
            try:
                entry = orjson.loads(raw)
                if journaled is None:
                    journaled = Journaled(resend=_flag(entry["resend"]))
                elif "wire" in entry:
                    journaled.on_wire.update(_positions(entry["wire"]))
                else:
                    result = DeliveryResult(
                        Outcome(entry["outcome"]),
                        reason=entry["reason"],
                        status=entry["status"],
                        retry_after=entry["retry_after"],
                        unknown_outcome=_flag(entry["unknown"]),
                    )
                    for position in _positions(entry["answered"]):
                        journaled.answers[position] = result
            except (ValueError, KeyError, TypeError):
                if number == len(lines):
                    break  # the last line of a process killed mid-write
                log.warning("delivery journal %s is not one: ignored", key)
                return None
        return journaled

    def let_go(self, key: str) -> None:
        """Stop writing the batch's journal and keep it (another worker may take it over)."""
        fd = self._files.pop(key, None)
        if fd is not None:
            os.close(fd)

    def forget(self, key: str) -> None:
        """The batch is done (or its journal unusable): its file goes."""
        self.let_go(key)
        if self._folder is not None:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("delivery journal %s not removed: %s", key, exc)

    def close(self) -> None:
        """The worker stops: every file kept for whoever takes its batches over."""
        for key in list(self._files):
            self.let_go(key)

    def sweep(self, older_than_seconds: float, *, now: float | None = None) -> int:
        """Removes journals untouched for this long (blocking): batches finished on another
        machine, or never taken over. Returns how many."""
        if self._folder is None:
            return 0
        limit = (time.time() if now is None else now) - older_than_seconds
        removed = 0
        for path in self._folder.glob(f"*{_SUFFIX}"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink(missing_ok=True)
                    removed += 1
            except OSError:
                continue
        return removed


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _positions(value: object) -> list[int]:
    if not isinstance(value, list) or not all(type(p) is int for p in value):
        raise TypeError(value)
    return value
