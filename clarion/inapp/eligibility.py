"""Which in-app campaigns are due for one installation, evaluated on the server.

Per app, a process keeps a catalogue of the campaigns that may be due now (live, not deleted,
within their dates give or take the 14 h a time zone can be off UTC): their bodies parsed, their
themes resolved, and ONE statement compiled once that reads the installation's row with every
distinct targeting criterion of every campaign evaluated against it (`SELECT <columns>,
(criterion_1), (criterion_2), ... FROM installations WHERE app_id = ... AND install_id =
:install_id`), plus the time of the user's latest `ue.` event for event triggers; each
campaign's targeting is then its formula over those criteria, tested in Python. A fetch is
one indexed read and some Python; the catalogue is rebuilt when the app's revision changes
(clarion.inapp.tasks polls it) and at least once a minute, since segments and relative dates
move with `now`.

Targeting is the push campaigns' engine (clarion.targeting.service: criterion_clause and
targeting_formula, whose conjunction is installation_filter), without the push token or
opt-in that pushing needs. Local dates are resolved in the installation's
time zone (its own, else the app's default, else UTC). Decision:
docs/decisions/0021-inapp-eligibility.md; the answer's fields: docs/inapp.md.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import psycopg
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, bindparam, func, or_, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from clarion.apps.models import App
from clarion.db import UtcDateTime
from clarion.delivery.content import pick_message
from clarion.errors import ClarionError, NotFoundError
from clarion.events.models import TrackedEvent
from clarion.formats import parse_wire_date
from clarion.inapp.models import InAppCampaign, InAppRevision
from clarion.inapp.schemas import (
    MAX_LIVE_CRITERIA,
    MAX_LIVE_VALUES,
    InAppCampaignBody,
    LandingContent,
    ThemeRead,
)
from clarion.inapp.service import BUILT_IN_THEME, themes
from clarion.sdk.models import Installation
from clarion.targeting.service import (
    Criterion,
    Every,
    Formula,
    Not,
    Some,
    criterion_clause,
    criterion_size,
    targeting_formula,
)

# A catalogue is rebuilt at least this often: segments (NEW for 7 days...) and relative dates
# in queries are computed at its build time, so they are at most this late.
CATALOGUE_SECONDS = 60.0
# A catalogue is rebuilt in the background in its last seconds, while it still serves.
REBUILD_AHEAD = 5.0
# A 304 is answered from memory for at most this long after the full evaluation it repeats:
# installation data (custom data, audiences, a new `ue.` event) reaches an SDK that sends
# If-None-Match within this delay; one that does not send it is evaluated afresh every time.
VALIDATOR_SECONDS = 60.0
# Installations whose last answer a process remembers: ~250 bytes each, ~25 MB at this size.
VALIDATOR_ENTRIES = 100_000
# What the SDK is told: ask again after this long (sooner on an app start). A constant, so
# that it never changes the answer's ETag.
REFRESH_SECONDS = 300
# Time zones are at most 14 h ahead of UTC (Kiribati) and 12 h behind: a local date holds
# somewhere on Earth within this margin of the same wall-clock time in UTC.
ZONE_MARGIN = timedelta(hours=14)

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)


# Dates ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    """A campaign's start or end: a UTC instant, or a wall-clock time in each installation's
    zone (`local`)."""

    at: datetime  # aware UTC, or naive when local
    local: bool

    def instant(self, zone: ZoneInfo) -> datetime:
        if not self.local:
            return self.at
        return self.at.replace(tzinfo=zone).astimezone(UTC)

    @property
    def loose(self) -> datetime:
        """The earliest (for a start) or latest (for an end) instant it can be anywhere:
        widened by ZONE_MARGIN by the caller when local."""
        return self.at.replace(tzinfo=UTC) if self.local else self.at


def bounds(body: InAppCampaignBody) -> tuple[Bound | None, Bound | None]:
    """The campaign's start and end (None: shown from now on, or without end)."""
    start: Bound | None = None
    if body.local_start_date is not None:
        start = Bound(parse_wire_date(body.local_start_date), local=True)
    elif body.start_date is not None and body.start_date != "now":
        start = Bound(parse_wire_date(body.start_date).replace(tzinfo=UTC), local=False)
    end: Bound | None = None
    if body.local_end_date is not None:
        end = Bound(parse_wire_date(body.local_end_date), local=True)
    elif body.end_date is not None:
        end = Bound(parse_wire_date(body.end_date).replace(tzinfo=UTC), local=False)
    return start, end


def loose_window(body: InAppCampaignBody) -> tuple[datetime | None, datetime | None]:
    """InAppCampaign.window_start / window_end for a body: when it may be shown somewhere,
    local dates widened by the 14 h a zone can be off UTC."""
    start, end = bounds(body)
    return (
        None if start is None else start.loose - (ZONE_MARGIN if start.local else timedelta()),
        None if end is None else end.loose + (ZONE_MARGIN if end.local else timedelta()),
    )


@lru_cache(maxsize=1024)
def zone_named(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


_UTC_ZONE = ZoneInfo("UTC")


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_for(
    token: str, install_id: str, shares: Sequence[tuple[str | None, int]]
) -> str | None:
    """The installation's A/B version of a campaign: the same at every fetch and in every
    process (a hash of the campaign token and the install id into 0-99, against the shares)."""
    if len(shares) == 1:
        return shares[0][0]
    digest = hashlib.blake2b(f"{token}:{install_id}".encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest) % 100
    for version, share in shares:
        if bucket < share:
            return version
        bucket -= share
    return shares[-1][0]


# The catalogue ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A campaign that may be due now, parsed once for every installation that asks."""

    campaign_id: int
    token: str
    start: Bound | None
    end: Bound | None
    shares: tuple[tuple[str | None, int], ...]
    # version -> language -> the answer's content fields, in pick_message's shape.
    contents: dict[str | None, dict[str, dict[str, Any]]]
    # The answer's fields that are the same for every installation, in SdkMessage's order
    # around those that are not (version, trigger's last event, dates, content).
    trigger: dict[str, Any]
    rules: dict[str, Any]
    look: dict[str, Any]
    links: dict[str, Any]
    dev_only: bool  # shown to dev installations only (created with the Dev key), or live ones
    targeted: Tester  # its targeting's outcome, from the row's criterion columns
    event: int | None  # which event column holds the user's latest `ue.` event, if any


# A message resolved for a campaign, version, language and zone (before the user's latest
# event), with its start and end instants.
_Resolved = tuple[dict[str, Any], datetime | None, datetime | None]

# Whether an installation is targeted, from the criteria that held for it: bit k of `held` is
# the statement's k-th criterion column. One AND per campaign where a walk over the row's
# columns cost 0.13 ms a fetch for 200 campaigns (a sixth of the API process's time).
Tester = Callable[[int], bool]


def _everyone(held: int) -> bool:
    return True


def tester(formula: Formula, bit: Callable[[Criterion], int]) -> Tester:
    """The formula as a test of `held`, `bit` giving each criterion's bit. Criteria are
    two-valued (SQL NULL only where the targeting's top level reads it as false), so Python's
    and/or/not give SQL's outcome."""
    if isinstance(formula, Criterion):
        mask = 1 << bit(formula)
        return lambda held: held & mask != 0
    if isinstance(formula, Not):
        inner = tester(formula.part, bit)
        return lambda held: not inner(held)
    if isinstance(formula, Every) and all(isinstance(p, Criterion) for p in formula.parts):
        # The common shape (lists and plain conditions): every bit of `need` set.
        need = 0
        for part in formula.parts:
            if isinstance(part, Criterion):
                need |= 1 << bit(part)
        if need == 0:
            return _everyone
        return lambda held: held & need == need
    parts = tuple(tester(part, bit) for part in formula.parts)
    if isinstance(formula, Some):
        return lambda held: any(test(held) for test in parts)
    return lambda held: all(test(held) for test in parts)


# The installation's columns read before the criteria, in this order.
_COLUMNS = (
    Installation.id,
    Installation.install_id,
    Installation.custom_id,
    Installation.advertising_id,
    Installation.language,
    Installation.timezone,
    Installation.is_dev,
)
_IS_DEV = 6
_FIRST_CRITERION = len(_COLUMNS)


@dataclass(frozen=True, slots=True)
class PreparedQuery:
    """A statement compiled once, run through the driver with its parameters already in the
    driver's form: only the install id changes from one fetch to the next.

    SQLAlchemy would otherwise walk the statement's tree at every execution to find its
    compiled form in its cache (~thousands of nodes for 200 campaigns)."""

    sql: str
    raw: bool  # `$n` placeholders (PostgreSQL), run through psycopg's raw cursor
    values: tuple[Any, ...]  # every parameter, the install id's slot included
    slot: int

    def parameters(self, install_id: str) -> list[Any]:
        values = list(self.values)
        values[self.slot] = install_id
        return values


def _driver_value(value: Any, datetimes: Callable[[Any], Any] | None) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, datetime) and datetimes is not None:
        return datetimes(value)
    if isinstance(value, str):
        return str(value)  # StrEnum members and other str subclasses: a plain str
    return value


# A placeholder with the cast SQLAlchemy writes after it (`%(name)s::VARCHAR`), or `%%`.
_PYFORMAT = re.compile(r"%\((\w+)\)s((?:::[A-Z][A-Z0-9 ]*(?:\(\d+\))?)?)|%%")


def _numbered(sql: str, named: dict[str, Any]) -> tuple[str, list[Any], int]:
    """psycopg's `%(name)s` placeholders as PostgreSQL's own `$n`, equal parameters merged:
    the SQL, its values in `$n` order, and the index of the install id's.

    psycopg parses `%(name)s` queries at every execution, and caches the parse only for
    queries under 4 KiB: 0.7 ms per fetch for a 9 KB statement. Its raw cursor sends `$n`
    queries as they are. SQLAlchemy names each use of a value apart (200 campaigns: 800
    parameters, 44 distinct values), and psycopg converts every one at every execution (a
    fifth of a fetch's CPU): a value met again with the same cast reuses its number, so
    every use of a number has one type."""
    values: list[Any] = []
    numbers: dict[tuple[Any, ...], int] = {}
    slot = -1

    def number(match: re.Match[str]) -> str:
        nonlocal slot
        name, cast = match.group(1), match.group(2)
        if name is None:
            return "%"
        value = named.get(name)
        # The install id is the one value that changes: never merged with a constant.
        key: tuple[Any, ...] = (
            ("install_id",) if name == "install_id" else (type(value), value, cast)
        )
        try:
            hash(key)
        except TypeError:  # an array parameter: kept apart
            key = ("name", name)
        if key not in numbers:
            values.append(value)
            numbers[key] = len(values)
            if name == "install_id":
                slot = len(values) - 1
        return f"${numbers[key]}{cast}"

    return _PYFORMAT.sub(number, sql), values, slot


def prepare(statement: Select[Any], dialect: Dialect) -> PreparedQuery:
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    datetimes = UtcDateTime().dialect_impl(dialect).bind_processor(dialect)
    named = {key: _driver_value(value, datetimes) for key, value in params.items()}
    sql = compiled.string
    order = compiled.positiontup
    if order is None and dialect.paramstyle == "pyformat":
        numbered, values, slot = _numbered(sql, named)
        return PreparedQuery(numbered, True, tuple(values), slot)
    if order is None:
        raise ValueError(f"unexpected parameter style {dialect.paramstyle}")
    values = [named.get(name) for name in order]
    return PreparedQuery(sql, False, tuple(values), list(order).index("install_id"))


@dataclass(frozen=True, slots=True)
class Catalogue:
    app_id: int
    revision: int
    built_at: datetime
    # Rebuilt by then: CATALOGUE_SECONDS after it was built, or sooner when a campaign's
    # window opens somewhere on Earth (ended ones are dropped by evaluate() until then).
    expires_at: datetime
    default_zone: ZoneInfo
    candidates: tuple[Candidate, ...]
    themes: dict[str, dict[str, Any]]  # SdkTheme's fields by code
    # The row: the installation's columns, one column per distinct criterion, then one
    # latest-event time per distinct (event, label).
    first_event: int
    query: PreparedQuery
    resolved: dict[tuple[int, str | None, str, str | None], _Resolved] = field(default_factory=dict)

    @property
    def criteria(self) -> int:
        """How many distinct criteria the statement evaluates for a fetch."""
        return self.first_event - _FIRST_CRITERION


@dataclass(frozen=True, slots=True)
class CampaignRow:
    id: int
    token: str
    dev_only: bool
    body: dict[str, Any]


def _content_fields(content: LandingContent) -> dict[str, Any]:
    return {
        "header": content.header,
        "title": content.title,
        "body": content.body,
        "actions": [a.model_dump(mode="json", exclude_none=True) for a in content.actions],
    }


def _sdk_theme(theme: ThemeRead) -> dict[str, Any]:
    return {
        "code": theme.code,
        "layout": theme.layout.value,
        "colours": theme.colours.model_dump(mode="json"),
        "font": theme.font.model_dump(mode="json"),
        "close_button": theme.close_button.value,
        "corner_radius": theme.corner_radius,
        "auto_close_seconds": theme.auto_close_seconds,
    }


class OverBudget(Exception):
    """A campaign's criteria would take the statement past MAX_LIVE_CRITERIA / VALUES."""


def _targeted(
    body: InAppCampaignBody,
    criteria: dict[Criterion, int],
    columns: list[ColumnElement[Any]],
    budget: list[int],
    *,
    app_id: int,
    now: datetime,
) -> Tester:
    """The campaign's targeting as a test of the row, each criterion it uses given a column
    of the statement unless another campaign's gave it one already: campaigns share most of
    theirs (segments, languages, regions, audiences, attribute tests), and each EXISTS costs
    PostgreSQL an index probe per fetch (200 campaigns, 800 probes as whole targetings, 60
    as distinct criteria in bench/inapp_fetch.py's mix). ClarionError if one does not compile
    (nothing is then added)."""
    if body.targeting is None:
        return _everyone
    formula = targeting_formula(body.targeting)
    added: dict[Criterion, ColumnElement[Any]] = {}

    def collect(part: Formula) -> None:
        if isinstance(part, Criterion):
            if part not in criteria and part not in added:
                added[part] = criterion_clause(part, app_id=app_id, now=now)
        elif isinstance(part, Not):
            collect(part.part)
        else:
            for child in part.parts:
                collect(child)

    collect(formula)
    values = sum(criterion_size(criterion) for criterion in added)
    if len(criteria) + len(added) > MAX_LIVE_CRITERIA or budget[0] + values > MAX_LIVE_VALUES:
        # The API refuses such a campaign (service._check_budget); two written at once can
        # still pass it: the later ones are left out rather than the statement failing.
        raise OverBudget
    budget[0] += values
    for criterion, clause in added.items():
        criteria[criterion] = len(columns)
        columns.append(clause)
    return tester(formula, criteria.__getitem__)


def build_catalogue(
    *,
    app_id: int,
    revision: int,
    rows: Sequence[CampaignRow],
    app_themes: dict[str, ThemeRead],
    default_zone: str | None,
    now: datetime,
    dialect: Dialect,
) -> Catalogue:
    """Parse, select and compile (CPU only: run off the event loop)."""
    expires = now + timedelta(seconds=CATALOGUE_SECONDS)
    soon = now + timedelta(seconds=2 * REBUILD_AHEAD)
    criteria: dict[Criterion, int] = {}
    values = [0]  # values bound by the criteria so far
    events: dict[tuple[str, str | None], int] = {}
    columns: list[ColumnElement[Any]] = []
    candidates: list[Candidate] = []
    theme_answers = {code: _sdk_theme(theme) for code, theme in app_themes.items()}
    for row in rows:
        try:
            body = InAppCampaignBody.model_validate(row.body)
        except ValidationError:
            # Stored before a rule existed: left out, rather than every fetch of the app failing.
            log.warning("in-app campaign %s: its stored body no longer validates", row.token)
            continue
        start, end = bounds(body)
        loose_start, loose_end = loose_window(body)
        # Those about to start are kept (evaluate() checks their exact start): the catalogue
        # rebuilt ahead of such a start then holds it, and is not rebuilt again at once.
        if loose_start is not None and loose_start > soon:
            expires = min(expires, loose_start)
            continue
        if loose_end is not None and loose_end <= now:
            continue
        try:
            targeted = _targeted(body, criteria, columns, values, app_id=app_id, now=now)
        except OverBudget:
            log.warning("in-app campaign %s: past the app's criteria budget, left out", row.token)
            continue
        except ClarionError:
            # A targeting the engine refuses now (a limit added since): left out, as above.
            log.warning("in-app campaign %s: its targeting no longer compiles", row.token)
            continue
        trigger = body.trigger
        event_key = None if trigger.server_event is None else (trigger.server_event, trigger.label)
        if event_key is not None and event_key not in events:
            events[event_key] = len(events)
        by_version: dict[str | None, dict[str, dict[str, Any]]] = {}
        for content in body.landing.contents:
            fields = _content_fields(content)
            by_version.setdefault(content.version, {})[content.language] = fields
        landing = body.landing
        grace = trigger.grace_period
        candidates.append(
            Candidate(
                campaign_id=row.id,
                token=row.token,
                start=start,
                end=end,
                shares=tuple(body.versions.items()),
                contents=by_version,
                trigger={
                    "when": trigger.when.value.lower(),
                    "event": trigger.event,
                    "label": trigger.label,
                },
                rules={
                    "capping": trigger.capping,
                    "grace_period_seconds": 0 if grace is None else grace.seconds,
                },
                look={
                    # A theme deleted since: the built-in one.
                    "theme": landing.theme
                    if landing.theme in theme_answers
                    else BUILT_IN_THEME.code,
                    "image": landing.image,
                    "image_description": landing.image_description,
                },
                links={
                    "deeplink": body.deeplink,
                    "custom_payload": (
                        None if body.custom_payload is None else orjson.loads(body.custom_payload)
                    ),
                },
                dev_only=row.dev_only,
                targeted=targeted,
                event=None if event_key is None else events[event_key],
            )
        )
    for name, label in events:  # in insertion order, that of their numbers
        columns.append(_latest_event(app_id, name, label))
    statement = select(*_COLUMNS, *columns).where(
        Installation.app_id == app_id, Installation.install_id == bindparam("install_id", "")
    )
    return Catalogue(
        app_id=app_id,
        revision=revision,
        built_at=now,
        expires_at=expires,
        default_zone=zone_named(default_zone) or _UTC_ZONE,
        candidates=tuple(candidates),
        themes=theme_answers,
        first_event=_FIRST_CRITERION + len(criteria),
        query=prepare(statement, dialect),
    )


def _latest_event(app_id: int, name: str, label: str | None) -> ColumnElement[Any]:
    """When the Trigger Events API last received this event for the installation's user: the
    (app, name, custom id, time) index answers it with one probe."""
    event = TrackedEvent
    conditions = [
        event.app_id == app_id,
        event.name == name,
        event.custom_id == Installation.custom_id,
    ]
    if label is not None:
        conditions.append(event.label == label)
    found: ColumnElement[Any] = (
        select(func.max(event.occurred_at)).where(*conditions).scalar_subquery()
    )
    return found


async def load_catalogue(
    session: AsyncSession, *, app_id: int, now: datetime, dialect: Dialect
) -> Catalogue:
    """Read the app's campaigns that may be due and build their catalogue (off the loop)."""
    # The revision first: a change committed while the campaigns are read is then seen again
    # at the next poll, never missed.
    revision = await session.scalar(
        select(InAppRevision.revision).where(InAppRevision.app_id == app_id)
    )
    found = await session.execute(
        select(InAppCampaign.id, InAppCampaign.token, InAppCampaign.dev_only, InAppCampaign.body)
        .where(
            InAppCampaign.app_id == app_id,
            InAppCampaign.live.is_(True),
            InAppCampaign.deleted_at.is_(None),
            or_(InAppCampaign.window_end.is_(None), InAppCampaign.window_end > now),
        )
        .order_by(InAppCampaign.id)
    )
    rows = [CampaignRow(*row) for row in found]
    app_themes = await themes(session, app_id=app_id)
    default_zone = await session.scalar(select(App.default_timezone).where(App.id == app_id))
    return await asyncio.to_thread(
        build_catalogue,
        app_id=app_id,
        revision=revision or 0,
        rows=rows,
        app_themes=app_themes,
        default_zone=default_zone,
        now=now,
        dialect=dialect,
    )


# One installation's answer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handout:
    """What one full fetch handed an installation (clarion.inapp.tasks.SupplyWriter counts
    each campaign once per installation)."""

    app_id: int
    platform: str
    installation_id: int
    install_id: str
    custom_id: str | None
    advertising_id: str | None
    campaigns: tuple[tuple[int, str, str], ...]  # campaign id, token, version ("": no A/B)


@dataclass(frozen=True, slots=True)
class Evaluation:
    messages: list[dict[str, Any]]
    themes: dict[str, dict[str, Any]]  # those the messages name
    handed: list[tuple[Candidate, str | None]]
    # The first instant after which the answer may differ (a campaign's start or end).
    changes_at: datetime | None


def _utc(value: Any) -> datetime | None:
    """A datetime as the driver returns it (SQLite: text) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Resolved messages a catalogue keeps: one per campaign, version, language and zone met.
MAX_RESOLVED = 200_000


def _resolve(candidate: Candidate, version: str | None, language: str, zone: ZoneInfo) -> _Resolved:
    start = None if candidate.start is None else candidate.start.instant(zone)
    end = None if candidate.end is None else candidate.end.instant(zone)
    content = pick_message({"messages": candidate.contents[version]}, language) or {}
    message = {
        "campaign_token": candidate.token,
        "version": version,
        "trigger": {**candidate.trigger, "last_server_event_at": None},
        **candidate.rules,
        "start": None if start is None else _iso(start),
        "end": None if end is None else _iso(end),
        **candidate.look,
        **content,
        **candidate.links,
    }
    return message, start, end


def evaluate(catalogue: Catalogue, row: Sequence[Any], now: datetime) -> Evaluation:
    """The messages due for the installation whose row (catalogue.query's) this is.

    What depends only on the campaign, version, language and zone is resolved once per
    catalogue (`resolved`): a fetch of 80 messages then costs ~0.1 ms of Python, not ~0.6."""
    install_id, zone_name = row[1], row[5]
    # pick_message reads the base code only ("pt" of "pt_BR").
    language = (row[4] or "").split("-")[0].split("_")[0].lower()
    zone = zone_named(zone_name)
    if zone is None:
        zone, zone_name = catalogue.default_zone, None
    resolved = catalogue.resolved
    is_dev = bool(row[_IS_DEV])
    held = 0
    for index, value in enumerate(row[_FIRST_CRITERION : catalogue.first_event]):
        if value:
            held |= 1 << index
    messages: list[dict[str, Any]] = []
    handed: list[tuple[Candidate, str | None]] = []
    changes_at: datetime | None = None
    for index, candidate in enumerate(catalogue.candidates):
        if is_dev is not candidate.dev_only or not candidate.targeted(held):
            continue
        version = version_for(candidate.token, install_id, candidate.shares)
        key = (index, version, language, zone_name)
        entry = resolved.get(key)
        if entry is None:
            entry = _resolve(candidate, version, language, zone)
            if len(resolved) < MAX_RESOLVED:
                resolved[key] = entry
        message, start, end = entry
        if start is not None and start > now:
            changes_at = start if changes_at is None else min(changes_at, start)
            continue
        if end is not None:
            if end <= now:
                continue
            changes_at = end if changes_at is None else min(changes_at, end)
        if candidate.event is not None:
            latest = _utc(row[catalogue.first_event + candidate.event])
            if latest is not None:
                trigger = {**message["trigger"], "last_server_event_at": _iso(latest)}
                message = {**message, "trigger": trigger}
        messages.append(message)
        handed.append((candidate, version))
    used = {message["theme"] for message in messages}
    themes = {code: theme for code, theme in catalogue.themes.items() if code in used}
    return Evaluation(messages, themes, handed, changes_at)


# The fetch, with its validator ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchAnswer:
    """200 with `body`, or 304 (body None); `etag` in both."""

    etag: str
    body: bytes | None


@dataclass(slots=True)
class _Remembered:
    etag: str
    revision: int
    valid_until: datetime


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        value = candidate.strip().removeprefix("W/")
        if value in (etag, "*"):
            return True
    return False


@dataclass
class InAppFeed:
    """What an API process holds to answer the SDK's fetches: each app's catalogue, the
    revisions the poller last read, and the last answer per installation (the validator)."""

    sessions: async_sessionmaker[AsyncSession]
    engine: AsyncEngine
    # Called with what each full fetch handed out (SupplyWriter.record).
    supplied: Callable[[Handout], None]
    clock: Clock = field(default=lambda: datetime.now(UTC))
    max_remembered: int = VALIDATOR_ENTRIES
    _catalogues: dict[int, Catalogue] = field(default_factory=dict)
    _rebuilding: dict[int, asyncio.Task[Catalogue]] = field(default_factory=dict)
    _revisions: dict[int, int] = field(default_factory=dict)
    _remembered: OrderedDict[tuple[int, str], _Remembered] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        # Reads run outside any transaction: no BEGIN nor ROLLBACK round trip around the one
        # SELECT (the driver's autocommit is a local flag).
        self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    # The revision poller's side.

    def revisions_read(self, revisions: dict[int, int]) -> None:
        """Every app's revision as just read: catalogues and validators of older ones are
        dropped at their next use."""
        self._revisions = dict(revisions)

    def revision(self, app_id: int) -> int:
        return self._revisions.get(app_id, 0)

    async def catalogue(self, app_id: int) -> Catalogue:
        """The app's catalogue, rebuilt when the app's revision moved or its time is up.

        It is rebuilt ahead, in the background, in its last REBUILD_AHEAD seconds: a
        200-campaign rebuild takes ~100-200 ms, during which every fetch of the app would
        otherwise wait (at 500 fetches/s, 3 % of a second's: the p99)."""
        now = self.clock()
        current = self._catalogues.get(app_id)
        if current is not None and self._valid(current, now):
            ahead = current.expires_at - timedelta(seconds=REBUILD_AHEAD)
            if now >= ahead and app_id not in self._rebuilding:
                self._start_rebuild(app_id)
            return current
        task = self._rebuilding.get(app_id) or self._start_rebuild(app_id)
        built = await asyncio.shield(task)
        if not self._valid(built, self.clock()):  # a rebuild started before the change
            built = await asyncio.shield(
                self._rebuilding.get(app_id) or self._start_rebuild(app_id)
            )
        return built

    def _start_rebuild(self, app_id: int) -> asyncio.Task[Catalogue]:
        task = asyncio.create_task(self._rebuild(app_id), name="in-app catalogue")
        self._rebuilding[app_id] = task

        def done(finished: asyncio.Task[Catalogue]) -> None:
            self._rebuilding.pop(app_id, None)
            if not finished.cancelled() and finished.exception() is not None:
                # A rebuild ahead failed: the current catalogue serves until its expiry, then
                # the next fetch rebuilds again (and fails with the error).
                log.warning(
                    "in-app catalogue of app %d: rebuild failed",
                    app_id,
                    exc_info=finished.exception(),
                )

        task.add_done_callback(done)
        return task

    async def _rebuild(self, app_id: int) -> Catalogue:
        async with self.sessions() as session:
            built = await load_catalogue(
                session, app_id=app_id, now=self.clock(), dialect=self.engine.dialect
            )
        self._catalogues[app_id] = built
        return built

    def _valid(self, catalogue: Catalogue, now: datetime) -> bool:
        return (
            catalogue.revision >= self.revision(catalogue.app_id)
            and catalogue.built_at <= now < catalogue.expires_at
        )

    async def fetch(
        self, *, app_id: int, platform: str, install_id: str, if_none_match: str | None
    ) -> FetchAnswer:
        """The installation's due messages (NotFoundError for an unknown installation), or a
        304 when If-None-Match names the answer it would get."""
        now = self.clock()
        key = (app_id, install_id)
        unchanged = self.not_modified(app_id, install_id, if_none_match)
        if unchanged is not None:
            return FetchAnswer(unchanged, None)
        remembered = self._remembered.get(key)

        catalogue = await self.catalogue(app_id)
        query = catalogue.query
        async with self._reader.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            row = await _fetch_one(raw, query, install_id)
        if row is None:
            self._remembered.pop(key, None)
            raise NotFoundError(f"no installation {install_id!r}")
        evaluation = evaluate(catalogue, row, now)
        body = orjson.dumps(
            {
                "messages": evaluation.messages,
                "themes": evaluation.themes,
                "refresh_seconds": REFRESH_SECONDS,
            }
        )
        etag = etag_of(body)

        valid_until = min(now + timedelta(seconds=VALIDATOR_SECONDS), catalogue.expires_at)
        if evaluation.changes_at is not None:
            valid_until = min(valid_until, evaluation.changes_at)
        known = remembered is not None and remembered.etag == etag
        self._remember(key, _Remembered(etag, catalogue.revision, valid_until))
        if _matches(if_none_match, etag):
            return FetchAnswer(etag, None)
        if not known and evaluation.handed:
            # An answer this process has not handed this installation lately: counted once
            # per installation and campaign by the writer, whatever was handed before.
            self.supplied(
                Handout(
                    app_id=app_id,
                    platform=platform,
                    installation_id=row[0],
                    install_id=install_id,
                    custom_id=row[2],
                    advertising_id=row[3],
                    campaigns=tuple(
                        (candidate.campaign_id, candidate.token, version or "")
                        for candidate, version in evaluation.handed
                    ),
                )
            )
        return FetchAnswer(etag, body)

    def not_modified(self, app_id: int, install_id: str, if_none_match: str | None) -> str | None:
        """The ETag to answer 304 with, without the database: If-None-Match names the answer
        an evaluation gave this installation less than VALIDATOR_SECONDS ago, before any
        campaign change since and before the next start or end of one of its campaigns."""
        if not if_none_match:
            return None
        remembered = self._remembered.get((app_id, install_id))
        if (
            remembered is not None
            and remembered.revision >= self.revision(app_id)
            and self.clock() < remembered.valid_until
            and _matches(if_none_match, remembered.etag)
        ):
            return remembered.etag
        return None

    def _remember(self, key: tuple[int, str], entry: _Remembered) -> None:
        self._remembered[key] = entry
        self._remembered.move_to_end(key)
        while len(self._remembered) > self.max_remembered:
            self._remembered.popitem(last=False)


async def _fetch_one(raw: Any, query: PreparedQuery, install_id: str) -> Sequence[Any] | None:
    """One row through the driver itself: psycopg's async connection (prepared on the server
    from its 5th execution on a connection), or sqlite3's (run on the loop, decision 0006)."""
    if query.raw:
        async with psycopg.AsyncRawCursor(raw) as cursor:
            await cursor.execute(query.sql, query.parameters(install_id))
            found: Sequence[Any] | None = await cursor.fetchone()
            return found
    result: Sequence[Any] | None = raw.execute(query.sql, query.parameters(install_id)).fetchone()
    return result
