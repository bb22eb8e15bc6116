"""The `targeting` object of the Campaigns API (spec §4.1, §5): who a campaign reaches.

Reference for every field and the query grammar: docs/targeting.md.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from clarion.formats import Id, WireModel
from clarion.targeting.query import Node, QueryError, parse_query

# The shapes the SDK API accepts for an installation's language and region (sdk/schemas.py).
_LANGUAGE = re.compile(r"[a-zA-Z]{2,3}([-_][A-Za-z0-9]{2,8})*")
_REGION = re.compile(r"[A-Za-z]{2}|[0-9]{3}")


def _language(code: str) -> str:
    if not _LANGUAGE.fullmatch(code):
        raise ValueError(f"{code!r} is not a language code such as 'en' or 'pt-BR'")
    return code


def _region(code: str) -> str:
    if not _REGION.fullmatch(code):
        raise ValueError(f"{code!r} is not a region code such as 'FR' or '419'")
    return code


class Segment(StrEnum):
    """Lifecycle segments, computed at send time from install and last-visit dates.

    NEW, ONE_TIME, ENGAGED and DORMANT split the base into four disjoint parts; IMPORTED has no
    member yet (docs/targeting.md)."""

    NEW = "NEW"
    ONE_TIME = "ONE_TIME"
    ENGAGED = "ENGAGED"
    DORMANT = "DORMANT"
    IMPORTED = "IMPORTED"


class Targeting(WireModel):
    """Every given criterion must hold; an omitted (or empty) list restricts nothing."""

    model_config = ConfigDict(extra="ignore")

    # List limits far above real use (ISO 639 has ~180 two-letter languages, ISO 3166 249
    # regions) and far below what costs: each bare language is one LIKE, each name one lookup.
    segments: list[Segment] | None = Field(default=None, max_length=20)
    languages: list[Annotated[str, AfterValidator(_language)]] | None = Field(
        default=None, max_length=500
    )
    regions: list[Annotated[str, AfterValidator(_region)]] | None = Field(
        default=None, max_length=500
    )
    custom_audiences: list[Annotated[Id, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=100
    )
    query: dict[str, Any] | None = None
    # The query as a tree, parsed once while validating, with the dict it was parsed from (a
    # model_copy(update=...) replaces the dict without validating: the tree is then redone).
    _parsed: tuple[dict[str, Any], Node] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _parse_query(self) -> Targeting:
        if self.query is None:
            return self
        try:
            self._parsed = (self.query, parse_query(self.query))
        except QueryError as exc:
            # Re-raised as a ValidationError located at the bad node: pydantic prepends this
            # model's own location, so the API answers 400/31 with e.g.
            # "targeting.query.$and.1.c.age: unknown operator '$foo'" (clarion.http).
            detail = InitErrorDetails(
                type=PydanticCustomError("query_invalid", exc.message),
                loc=("query", *exc.path),
                input=self.query,
            )
            raise PydanticValidationError.from_exception_data(
                type(self).__name__, [detail]
            ) from None
        return self

    def query_tree(self) -> Node | None:
        """The parsed query; parsed here if the model was built without validation
        (model_construct, model_copy), which raises QueryError if it is malformed."""
        if self.query is None:
            return None
        if self._parsed is None or self._parsed[0] is not self.query:
            self._parsed = (self.query, parse_query(self.query))
        return self._parsed[1]


class Estimate(BaseModel):
    """Clarion's addition: how many installs a targeting reaches, without sending."""

    platform: str
    matched: int  # installations of the key's kind that match the targeting
    reachable: int  # of those, opted in with a push token: what a campaign would send to
