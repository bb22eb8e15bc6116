"""The id file parser on its own: what a file yields (ids, counts, rejections with their lines),
what fails it as a whole (with the line where it went wrong), and that neither depends on how
the file is cut into chunks, nor on which of the fast and slow paths read a block."""

from __future__ import annotations

import itertools
import random
import re._constants as sre  # type: ignore[import-not-found]  # no stubs: the parse tree
import re._parser as sre_parse  # type: ignore[import-not-found]
from collections.abc import Iterable
from typing import Any

import pytest

from clarion.audiences.models import AudienceKind
from clarion.imports.idfile import (
    MAX_LINE_BYTES,
    IdFileError,
    IdFileFormat,
    IdFileParser,
    Rejection,
)

CUSTOM = AudienceKind.CUSTOM_IDS
ADVERTISING = AudienceKind.ADVERTISING_IDS
INSTALL = AudienceKind.INSTALL_IDS
UUID = "6f1c1c4e-2b44-4c09-9a53-0d8e5e7b1f10"


def read(
    data: bytes, chunks: Iterable[bytes] | None = None, **options: Any
) -> tuple[list[str], IdFileParser]:
    """The ids of the file fed in the given chunks (the whole file in one by default)."""
    options.setdefault("kind", CUSTOM)
    parser = IdFileParser(IdFileFormat(**options))
    ids = []
    for chunk in [data] if chunks is None else chunks:
        ids += parser.feed(chunk)
    ids += parser.close()
    return ids, parser


def ids_of(data: bytes, **options: Any) -> list[str]:
    return read(data, **options)[0]


def error_of(data: bytes, **options: Any) -> tuple[int | None, str]:
    with pytest.raises(IdFileError) as caught:
        read(data, **options)
    return caught.value.line, caught.value.reason


# What a good file yields -------------------------------------------------------------------------


def test_a_one_column_file_yields_its_ids_after_the_header() -> None:
    ids, parser = read(b"id\nalice\nbob\n")

    assert ids == ["alice", "bob"]
    assert (parser.lines_read, parser.accepted, parser.rejected) == (3, 2, 0)


def test_without_header_the_first_line_is_an_id() -> None:
    ids, parser = read(b"alice\nbob\n", header=False)

    assert ids == ["alice", "bob"]
    assert parser.lines_read == 2


def test_the_id_column_is_found_by_name_or_by_position() -> None:
    data = b"email,id,score\nx@y,alice,1\nz@y,bob,2\n"

    assert ids_of(data, column="id") == ["alice", "bob"]
    assert ids_of(data, column=" id ") == ["alice", "bob"]
    assert ids_of(data, column="2") == ["alice", "bob"]
    assert ids_of(b"x@y;alice\n", header=False, delimiter=";", column="2") == ["alice"]


def test_feed_returns_the_ids_of_complete_lines_and_close_the_last_one() -> None:
    parser = IdFileParser(IdFileFormat(CUSTOM))

    assert parser.feed(b"id\nali") == []
    assert parser.feed(b"ce\nbo") == ["alice"]
    assert parser.feed(b"b") == []
    assert parser.close() == ["bob"]


def test_blank_lines_are_skipped_but_numbered() -> None:
    ids, parser = read(b"\nid\n\n  \nalice\n\r\n\nbad id\n")

    assert ids == ["alice"]
    assert parser.lines_read == 3  # header, alice, "bad id"
    assert parser.first_rejections == [Rejection(8, "not a valid custom id")]


def test_crlf_line_ends_a_byte_order_mark_and_a_last_line_without_break_are_read() -> None:
    data = "\ufeffid,score\r\nalice,1\r\nbob,2".encode()

    assert ids_of(data, column="id") == ["alice", "bob"]
    assert ids_of(b"\xef\xbb\xbfalice\r\nbob", header=False) == ["alice", "bob"]


def test_white_space_around_an_id_is_trimmed() -> None:
    assert ids_of(b"id\n  alice \t\n") == ["alice"]
    assert ids_of(b"id,n\n bob ,1\n") == ["bob"]


def test_a_quoted_field_may_hold_the_delimiter() -> None:
    assert ids_of(b'id\n"a,b"\n"c"\n') == ["a,b", "c"]
    assert ids_of(b'id,name\n"a,b","Doe, Jane"\n', column="id") == ["a,b"]


def test_other_delimiters_and_encodings() -> None:
    assert ids_of(b"id\tn\nalice\t1\n", delimiter="\t") == ["alice"]
    assert ids_of(b"id|n\nalice|1\n", delimiter="|", column="id") == ["alice"]
    assert ids_of("id\ncafé\n".encode("latin-1"), encoding="latin-1") == ["café"]


def test_an_unknown_encoding_fails_at_once() -> None:
    with pytest.raises(LookupError):
        IdFileParser(IdFileFormat(CUSTOM, encoding="no-such-encoding"))


def test_advertising_ids_are_uuids_in_either_case() -> None:
    ids, parser = read(f"idfa\n{UUID}\n{UUID.upper()}\nnot-a-uuid\n".encode(), kind=ADVERTISING)

    assert ids == [UUID, UUID.upper()]
    assert parser.first_rejections == [Rejection(4, "not a valid advertising id")]


# What is rejected, line by line --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "longest"),
    [(CUSTOM, 512), (INSTALL, 128)],
)
def test_an_id_longer_than_its_kind_allows_is_rejected(kind: AudienceKind, longest: int) -> None:
    ok, long = "a" * longest, "a" * (longest + 1)
    ids, parser = read(f"id\n{ok}\n{long}\n".encode(), kind=kind)

    assert ids == [ok]
    reason = f"id longer than {longest} characters"
    assert (parser.rejected, parser.first_rejections) == (1, [Rejection(3, reason)])


@pytest.mark.parametrize(
    "bad",
    ["a b", "a\x01b", "a\x7fb", "a\x85b", "a\u00a0b", "a\u2028b", "a\u3000b"],
    ids=["space", "control", "delete", "next-line", "no-break-space", "line-sep", "ideographic"],
)
def test_an_id_with_a_space_or_a_control_character_is_rejected(bad: str) -> None:
    ids, parser = read(f"id\nalice\n{bad}\nbob\n".encode())

    assert ids == ["alice", "bob"]
    assert parser.first_rejections == [Rejection(3, "not a valid custom id")]


def test_an_empty_id_in_a_line_of_several_fields_is_rejected() -> None:
    ids, parser = read(b'id,n\n,1\n  ,2\n"",3\nalice,4\n')

    assert ids == ["alice"]
    assert parser.first_rejections == [Rejection(n, "empty id") for n in (2, 3, 4)]


def test_only_the_first_ten_rejections_are_kept_but_all_are_counted() -> None:
    data = b"id\n" + b"bad id\n" * 12 + b"alice\n"
    ids, parser = read(data)

    assert ids == ["alice"]
    assert (parser.lines_read, parser.accepted, parser.rejected) == (14, 1, 12)
    assert [r.line for r in parser.first_rejections] == list(range(2, 12))


# What fails the whole file -----------------------------------------------------------------------


def test_an_empty_file_fails() -> None:
    assert error_of(b"") == (None, "the file is empty")
    assert error_of(b"", header=False) == (None, "the file is empty")


def test_a_file_of_blank_lines_fails() -> None:
    assert error_of(b"\n \r\n\n") == (3, "no header line")
    assert error_of(b"\n \r\n\n", header=False) == (3, "no line but blank ones")


def test_binary_content_fails_at_its_line() -> None:
    assert error_of(b"id\nalice\nb\x00b\nbob\n") == (3, "binary content (a NUL byte)")
    assert error_of(b"id\nalice\n\x00") == (3, "binary content (a NUL byte)")


def test_bytes_not_in_the_encoding_fail_at_their_line() -> None:
    line, reason = error_of(b"id\nalice\n\n\xff\xfe\n")

    assert line == 4
    assert reason.startswith("not utf-8 text (")


def test_a_line_with_another_number_of_fields_fails() -> None:
    assert error_of(b"id,n\nalice,1\nbob\n") == (3, "1 fields where the file has 2")
    assert error_of(b"id,n\nalice,1\nbob,2,\n") == (3, "3 fields where the file has 2")
    assert error_of(b"alice\nbob,2\n", header=False) == (2, "2 fields where the file has 1")


@pytest.mark.parametrize(("delimiter", "other"), [(",", ";"), (",", "\t"), (",", "|"), (";", ",")])
def test_another_delimiter_in_an_id_fails_the_file(delimiter: str, other: str) -> None:
    data = f"id\nalice\nbob{other}1\n".encode()

    reason = f"mixed delimiters: {other!r} in a file delimited by {delimiter!r}"
    assert error_of(data, delimiter=delimiter) == (3, reason)


def test_another_delimiter_in_a_quoted_id_fails_the_file() -> None:
    assert error_of(b'id,n\nalice,1\n"b;c",2\n')[0] == 3


def test_a_named_column_missing_from_the_header_fails() -> None:
    assert error_of(b"\nemail,score\na,1\n", column="id") == (
        2,
        "no column 'id' in the header (email, score)",
    )


def test_a_column_position_beyond_the_fields_fails() -> None:
    assert error_of(b"a,1\n", header=False, column="3") == (
        1,
        "no column 3: the file has 2 column(s)",
    )
    assert error_of(b"\nid\na\n", column="0") == (2, "no column 0: the file has 1 column(s)")


def test_a_named_column_without_header_fails() -> None:
    assert error_of(b"\nalice\n", header=False, column="id") == (
        2,
        "column 'id' is named but the file has no header",
    )


def test_a_column_name_of_digits_that_are_not_decimal_is_a_name() -> None:
    assert error_of(b"id\na\n", column="\u00b2")[0] == 1  # "²": not a position, not a crash


def test_a_quote_left_open_ends_with_its_line() -> None:
    ids, parser = read(b'id,n\nalice,"open\nbob,2\n"carol",3\n')

    assert ids == ["alice", "bob", "carol"]
    assert parser.lines_read == 4


def test_a_line_the_csv_module_cannot_read_fails_at_its_line() -> None:
    line, reason = error_of(b"id,n\nalice,1\nbob,2\rx\n")

    assert line == 3
    assert reason.startswith("not a delimited line")


def test_the_first_error_of_the_file_is_the_one_reported() -> None:
    # A bad line before binary content or bad bytes, in the same chunk.
    assert error_of(b"id,n\na,1,2\nb,\x00\n") == (2, "3 fields where the file has 2")
    assert error_of(b"id\na;b\n\xff\n")[0] == 2


@pytest.mark.parametrize(
    "line",
    [b" " * (MAX_LINE_BYTES + 1), b"x" * MAX_LINE_BYTES + b"\r", b"a," * (MAX_LINE_BYTES // 2 + 1)],
    ids=["spaces", "one-id-and-cr", "columns"],
)
@pytest.mark.parametrize("ending", [b"\nbob\n", b""], ids=["then-more", "last"])
def test_a_line_over_the_cap_fails_at_its_line_however_the_file_arrives(
    line: bytes, ending: bytes
) -> None:
    data = b"id\nalice\n" + line + ending
    cut = random.Random(len(data)).randrange(1, len(data))
    for chunks in (
        [data],
        [data[:cut], data[cut:]],
        [data[i : i + 1000] for i in range(0, len(data), 1000)],
    ):
        with pytest.raises(IdFileError) as caught:
            read(data, chunks)
        assert caught.value.line == 3
        assert caught.value.reason.startswith(f"line longer than {MAX_LINE_BYTES} bytes")


def test_a_line_at_the_cap_is_read() -> None:
    padded = b" " * (MAX_LINE_BYTES - len("alice")) + b"alice"
    assert ids_of(b"id\n" + padded + b"\n" + b" " * MAX_LINE_BYTES + b"\nbob") == ["alice", "bob"]


# Inputs on which the fast path's former expression backtracked: blank lines holding spaces
# before a line that is not one id (each such blank line tripled its time: forty of them, 3**40
# steps, centuries), and a line of spaces under the cap before one (quadratic: ~20 s).
BACKTRACKED = [
    b"  \n" * 40 + b"a b\nbob\n",
    b" \r\n" * 40 + b"alice\n" + b"  \n" * 40 + b"\x01\nbob\n",
    b" " * (MAX_LINE_BYTES - 10) + b"a b\nbob\n",
]


@pytest.mark.parametrize("data", BACKTRACKED, ids=["blank-lines", "blank-crlf", "long-blank"])
def test_input_that_made_the_old_expression_backtrack_is_read(data: bytes) -> None:
    """Finishes at once; the former expression did not finish on any of these in minutes."""
    # The header alone first: the blocks after it, in one column, go to the fast path.
    ids, parser = read(b"id\n" + data, [b"id\n", data])

    assert ids[-1] == "bob"
    assert parser.rejected == 1


def test_the_fast_path_expression_cannot_backtrack() -> None:
    """Linear by construction: each quantifier that could give characters back (a variable
    count) is possessive or the whole of an atomic group, which gives nothing back, so the
    matcher reads each character once. (The one alternation, a line break or the end, has
    alternatives that never both match.)"""

    def backtracking(pattern: sre_parse.SubPattern) -> list[str]:
        found: list[str] = []
        for op, av in pattern:
            if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                low, high, inner = av
                if low != high:
                    found.append(f"{op} {low}..{high}")
                found += backtracking(inner)
            elif op is sre.ATOMIC_GROUP:
                inner_items = list(av)
                if len(inner_items) == 1 and inner_items[0][0] in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                    found += backtracking(av[0][1][2])  # the repeat itself gives nothing back
                else:
                    found += backtracking(av)
            elif op is sre.POSSESSIVE_REPEAT:
                found += backtracking(av[2])
            elif op is sre.SUBPATTERN:
                found += backtracking(av[3])
            elif op is sre.BRANCH:
                for alternative in av[1]:
                    found += backtracking(alternative)
        return found

    for kind in AudienceKind:
        for delimiter in (",", ";"):
            parser = IdFileParser(IdFileFormat(kind, delimiter=delimiter))
            pattern = parser._clean_block.pattern
            assert backtracking(sre_parse.parse(pattern)) == [], pattern


# Chunks and the fast path ------------------------------------------------------------------------


def outcome(data: bytes, chunks: Iterable[bytes], **options: Any) -> object:
    """What a file comes to: its ids and counts, or the error with its line."""
    try:
        ids, parser = read(data, chunks, **options)
    except IdFileError as exc:
        return ("failed", exc.line, exc.reason)
    counts = (parser.lines_read, parser.accepted, parser.rejected)
    return (ids, counts, parser.first_rejections)


def chunkings(data: bytes, rng: random.Random) -> list[list[bytes]]:
    """The file in one chunk, byte by byte, line by line, and cut at random."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
    edges = [0, *cuts, len(data)]
    return [
        [data],
        [data[i : i + 1] for i in range(len(data))],
        data.splitlines(keepends=True),
        [data[a:b] for a, b in itertools.pairwise(edges)],
    ]


CLEAN = ["alice", "bob", "u-1", "42", "Émile", "x" * 512, "  padded ", ""]
ODD = [
    '"quoted"',
    '"a,b"',
    "a,b",
    "a b",
    "a\u00a0b",
    "a;b",
    "x" * 513,
    '"open',
    "\x00",
    "\udcff",  # a lone byte 0xff
    "a\rb",
]


def random_file(rng: random.Random, columns: int, header: bool) -> bytes:
    """Mostly good lines, a few odd ones: bad ids, quotes, bad bytes, other delimiters."""
    lines = [",".join(["id", *["n"] * (columns - 1)])] if header else []
    for _ in range(rng.randint(1, 30)):
        fields = [rng.choice(ODD if rng.random() < 0.08 else CLEAN) for _ in range(columns)]
        lines.append(",".join(fields))
    text = rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n"])
    return text.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("columns", [1, 2])
@pytest.mark.parametrize("header", [True, False])
def test_chunk_sizes_change_neither_ids_nor_counts_nor_errors(columns: int, header: bool) -> None:
    rng = random.Random(columns * 10 + header)
    for _ in range(250):
        data = random_file(rng, columns, header)
        expected = outcome(data, [data], header=header)
        for chunks in chunkings(data, rng):
            assert outcome(data, chunks, header=header) == expected, data


@pytest.mark.parametrize(
    "data",
    [
        b"id\nalice\nbob\n",
        b"\xef\xbb\xbfid\r\nalice\r\n\r\nbob",
        b'id,n\n"a,b",1\n,2\nbad id,3\nc,4\n',
        b"id\nalice\nbob;1\n",
        b"id\nalice\n\xff\n",
        b"id\n\nalice\nb\x00\n",
        b"\n\n",
        b'id,n\nalice,"open\nbob,2\n',
        b"id,n\nalice,1\nbob,2\rx\n",
    ],
)
def test_chunk_sizes_change_nothing_for_each_rule(data: bytes) -> None:
    expected = outcome(data, [data], column="1")
    for chunks in chunkings(data, random.Random(7)):
        assert outcome(data, chunks, column="1") == expected


@pytest.mark.parametrize(
    "odd",
    ['"quoted"', '"a,b"', "a,b", "a\u00a0b", "a\u2028b", "bad id", " \t padded\t", '"open'],
)
def test_the_fast_path_reads_as_the_slow_path(odd: str) -> None:
    clean = "".join(f"user-{n}\n" for n in range(50))
    tail = f"more-1\n{odd}\nmore-2\n"
    # After the header the file has one column, so clean blocks take the fast path.
    assert IdFileParser(IdFileFormat(CUSTOM))._clean_block.fullmatch(clean)
    data = f"id\n{clean}{tail}".encode()
    cut = [b"id\n", clean.encode(), tail.encode()]

    fast_then_slow = outcome(data, cut)
    slow_only = outcome(data, [data])  # one block, with the header: the slow path throughout

    assert fast_then_slow == slow_only
