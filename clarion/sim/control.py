"""The `/_sim/` control API: issue credentials, kill tokens, inject faults, read what arrived.

See docs/simulators.md (the table under "Control API").
"""

from typing import Any

import orjson

from clarion.sim import apns, fcm, webpush
from clarion.sim.state import SERVICES, ConnectionRules, ForcedFailure, ServiceState, SimState
from clarion.sim.wire import Reply, decode_payload, json_reply

PATH_PREFIX = "/_sim/"


class BadRequest(Exception):
    pass


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequest("body must be a JSON object")
    return document


def _int_field(
    document: dict[str, Any], name: str, default: int | None, low: int, high: int
) -> int:
    value = document.get(name, default)
    # bool is an int subclass; `"count": true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer between {low} and {high}")
    return value


def _fail(service: ServiceState, token: str, document: dict[str, Any]) -> Reply:
    status = _int_field(document, "status", None, 400, 599)
    count = _int_field(document, "count", 1, 1, 1_000_000)
    retry_after = (
        _int_field(document, "retry_after", None, 0, 86_400)
        if document.get("retry_after") is not None
        else None
    )
    reason = document.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest("reason must be a string")
    service.forced[token] = ForcedFailure(status, reason, count, retry_after)
    return json_reply(200, {"token": token, "status": status, "count": count})


def _faults(service: ServiceState, document: dict[str, Any]) -> Reply:
    rates = document.get("rates", {})
    if not isinstance(rates, dict):
        raise BadRequest("rates must be an object of status → probability")
    parsed: dict[int, float] = {}
    for status, rate in rates.items():
        if not str(status).isdigit() or not 400 <= int(status) <= 599:
            raise BadRequest(f"{status!r} is not an HTTP error status")
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise BadRequest(f"rate for {status} must be between 0 and 1")
        parsed[int(status)] = float(rate)
    delay_ms = _int_field(document, "delay_ms", 0, 0, 60_000)
    service.set_faults(parsed, delay_ms)
    return json_reply(200, {"rates": {str(s): r for s, r in parsed.items()}, "delay_ms": delay_ms})


def _connection_rules(rules: ConnectionRules) -> Reply:
    return json_reply(
        200,
        {
            "url": rules.url,
            "initial_streams": rules.initial_streams,
            "streams": rules.streams,
            "drop_rate": rules.drop_rate,
            "connections": rules.connections,
            "dropped": rules.dropped,
            "refused_streams": rules.refused_streams,
        },
    )


def _set_connection_rules(rules: ConnectionRules, document: dict[str, Any]) -> Reply:
    initial = _int_field(document, "initial_streams", rules.initial_streams, 1, 1_000_000)
    streams = _int_field(document, "streams", rules.streams, 1, 1_000_000)
    drop_rate = document.get("drop_rate", rules.drop_rate)
    if not isinstance(drop_rate, int | float) or isinstance(drop_rate, bool):
        raise BadRequest("drop_rate must be between 0 and 1")
    if not 0 <= drop_rate <= 1:
        raise BadRequest("drop_rate must be between 0 and 1")
    rules.initial_streams, rules.streams, rules.drop_rate = initial, streams, float(drop_rate)
    return _connection_rules(rules)


def _messages(service: ServiceState, token: str) -> Reply:
    log = service.logs.get(token)
    if log is None:
        return json_reply(200, {"count": 0, "messages": [], "refused": []})
    messages = [
        {
            "headers": dict(m.headers.items()),
            "payload": decode_payload(m.body),
            "received_at": m.received_at,
        }
        for m in log.messages
    ]
    refused = [
        {
            "headers": dict(m.headers.items()),
            **({"payload": decode_payload(m.body)} if m.body else {}),
            "received_at": m.received_at,
        }
        for m in log.refused
    ]
    return json_reply(200, {"count": log.count, "messages": messages, "refused": refused})


def _issue(sim: SimState, kind: str, document: dict[str, Any], origin: str) -> Reply:
    if kind == "apns":
        team_id = document.get("team_id")
        topics = document.get("topics", [])
        if team_id is not None and not isinstance(team_id, str):
            raise BadRequest("team_id must be a string")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise BadRequest("topics must be a list of strings")
        return json_reply(201, apns.issue_key(sim.registry, team_id, topics))
    if kind == "fcm":
        project_id = document.get("project_id")
        if project_id is not None and not isinstance(project_id, str):
            raise BadRequest("project_id must be a string")
        return json_reply(201, fcm.issue_service_account(sim.registry, project_id, origin))
    key = document.get("application_server_key")
    if not isinstance(key, str):
        raise BadRequest("application_server_key (base64url) is required")
    try:
        return json_reply(201, webpush.subscribe(sim.registry, key, origin))
    except ValueError as exc:
        raise BadRequest(f"application_server_key is not a P-256 public key: {exc}") from exc


def _route(
    sim: SimState, method: str, parts: list[str], body: bytes, origin: str, now: float
) -> Reply:
    match method, parts:
        case "POST", ["apns", "keys"]:
            return _issue(sim, "apns", _json_object(body), origin)
        case "POST", ["fcm", "service-accounts"]:
            return _issue(sim, "fcm", _json_object(body), origin)
        case "POST", ["webpush", "subscriptions"]:
            return _issue(sim, "webpush", _json_object(body), origin)
        case "POST", [service, "tokens", token, "uninstall"] if service in SERVICES:
            stamp = sim.services[service].dead.setdefault(token, int(now * 1000))
            return json_reply(200, {"token": token, "timestamp": stamp})
        case "POST", [service, "tokens", token, "fail"] if service in SERVICES:
            return _fail(sim.services[service], token, _json_object(body))
        case "PUT", [service, "faults"] if service in SERVICES:
            return _faults(sim.services[service], _json_object(body))
        case "GET", [service, "tokens", token] if service in SERVICES:
            return _messages(sim.services[service], token)
        case "GET", [service, "deliveries"] if service in SERVICES:
            return json_reply(200, sim.services[service].deliveries())
        case "GET", ["connections"]:
            return _connection_rules(sim.connections)
        case "PUT", ["connections"]:
            return _set_connection_rules(sim.connections, _json_object(body))
        case "GET", ["stats"]:
            return json_reply(200, {name: s.stats() for name, s in sim.services.items()})
        case "POST", ["reset"]:
            sim.reset()
            return json_reply(200, {"reset": True})
    return json_reply(404, {"error": f"no control call {method} {PATH_PREFIX}{'/'.join(parts)}"})


def handle(sim: SimState, method: str, path: str, body: bytes, origin: str, now: float) -> Reply:
    # granian hands over the path already percent-decoded.
    parts = path[len(PATH_PREFIX) :].split("/")
    try:
        return _route(sim, method, parts, body, origin, now)
    except BadRequest as exc:
        return json_reply(400, {"error": str(exc)})
