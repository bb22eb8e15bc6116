"""The targeting query language (spec §5): JSON in, a small typed tree out, checked once.

Grammar, semantics and error messages: docs/targeting.md. SQL compilation is in `compile.py`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

Path = tuple[str | int, ...]


class QueryError(ValueError):
    """A malformed query; `path` locates the bad node inside `query` (keys and list indexes)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{'.'.join(map(str, path))}: {message}" if path else message)
        self.path = path
        self.message = message


class Op(StrEnum):
    EQ = "$eq"
    NEQ = "$neq"
    GT = "$gt"
    GTE = "$gte"
    LT = "$lt"
    LTE = "$lte"
    IN = "$in"
    NIN = "$notIn"
    EXISTS = "$exists"


# Aliases accepted on input ($ne, $nin: Mongo's spellings, listed in spec §5.2).
_OPERATORS: dict[str, Op] = {op.value: op for op in Op} | {"$ne": Op.NEQ, "$nin": Op.NIN}
ORDERING = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE})


class NativeKind(StrEnum):
    TEXT = "text"
    LANGUAGE = "language"  # compared case-insensitively, '_' read as '-' ("pt_BR" = "pt-br")
    REGION = "region"  # compared case-insensitively
    DATE = "date"
    BOOL = "bool"


# `b.<name>` -> (Installation attribute, how its values compare).
NATIVE_FIELDS: dict[str, tuple[str, NativeKind]] = {
    "language": ("language", NativeKind.LANGUAGE),
    "region": ("region", NativeKind.REGION),
    "app_version": ("app_version", NativeKind.TEXT),
    "os_version": ("os_version", NativeKind.TEXT),
    "device_model": ("device_model", NativeKind.TEXT),
    "timezone": ("timezone", NativeKind.TEXT),
    "custom_id": ("custom_id", NativeKind.TEXT),
    "install_date": ("created_at", NativeKind.DATE),
    "last_visit_date": ("last_seen_at", NativeKind.DATE),
    "is_push_optin": ("push_optin", NativeKind.BOOL),
}


@dataclass(frozen=True, slots=True)
class DateRef:
    """A point in time: absolute, or relative to the `now` the query is compiled at."""

    absolute: datetime | None = None
    before_now: timedelta = timedelta(0)

    def resolve(self, now: datetime) -> datetime:
        return self.absolute if self.absolute is not None else now - self.before_now


@dataclass(frozen=True, slots=True)
class Value:
    """A query value with each of its readings: `"2024-05-01"` is a string and also a date, a
    number is also a date (Unix seconds). A field compares with the reading of its own type,
    and a value with no reading of that type never matches (spec §5.2: not an error).
    All readings None is JSON `null`, which stands for "absent"."""

    text: str | None = None
    number: float | None = None
    flag: bool | None = None
    date: DateRef | None = None

    @property
    def is_null(self) -> bool:
        return self.text is None and self.number is None and self.flag is None


@dataclass(frozen=True, slots=True)
class Comparison:
    op: Op
    values: tuple[Value, ...] = ()  # one value, several for $in/$notIn, none for $exists
    present: bool = True  # $exists' argument


@dataclass(frozen=True, slots=True)
class AllOf:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Negation:
    child: Node


@dataclass(frozen=True, slots=True)
class AttributeTest:
    """`c.<name>` / `u.<name>`: a custom attribute of the installation's user."""

    name: str
    comparisons: tuple[Comparison, ...]


@dataclass(frozen=True, slots=True)
class NativeTest:
    """`b.<name>`: a column of the installation itself."""

    column: str
    kind: NativeKind
    comparisons: tuple[Comparison, ...]


class TagOp(StrEnum):
    CONTAINS = "$contains"
    CONTAINS_ANY = "$containsAny"
    EXISTS = "$exists"


@dataclass(frozen=True, slots=True)
class TagTest:
    """`t.<collection>` / `ut.<collection>`: a tag collection of the installation's user."""

    collection: str
    op: TagOp
    tags: tuple[str, ...] = ()
    present: bool = True


@dataclass(frozen=True, slots=True)
class EventTest:
    """`e.<name>` (SDK events of the installation) / `ue.<name>` (server events of its user).

    `label` filters which occurrences count; the aggregates then apply to those. No aggregate
    and no `exists` means "happened at least once"."""

    name: str  # as stored in tracked_events.name
    per_user: bool  # ue.: matched on custom_id; e.: on install_id
    exists: bool | None = None
    count: tuple[Comparison, ...] = ()
    first: tuple[Comparison, ...] = ()
    last: tuple[Comparison, ...] = ()
    label: tuple[Comparison, ...] = ()


Node = AllOf | AnyOf | Negation | AttributeTest | NativeTest | TagTest | EventTest

_FIELD = re.compile(r"(c|u|t|ut|e|ue|b)\.(.+)", re.DOTALL)
_ISO_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?"
)
_UNITS = {
    "s": "seconds",
    "m": "minutes",
    "h": "hours",
    "d": "days",
    "w": "weeks",
    "second": "seconds",
    "minute": "minutes",
    "hour": "hours",
    "day": "days",
    "week": "weeks",
}
_NOW_OFFSET = re.compile(r"now\s*(?:([+-])\s*(\d{1,5})\s*([smhdw]))?")
_AGO = re.compile(r"(\d{1,5})\s+(second|minute|hour|day|week)s?\s+ago")
DATE_FORMS = "an ISO 8601 date, Unix seconds, 'now-30d' or '30 days ago'"


def parse_date(raw: Any) -> DateRef | None:
    """The date reading of a JSON value, or None: ISO 8601 (no zone = UTC), Unix seconds,
    `now`, `now-30d` / `now+2h` (s, m, h, d, w), or `30 days ago` (second … week)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        try:
            return DateRef(absolute=datetime.fromtimestamp(raw, UTC))
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(raw, str):
        return None
    text = raw.strip().lower()
    if match := _NOW_OFFSET.fullmatch(text):
        sign, amount, unit = match.groups()
        if amount is None:
            return DateRef()
        offset = timedelta(**{_UNITS[unit]: int(amount)})
        return DateRef(before_now=offset if sign == "-" else -offset)
    if match := _AGO.fullmatch(text):
        return DateRef(before_now=timedelta(**{_UNITS[match[2]]: int(match[1])}))
    if _ISO_DATE.fullmatch(raw.strip()):
        try:
            at = datetime.fromisoformat(raw.strip())
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            return DateRef(absolute=at)
        except (OverflowError, ValueError):  # 2024-02-30, or a zone pushing past year 9999
            return None
    return None


# Size limits, checked while parsing, before anything is built or compiled. Each condition
# becomes one correlated EXISTS: an `$or` of 8,000 took 6 s to fail on SQLite ("Expression tree
# is too large") and held PostgreSQL 5 s, `$not` nested 200 deep overflowed Python's stack, and
# 90,000 `$in` values passed PostgreSQL's 65,535 bind parameters. PostgreSQL's planning of
# EXISTS joined by AND grows faster than linearly (bench/query_limits.py, empty database: 32 →
# 0.11 s, 64 → 0.52 s, 100 → 1.9 s, 200 → 14 s), so 50 conditions (0.24 s to plan, ~10 ms to
# parse and build) is the budget; `$or` of 50 runs in 35 ms. A segment needing more is a
# custom audience. Measurements and limits: docs/targeting.md, "Limits".
MAX_CONDITIONS = 50  # field conditions and $contains tags (one EXISTS each), in all
MAX_DEPTH = 10  # $and / $or / $not nested in one another
MAX_LIST = 1_000  # items of one $in, $notIn, $contains, $containsAny, $and or $or
MAX_VALUES = 5_000  # items of every such list together: at most 4 bind parameters each


@dataclass(slots=True)
class _Budget:
    conditions: int = 0
    values: int = 0

    def condition(self, path: Path, count: int = 1) -> None:
        self.conditions += count
        if self.conditions > MAX_CONDITIONS:
            raise QueryError(path, f"a query holds at most {MAX_CONDITIONS} conditions")

    def items(self, path: Path, key: str, items: list[Any], *, values: bool = True) -> None:
        if len(items) > MAX_LIST:
            raise QueryError(path, f"{key} takes at most {MAX_LIST} items")
        if not values:  # queries, counted as conditions
            return
        self.values += len(items)
        if self.values > MAX_VALUES:
            raise QueryError(path, f"a query holds at most {MAX_VALUES} values in its lists")


def parse_query(raw: Any) -> Node:
    """The query as a tree; QueryError naming the path of the first bad node, or of the node
    where a size limit (MAX_*) is passed."""
    return _node(raw, (), _Budget(), 0)


def _node(raw: Any, path: Path, budget: _Budget, depth: int) -> Node:
    if not isinstance(raw, dict):
        raise QueryError(path, "a query is a JSON object")
    children: list[Node] = []
    for key, value in raw.items():
        here = (*path, key)
        if key in ("$and", "$or", "$not") and depth >= MAX_DEPTH:
            raise QueryError(here, f"$and, $or and $not nest at most {MAX_DEPTH} deep")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise QueryError(here, f"{key} takes a non-empty array of queries")
            budget.items(here, key, value, values=False)
            parts = tuple(
                _node(item, (*here, index), budget, depth + 1) for index, item in enumerate(value)
            )
            children.append(AllOf(parts) if key == "$and" else AnyOf(parts))
        elif key == "$not":
            if not isinstance(value, dict) or not value:
                raise QueryError(here, "$not takes a non-empty query object")
            children.append(Negation(_node(value, here, budget, depth + 1)))
        elif key.startswith("$"):
            raise QueryError(here, f"unknown operator {key!r}")
        else:
            budget.condition(here)
            children.append(_field(key, value, here, budget))
    # Several keys in one object mean AND; `{}` is the whole base.
    return children[0] if len(children) == 1 else AllOf(tuple(children))


def _field(key: str, raw: Any, path: Path, budget: _Budget) -> Node:
    match = _FIELD.fullmatch(key)
    if match is None:
        raise QueryError(
            path, f"unknown field {key!r}: fields are c., u., t., ut., e., ue. or b. names"
        )
    prefix, name = match[1], match[2]
    if prefix in ("c", "u"):
        return AttributeTest(name.lower(), _comparisons(raw, path, budget))
    if prefix in ("t", "ut"):
        return _tags(name.lower(), raw, path, budget)
    if prefix in ("e", "ue"):
        # SDK events are stored lowercased and without prefix, server events with `ue.`.
        stored = name.lower() if prefix == "e" else f"ue.{name.lower()}"
        return _event(stored, prefix == "ue", raw, path, budget)
    if name not in NATIVE_FIELDS:
        known = ", ".join(f"b.{n}" for n in NATIVE_FIELDS)
        raise QueryError(path, f"unknown native field {key!r} (known: {known})")
    column, kind = NATIVE_FIELDS[name]
    return NativeTest(column, kind, _comparisons(raw, path, budget))


def _value(raw: Any, path: Path) -> Value:
    if raw is None:
        return Value()
    if isinstance(raw, bool):
        return Value(flag=raw)
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise QueryError(path, "numbers must be finite")
        return Value(number=float(raw), date=parse_date(raw))
    if isinstance(raw, str):
        return Value(text=raw, date=parse_date(raw))
    raise QueryError(path, "a value is a string, number, boolean or null")


def _comparisons(
    raw: Any, path: Path, budget: _Budget, *, allowed: frozenset[Op] | None = None
) -> tuple[Comparison, ...]:
    """A field's condition: a bare value (`$eq`) or an object of operators, all of which hold."""
    if isinstance(raw, list):
        raise QueryError(path, "a list is not a value: use $in or $notIn (t. fields: $contains)")
    if not isinstance(raw, dict):
        return (Comparison(Op.EQ, (_value(raw, path),)),)
    if not raw:
        raise QueryError(path, "an empty condition")
    result: list[Comparison] = []
    for key, argument in raw.items():
        op = _OPERATORS.get(key)
        if op is None or (allowed is not None and op not in allowed):
            raise QueryError(path, f"unknown operator {key!r}")
        here = (*path, key)
        if op is Op.EXISTS:
            if not isinstance(argument, bool):
                raise QueryError(here, "$exists takes true or false")
            result.append(Comparison(op, present=argument))
        elif op in (Op.IN, Op.NIN):
            if not isinstance(argument, list) or not argument:
                raise QueryError(here, f"{key} takes a non-empty array of values")
            budget.items(here, key, argument)
            values = tuple(_value(item, (*here, i)) for i, item in enumerate(argument))
            result.append(Comparison(op, values))
        else:
            result.append(Comparison(op, (_value(argument, here),)))
    return tuple(result)


def _tags(collection: str, raw: Any, path: Path, budget: _Budget) -> TagTest:
    if isinstance(raw, str):  # `"t.x": "a"`: the collection holds "a"
        return TagTest(collection, TagOp.CONTAINS, (raw,))
    if not isinstance(raw, dict) or len(raw) != 1:
        raise QueryError(
            path, "a tag collection takes one of $contains, $containsAny or $exists (or a tag)"
        )
    [(key, argument)] = raw.items()
    here = (*path, key)
    if key == TagOp.EXISTS:
        if not isinstance(argument, bool):
            raise QueryError(here, "$exists takes true or false")
        return TagTest(collection, TagOp.EXISTS, present=argument)
    if key in (TagOp.CONTAINS, TagOp.CONTAINS_ANY):
        tags = [argument] if isinstance(argument, str) else argument
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            raise QueryError(here, f"{key} takes a non-empty array of strings")
        budget.items(here, key, tags)
        if key == TagOp.CONTAINS:  # one EXISTS per tag (compile.py)
            budget.condition(here, len(tags) - 1)
        return TagTest(collection, TagOp(key), tuple(dict.fromkeys(tags)))
    raise QueryError(path, f"unknown operator {key!r}")


_NUMERIC = frozenset({Op.EQ, Op.NEQ, Op.GT, Op.GTE, Op.LT, Op.LTE, Op.IN, Op.NIN})
_LABEL = frozenset({Op.EQ, Op.NEQ, Op.IN, Op.NIN})


def _event(name: str, per_user: bool, raw: Any, path: Path, budget: _Budget) -> EventTest:
    if isinstance(raw, bool):  # `"e.x": true`: it happened
        return EventTest(name, per_user, exists=raw)
    if not isinstance(raw, dict) or not raw:
        raise QueryError(path, "an event takes an object of $exists, $count, $first, $last, $label")
    parts: dict[str, Any] = {}
    for key, argument in raw.items():
        here = (*path, key)
        if key == "$exists":
            if not isinstance(argument, bool):
                raise QueryError(here, "$exists takes true or false")
            parts["exists"] = argument
        elif key == "$count":
            count = _comparisons(argument, here, budget, allowed=_NUMERIC)
            # The operator fixes the type here, so a wrong one is an error rather than "false".
            if any(v.number is None for c in count for v in c.values):
                raise QueryError(here, "$count compares with numbers")
            parts["count"] = count
        elif key in ("$first", "$last"):
            dates = _comparisons(argument, here, budget, allowed=_NUMERIC)
            if any(v.date is None for c in dates for v in c.values):
                raise QueryError(here, f"{key} compares with dates: {DATE_FORMS}")
            parts[key[1:]] = dates
        elif key == "$label":
            parts["label"] = _comparisons(argument, here, budget, allowed=_LABEL)
        else:
            raise QueryError(path, f"unknown operator {key!r}")
    return EventTest(name, per_user, **parts)
