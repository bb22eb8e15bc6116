"""Campaigns: create, update, read, list, delete, stop (statistics: clarion.stats). No HTTP here.

The life of a campaign (docs/campaigns.md): draft (live: false) -> scheduled -> running ->
completed, or stopped when set to live: false (or deleted) after it started. The scheduler
(clarion.campaigns.tasks) moves scheduled campaigns to running at their time.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.service import AppAccess
from clarion.campaigns.models import Campaign, CampaignRun, CampaignState, RunState
from clarion.campaigns.recurrence import first_ahead, next_to_run, occurrence_time
from clarion.campaigns.schemas import CampaignBody, CampaignSummary, PushLanding
from clarion.delivery.content import has_templates, largest_payload
from clarion.delivery.models import BATCHES, SENDS
from clarion.delivery.personalisation import check_templates
from clarion.delivery.schemas import CollapseKey
from clarion.delivery.service import batch_totals, cancel_sends
from clarion.dialects import json_object_at
from clarion.errors import (
    ApiMisuseError,
    MalformedParameterError,
    NotFoundError,
    from_validation_errors,
)
from clarion.formats import wire_date
from clarion.inapp import service as inapp_service
from clarion.inapp.schemas import SdkTheme, ThemeRead
from clarion.targeting import service as targeting_service
from clarion.targeting.schemas import Estimate, Targeting

_LIVE_STATES = (
    CampaignState.SCHEDULED,
    CampaignState.RUNNING,
    CampaignState.COMPLETED,
    CampaignState.ACTIVE,
)


def validate_body(document: dict[str, Any]) -> CampaignBody:
    """A campaign document (a create body, or a stored body with an update merged in)."""
    try:
        return CampaignBody.model_validate(document)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


def send_content(
    body: CampaignBody, version: str | None, themes: Mapping[str, ThemeRead]
) -> dict[str, Any]:
    """What a Send of this version carries (clarion.delivery.content reads it). `themes`: the
    app's (landing_themes), to resolve the landing's.

    Messages keep their order: the first one is the fallback for installs whose language has
    no message, unless a message has the language "default"."""
    collapse = body.gcm_collapse_key
    if isinstance(collapse, str):
        collapse = CollapseKey(enabled=True, key=collapse)
    content = body.model_dump(
        include={"deeplink", "custom_payload", "priority", "time_to_live", "push_type"},
        exclude_none=True,
    )
    if body.media is not None:
        content["media"] = body.media.model_dump(exclude_none=True)
    if collapse is not None:
        content["gcm_collapse_key"] = collapse.model_dump()
    content["messages"] = {
        message.language: message.model_dump(include={"title", "body"}, exclude_none=True)
        for message in body.messages
        if message.version == version
    }
    if body.landing is not None:
        content["landing"] = landing_content(body.landing, themes)
    if has_templates(content):
        content["personalised"] = True
    return content


def landing_content(landing: PushLanding, themes: Mapping[str, ThemeRead]) -> dict[str, Any]:
    """A push's landing as its Send carries it: contents by language (first one first, the
    fallback as for messages), and the theme's whole definition, so that the app draws the
    message from the push alone. A theme deleted since the landing was accepted is drawn as
    the built-in `default`: the push still opens its message."""
    theme = themes.get(landing.theme, inapp_service.BUILT_IN_THEME)
    return {
        "theme": SdkTheme.model_validate(theme.model_dump()).model_dump(mode="json"),
        **landing.model_dump(include={"image", "image_description"}, exclude_none=True),
        "contents": {
            content.language: content.model_dump(
                mode="json", include={"header", "title", "body", "actions"}, exclude_none=True
            )
            for content in landing.contents
        },
    }


async def landing_themes(
    session: AsyncSession, *, app_id: int, landing: PushLanding | None
) -> Mapping[str, ThemeRead]:
    """The app's in-app themes when there is a landing to resolve (one read per send, not per
    installation), else none."""
    if landing is None:
        return {}
    return await inapp_service.themes(session, app_id=app_id)


async def landing_theme_checked(
    session: AsyncSession, *, access: AppAccess, landing: PushLanding
) -> Mapping[str, ThemeRead]:
    """The app's themes, once the landing's is known to be one of them (400 naming
    landing.theme otherwise)."""
    await inapp_service.check_theme(
        session, app_id=access.app_id, code=landing.theme, field="landing.theme"
    )
    return await inapp_service.themes(session, app_id=access.app_id)


def check_payload_size(content: dict[str, Any], *, platform: str) -> None:
    """400 naming `landing` when a send's push with its landing would be over what the app's
    push service takes, in the largest of its languages: refused at intake rather than a
    push_error on every device at delivery."""
    size, limit, language = largest_payload(content, platform)
    if size > limit:
        where = f"in language {language!r}" if language else "for a device of no listed language"
        raise MalformedParameterError(
            f"landing: with it the push is {size:,} bytes {where}, over the {limit:,} bytes"
            f" {_SERVICES[platform]} accepts; shorten its texts or actions"
        )


_SERVICES = {"ios": "APNs", "android": "FCM", "web": "Web Push"}


def new_campaign_token() -> str:
    return secrets.token_hex(16)


async def create_campaign(
    session: AsyncSession,
    *,
    access: AppAccess,
    body: CampaignBody,
    now: datetime,
    from_api: bool = True,
) -> Campaign:
    """`from_api`: false for campaigns composed in the dashboard (Batch's list filter)."""
    await check_templates(body.template_fields())
    await _check_targeting(session, access, body)
    await _check_landing(session, access, body, new=True)
    campaign = Campaign(
        token=new_campaign_token(),
        app_id=access.app_id,
        name=body.name,
        dev_only=access.is_dev,
        from_api=from_api,
        state=CampaignState.DRAFT.value,
        body=_stored(body),
        created_at=now,
        updated_at=now,
    )
    if body.is_automation:
        campaign.state = (CampaignState.ACTIVE if body.live else CampaignState.DRAFT).value
    elif body.live:
        _schedule(campaign, next_to_run(body, 0, now=now))
    session.add(campaign)
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
) -> Campaign:
    """Batch's update rules (spec §4.2): fields merge into the stored campaign; a field once
    set cannot be removed; a completed campaign cannot go live again. `live` moves the
    campaign between its states.

    `replace`: `changes` is the whole campaign (the dashboard's editor), so a field it leaves
    out is removed; the rules on states hold all the same."""
    campaign = await find_campaign(session, access, token, for_update=True)
    stored = campaign.body
    if replace:
        document = changes
    else:
        for key, value in changes.items():
            if CampaignBody.unset_by(key, value) and stored.get(key) is not None:
                raise MalformedParameterError(f"{key}: a parameter once set cannot be removed")
        document = {**stored, **changes}
    body = validate_body(document)
    if body.is_automation != ("trigger" in stored):
        raise MalformedParameterError(
            "trigger: a campaign cannot become an automation, nor an automation a campaign"
        )
    await check_templates(body.template_fields())
    await _check_targeting(session, access, body)
    # A theme deleted since the landing was saved blocks no other change (`live: false` must
    # always work): the send draws the built-in one (landing_content).
    await _check_landing(
        session, access, body, new=document.get("landing") != stored.get("landing")
    )
    state = CampaignState(campaign.state)
    schedule_changed = any(
        document.get(key) != stored.get(key)
        for key in ("push_time", "local_push_time", "recurrence")
    )

    if body.is_automation:
        _settle_automation(campaign, live=body.live)
    elif body.live:
        if state is CampaignState.COMPLETED and changes.get("live") is True:
            raise MalformedParameterError("live: a completed campaign cannot be set live again")
        if state is CampaignState.DRAFT:
            # A draft that never ran starts at its first occurrence; one that was live before
            # resumes at the next occurrence still ahead.
            first = campaign.next_occurrence == 0
            _schedule(
                campaign,
                next_to_run(body, 0, now=now)
                if first
                else first_ahead(body, campaign.next_occurrence, now=now),
            )
        elif state in (CampaignState.SCHEDULED, CampaignState.RUNNING) and schedule_changed:
            due = occurrence_time(body, campaign.next_occurrence, now=now)
            campaign.next_run_at = due
            if due is None and state is CampaignState.SCHEDULED:
                campaign.state = CampaignState.COMPLETED.value
        elif state in (CampaignState.STOPPED, CampaignState.FAILED):
            # A stopped one-time campaign has reached part of its audience: sending it again
            # would reach them twice. A recurring one resumes at its next occurrence ahead.
            # A failed one may have reached part of it too.
            upcoming = (
                first_ahead(body, campaign.next_occurrence, now=now)
                if body.recurrence is not None
                else None
            )
            if upcoming is None:
                raise MalformedParameterError(
                    "live: a stopped campaign has started sending and cannot be set live again"
                )
            _schedule(campaign, upcoming)
    else:
        await _take_offline(session, campaign, now=now)

    campaign.body = _stored(body)
    campaign.name = body.name
    campaign.updated_at = now
    return campaign


def _settle_automation(campaign: Campaign, *, live: bool) -> None:
    """Live: active. Not live: paused once it has been active, else still a draft. The pending
    entries of a paused automation are cancelled by the caller (clarion.automations)."""
    if live:
        campaign.state = CampaignState.ACTIVE.value
    elif campaign.state == CampaignState.ACTIVE.value:
        campaign.state = CampaignState.PAUSED.value


async def set_offline(
    session: AsyncSession, *, access: AppAccess, token: str, now: datetime
) -> Campaign:
    """`live: false` and nothing else (the dashboard's Stop). The stored body is not checked
    again: a campaign whose audience was deleted since it went live must still be stoppable."""
    campaign = await find_campaign(session, access, token, for_update=True)
    if "trigger" in campaign.body:
        _settle_automation(campaign, live=False)
    else:
        await _take_offline(session, campaign, now=now)
    campaign.body = {**campaign.body, "live": False}
    campaign.updated_at = now
    return campaign


async def _take_offline(session: AsyncSession, campaign: Campaign, *, now: datetime) -> None:
    """A scheduled campaign goes back to draft; a running one stops mid-send."""
    if campaign.state == CampaignState.SCHEDULED.value:
        campaign.state = CampaignState.DRAFT.value
        campaign.next_run_at = None
    elif campaign.state == CampaignState.RUNNING.value:
        await stop_campaign(session, campaign, now=now)


async def delete_campaign(
    session: AsyncSession, *, access: AppAccess, token: str, now: datetime
) -> Campaign:
    campaign = await find_campaign(session, access, token, for_update=True)
    if campaign.state == CampaignState.RUNNING.value:
        await stop_campaign(session, campaign, now=now)
    if campaign.state == CampaignState.ACTIVE.value:
        campaign.state = CampaignState.PAUSED.value
    campaign.deleted_at = now
    campaign.next_run_at = None
    return campaign


async def stop_campaign(session: AsyncSession, campaign: Campaign, *, now: datetime) -> None:
    """Stop mid-send: the fan-out ends at its next page, and batches not yet delivered close
    unsent (those being delivered at this moment finish)."""
    campaign.state = CampaignState.STOPPED.value
    campaign.next_run_at = None
    # The runs first: on PostgreSQL this waits for a fan-out page being written to commit, so
    # that the page's batches are among those cancelled below.
    await session.execute(
        update(CampaignRun)
        .where(
            CampaignRun.campaign_id == campaign.id,
            CampaignRun.state.in_([RunState.FANNING_OUT.value, RunState.DELIVERING.value]),
        )
        .values(state=RunState.STOPPED.value, finished_at=now, lease_until=None)
    )
    runs = select(CampaignRun.id).where(CampaignRun.campaign_id == campaign.id)
    await cancel_sends(
        session,
        select(SENDS.c.id).where(
            SENDS.c.run_id.in_(runs.scalar_subquery()), SENDS.c.cancelled_at.is_(None)
        ),
        now=now,
    )


async def describe_campaign(
    session: AsyncSession, *, access: AppAccess, token: str
) -> dict[str, Any]:
    """The create body plus campaign_token, from_api, dev_only, created_date (spec §4.3), and
    Clarion's additions: its state and its progress (targeted, sent, resent, errors) so far."""
    campaign = await find_campaign(session, access, token)
    failed = campaign.state == CampaignState.FAILED.value
    progress = (
        await session.execute(
            select(*batch_totals())
            .select_from(BATCHES)
            .join(SENDS, SENDS.c.id == BATCHES.c.send_id)
            .join(CampaignRun, CampaignRun.id == SENDS.c.run_id)
            .where(CampaignRun.campaign_id == campaign.id)
        )
    ).one()
    return {
        "campaign_token": campaign.token,
        "from_api": campaign.from_api,
        "dev_only": campaign.dev_only,
        "created_date": wire_date(campaign.created_at),
        **campaign.body,
        "state": campaign.state,
        **({"failure": await _failure(session, campaign.id)} if failed else {}),
        "progress": {
            "targeted": progress.targeted,
            "sent": progress.sent,
            "resent": progress.resent,
            "errors": progress.failed + progress.tokens_deleted,
        },
    }


async def _failure(session: AsyncSession, campaign_id: int) -> str | None:
    """Why a failed campaign's last failed run failed."""
    return await session.scalar(
        select(CampaignRun.failure)
        .where(CampaignRun.campaign_id == campaign_id, CampaignRun.state == RunState.FAILED.value)
        .order_by(CampaignRun.id.desc())
        .limit(1)
    )


async def list_campaigns(
    session: AsyncSession,
    *,
    access: AppAccess,
    offset: int,
    limit: int,
    live: bool | None,
    from_api: bool | None,
    name_contains: str = "",
    automation: bool | None = None,
) -> list[CampaignSummary]:
    """Newest first. `live`: true gives scheduled, running or completed campaigns, false
    drafts and stopped ones (spec §4.4). `name_contains`: the dashboard's search, ignoring
    case. `automation`: only automations (a `trigger`), or only the others."""
    query = select(Campaign).where(Campaign.app_id == access.app_id, Campaign.deleted_at.is_(None))
    if automation is not None:
        is_automation = json_object_at(Campaign.body, "trigger")
        query = query.where(is_automation if automation else ~is_automation)
    if name_contains:
        query = query.where(
            func.lower(Campaign.name).contains(name_contains.lower(), autoescape=True)
        )
    if live is not None:
        live_states = [state.value for state in _LIVE_STATES]
        query = query.where(
            Campaign.state.in_(live_states) if live else Campaign.state.not_in(live_states)
        )
    if from_api is not None:
        query = query.where(Campaign.from_api.is_(from_api))
    campaigns = await session.scalars(
        query.order_by(Campaign.created_at.desc(), Campaign.id.desc()).offset(offset).limit(limit)
    )
    return [
        CampaignSummary(
            campaign_token=c.token,
            from_api=c.from_api,
            dev_only=c.dev_only,
            created_date=wire_date(c.created_at),
            name=c.name,
            live=bool(c.body.get("live")),
            push_time=c.body.get("push_time"),
            local_push_time=c.body.get("local_push_time"),
            state=c.state,
        )
        for c in campaigns
    ]


async def template_content(
    session: AsyncSession, *, access: AppAccess, token: str
) -> dict[str, Any]:
    """A saved campaign's push content, for the Partners Transactional API's `template_id`
    (any campaign of the app, drafts included; an A/B campaign lends its first version). The
    Dev key may name only its own (dev_only) campaigns: a Live campaign's content is the app's,
    and sending it to a debug device would read it."""
    found = (
        await session.execute(
            select(Campaign.body, Campaign.dev_only).where(
                Campaign.token == token,
                Campaign.app_id == access.app_id,
                Campaign.deleted_at.is_(None),
            )
        )
    ).one_or_none()
    if found is None:
        raise MalformedParameterError(f"template_id: no campaign {token!r} in this app")
    if access.is_dev and not found.dev_only:
        raise ApiMisuseError(
            "template_id: the Dev API key can name only the campaigns created with it"
            " (dev_only): this one was created with the Live API key"
        )
    body = CampaignBody.model_validate(found.body)
    themes = await landing_themes(session, app_id=access.app_id, landing=body.landing)
    return send_content(body, next(iter(body.versions)), themes)


async def estimate_audience(
    session: AsyncSession, *, access: AppAccess, targeting: Targeting, now: datetime
) -> Estimate:
    """How many installs a campaign with this targeting would reach now, sending nothing."""
    if targeting.custom_audiences:
        await targeting_service.check_audiences(
            session, app_id=access.app_id, names=targeting.custom_audiences
        )
    return await targeting_service.estimate(
        session,
        app_id=access.app_id,
        platform=access.platform,
        dev_only=access.is_dev,
        targeting=targeting,
        now=now,
    )


def settle(campaign: Campaign, *, active_runs: bool, now: datetime) -> None:
    """A live campaign's state from what is going on: running while a run is, else scheduled
    for its next occurrence, else completed."""
    if active_runs:
        campaign.state = CampaignState.RUNNING.value
    elif campaign.next_run_at is not None:
        campaign.state = CampaignState.SCHEDULED.value
    else:
        campaign.state = CampaignState.COMPLETED.value
    campaign.updated_at = now


def _schedule(campaign: Campaign, upcoming: tuple[int, datetime] | None) -> None:
    if upcoming is None:
        campaign.state = CampaignState.COMPLETED.value
        campaign.next_run_at = None
        return
    campaign.state = CampaignState.SCHEDULED.value
    campaign.next_occurrence, campaign.next_run_at = upcoming


def _stored(body: CampaignBody) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude_unset=True)


async def _check_targeting(session: AsyncSession, access: AppAccess, body: CampaignBody) -> None:
    # The Dev key's campaigns are not targeted (scheduler), and "no custom audience named x"
    # would tell the Dev key which audiences the app has.
    if access.is_dev:
        return
    if body.targeting is not None and body.targeting.custom_audiences:
        await targeting_service.check_audiences(
            session, app_id=access.app_id, names=body.targeting.custom_audiences
        )


async def _check_landing(
    session: AsyncSession, access: AppAccess, body: CampaignBody, *, new: bool
) -> None:
    """`new`: the landing is given or changed (its theme is checked), else only the size of
    the pushes it makes with the rest of the campaign."""
    if body.landing is None:
        return
    if new:
        themes = await landing_theme_checked(session, access=access, landing=body.landing)
    else:
        themes = await landing_themes(session, app_id=access.app_id, landing=body.landing)
    for version in body.versions:
        check_payload_size(send_content(body, version, themes), platform=access.platform)


async def find_campaign(
    session: AsyncSession, access: AppAccess, token: str, *, for_update: bool = False
) -> Campaign:
    query = select(Campaign).where(
        Campaign.token == token,
        Campaign.app_id == access.app_id,
        Campaign.deleted_at.is_(None),
    )
    if for_update:
        query = query.with_for_update()
    campaign = await session.scalar(query)
    if campaign is None:
        raise NotFoundError(f"no campaign {token!r}")
    if for_update and access.is_dev and not campaign.dev_only:
        # The Dev key reaches debug installations only; a campaign of the Live key reaches the
        # app's users, and changing or deleting it is the Live key's business.
        raise ApiMisuseError(
            "the Dev API key changes only the campaigns created with it (dev_only): this one"
            " was created with the Live API key"
        )
    return campaign
