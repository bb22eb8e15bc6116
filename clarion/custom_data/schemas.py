"""Custom Data API 1.0 (spec §7): the wire format, and its validation into plain operations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    model_validator,
)

from clarion.custom_data.models import AttributeKind
from clarion.formats import NAME, Id, WireModel, parse_batch_date, stored_text

MAX_USERS_PER_CALL = 10_000
MAX_TAGS_PER_COLLECTION = 25
_KEY = re.compile(r"(u|ut)\.(.+)|(date|url)\(u\.(.+)\)")
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S*")


@dataclass(frozen=True, slots=True)
class SetAttribute:
    name: str
    kind: AttributeKind
    text: str | None
    number: float | None


@dataclass(frozen=True, slots=True)
class DeleteAttribute:
    name: str


@dataclass(frozen=True, slots=True)
class ReplaceTags:
    collection: str
    tags: tuple[str, ...]  # empty: the collection is deleted


@dataclass(frozen=True, slots=True)
class ChangeTags:
    collection: str
    add: tuple[str, ...]
    remove: tuple[str, ...]


Operation = SetAttribute | DeleteAttribute | ReplaceTags | ChangeTags


# Bounded: keys come from clients, and a name may be any of 37^30.
@lru_cache(maxsize=4096)
def _parse_key(key: str) -> tuple[str, str]:
    """A `values` key as (prefix, name): u, ut, date or url, and the attribute's name.

    Cached because a bulk call repeats the same few keys for each of its 10,000 users: the two
    regular expressions were ~1/3 of parsing a value. A refused key raises, and is not cached."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"{key}: keys are u.<name>, ut.<name>, date(u.<name>) or url(u.<name>)")
    prefix, name = (match[1], match[2]) if match[1] else (match[3], match[4])
    if not NAME.fullmatch(name):
        raise ValueError(f"{key}: names use a-z, 0-9 and _, at most 30 characters")
    return prefix, name


def parse_value(key: str, value: Any) -> Operation:
    """One `values` entry as an operation; ValueError (naming the key) if Batch would refuse it."""
    prefix, name = _parse_key(key)
    if value is None:
        return ReplaceTags(name, ()) if prefix == "ut" else DeleteAttribute(name)
    if prefix == "ut":
        return _tags(key, name, value)
    if prefix == "date":
        try:
            at = parse_batch_date(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        return SetAttribute(name, AttributeKind.DATE, at.isoformat(), at.timestamp())
    if prefix == "url":
        if not isinstance(value, str) or len(value) > 2048 or not _URL.fullmatch(value):
            raise ValueError(f"{key}: a URL scheme://…, at most 2048 characters")
        return SetAttribute(name, AttributeKind.URL, value, None)
    if isinstance(value, bool):
        return SetAttribute(name, AttributeKind.BOOLEAN, None, float(value))
    if isinstance(value, int):
        return SetAttribute(name, AttributeKind.INTEGER, None, float(value))
    if isinstance(value, float):
        return SetAttribute(name, AttributeKind.FLOAT, None, value)
    if isinstance(value, str):
        if len(value) > 64:
            raise ValueError(f"{key}: strings have at most 64 characters")
        return SetAttribute(name, AttributeKind.STRING, value, None)
    raise ValueError(f"{key}: a string, number, boolean or null")


def _tags(key: str, name: str, value: Any) -> Operation:
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{key}: a tag collection cannot be an empty list (use null)")
        return ReplaceTags(name, _tag_list(key, value))
    if isinstance(value, dict) and value and set(value) <= {"$add", "$remove"}:
        return ChangeTags(
            name, _tag_list(key, value.get("$add", [])), _tag_list(key, value.get("$remove", []))
        )
    raise ValueError(f'{key}: a list of tags or {{"$add": [...], "$remove": [...]}}')


def _tag_list(key: str, tags: Any) -> tuple[str, ...]:
    if not isinstance(tags, list) or len(tags) > MAX_TAGS_PER_COLLECTION:
        raise ValueError(f"{key}: at most {MAX_TAGS_PER_COLLECTION} tags")
    # A number is taken as its text, as everywhere an identifier is expected.
    tags = [str(tag) if type(tag) is int else tag for tag in tags]
    if not all(isinstance(tag, str) and 1 <= len(tag) <= 64 for tag in tags):
        raise ValueError(f"{key}: tags are non-empty strings of at most 64 characters")
    return tuple(dict.fromkeys(tags))


class ProfileUpdateIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    overwrite: bool = False
    values: dict[str, Any] = Field(min_length=1)

    @cached_property
    def operations(self) -> list[Operation]:
        """The values as operations, parsed once, while validating (a bulk call has 60,000).

        A cached property lives in the instance's __dict__ and is read as a plain attribute. A
        pydantic private attribute went through Python-level __setattr__/__getattr__ and a
        per-instance set-up: ~80 ms of the ~700 ms that validating a 10,000-user call took."""
        try:
            operations = [parse_value(key, value) for key, value in self.values.items()]
        except ValueError as exc:
            # A model-level error has no field in its location: the message names it.
            raise ValueError(f"values: {exc}") from None
        # `u.x` with `date(u.x)` or `url(u.x)` would set one attribute twice.
        names = [op.name for op in operations if isinstance(op, SetAttribute | DeleteAttribute)]
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"values: the attribute {twice!r} is given more than once")
        return operations

    @model_validator(mode="after")
    def _parse_values(self) -> ProfileUpdateIn:
        self.operations  # noqa: B018 (parsed now, so that a refused value fails validation)
        return self


class ProfileUpdateItem(WireModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[Id, Field(min_length=1, max_length=512)]
    update: ProfileUpdateIn


class ProfileUpdatesIn(RootModel[list[ProfileUpdateItem]]):
    root: list[ProfileUpdateItem] = Field(min_length=1, max_length=MAX_USERS_PER_CALL)


# Not in a WireModel (the body is a bare list): the text rule is checked per id.
CustomId = Annotated[Id, AfterValidator(stored_text), Field(min_length=1, max_length=512)]


class ProfileDeletesIn(RootModel[list[CustomId]]):
    root: list[CustomId] = Field(min_length=1, max_length=MAX_USERS_PER_CALL)


class DataAccepted(BaseModel):
    token: str
