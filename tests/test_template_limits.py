"""Push templates cannot build unbounded values (issue 21, F2): each hostile template is a 400
naming its field wherever templates are accepted, and stores nothing; at delivery a render
that goes beyond a limit for one user is a push_error for that user, not a retry.

The limits are sizes and counts (clarion/delivery/personalisation.py), so every outcome here
is deterministic: no timing is asserted."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from clarion.delivery.models import DeliveryBatch, Send
from clarion.delivery.personalisation import (
    MAX_DOCUMENT_TOKENS,
    MAX_OUTPUT,
    TemplateLimitError,
    render,
)
from clarion.events.models import PushEvent
from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.test_campaign_runs import add_installs, send_now
from tests.test_campaigns import EXAMPLE, campaign_count, create, created, error, get, update
from tests.test_partners_transactional import TEMPLATE, send
from tests.test_transactional_api import stored_counts

# Each would have built hundreds of megabytes (the probe's center(900000000) took 14.7 s).
HOSTILE = [
    "{{ 1|string|center(900000000) }}",
    "{{ '%090000000d'|format(1) }}",
    "{{ '%0900000000d' % 1 }}",
    "{{ 'x'|indent(900000000) }}",
    "{{ 'x'.ljust(900000000) }}",
    "{{ 'x'.rjust(900000000) }}",
    "{{ '1'.zfill(900000000) }}",
    "{{ 'x'.center(900000000) }}",
    "{{ 'a\tb'.expandtabs(900000000) }}",
    "{{ '{:900000000}'.format(1) }}",
    "{{ '{:{w}}'.format(1, w=9) }}",
    "{{ [1]|batch(900000000, 'x')|list }}",
    "{{ [1]|slice(900000000)|list }}",
    "{{ (1).to_bytes(900000000, 'big') }}",
    "{{ 'ab'|replace('', 'x'|center(8000)) }}",
    "{{ 'ab'.replace('', 'x'.center(8000)) }}",
    "{% set a = 'x'|center(8000) %}{{ a ~ a }}",
    "{% set a = 'x'|center(8000) %}{{ a + a }}",
    "{% set a = 'x'|center(8000) %}{{ [a, a, a]|join }}",
    "{% set a = 'x'|center(8000) %}{{ ''.join([a, a, a]) }}",
    "{% set a = 'x'|center(8000) %}{% for x in a %}{% for y in a %}{% endfor %}{% endfor %}",
    "{% set a = 'x y'|center(8000) %}{% for x in a %}{{ a|wordwrap(3)|length }}{% endfor %}",
    "{% set a = 'x'|center(8000) %}{% set b %}{% for x in a %}{{ a }}{% endfor %}{% endset %}",
    "{% set a = 'x'|center(4097) %}{{ a }}",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
    "{% set a = 9**64 %}{{ a**64 }}",
    "{% set a = 2**2000 %}{% set a = a*a %}{% set a = a*a %}{{ a }}",
    "{% set l = [1] %}{% for x in l %}{{ l.append(x) }}{% endfor %}",
]


def campaign_with(title: str) -> dict[str, Any]:
    return {**EXAMPLE, "messages": [{"language": "en", "title": title, "body": "Hi"}]}


@pytest.mark.parametrize("template", HOSTILE)
async def test_campaign_create_refuses_it_naming_the_field(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, template: str
) -> None:
    message = error(await create(api, ios_app, campaign_with(template)), 400, 31)
    assert "messages.0.title: template" in message
    assert await campaign_count(runtime, ios_app) == 0


@pytest.mark.parametrize("template", HOSTILE[:4])
async def test_campaign_update_refuses_it_and_keeps_the_campaign(
    api: httpx.AsyncClient, ios_app: ClientApp, template: str
) -> None:
    token = await created(api, ios_app)
    before = (await get(api, ios_app, token)).json()
    response = await update(api, ios_app, token, {"deeplink": template})
    assert "deeplink: template" in error(response, 400, 31)
    assert (await get(api, ios_app, token)).json() == before


@pytest.mark.parametrize("template", HOSTILE[:4])
async def test_a_template_id_send_refuses_it_and_stores_nothing(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, template: str
) -> None:
    saved = await created(api, ios_app, TEMPLATE)
    before = await stored_counts(runtime)
    body = {"recipients": {"custom_ids": ["x"]}, "template_id": saved}
    body["message"] = {"body": template}
    assert "message.body: template" in error(await send(api, ios_app, body), 400, 31)
    assert await stored_counts(runtime) == before


async def test_one_campaigns_templates_share_one_token_budget(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    # Each body is a valid template of ~3,200 tokens; together they pass the budget.
    body = ("{{ c.a }}" * 455)[:4096]
    count = MAX_DOCUMENT_TOKENS // 3000 + 1
    languages = ["en", "fr", "de", "es", "it", "pt", "nl", "sv", "da", "fi"][:count]
    messages = [{"language": language, "body": body} for language in languages]
    response = await create(api, ios_app, {**EXAMPLE, "messages": messages})
    assert "tokens in all" in error(response, 400, 31)
    assert await campaign_count(runtime, ios_app) == 0


def test_ordinary_templates_render_as_before() -> None:
    user = {"firstname": "Ada", "points": 42, "price": 3.14159, "things": ["a", "b", "c"]}
    assert render("Hello {{ c.firstname | default('there') }}", user) == "Hello Ada"
    assert render("{{ '%5.2f'|format(c.price) }} {{ c.points * 2 }}", user) == " 3.14 84"
    assert render("{{ c.things|join(', ') }}|{{ 'ab'|center(6) }}|", user) == "a, b, c|  ab  |"
    assert render("{% for t in c.things %}{{ loop.index }}{{ t|upper }}{% endfor %}", user) == (
        "1A2B3C"
    )
    assert render("{{ c.firstname ~ '!' }} {{ '{:>4}'.format(c.points) }}", user) == "Ada!   42"
    assert render("{{ 'x'|center(4096) }}", user) == "x".center(4096)  # the cap itself
    assert render("{{ c.missing|truncate(5) }}{{ c.missing.deeper }}", user) == ""


def test_a_render_beyond_the_limits_for_one_user_raises() -> None:
    template = "{{ 'x'|center(c.width|default(10)) }}"
    assert render(template, {}) == "x".center(10)
    with pytest.raises(TemplateLimitError, match=f"more than {MAX_OUTPUT} characters"):
        render(template, {"width": MAX_OUTPUT + 1})


async def test_at_delivery_an_over_long_render_is_that_users_push_error(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    wide = (await add_installs(runtime, ios_app, 1, custom_id="wide"))[0]
    narrow = (await add_installs(runtime, ios_app, 1, custom_id="narrow"))[0]
    for custom_id, width in (("wide", MAX_OUTPUT + 1), ("narrow", 20)):
        response = await api.post(
            f"/1.0/{ios_app.api_key}/data/users/{custom_id}",
            headers=ios_app.headers(),
            json={"values": {"u.width": width}},
        )
        assert response.status_code in (200, 202), response.text
    token = await send_now(
        api,
        ios_app,
        runtime,
        messages=[{"language": "en", "body": "{{ 'x'|center(c.width|default(10)) }}"}],
    )
    async with runtime.sessions() as session:
        send_row = await session.scalar(select(Send).where(Send.campaign_token == token))
        assert send_row is not None
        events = (
            await session.scalars(select(PushEvent).where(PushEvent.send_token == send_row.token))
        ).all()
        attempts = (
            await session.scalars(
                select(DeliveryBatch.attempt).where(DeliveryBatch.send_id == send_row.id)
            )
        ).all()
    outcomes = {event.install_id: (event.kind, event.reason) for event in events}
    assert outcomes[narrow.install_id] == ("push_sent", None)
    kind, reason = outcomes[wide.install_id]
    assert kind == "push_error"
    assert reason is not None
    assert reason.startswith(f"TemplateLimit: body: it renders to more than {MAX_OUTPUT}")
    assert set(attempts) == {0}  # no retry batch
