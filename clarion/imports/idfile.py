"""Reading ids out of a delimited text file, streamed chunk by chunk in bounded memory.

A file that cannot be trusted as a whole (binary content, bad encoding, a line with a different
number of fields, mixed delimiters, a missing id column) fails with the line where it went
wrong, so that nothing of it is applied. A single bad id (empty, too long, not the kind's
format) is rejected and counted, and the rest of the file is used.

Quoted fields may hold the delimiter but not a line break: ids never span lines.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from clarion.audiences.models import AudienceKind

MAX_ID_LENGTH = 512
# A line, in bytes without its line break. A row holds the id (512 characters at most, 2 KiB in
# UTF-8, 4 KiB quoted with its quotes doubled) and the row's other columns: 64 KiB leaves room
# for wide CRM exports (a hundred 500-byte columns) while no unfinished line is buffered past
# it, so a file without line breaks cannot grow memory (or the parser's per-chunk copy of the
# unfinished line) with the upload.
MAX_LINE_BYTES = 64 * 1024
FIRST_REJECTIONS_KEPT = 10
# Delimiters seen in the wild: one of them inside an id means the file mixes them.
COMMON_DELIMITERS = (",", ";", "\t", "|")

MAX_LENGTH = {
    AudienceKind.CUSTOM_IDS: MAX_ID_LENGTH,
    AudienceKind.INSTALL_IDS: 128,
    AudienceKind.ADVERTISING_IDS: 36,
}
_TOO_LONG = (
    f"line longer than {MAX_LINE_BYTES} bytes (a line holds one id of at most {MAX_ID_LENGTH} "
    "characters and the other columns of its row)"
)
# IDFA / GAID: a UUID.
_ADVERTISING_ID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"


def _valid_id(kind: AudienceKind, other_delimiters: list[str]) -> re.Pattern[str]:
    """Custom user ids and install ids are free text without control characters, spaces or
    the other common delimiters (one of those inside an id means the file mixes them).
    Unicode spaces are spaces too: the fast path splits on them."""
    if kind is AudienceKind.ADVERTISING_IDS:
        return re.compile(_ADVERTISING_ID)
    others = "".join(re.escape(d) for d in other_delimiters)
    return re.compile(rf"[^\x00-\x20\x7f-\x9f\s{others}]{{1,{MAX_LENGTH[kind]}}}")


def _long_line(block: bytes) -> int:
    """Where the first line over MAX_LINE_BYTES starts in `block`, or -1. Each step jumps to
    the last line break within MAX_LINE_BYTES of a line's start: a few C-speed searches per
    256 KiB block (a regular expression tried at every offset costs half the fast path's time)."""
    start = 0
    while len(block) - start > MAX_LINE_BYTES:
        end = block.rfind(b"\n", start, start + MAX_LINE_BYTES + 1)
        if end < 0:
            return start
        start = end + 1
    return -1


class IdFileError(Exception):
    """The file as a whole cannot be used."""

    def __init__(self, line: int | None, reason: str) -> None:
        """`line`: the line at fault, None where no line is (an empty file)."""
        super().__init__(reason if line is None else f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class IdFileFormat:
    kind: AudienceKind
    header: bool = True
    delimiter: str = ","
    # The id column: its name in the header, or its 1-based position.
    column: str = "1"
    encoding: str = "utf-8"


@dataclass
class Rejection:
    line: int
    reason: str


@dataclass
class IdFileParser:
    """Feed it the file's bytes in chunks of any size; each call returns the valid ids of the
    complete lines received so far."""

    format: IdFileFormat
    lines_read: int = 0  # non-blank lines, header included
    accepted: int = 0
    rejected: int = 0
    first_rejections: list[Rejection] = field(default_factory=list)
    _pending: bytes = b""
    _line: int = 0  # the number of the last line handled, blank or not
    _column: int | None = None  # 0-based, once known
    _fields: int | None = None  # fields per line, from the header or the first line
    _bytes: int = 0

    def __post_init__(self) -> None:
        codecs.lookup(self.format.encoding)  # LookupError for an unknown encoding, at once
        self._others = [d for d in COMMON_DELIMITERS if d != self.format.delimiter]
        self._valid = _valid_id(self.format.kind, self._others)
        # Every line: spaces, optionally an id and spaces, then the line break. Every quantifier
        # is possessive (the id's within an atomic group), so the matcher never goes back over a
        # character: linear in the block whatever its content. Greedy instead, the two runs of
        # spaces around an optional id split a blank line of n spaces n+1 ways, each retried at
        # a later failure: x3 per blank line of two spaces, 27 s for one 64 KiB line of spaces.
        self._clean_block = re.compile(
            rf"(?:[ \r]*+(?:(?>{self._valid.pattern})[ \r]*+)?+(?:\n|\Z))*+"
        )

    def feed(self, chunk: bytes) -> list[str]:
        if not chunk:
            return []
        self._bytes += len(chunk)
        data = self._pending + chunk
        end = data.rfind(b"\n")
        ids = self._lines(data[: end + 1]) if end >= 0 else []
        self._pending = data[end + 1 :]
        if len(self._pending) > MAX_LINE_BYTES:  # the unfinished line is too long already
            raise IdFileError(self._line + 1, _TOO_LONG)
        return ids

    def close(self) -> list[str]:
        """The ids of the last line (which may lack its line break); fails on an empty file."""
        data, self._pending = self._pending, b""
        ids = self._lines(data) if data else []
        if self._bytes == 0:
            raise IdFileError(None, "the file is empty")
        if self._fields is None:  # blank lines only: as empty as no byte at all
            reason = "no header line" if self.format.header else "no line but blank ones"
            raise IdFileError(self._line, reason)
        return ids

    def _lines(self, block: bytes) -> list[str]:
        first = self._line + 1
        long = _long_line(block)
        cut = len(block) if long < 0 else long
        nul = block.find(b"\x00", 0, cut)
        if nul >= 0:
            cut = nul
        try:
            text = block[:cut].decode(self.format.encoding)
        except UnicodeDecodeError as exc:
            bad, reason = exc.start, f"not {self.format.encoding} text ({exc.reason})"
        else:
            bad = cut if cut < len(block) else -1
            reason = "binary content (a NUL byte)" if cut == nul else _TOO_LONG
        if bad >= 0:
            # The lines before the bad one first: the error reported is the file's first one,
            # however the file was cut into chunks.
            start = block.rfind(b"\n", 0, bad) + 1
            if start:
                self._lines(block[:start])
            raise IdFileError(first + block.count(b"\n", 0, start), reason)
        if first == 1 and text.startswith("\ufeff"):
            text = text[1:]  # byte order mark
        if (
            self._fields == 1
            and '"' not in text
            and self.format.delimiter not in text
            and self._clean_block.fullmatch(text)
        ):
            # The common case, at C speed: every line one valid id (or blank) with no quotes
            # and no delimiter (those need the csv module), and ids hold no white space, so
            # splitting on it yields exactly the ids.
            ids = text.split()
            self._line += text.count("\n") + (not text.endswith("\n"))
            self.lines_read += len(ids)
            self.accepted += len(ids)
            return ids
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the block ends with a line break
        self._line += len(lines)
        if self._fields is None:
            lines = self._first_line(lines, first)
            first = self._line - len(lines) + 1
        if not lines:
            return []
        if self._fields == 1:
            return self._single_column(lines, first)
        return self._columns(lines, first)

    def _first_line(self, lines: list[str], first: int) -> list[str]:
        """Learn the number of fields (and, from a header, the id column) from the first
        non-blank line; returns the lines after it that carry ids."""
        for index, raw in enumerate(lines):
            if not raw.strip():
                continue
            number = first + index
            fields = self._split(raw, number)
            self._fields = len(fields)
            self._column = self._column_index(fields if self.format.header else None, number)
            if self.format.header:
                self.lines_read += 1
                return lines[index + 1 :]
            return lines[index:]
        return []

    def _column_index(self, header: list[str] | None, line: int) -> int:
        wanted = self.format.column.strip()
        assert self._fields is not None
        if wanted.isdecimal():
            position = int(wanted)
            if not 1 <= position <= self._fields:
                raise IdFileError(
                    line, f"no column {position}: the file has {self._fields} column(s)"
                )
            return position - 1
        if header is None:
            raise IdFileError(line, f"column {wanted!r} is named but the file has no header")
        names = [name.strip() for name in header]
        if wanted not in names:
            raise IdFileError(line, f"no column {wanted!r} in the header ({', '.join(names)})")
        return names.index(wanted)

    def _split(self, line: str, number: int) -> list[str]:
        try:
            return next(csv.reader([line], delimiter=self.format.delimiter))
        except csv.Error as exc:  # a bare carriage return, a field over the csv module's limit
            raise IdFileError(number, f"not a delimited line ({exc})") from None

    def _single_column(self, lines: list[str], first: int) -> list[str]:
        delimiter = self.format.delimiter
        ids = []
        for index, raw in enumerate(lines):
            value = raw.strip()
            if not value:
                continue
            self.lines_read += 1
            if delimiter in value or value[0] == '"':
                fields = self._split(value, first + index)
                if len(fields) != 1:
                    raise IdFileError(first + index, f"{len(fields)} fields where the file has 1")
                value = fields[0].strip()
            ids.append(self._check(value, first + index))
        return [value for value in ids if value]

    def _columns(self, lines: list[str], first: int) -> list[str]:
        expected = self._fields
        column = self._column
        assert column is not None
        ids = []
        numbered = [(first + i, raw) for i, raw in enumerate(lines) if raw.strip()]
        rows: Iterable[list[str]]
        try:
            rows = list(csv.reader([raw for _, raw in numbered], delimiter=self.format.delimiter))
        except csv.Error:
            rows = []
        if len(rows) != len(numbered):
            # A quote left open ran on into the next lines (ids never span lines), or a line is
            # not CSV: line by line, so that each line stands alone and errors come in order.
            rows = (self._split(raw, number) for number, raw in numbered)
        for (number, _), row in zip(numbered, rows, strict=True):
            self.lines_read += 1
            if len(row) != expected:
                raise IdFileError(number, f"{len(row)} fields where the file has {expected}")
            ids.append(self._check(row[column].strip(), number))
        return [value for value in ids if value]

    def _check(self, value: str, line: int) -> str:
        """The id, or "" once rejected; a delimiter of another kind inside fails the file."""
        if self._valid.fullmatch(value):
            self.accepted += 1
            return value
        for other in self._others:
            if other in value:
                raise IdFileError(
                    line,
                    f"mixed delimiters: {other!r} in a file delimited by {self.format.delimiter!r}",
                )
        if not value:
            reason = "empty id"
        elif len(value) > MAX_LENGTH[self.format.kind]:
            reason = f"id longer than {MAX_LENGTH[self.format.kind]} characters"
        else:
            reason = f"not a valid {self.format.kind.value[:-1].replace('_', ' ')}"
        self.rejected += 1
        if len(self.first_rejections) < FIRST_REJECTIONS_KEPT:
            self.first_rejections.append(Rejection(line, reason))
        return ""
