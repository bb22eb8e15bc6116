"""In-app campaigns and themes: create, update, read, list, delete, statistics. No HTTP here.

What an installation is handed is decided in clarion.inapp.eligibility; this module owns the
campaigns and themes themselves, and bumps the app's revision (models.InAppRevision) in the
transaction of every change so that API processes reload what they hold.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.service import AppAccess
from clarion.db import insert_ignoring_conflicts
from clarion.dialects import utc_day
from clarion.errors import (
    ApiMisuseError,
    MalformedParameterError,
    NotFoundError,
    from_validation_errors,
)
from clarion.events.models import InAppEvent, InAppEventKind
from clarion.formats import parse_wire_date, wire_date
from clarion.inapp.models import InAppCampaign, InAppRevision, InAppTheme
from clarion.inapp.schemas import (
    MAX_LIVE_CRITERIA,
    MAX_LIVE_VALUES,
    MAX_THEMES,
    CtaClicks,
    InAppCampaignBody,
    InAppCampaignSummary,
    InAppCounts,
    InAppDayStats,
    InAppStats,
    ThemeBody,
    ThemeRead,
)
from clarion.targeting import service as targeting_service

# Every app has it, without storing it: a campaign can be written before any theme is.
BUILT_IN_THEME = ThemeRead(code="default", name="Default (modal)", built_in=True)


async def bump_revision(session: AsyncSession, *, app_id: int) -> None:
    """Mark the app's in-app campaigns or themes as changed (call in the changing transaction)."""
    await session.execute(
        insert_ignoring_conflicts(session, InAppRevision, index=["app_id"]).values(
            app_id=app_id, revision=0
        )
    )
    await session.execute(
        update(InAppRevision)
        .where(InAppRevision.app_id == app_id)
        .values(revision=InAppRevision.revision + 1)
    )


async def current_revisions(session: AsyncSession) -> dict[int, int]:
    """Every app's revision (apps that never had an in-app change have none)."""
    rows = await session.execute(select(InAppRevision.app_id, InAppRevision.revision))
    return dict(rows.all())  # (a Result has keys(): dict() would take it for a mapping)


async def themes(session: AsyncSession, *, app_id: int) -> dict[str, ThemeRead]:
    """The app's themes by code, the built-in `default` first (a stored theme of the same code
    cannot exist: the admin API refuses it)."""
    found = {BUILT_IN_THEME.code: BUILT_IN_THEME}
    rows = await session.scalars(
        select(InAppTheme).where(InAppTheme.app_id == app_id).order_by(InAppTheme.code)
    )
    for theme in rows:
        found[theme.code] = ThemeRead(
            code=theme.code, **ThemeBody.model_validate(theme.body).model_dump()
        )
    return found


async def check_theme(session: AsyncSession, *, app_id: int, code: str, field: str) -> None:
    """Raise MalformedParameterError (400) naming `field` if the app has no theme `code`."""
    if code == BUILT_IN_THEME.code:
        return
    found = await session.scalar(
        select(InAppTheme.id).where(InAppTheme.app_id == app_id, InAppTheme.code == code)
    )
    if found is None:
        raise MalformedParameterError(f"{field}: this app has no in-app theme {code!r}")


# Campaigns --------------------------------------------------------------------------------------

# A local date is a wall-clock time in each installation's zone: zones run from UTC-12 to
# UTC+14, so the UTC window that holds it everywhere is widened by 14 h on each side.
_LOCAL_SLACK = timedelta(hours=14)


def validate_body(document: dict[str, Any]) -> InAppCampaignBody:
    """A campaign document (a create body, or a stored body with an update merged in)."""
    try:
        return InAppCampaignBody.model_validate(document)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


async def create_campaign(
    session: AsyncSession,
    *,
    access: AppAccess,
    body: InAppCampaignBody,
    now: datetime,
    from_api: bool = True,
) -> InAppCampaign:
    """`from_api`: false for campaigns composed in the dashboard (Batch's list filter)."""
    await _check_references(session, access, body)
    await _check_budget(session, access, body, campaign_id=None)
    campaign = InAppCampaign(
        token=secrets.token_hex(16),
        app_id=access.app_id,
        name=body.name,
        dev_only=access.is_dev,
        from_api=from_api,
        live=body.live,
        body=_stored(body),
        created_at=now,
        updated_at=now,
    )
    _set_window(campaign, body, now=now, start_was_now=False)
    session.add(campaign)
    await bump_revision(session, app_id=access.app_id)
    await session.flush()
    return campaign


async def update_campaign(
    session: AsyncSession,
    *,
    access: AppAccess,
    token: str,
    changes: dict[str, Any],
    now: datetime,
    replace: bool = False,
) -> None:
    """Batch's update rules (spec §6, §4.2): fields merge into the stored campaign, and a field
    once set cannot be removed (null). `replace`: `changes` is the whole campaign (the
    dashboard's editor), so a field it leaves out is removed."""
    campaign = await find_campaign(session, access, token, for_update=True)
    stored = campaign.body
    if replace:
        document = changes
    else:
        replaced = _replaced_by(changes)
        for key, value in changes.items():
            if key in replaced:
                continue
            if InAppCampaignBody.unset_by(key, value) and stored.get(key) is not None:
                raise MalformedParameterError(f"{key}: a parameter once set cannot be removed")
        document = {k: v for k, v in {**stored, **changes}.items() if k not in replaced}
    body = validate_body(document)
    await _check_references(session, access, body)
    await _check_budget(session, access, body, campaign_id=campaign.id)
    _set_window(campaign, body, now=now, start_was_now=stored.get("start_date") == "now")
    campaign.body = _stored(body)
    campaign.name = body.name
    campaign.live = body.live
    campaign.updated_at = now
    await bump_revision(session, app_id=campaign.app_id)


# A date in UTC and its local counterpart exclude each other: giving one replaces the other.
_PAIRED = {
    "start_date": "local_start_date",
    "local_start_date": "start_date",
    "end_date": "local_end_date",
    "local_end_date": "end_date",
}


def _replaced_by(changes: dict[str, Any]) -> set[str]:
    """Stored fields an update drops rather than keeps (Batch's rule that a field once set stays
    set would otherwise leave no way from a local date to a UTC one, or out of A/B testing)."""
    replaced = {
        _PAIRED[key]
        for key, value in changes.items()
        if key in _PAIRED and value is not None and _PAIRED[key] not in changes
    }
    landing = changes.get("landing")
    contents = landing.get("contents") if isinstance(landing, dict) else None
    if (
        "version_split" in changes
        and changes["version_split"] is None
        and isinstance(contents, list)
        and not any(isinstance(c, dict) and c.get("version") for c in contents)
    ):
        replaced.add("version_split")  # new contents without versions: A/B testing ends
    return replaced


async def _check_budget(
    session: AsyncSession, access: AppAccess, body: InAppCampaignBody, *, campaign_id: int | None
) -> None:
    """Refuse a live campaign that would take the app's live campaigns past what one fetch
    statement evaluates (schemas.MAX_LIVE_CRITERIA, MAX_LIVE_VALUES): past it, the fetch
    would leave campaigns out."""
    if not body.live or body.targeting is None:
        return
    mine = targeting_service.criteria_of(targeting_service.targeting_formula(body.targeting))
    others = await session.scalars(
        select(InAppCampaign.body).where(
            InAppCampaign.app_id == access.app_id,
            InAppCampaign.live.is_(True),
            InAppCampaign.deleted_at.is_(None),
            InAppCampaign.id != (campaign_id or 0),
        )
    )
    criteria = set(mine)
    for stored in others:
        try:
            targeting = InAppCampaignBody.model_validate(stored).targeting
        except ValidationError:
            continue  # left out of fetches too (eligibility)
        if targeting is not None:
            criteria |= targeting_service.criteria_of(
                targeting_service.targeting_formula(targeting)
            )
    values = sum(targeting_service.criterion_size(c) for c in criteria)
    if len(criteria) > MAX_LIVE_CRITERIA or values > MAX_LIVE_VALUES:
        raise MalformedParameterError(
            f"targeting: with this campaign the app's live in-app campaigns would test "
            f"{len(criteria):,} distinct criteria with {values:,} values; at most "
            f"{MAX_LIVE_CRITERIA:,} and {MAX_LIVE_VALUES:,} (docs/inapp.md): reuse the "
            "criteria of other campaigns, or set some offline"
        )


async def delete_campaign(
    session: AsyncSession, *, access: AppAccess, token: str, now: datetime
) -> None:
    """Soft: the row stays for its statistics and exports; every read ignores it."""
    campaign = await find_campaign(session, access, token, for_update=True)
    campaign.deleted_at = now
    campaign.updated_at = now
    await bump_revision(session, app_id=campaign.app_id)


async def list_campaigns(
    session: AsyncSession,
    *,
    access: AppAccess,
    offset: int,
    limit: int,
    live: bool | None,
    from_api: bool | None,
) -> list[InAppCampaignSummary]:
    """Newest first (spec §4.4, as for push campaigns)."""
    query = select(InAppCampaign).where(
        InAppCampaign.app_id == access.app_id, InAppCampaign.deleted_at.is_(None)
    )
    if live is not None:
        query = query.where(InAppCampaign.live.is_(live))
    if from_api is not None:
        query = query.where(InAppCampaign.from_api.is_(from_api))
    campaigns = await session.scalars(
        query.order_by(InAppCampaign.created_at.desc(), InAppCampaign.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [
        InAppCampaignSummary(
            campaign_token=c.token,
            from_api=c.from_api,
            dev_only=c.dev_only,
            created_date=wire_date(c.created_at),
            name=c.name,
            live=c.live,
            start_date=c.body.get("start_date"),
            local_start_date=c.body.get("local_start_date"),
            end_date=c.body.get("end_date"),
            local_end_date=c.body.get("local_end_date"),
        )
        for c in campaigns
    ]


async def describe_campaign(
    session: AsyncSession, *, access: AppAccess, token: str
) -> dict[str, Any]:
    """The create body as stored plus campaign_token, from_api, dev_only, created_date (spec
    §6)."""
    campaign = await find_campaign(session, access, token)
    return {
        "campaign_token": campaign.token,
        "from_api": campaign.from_api,
        "dev_only": campaign.dev_only,
        "created_date": wire_date(campaign.created_at),
        **campaign.body,
    }


async def find_campaign(
    session: AsyncSession,
    access: AppAccess,
    token: str,
    *,
    for_update: bool = False,
    deleted_too: bool = False,
) -> InAppCampaign:
    """`deleted_too`: a deleted campaign is still found (its statistics are kept)."""
    query = select(InAppCampaign).where(
        InAppCampaign.token == token,
        InAppCampaign.app_id == access.app_id,
    )
    if not deleted_too:
        query = query.where(InAppCampaign.deleted_at.is_(None))
    if for_update:
        query = query.with_for_update()
    campaign = await session.scalar(query)
    if campaign is None:
        raise NotFoundError(f"no in-app campaign {token!r}")
    if for_update and access.is_dev and not campaign.dev_only:
        # As for push campaigns: the Dev key's campaigns reach debug installations only; one of
        # the Live key reaches the app's users, and changing it is the Live key's business.
        raise ApiMisuseError(
            "the Dev API key changes only the in-app campaigns created with it (dev_only):"
            " this one was created with the Live API key"
        )
    return campaign


async def _check_references(
    session: AsyncSession, access: AppAccess, body: InAppCampaignBody
) -> None:
    await check_theme(session, app_id=access.app_id, code=body.landing.theme, field="landing.theme")
    # As for push campaigns: the Dev key's campaigns are not targeted, and "no custom audience
    # named x" would tell the Dev key which audiences the app has.
    if not access.is_dev and body.targeting is not None and body.targeting.custom_audiences:
        await targeting_service.check_audiences(
            session, app_id=access.app_id, names=body.targeting.custom_audiences
        )


def _set_window(
    campaign: InAppCampaign, body: InAppCampaignBody, *, now: datetime, start_was_now: bool
) -> None:
    """The UTC window the fetch reads campaigns by (models.InAppCampaign.window_start)."""
    if body.start_date == "now":
        # "now" is the moment it was said, not each update's.
        kept = campaign.window_start if start_was_now else None
        campaign.window_start = kept or now
    elif body.start_date is not None:
        campaign.window_start = _utc(body.start_date)
    elif body.local_start_date is not None:
        campaign.window_start = _utc(body.local_start_date) - _LOCAL_SLACK
    else:
        campaign.window_start = None
    if body.end_date is not None:
        campaign.window_end = _utc(body.end_date)
    elif body.local_end_date is not None:
        campaign.window_end = _utc(body.local_end_date) + _LOCAL_SLACK
    else:
        campaign.window_end = None


def _utc(value: str) -> datetime:
    return parse_wire_date(value).replace(tzinfo=UTC)


def _stored(body: InAppCampaignBody) -> dict[str, Any]:
    # Without nulls: Batch's clients write unset optional fields as null, and GET answers what
    # was set.
    return body.model_dump(mode="json", exclude_unset=True, exclude_none=True)


# Statistics -------------------------------------------------------------------------------------

_COUNT_OF_KIND = {
    InAppEventKind.SUPPLIED.value: "supplied",
    InAppEventKind.SHOWN.value: "shown",
    InAppEventKind.CLICKED.value: "clicked",
    InAppEventKind.CLOSED.value: "closed",
}


async def campaign_stats(session: AsyncSession, *, access: AppAccess, token: str) -> InAppStats:
    """Per UTC day (and per version for A/B campaigns): supplied, shown, clicked (in all and
    per button), closed, click rate, from the in-app events the SDK reported and the fetch
    recorded. One GROUP BY over the campaign's events (ix_inapp_events_campaign_time)."""
    campaign = await find_campaign(session, access, token, deleted_too=True)
    ab = len(InAppCampaignBody.model_validate(campaign.body).versions) > 1
    day = utc_day(InAppEvent.occurred_at)
    rows = await session.execute(
        select(
            day,
            InAppEvent.version,
            InAppEvent.kind,
            InAppEvent.cta_position,
            InAppEvent.cta_label,
            func.count(),
        )
        # The app as well: an SDK reports any campaign id it likes, and another app's
        # installations must not count in this campaign. `+ 0` keeps SQLite, which has no
        # statistics, on the campaign's index rather than the app's (all its events).
        .where(InAppEvent.campaign_id == campaign.token, InAppEvent.app_id + 0 == campaign.app_id)
        .group_by(
            day, InAppEvent.version, InAppEvent.kind, InAppEvent.cta_position, InAppEvent.cta_label
        )
    )
    by_day: dict[str, InAppDayStats] = {}
    for date, version, kind, position, label, count in rows:
        field = _COUNT_OF_KIND.get(kind)
        if field is None:
            continue
        entry = by_day.get(date)
        if entry is None:
            entry = by_day[date] = InAppDayStats(date=date, versions={} if ab else None)
        targets: list[InAppCounts] = [entry]
        if ab and version and entry.versions is not None:
            targets.append(entry.versions.setdefault(version, InAppCounts()))
        for target in targets:
            setattr(target, field, getattr(target, field) + count)
            if field == "clicked" and position is not None:
                _add_cta(target, position, label, count)
    detail = [by_day[date] for date in sorted(by_day)]
    for entry in detail:
        for counts in [entry, *(entry.versions or {}).values()]:
            counts.click_rate = counts.clicked / counts.shown if counts.shown else None
            counts.ctas.sort(key=lambda cta: (cta.position, cta.label or ""))
    return InAppStats(campaign_token=campaign.token, detail=detail)


def _add_cta(counts: InAppCounts, position: int, label: str | None, clicked: int) -> None:
    for cta in counts.ctas:
        if cta.position == position and cta.label == label:
            cta.clicked += clicked
            return
    counts.ctas.append(CtaClicks(position=position, label=label, clicked=clicked))


# Themes -----------------------------------------------------------------------------------------


async def put_theme(
    session: AsyncSession, *, app_id: int, code: str, body: ThemeBody, now: datetime
) -> ThemeRead:
    """Create the theme `code`, or replace it whole."""
    if code == BUILT_IN_THEME.code:
        raise MalformedParameterError(f"code: {code!r} is the built-in theme and cannot be changed")
    stored = body.model_dump(mode="json")
    count = await session.scalar(
        select(func.count()).where(InAppTheme.app_id == app_id, InAppTheme.code != code)
    )
    if (count or 0) >= MAX_THEMES:
        raise MalformedParameterError(f"code: an app has at most {MAX_THEMES} themes")
    # Insert-or-nothing, then update: two PUTs of a new code at once both succeed (the last
    # one wins) rather than one failing on the unique (app_id, code).
    await session.execute(
        insert_ignoring_conflicts(session, InAppTheme, index=["app_id", "code"]).values(
            app_id=app_id, code=code, name=body.name, body=stored, created_at=now, updated_at=now
        )
    )
    await session.execute(
        update(InAppTheme)
        .where(InAppTheme.app_id == app_id, InAppTheme.code == code)
        .values(name=body.name, body=stored, updated_at=now)
    )
    await bump_revision(session, app_id=app_id)
    return ThemeRead(code=code, **body.model_dump())


async def delete_theme(session: AsyncSession, *, app_id: int, code: str) -> None:
    """Refused while a live campaign draws with it: its installations would have no theme."""
    if code == BUILT_IN_THEME.code:
        raise MalformedParameterError(f"code: {code!r} is the built-in theme and cannot be deleted")
    theme = await session.scalar(
        select(InAppTheme).where(InAppTheme.app_id == app_id, InAppTheme.code == code)
    )
    if theme is None:
        raise NotFoundError(f"no in-app theme {code!r}")
    # The app's live campaigns only (a few hundred at most), their landing read here rather
    # than through each database's JSON operators.
    live = await session.execute(
        select(InAppCampaign.token, InAppCampaign.name, InAppCampaign.body).where(
            InAppCampaign.app_id == app_id,
            InAppCampaign.live.is_(True),
            InAppCampaign.deleted_at.is_(None),
        )
    )
    for token, name, body in live:
        if (body.get("landing") or {}).get("theme", BUILT_IN_THEME.code) == code:
            raise MalformedParameterError(
                f"code: the live in-app campaign {name!r} ({token}) uses theme {code!r}"
            )
    await session.delete(theme)
    await bump_revision(session, app_id=app_id)
