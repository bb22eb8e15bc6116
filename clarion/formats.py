"""Value formats shared by Batch's APIs: names, the dates of the data and campaign APIs, and
what any request body may hold (the text rule, 64-bit integers, null as absent: WireModel)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from types import UnionType
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError

# Attribute, collection and event-attribute names, as Batch's SDKs and APIs accept them.
NAME = re.compile(r"[a-z0-9_]{1,30}")
# URL schemes are case-insensitive (RFC 3986 §3.1: "HTTPS://" is https). Spelled as classes,
# not (?i), so that the OpenAPI document's ECMA-262 patterns accept what the server does.
HTTPS_URL = r"^[Hh][Tt][Tt][Pp][Ss]://"
HTTP_OR_HTTPS_URL = r"^[Hh][Tt][Tt][Pp][Ss]?://"
_WIRE_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?")


def parse_batch_date(value: Any) -> datetime:
    """A `date(...)` value: Unix time in seconds, or `YYYY-MM-DDTHH:MM:SS[.SSS]` read as UTC."""
    at: datetime | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            at = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(DATE_RANGE) from None
    elif isinstance(value, str) and _DATE_TEXT.fullmatch(value):
        at = datetime.fromisoformat(value).replace(tzinfo=UTC)
    if at is None:
        raise ValueError("a Unix time in seconds or YYYY-MM-DDTHH:MM:SS[.SSS] (UTC)")
    if date_problem(at) is not None:
        raise ValueError(DATE_RANGE)
    return at


def parse_wire_date(value: str) -> datetime:
    """A `yyyy-MM-ddTHH:mm:ss` date (Campaigns API) as a naive datetime: UTC for push_time,
    a wall-clock time for local_push_time; the caller applies the zone."""
    return datetime.strptime(value, _WIRE_DATE_FORMAT)  # noqa: DTZ007


def wire_date(value: datetime) -> str:
    """A datetime as `yyyy-MM-ddTHH:mm:ss` in UTC (created_date, created, updated)."""
    return value.astimezone(UTC).strftime(_WIRE_DATE_FORMAT)


# Text Clarion stores ----------------------------------------------------------------------------
#
# One rule for every string a request can make Clarion store or look up: the characters of
# XML 1.0's `Char` production (TAB, LF, CR and U+0020 onwards), without the lone surrogates
# U+D800-U+DFFF and the non-characters U+FFFE, U+FFFF. It refuses
# - NUL: PostgreSQL's text and jsonb cannot hold it; SQLite can, and both databases must take
#   the same requests;
# - lone surrogates: JSON's "\ud800" decodes to one, and UTF-8 cannot encode it, so neither
#   database nor any file Clarion writes can hold it;
# - the other C0 control characters (U+0001-U+001F but TAB, LF, CR): no id, name or message
#   needs them, and ESC sequences reach operators' terminals through logs, exports and the CSV
#   files the export destinations write.
# DEL and the C1 range (U+007F-U+009F) stay accepted: they are legal XML and UTF-8, and refusing
# more than the standard would refuse text some client somewhere sends on purpose.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# What an integer column holds on both databases (BIGINT; SQLite's INTEGER is 64-bit too).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None if it can."""
    found = _NOT_TEXT.search(value)
    if found is None:
        return None
    code = ord(found[0])
    if code == 0:
        what = "NUL (U+0000)"
    elif 0xD800 <= code <= 0xDFFF:
        what = f"a lone surrogate (U+{code:04X})"
    elif code < 0x20:
        what = f"the control character U+{code:04X}"
    else:
        what = f"the non-character U+{code:04X}"
    return f"contains {what}, which Clarion does not accept in text"


def stored_text(value: str) -> str:
    """Validator of a string Clarion stores or looks up (the rule above)."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def number_as_text(value: Any) -> Any:
    """An integer where an identifier is expected, as its decimal string: Batch clients send
    numeric custom ids as numbers (`"id": 1`, spec Appendix B). Floats and booleans stay
    refused: `1.0` and `true` are not ids."""
    return str(value) if type(value) is int else value


# Dates Clarion stores: within Python's calendar (years 1 to 9999) with a day to spare on each
# side, once in UTC: converting 0001-01-01T00:00:00+05:00 to UTC, or adding a day-long window
# to 9999-12-31, overflows.
FIRST_DATE, LAST_DATE = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)
DATE_RANGE = "must be a date between 0001-01-02 and 9999-12-30 (UTC)"


def date_problem(value: datetime) -> str | None:
    """Why a date cannot be stored, or None (naive dates are UTC, as everywhere in Clarion)."""
    try:
        at = value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    except OverflowError:
        return DATE_RANGE
    return None if FIRST_DATE <= at <= LAST_DATE else DATE_RANGE


def _scalar_problem(value: Any) -> str | None:
    kind = type(value)
    if kind is datetime:
        return date_problem(value)
    if kind is str:
        return None if _NOT_TEXT.search(value) is None else text_problem(value)
    if kind is int:
        return None if INT64_MIN <= value <= INT64_MAX else "is beyond what a 64-bit integer holds"
    if kind is float:
        return None if math.isfinite(value) else "must be a finite number"
    return None


def stored_value(value: Any) -> tuple[tuple[str | int, ...], str] | None:
    """The first part of a JSON-like value Clarion cannot store, as (its location within the
    value, why), or None: text by the rule above, integers within 64 bits, finite floats.

    Exact types only: a str or int subclass in a validated value is an enum member of Clarion's
    own. Scalars in a container are checked in its loop, without a call each: a bulk Custom Data
    call holds 60,000 values, and a call per value cost ~0.3 s of validating it."""
    kind = type(value)
    pairs: Iterable[tuple[str | int, Any]]
    if kind is list or kind is tuple:
        try:
            # A list of ids (10,000 of them in a transactional send) in one search: LF is text,
            # so joining adds no match. 0.3 ms where a loop took 1.6 ms.
            if _NOT_TEXT.search("\n".join(value)) is None:
                return None
        except TypeError:
            pass  # not only strings: item by item
        pairs = enumerate(value)
    elif kind is dict:
        pairs = value.items()
    else:
        problem = _scalar_problem(value)
        return None if problem is None else ((), problem)
    for key, item in pairs:
        if type(key) is str and _NOT_TEXT.search(key) is not None:
            return (key,), f"its name {text_problem(key)}"
        if type(item) in _CONTAINERS:
            found = stored_value(item)
            if found is not None:
                return (key, *found[0]), found[1]
        elif (problem := _scalar_problem(item)) is not None:
            return (key,), problem
    return None


_CONTAINERS = frozenset({list, tuple, dict})


Text = Annotated[str, AfterValidator(stored_text)]
"""A string Clarion stores or looks up: bodies go through WireModel, path and query parameters
name this type."""


class _IntegersToo:
    """Declares, in the request's JSON schema, that an integer is taken where this text goes."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [handler(schema), {"type": "integer"}]}


NUMBER_AS_TEXT = BeforeValidator(number_as_text)
INTEGERS_TOO = _IntegersToo()
Id = Annotated[str, NUMBER_AS_TEXT, INTEGERS_TOO]
"""An identifier (custom id, install id, token, label, tag...) in a WireModel, whose check of
every string covers it: a number is taken as its text. Length limits go around it
(`Annotated[Id, Field(max_length=...)]`); a pattern goes inside, before NUMBER_AS_TEXT, or the
JSON schema loses it."""
DbInt = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""An integer a query compares with a column (a path or query parameter)."""


def _admits_null(annotation: Any) -> bool:
    if annotation is Any or annotation is None or annotation is type(None):
        return True
    return get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)


def _is_object(annotation: Any) -> bool:
    """Whether a field's type is a JSON object (a model or a dict), possibly optional."""
    if get_origin(annotation) in (Union, UnionType):
        return any(_is_object(arg) for arg in get_args(annotation) if arg is not type(None))
    if annotation is dict or get_origin(annotation) is dict:
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def json_object_text(value: str) -> str:
    """A `custom_payload`: a string holding a JSON object, without Batch's reserved key, whose
    values follow the same rule as the rest of the body (they reach the devices as it does)."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError("must be a string holding a JSON object") from exc
    if not isinstance(parsed, dict):
        raise ValueError("must be a string holding a JSON object")
    if "com.batch" in parsed:
        raise ValueError("the key 'com.batch' is reserved")
    found = stored_value(parsed)
    if found is not None:
        where, why = found
        raise ValueError(f"{'.'.join(map(str, where))} {why}")
    return value


def check_ab_versions(
    items: list[tuple[str | None, str]], split: dict[str, int] | None, *, what: str
) -> None:
    """A/B versions as push and in-app campaigns declare them: `items` are (version, language)
    of each message (`what`: "messages", "landing contents"); `split` their shares in percent.
    ValueError says what is wrong."""
    versions = [version for version, _ in items]
    if any(versions) and not all(versions):
        raise ValueError(f"with A/B versions, every one of the {what} names its version")
    seen: set[tuple[str | None, str]] = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{what}: two for language {item[1]!r}")
        seen.add(item)
    names = set(filter(None, versions))
    if split is not None:
        if set(split) != names:
            raise ValueError(f"version_split must name exactly the versions of the {what}")
        if any(share <= 0 for share in split.values()):
            raise ValueError("version_split: every share must be positive")
        if sum(split.values()) != 100:
            raise ValueError("version_split: the shares must add up to 100")
    if len(names) == 1:
        raise ValueError("A/B testing needs at least two versions")


def ab_shares(
    versions: Iterable[str | None], split: dict[str, int] | None
) -> dict[str | None, int]:
    """Each version and its share (percent): the split's, else equal shares (the first ones
    get the remainder); {None: 100} without A/B."""
    names = sorted({version for version in versions if version})
    if not names:
        return {None: 100}
    if split is not None:
        return {name: split[name] for name in names}
    share, rest = divmod(100, len(names))
    return {name: share + (1 if i < rest else 0) for i, name in enumerate(names)}


class WireModel(BaseModel):
    """The base of every request body Clarion reads: one place for what a body may hold.

    - Text and numbers: every string in it (field values, list items, object keys and values
      at any depth) follows the text rule above, every integer fits 64 bits, every float is
      finite; the error names the field and the position inside it.
    - `null` stands for an absent field wherever the field has no use for null: Batch's client
      libraries (Ruby, PHP, Go, Python, Node) write unset optional fields as null, so a null
      list or flag gets the field's default, and a null required field is reported missing.
      A field that takes null keeps it: null keeps its own meaning there (clears an SDK field,
      deletes a Custom Data attribute, refuses to unset a campaign field).
    - `[]` where an object is expected is an absent field too: PHP's json_encode writes an
      empty array that way (`"media": []`), and a list is never a valid object."""

    # Per subclass (set when it is created): the field names and aliases whose type refuses
    # null, and those whose type is an object.
    _null_means_absent: ClassVar[frozenset[str]] = frozenset()
    _objects: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        refuse_null: set[str] = set()
        objects: set[str] = set()
        for name, field in cls.model_fields.items():
            names = [n for n in (name, field.alias) if n is not None]
            if not _admits_null(field.annotation):
                refuse_null.update(names)
            if _is_object(field.annotation):
                objects.update(names)
        cls._null_means_absent = frozenset(refuse_null)
        cls._objects = frozenset(objects)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The request schema says what the model accepts: null, and [] for an object, where
        an optional field takes them as absent."""
        json_schema = handler(schema)
        if handler.mode != "validation":
            return json_schema
        found = handler.resolve_ref_schema(json_schema)
        required = set(found.get("required", ()))
        for name, prop in found.get("properties", {}).items():
            if name in required:
                continue  # a null or [] required field is reported missing
            extra: list[JsonSchemaValue] = []
            if name in cls._null_means_absent:
                extra.append({"type": "null"})
            if name in cls._objects:
                extra.append({"type": "array", "maxItems": 0})
            if extra:
                kept = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
                choices = prop["anyOf"] if set(prop) == {"anyOf"} else [prop]
                found["properties"][name] = {"anyOf": [*choices, *extra], **kept}
        return json_schema

    @classmethod
    def unset_by(cls, name: str, value: Any) -> bool:
        """Whether `value` given for the field `name` leaves it unset: null, or [] for an
        object (a route where a field once set stays set refuses both alike)."""
        return value is None or (value == [] and name in cls._objects)

    @model_validator(mode="before")
    @classmethod
    def _absent_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(v is None or v == [] for v in data.values()):
            nulls, objects = cls._null_means_absent, cls._objects
            return {
                k: v
                for k, v in data.items()
                if not ((v is None and k in nulls) or (v == [] and k in objects))
            }
        return data

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value  # a nested model checked its own fields
        found = stored_value(value)
        if found is None:
            return value
        where, why = found
        detail = InitErrorDetails(
            type=PydanticCustomError("stored_text", why), loc=where, input=value
        )
        raise ValidationError.from_exception_data(cls.__name__, [detail])


class IdType(StrEnum):
    """The three ids that name a user across Batch's APIs (a GDPR request's `id_type`, the ids a
    removal blocks, which the SDK, Custom Data and Trigger Events APIs then refuse)."""

    CUSTOM_ID = "custom_id"
    INSTALL_ID = "install_id"
    ADVERTISING_ID = "advertising_id"
