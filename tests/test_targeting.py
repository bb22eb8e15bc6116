"""Targeting (spec §4.1, §5; docs/targeting.md): each query compiled and run in a real SELECT."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import create_engine, select

from clarion.custom_data.schemas import parse_value
from clarion.custom_data.service import update_profiles
from clarion.db import transaction, utcnow
from clarion.errors import MalformedParameterError
from clarion.events.service import record_tracked_events
from clarion.http import validation_error
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from clarion.targeting.query import AttributeTest, Comparison, DateRef, Op, Value, parse_date
from clarion.targeting.schemas import Segment, Targeting
from clarion.targeting.service import (
    check_audiences,
    estimate,
    installation_filter,
    reachable,
)
from tests.conftest import ClientApp, new_app

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@dataclass
class Base:
    """One fresh app and the installations, profiles and events a test gives it."""

    runtime: Runtime
    app_id: int

    async def install(
        self,
        install_id: str,
        *,
        custom_id: str | None = None,
        installed: datetime = NOW - 60 * DAY,
        seen: datetime | None = None,
        token: bool = True,
        optin: bool = True,
        dev: bool = False,
        **columns: Any,
    ) -> None:
        async with transaction(self.runtime.sessions) as session:
            session.add(
                Installation(
                    app_id=self.app_id,
                    install_id=install_id,
                    custom_id=custom_id,
                    created_at=installed,
                    last_seen_at=seen or installed,
                    push_token=f"token-{install_id}-{secrets.token_hex(4)}" if token else None,
                    push_optin=optin,
                    is_dev=dev,
                    **columns,
                )
            )

    async def users(self, **attributes: Any) -> None:
        """One installation per user (install id = custom id), for attribute and tag tests."""
        for custom_id in attributes:
            await self.install(custom_id, custom_id=custom_id)
        await self.profiles(attributes)

    async def profiles(self, values: dict[str, dict[str, Any]]) -> None:
        """Custom Data `values` per custom id, stored by the Custom Data service itself."""
        updates = [
            (custom_id, False, [parse_value(key, value) for key, value in data.items()])
            for custom_id, data in values.items()
            if data
        ]
        async with transaction(self.runtime.sessions) as session:
            await update_profiles(session, app_id=self.app_id, updates=updates)

    async def event(
        self,
        name: str,
        at: datetime,
        *,
        install_id: str | None = None,
        custom_id: str | None = None,
        label: str | None = None,
    ) -> None:
        """A tracked_events row as the services write it: SDK events lowercased with their
        install id, Trigger Events `ue.` names on a custom id."""
        row = {
            "app_id": self.app_id,
            "occurred_at": at,
            "install_id": install_id,
            "custom_id": custom_id,
            "name": name,
            "label": label,
            "attributes": None,
            "tags": None,
        }
        async with transaction(self.runtime.sessions) as session:
            await record_tracked_events(session, [row])

    async def select(self, targeting: dict[str, Any], *, now: datetime = NOW) -> set[str]:
        clause = installation_filter(
            Targeting.model_validate(targeting), app_id=self.app_id, now=now
        )
        async with self.runtime.sessions() as session:
            rows = await session.scalars(
                select(Installation.install_id).where(Installation.app_id == self.app_id, clause)
            )
            return set(rows)

    async def query(self, query: dict[str, Any], *, now: datetime = NOW) -> set[str]:
        return await self.select({"query": query}, now=now)


@pytest.fixture
async def base(runtime: Runtime) -> Base:
    app = await new_app(runtime, None, "ios", configure=False)
    return Base(runtime, app.app_id)


def _query_error(query: Any) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as caught:
        Targeting.model_validate({"query": query})
    [error] = caught.value.errors()
    return error["loc"], error["msg"]


class TestMalformedQueries:
    def test_an_unknown_operator_is_400_31_naming_the_path(self) -> None:
        class CampaignLike(BaseModel):
            targeting: Targeting

        query = {"$and": [{"c.plan": "gold"}, {"c.age": {"$gte": 18, "$foo": 3}}]}
        with pytest.raises(ValidationError) as caught:
            CampaignLike.model_validate({"targeting": {"query": query}})
        errors = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
        error = validation_error(RequestValidationError(errors))
        assert isinstance(error, MalformedParameterError)
        assert (error.status, error.code) == (400, 31)
        assert error.detail == "targeting.query.$and.1.c.age: unknown operator '$foo'"

    @pytest.mark.parametrize(
        ("query", "loc", "message"),
        [
            ({"$and": {"c.a": 1}}, ("$and",), "$and takes a non-empty array of queries"),
            ({"$or": []}, ("$or",), "$or takes a non-empty array of queries"),
            ({"$or": [{"c.a": 1}, 3]}, ("$or", 1), "a query is a JSON object"),
            ({"$not": [{"c.a": 1}]}, ("$not",), "$not takes a non-empty query object"),
            ({"$nor": [{"c.a": 1}]}, ("$nor",), "unknown operator '$nor'"),
            ({"b.shoe_size": 42}, ("b.shoe_size",), "unknown native field 'b.shoe_size'"),
            ({"plan": "gold"}, ("plan",), "unknown field 'plan'"),
            ({"x.plan": "gold"}, ("x.plan",), "unknown field 'x.plan'"),
            ({"c.plan": ["a", "b"]}, ("c.plan",), "a list is not a value"),
            ({"c.plan": {}}, ("c.plan",), "an empty condition"),
            ({"c.plan": {"$in": "gold"}}, ("c.plan", "$in"), "$in takes a non-empty array"),
            ({"c.plan": {"$nin": []}}, ("c.plan", "$nin"), "$nin takes a non-empty array"),
            ({"c.plan": {"$exists": 1}}, ("c.plan", "$exists"), "$exists takes true or false"),
            ({"c.plan": {"$eq": {"a": 1}}}, ("c.plan", "$eq"), "a value is a string, number"),
            ({"c.plan": {"$contains": ["a"]}}, ("c.plan",), "unknown operator '$contains'"),
            ({"t.sports": {"$gt": "a"}}, ("t.sports",), "unknown operator '$gt'"),
            ({"t.sports": {"$contains": [1]}}, ("t.sports", "$contains"), "array of strings"),
            ({"t.sports": {"$containsAny": []}}, ("t.sports", "$containsAny"), "array"),
            ({"t.sports": 3}, ("t.sports",), "a tag collection takes one of"),
            ({"e.buy": {"$sum": 3}}, ("e.buy",), "unknown operator '$sum'"),
            ({"e.buy": {"$count": "3"}}, ("e.buy", "$count"), "$count compares with numbers"),
            ({"e.buy": {"$count": {"$exists": True}}}, ("e.buy", "$count"), "unknown operator"),
            ({"e.buy": {"$first": {"$gt": "soon"}}}, ("e.buy", "$first"), "compares with dates"),
            ({"e.buy": 3}, ("e.buy",), "an event takes an object"),
            (
                {"$or": [{"$not": {"b.language": {"$gt": 1, "$x": 2}}}]},
                ("$or", 0, "$not", "b.language"),
                "unknown operator '$x'",
            ),
        ],
    )
    def test_the_error_names_the_bad_node(
        self, query: dict[str, Any], loc: tuple[str | int, ...], message: str
    ) -> None:
        error_loc, error_message = _query_error(query)
        assert error_loc == ("query", *loc)
        assert message in error_message

    def test_a_query_must_be_an_object(self) -> None:
        loc, _ = _query_error([{"c.a": 1}])
        assert loc == ("query",)

    @pytest.mark.parametrize(
        ("field", "value"), [("languages", ["en", "english"]), ("regions", ["FR", "FRA"])]
    )
    def test_language_and_region_codes_are_checked(self, field: str, value: list[str]) -> None:
        with pytest.raises(ValidationError) as caught:
            Targeting.model_validate({field: value})
        assert caught.value.errors()[0]["loc"] == (field, 1)

    def test_the_query_is_parsed_once_while_validating(self) -> None:
        targeting = Targeting.model_validate({"query": {"c.plan": "gold"}})
        tree = targeting.query_tree()
        assert tree == AttributeTest("plan", (Comparison(Op.EQ, (Value(text="gold"),)),))
        assert targeting.query_tree() is tree
        copy = targeting.model_copy(update={"query": {"c.plan": "silver"}})
        assert copy.query_tree() == AttributeTest(
            "plan", (Comparison(Op.EQ, (Value(text="silver"),)),)
        )
        assert Targeting().query_tree() is None


class TestDates:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-06-01", datetime(2026, 6, 1, tzinfo=UTC)),
            ("2026-06-01T10:30:00", datetime(2026, 6, 1, 10, 30, tzinfo=UTC)),
            ("2026-06-01T10:30:00.250Z", datetime(2026, 6, 1, 10, 30, 0, 250000, tzinfo=UTC)),
            ("2026-06-01T12:30:00+02:00", datetime(2026, 6, 1, 10, 30, tzinfo=UTC)),
            (1780000000, datetime.fromtimestamp(1780000000, UTC)),
            ("now", NOW),
            ("now-30d", NOW - 30 * DAY),
            ("NOW - 12h", NOW - timedelta(hours=12)),
            ("now+2w", NOW + timedelta(weeks=2)),
            ("30 days ago", NOW - 30 * DAY),
            ("1 hour ago", NOW - timedelta(hours=1)),
        ],
    )
    def test_date_forms(self, text: str | int, expected: datetime) -> None:
        date = parse_date(text)
        assert isinstance(date, DateRef)
        assert date.resolve(NOW) == expected

    @pytest.mark.parametrize(
        "text", ["yesterday", "2026-13-01", "now-3mo", "30 days", "gold", True, None]
    )
    def test_non_dates(self, text: Any) -> None:
        assert parse_date(text) is None


class TestCustomAttributes:
    @pytest.fixture
    async def people(self, base: Base) -> Base:
        await base.users(
            ann={"u.plan": "gold", "u.age": 34, "u.vip": True, "u.score": 7.5},
            bob={"u.plan": "silver", "u.age": 17, "u.vip": False},
            cid={"u.plan": "Gold", "u.age": 65},
            dan={"u.age": "34"},  # a string, not a number
            eve={},
        )
        await base.install("anonymous")  # no custom id at all
        return base

    async def test_bare_value_and_eq(self, people: Base) -> None:
        assert await people.query({"c.plan": "gold"}) == {"ann"}
        assert await people.query({"c.plan": {"$eq": "gold"}}) == {"ann"}
        assert await people.query({"u.plan": "silver"}) == {"bob"}  # u. is c.'s alias
        assert await people.query({"c.age": 34}) == {"ann"}
        assert await people.query({"c.vip": True}) == {"ann"}
        assert await people.query({"c.score": 7.5}) == {"ann"}

    async def test_neq_counts_absent_and_other_types_as_different(self, people: Base) -> None:
        everyone = {"ann", "bob", "cid", "dan", "eve", "anonymous"}
        assert await people.query({"c.plan": {"$neq": "gold"}}) == everyone - {"ann"}
        assert await people.query({"c.age": {"$ne": 34}}) == everyone - {"ann"}

    async def test_ordering(self, people: Base) -> None:
        assert await people.query({"c.age": {"$gt": 34}}) == {"cid"}
        assert await people.query({"c.age": {"$gte": 34}}) == {"ann", "cid"}
        assert await people.query({"c.age": {"$lt": 34}}) == {"bob"}
        assert await people.query({"c.age": {"$lte": 34}}) == {"ann", "bob"}
        assert await people.query({"c.age": {"$gte": 18, "$lt": 65}}) == {"ann"}

    async def test_strings_order_byte_by_byte_on_both_databases(self, people: Base) -> None:
        # 'G' (0x47) sorts before 'g' (0x67) and 's'; a locale collation would say otherwise.
        assert await people.query({"c.plan": {"$lt": "a"}}) == {"cid"}
        assert await people.query({"c.plan": {"$gt": "gold"}}) == {"bob"}
        # The test database may well be C-collated already: check what PostgreSQL is sent.
        clause = installation_filter(
            Targeting(query={"c.plan": {"$gt": "gold"}}), app_id=1, now=NOW
        )
        assert 'COLLATE "C"' in str(
            clause.compile(dialect=create_engine("postgresql+psycopg://").dialect)
        )
        assert "COLLATE BINARY" in str(clause.compile(dialect=create_engine("sqlite://").dialect))

    async def test_booleans_have_no_order(self, people: Base) -> None:
        assert await people.query({"c.vip": {"$gte": False}}) == set()
        assert await people.query({"c.vip": {"$lt": True}}) == set()

    async def test_in_and_not_in(self, people: Base) -> None:
        assert await people.query({"c.plan": {"$in": ["gold", "silver"]}}) == {"ann", "bob"}
        assert await people.query({"c.age": {"$in": [17, 65, "34"]}}) == {"bob", "cid", "dan"}
        assert await people.query({"c.plan": {"$notIn": ["gold", "silver"]}}) == {
            "cid",
            "dan",
            "eve",
            "anonymous",
        }
        assert await people.query({"c.plan": {"$nin": ["Gold"]}}) == {
            "ann",
            "bob",
            "dan",
            "eve",
            "anonymous",
        }

    async def test_exists_and_null(self, people: Base) -> None:
        assert await people.query({"c.plan": {"$exists": True}}) == {"ann", "bob", "cid"}
        assert await people.query({"c.plan": {"$exists": False}}) == {"dan", "eve", "anonymous"}
        assert await people.query({"c.plan": None}) == {"dan", "eve", "anonymous"}
        assert await people.query({"c.plan": {"$neq": None}}) == {"ann", "bob", "cid"}
        assert await people.query({"c.plan": {"$in": ["silver", None]}}) == {
            "bob",
            "dan",
            "eve",
            "anonymous",
        }

    async def test_comparing_across_types_is_false(self, people: Base) -> None:
        assert await people.query({"c.age": "34"}) == {"dan"}  # not ann's number 34
        assert await people.query({"c.age": {"$gt": "1"}}) == {"dan"}
        assert await people.query({"c.vip": 1}) == set()  # booleans are not numbers
        assert await people.query({"c.plan": 0}) == set()
        assert await people.query({"c.plan": {"$lt": True}}) == set()

    async def test_an_unknown_attribute_is_absent(self, people: Base) -> None:
        assert await people.query({"c.shoe_size": 42}) == set()
        assert await people.query({"c.shoe_size": {"$exists": True}}) == set()
        assert len(await people.query({"c.shoe_size": {"$neq": 42}})) == 6

    async def test_dates(self, base: Base) -> None:
        await base.users(
            old={"date(u.signed_up)": "2020-01-01T00:00:00"},
            recent={"date(u.signed_up)": int((NOW - 10 * DAY).timestamp())},
            text={"u.signed_up": "2026-06-01"},  # a string that reads as a date
        )
        assert await base.query({"c.signed_up": {"$gte": "now-30d"}}) == {"recent"}
        assert await base.query({"c.signed_up": {"$gte": "30 days ago"}}) == {"recent"}
        assert await base.query({"c.signed_up": {"$lt": "2021-01-01"}}) == {"old"}
        # Read as a date for date attributes and as text for strings ("2026-06-01" < "2027").
        everyone = {"old", "recent", "text"}
        assert await base.query({"c.signed_up": {"$lt": "2027-01-01"}}) == everyone
        since = int((NOW - 30 * DAY).timestamp())
        assert await base.query({"c.signed_up": {"$gt": since}}) == {"recent"}
        assert await base.query({"c.signed_up": "2020-01-01T00:00:00Z"}) == {"old"}
        assert await base.query({"c.signed_up": "2026-06-01"}) == {"text"}
        # The same query 25 days later: relative dates follow `now`.
        later = NOW + 25 * DAY
        assert await base.query({"c.signed_up": {"$gte": "now-30d"}}, now=later) == set()


class TestTags:
    @pytest.fixture
    async def people(self, base: Base) -> Base:
        await base.users(
            ann={"ut.sports": ["tennis", "golf"], "ut.news": ["tech"]},
            bob={"ut.sports": ["golf"]},
            cid={"ut.news": ["Tech"]},
            dan={},
        )
        return base

    async def test_contains_means_all(self, people: Base) -> None:
        assert await people.query({"t.sports": {"$contains": ["golf"]}}) == {"ann", "bob"}
        assert await people.query({"t.sports": {"$contains": ["golf", "tennis"]}}) == {"ann"}
        assert await people.query({"ut.sports": {"$contains": "tennis"}}) == {"ann"}
        assert await people.query({"t.sports": "golf"}) == {"ann", "bob"}

    async def test_contains_any(self, people: Base) -> None:
        query = {"t.sports": {"$containsAny": ["tennis", "chess"]}}
        assert await people.query(query) == {"ann"}
        query = {"t.sports": {"$containsAny": ["tennis", "golf"]}}
        assert await people.query(query) == {"ann", "bob"}

    async def test_exists_and_case(self, people: Base) -> None:
        assert await people.query({"t.news": {"$exists": True}}) == {"ann", "cid"}
        assert await people.query({"t.news": {"$exists": False}}) == {"bob", "dan"}
        assert await people.query({"t.news": "tech"}) == {"ann"}  # tags are case-sensitive
        assert await people.query({"t.unknown": {"$contains": ["x"]}}) == set()


class TestNativeFields:
    @pytest.fixture
    async def devices(self, base: Base) -> Base:
        await base.install(
            "a",
            language="en-US",
            region="US",  # the SDK API stores regions upper-case
            app_version="2.10.0",
            os_version="17.1",
            timezone="America/New_York",
            device_model="iPhone15,2",
            custom_id="user-a",
            installed=NOW - 3 * DAY,
            seen=NOW - 1 * DAY,
        )
        await base.install(
            "b",
            language="fr",
            region="FR",
            app_version="2.9.0",
            installed=NOW - 100 * DAY,
            seen=NOW - 40 * DAY,
            optin=False,
        )
        await base.install("c")  # nothing reported
        return base

    async def test_text_fields(self, devices: Base) -> None:
        assert await devices.query({"b.language": "EN_us"}) == {"a"}  # case and '_' ignored
        assert await devices.query({"b.language": "en"}) == set()  # whole codes, see languages
        assert await devices.query({"b.region": {"$in": ["US", "fr"]}}) == {"a", "b"}
        assert await devices.query({"b.timezone": "America/New_York"}) == {"a"}
        assert await devices.query({"b.custom_id": "user-a"}) == {"a"}
        assert await devices.query({"b.custom_id": {"$exists": False}}) == {"b", "c"}
        assert await devices.query({"b.device_model": {"$neq": "iPhone15,2"}}) == {"b", "c"}
        assert await devices.query({"b.os_version": {"$gte": "17"}}) == {"a"}
        assert await devices.query({"b.region": 33}) == set()  # another type

    async def test_versions_compare_as_text(self, devices: Base) -> None:
        # Documented: "2.10.0" < "2.9.0" as strings; exact versions and $in are reliable.
        assert await devices.query({"b.app_version": {"$gt": "2.9"}}) == {"b"}
        assert await devices.query({"b.app_version": {"$in": ["2.10.0", "3.0"]}}) == {"a"}

    async def test_dates_and_optin(self, devices: Base) -> None:
        assert await devices.query({"b.install_date": {"$gte": "now-7d"}}) == {"a"}
        assert await devices.query({"b.install_date": {"$lt": "2026-06-01"}}) == {"b", "c"}
        assert await devices.query({"b.last_visit_date": {"$lt": "30 days ago"}}) == {"b", "c"}
        seen_since = int((NOW - 2 * DAY).timestamp())
        assert await devices.query({"b.last_visit_date": {"$gte": seen_since}}) == {"a"}
        assert await devices.query({"b.install_date": {"$gte": "soon"}}) == set()
        assert await devices.query({"b.is_push_optin": False}) == {"b"}
        assert await devices.query({"b.is_push_optin": "yes"}) == set()


class TestLogic:
    @pytest.fixture
    async def people(self, base: Base) -> Base:
        await base.users(
            ann={"u.plan": "gold", "u.age": 34, "ut.sports": ["golf"]},
            bob={"u.plan": "silver", "u.age": 70},
            cid={"u.age": 20, "ut.sports": ["golf"]},
            dan={},
        )
        return base

    async def test_keys_of_one_object_are_and(self, people: Base) -> None:
        assert await people.query({"c.plan": "gold", "t.sports": "golf"}) == {"ann"}
        assert await people.query({"c.age": {"$lt": 50}, "t.sports": "golf"}) == {"ann", "cid"}

    async def test_and_or(self, people: Base) -> None:
        query = {"$or": [{"c.plan": "silver"}, {"c.age": {"$lt": 25}}]}
        assert await people.query(query) == {"bob", "cid"}
        query = {"$and": [{"t.sports": "golf"}, {"$or": [{"c.plan": "gold"}, {"c.age": 70}]}]}
        assert await people.query(query) == {"ann"}

    async def test_not_is_the_complement_even_for_absent_attributes(self, people: Base) -> None:
        assert await people.query({"$not": {"c.plan": "gold"}}) == {"bob", "cid", "dan"}
        assert await people.query({"$not": {"c.age": {"$gte": 30}}}) == {"cid", "dan"}
        assert await people.query({"$not": {"t.sports": {"$exists": True}}}) == {"bob", "dan"}
        assert await people.query({"$not": {"$not": {"c.plan": {"$exists": True}}}}) == {
            "ann",
            "bob",
        }

    async def test_empty_query_is_everyone(self, people: Base) -> None:
        assert await people.query({}) == {"ann", "bob", "cid", "dan"}
        assert await people.query({"$and": [{}]}) == {"ann", "bob", "cid", "dan"}


class TestEvents:
    @pytest.fixture
    async def activity(self, base: Base) -> Base:
        await base.install("a", custom_id="user-a")
        await base.install("b", custom_id="user-b")
        await base.install("c")
        for days in (40, 10, 2):
            await base.event("purchase", NOW - days * DAY, install_id="a", custom_id="user-a")
        await base.event("purchase", NOW - 5 * DAY, install_id="b", label="promo")
        await base.event("ue.added_to_cart", NOW - 3 * DAY, custom_id="user-b")
        return base

    async def test_exists(self, activity: Base) -> None:
        assert await activity.query({"e.purchase": {"$exists": True}}) == {"a", "b"}
        assert await activity.query({"e.purchase": True}) == {"a", "b"}
        assert await activity.query({"e.PURCHASE": {"$exists": False}}) == {"c"}
        assert await activity.query({"e.refund": {"$exists": True}}) == set()

    async def test_count(self, activity: Base) -> None:
        assert await activity.query({"e.purchase": {"$count": 3}}) == {"a"}
        assert await activity.query({"e.purchase": {"$count": {"$gte": 1}}}) == {"a", "b"}
        assert await activity.query({"e.purchase": {"$count": {"$lt": 2}}}) == {"b", "c"}
        assert await activity.query({"e.purchase": {"$count": {"$in": [0, 3]}}}) == {"a", "c"}
        assert await activity.query({"e.purchase": {"$count": {"$neq": 1}}}) == {"a", "c"}

    async def test_first_and_last(self, activity: Base) -> None:
        assert await activity.query({"e.purchase": {"$first": {"$lt": "now-30d"}}}) == {"a"}
        assert await activity.query({"e.purchase": {"$last": {"$gte": "now-3d"}}}) == {"a"}
        assert await activity.query({"e.purchase": {"$last": {"$gte": "7 days ago"}}}) == {
            "a",
            "b",
        }
        query = {"e.purchase": {"$count": {"$gte": 2}, "$last": {"$lt": "now-1d"}}}
        assert await activity.query(query) == {"a"}
        assert await activity.query({"e.purchase": {"$first": {"$gt": "now"}}}) == set()

    async def test_label(self, activity: Base) -> None:
        assert await activity.query({"e.purchase": {"$label": "promo"}}) == {"b"}
        query = {"e.purchase": {"$label": {"$neq": "promo"}, "$count": {"$gte": 1}}}
        assert await activity.query(query) == {"a"}

    async def test_server_events_match_the_users_installations(self, activity: Base) -> None:
        assert await activity.query({"ue.added_to_cart": {"$exists": True}}) == {"b"}
        assert await activity.query({"e.added_to_cart": {"$exists": True}}) == set()
        assert await activity.query({"ue.purchase": {"$exists": True}}) == set()


class TestSegments:
    @pytest.fixture
    async def lifecycle(self, base: Base) -> Base:
        await base.install("new", installed=NOW - 2 * DAY, seen=NOW - 2 * DAY)
        await base.install("new_active", installed=NOW - 6 * DAY, seen=NOW - DAY)
        hours_later = NOW - 60 * DAY + timedelta(hours=5)  # the same day: never came back
        await base.install("one_time", installed=NOW - 60 * DAY, seen=hours_later)
        await base.install("engaged", installed=NOW - 60 * DAY, seen=NOW - 3 * DAY)
        await base.install("dormant", installed=NOW - 90 * DAY, seen=NOW - 45 * DAY)
        return base

    async def test_each_segment(self, lifecycle: Base) -> None:
        assert await lifecycle.select({"segments": ["NEW"]}) == {"new", "new_active"}
        assert await lifecycle.select({"segments": ["ONE_TIME"]}) == {"one_time"}
        assert await lifecycle.select({"segments": ["ENGAGED"]}) == {"engaged"}
        assert await lifecycle.select({"segments": ["DORMANT"]}) == {"dormant"}
        assert await lifecycle.select({"segments": ["IMPORTED"]}) == set()
        both = {"segments": ["DORMANT", "ONE_TIME"]}
        assert await lifecycle.select(both) == {"dormant", "one_time"}

    async def test_all_five_or_none_is_everyone(self, lifecycle: Base) -> None:
        everyone = {"new", "new_active", "one_time", "engaged", "dormant"}
        assert await lifecycle.select({"segments": [s.value for s in Segment]}) == everyone
        assert await lifecycle.select({}) == everyone
        assert await lifecycle.select({"segments": []}) == everyone

    async def test_segments_move_with_now(self, lifecycle: Base) -> None:
        later = NOW + 20 * DAY
        assert await lifecycle.select({"segments": ["NEW"]}, now=later) == set()
        engaged = {"new_active", "engaged"}
        assert await lifecycle.select({"segments": ["ENGAGED"]}, now=later) == engaged
        one_time = {"new", "one_time"}
        assert await lifecycle.select({"segments": ["ONE_TIME"]}, now=later) == one_time
        assert await lifecycle.select({"segments": ["DORMANT"]}, now=later) == {"dormant"}
        dormant = {"new_active", "engaged", "dormant"}
        assert await lifecycle.select({"segments": ["DORMANT"]}, now=NOW + 40 * DAY) == dormant


class TestLanguagesAndRegions:
    async def test_codes_are_case_insensitive_and_bare_codes_take_variants(
        self, base: Base
    ) -> None:
        for install_id, language, region in [
            ("en", "en", "GB"),
            ("en-us", "en-US", "US"),
            ("en_ca", "en_CA", "CA"),
            ("eng", "eng", None),
            ("pt-br", "pt-BR", "BR"),
            ("none", None, None),
        ]:
            await base.install(install_id, language=language, region=region)
        assert await base.select({"languages": ["EN"]}) == {"en", "en-us", "en_ca"}
        assert await base.select({"languages": ["en-us", "pt_br"]}) == {"en-us", "pt-br"}
        assert await base.select({"languages": ["pt"]}) == {"pt-br"}
        assert await base.select({"regions": ["us", "Ca"]}) == {"en-us", "en_ca"}
        assert await base.select({"languages": ["en"], "regions": ["GB", "BR"]}) == {"en"}


class TestAudiences:
    async def test_any_named_audience_is_missing_until_audiences_exist(
        self, base: Base, runtime: Runtime
    ) -> None:
        async with runtime.sessions() as session:
            await check_audiences(session, app_id=base.app_id, names=[])
            with pytest.raises(MalformedParameterError, match="'newsletter'"):
                await check_audiences(session, app_id=base.app_id, names=["newsletter"])
        await base.install("a")
        assert await base.select({"custom_audiences": ["newsletter"]}) == set()


class TestFanOutShape:
    async def test_keyset_pages_over_reachable_matching_installs(
        self, base: Base, runtime: Runtime
    ) -> None:
        for n in range(7):
            await base.install(f"i{n}", region="FR" if n % 3 else "DE", optin=n != 4)
        await base.install("dev", region="FR", dev=True)
        targeting = Targeting.model_validate({"query": {"b.region": "FR"}})
        audience = reachable(app_id=base.app_id, dev_only=False) & installation_filter(
            targeting, app_id=base.app_id, now=NOW
        )
        seen: list[str] = []
        cursor = 0
        async with runtime.sessions() as session:
            while True:
                page = (
                    await session.execute(
                        select(Installation.id, Installation.install_id)
                        .where(audience, Installation.id > cursor)
                        .order_by(Installation.id)
                        .limit(2)
                    )
                ).all()
                if not page:
                    break
                seen += [row.install_id for row in page]
                cursor = page[-1].id
        assert seen == ["i1", "i2", "i5"]


class TestEstimate:
    async def test_counts_matched_and_reachable_in_one_statement(
        self, base: Base, runtime: Runtime
    ) -> None:
        await base.install("a", language="fr")
        await base.install("b", language="fr", optin=False)
        await base.install("c", language="fr", token=False)
        await base.install("d", language="de")
        await base.install("e", language="fr", dev=True)
        targeting = Targeting.model_validate({"languages": ["fr"]})
        async with runtime.sessions() as session:
            live = await estimate(
                session,
                app_id=base.app_id,
                platform="ios",
                dev_only=False,
                targeting=targeting,
                now=NOW,
            )
            dev = await estimate(
                session,
                app_id=base.app_id,
                platform="ios",
                dev_only=True,
                targeting=Targeting(),
                now=NOW,
            )
        assert (live.platform, live.matched, live.reachable) == ("ios", 3, 1)
        assert (dev.matched, dev.reachable) == (1, 1)


async def _post(api: httpx.AsyncClient, url: str, body: Any, app: ClientApp) -> None:
    response = await api.post(url, json=body, headers=app.headers())
    assert response.status_code in (200, 201, 202), response.text


class TestThroughTheApis:
    async def test_what_the_sdk_custom_data_and_trigger_events_store_is_targetable(
        self, api: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        app = await new_app(runtime, None, "ios", configure=False)
        for install_id, user in (("phone", "u1"), ("tablet", "u1"), ("other", "u2")):
            response = await api.put(
                f"/sdk/v1/{app.api_key}/installations/{install_id}",
                json={"push_token": secrets.token_hex(32), "custom_id": user, "push_optin": True},
            )
            assert response.status_code == 200, response.text
        response = await api.post(
            f"/sdk/v1/{app.api_key}/installations/phone/events",
            json={"events": [{"name": "Level_Up", "label": "boss"}]},
        )
        assert response.status_code == 202, response.text
        data = {"values": {"u.plan": "premium", "ut.interests": ["sport"]}}
        await _post(api, f"/1.0/{app.api_key}/data/users/u1", data, app)
        events = {"events": [{"name": "ue.added_to_cart"}]}
        await _post(api, f"/1.0/{app.api_key}/events/users/u2", events, app)

        checks: Sequence[tuple[dict[str, Any], set[str]]] = [
            ({"c.plan": "premium"}, {"phone", "tablet"}),
            ({"t.interests": {"$contains": ["sport"]}}, {"phone", "tablet"}),
            ({"e.level_up": {"$label": "boss"}}, {"phone"}),
            ({"ue.added_to_cart": {"$count": 1}}, {"other"}),
            ({"b.install_date": {"$gte": "now-1h"}}, {"phone", "tablet", "other"}),
        ]
        base = Base(runtime, app.app_id)
        for query, expected in checks:
            assert await base.query(query, now=utcnow()) == expected, query
