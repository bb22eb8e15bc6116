// The in-app decisions (src/sdk/decide.ts): triggers, capping, grace period, dates.
import assert from "node:assert/strict";
import { test } from "node:test";
import { allowed, fires, pick, recordShown, type Displays, type WireMessage } from "../src/sdk/decide";

const NOW = Date.parse("2026-06-15T12:00:00Z");

function message(fields: Partial<WireMessage> = {}): WireMessage {
  return {
    campaign_token: "t1",
    version: null,
    trigger: { when: "next_session" },
    capping: null,
    grace_period_seconds: 0,
    start: null,
    end: null,
    theme: "default",
    image: null,
    image_description: null,
    header: null,
    title: "Hello",
    body: null,
    actions: [],
    deeplink: null,
    custom_payload: null,
    ...fields,
  };
}

test("next_session fires at a session start only", () => {
  const m = message();
  assert.equal(fires(m, {}, { kind: "session" }), true);
  assert.equal(fires(m, {}, { kind: "answer" }), false);
  assert.equal(fires(m, {}, { kind: "event", name: "x" }), false);
});

test("now fires when received, not on every event", () => {
  const m = message({ trigger: { when: "now" } });
  assert.equal(fires(m, {}, { kind: "session" }), true);
  assert.equal(fires(m, {}, { kind: "answer" }), true);
  assert.equal(fires(m, {}, { kind: "event", name: "x" }), false);
});

test("e. events match the page's event by name (any case) and label when the trigger has one", () => {
  const any = message({ trigger: { when: "event", event: "e.bought" } });
  assert.equal(fires(any, {}, { kind: "event", name: "Bought" }), true);
  assert.equal(fires(any, {}, { kind: "event", name: "bought", label: "x" }), true);
  assert.equal(fires(any, {}, { kind: "event", name: "boughtx" }), false);
  assert.equal(fires(any, {}, { kind: "session" }), false);
  const shoes = message({ trigger: { when: "event", event: "e.bought", label: "shoes" } });
  assert.equal(fires(shoes, {}, { kind: "event", name: "bought", label: "shoes" }), true);
  assert.equal(fires(shoes, {}, { kind: "event", name: "bought", label: "hats" }), false);
  assert.equal(fires(shoes, {}, { kind: "event", name: "bought" }), false);
});

test("ue. events fire once per server event newer than the last acted on", () => {
  const at = "2026-06-15T11:58:03Z";
  const m = message({ trigger: { when: "event", event: "ue.bought", last_server_event_at: at } });
  assert.equal(fires(message({ trigger: { when: "event", event: "ue.bought" } }), {}, { kind: "session" }), false);
  assert.equal(fires(m, {}, { kind: "session" }), true);
  assert.equal(fires(m, {}, { kind: "answer" }), true);
  assert.equal(fires(m, {}, { kind: "event", name: "bought" }), false);
  const acted = recordShown({}, m, NOW);
  assert.equal(acted["t1"]?.ue, at);
  assert.equal(fires(m, acted, { kind: "answer" }), false);
  const newer = message({ trigger: { when: "event", event: "ue.bought", last_server_event_at: "2026-06-15T11:59:00Z" } });
  assert.equal(fires(newer, acted, { kind: "answer" }), true);
});

test("capping counts displays per installation", () => {
  const m = message({ capping: 2 });
  let displays: Displays = {};
  assert.equal(allowed(m, displays, NOW), true);
  displays = recordShown(displays, m, NOW);
  assert.equal(allowed(m, displays, NOW + 1), true);
  displays = recordShown(displays, m, NOW + 1);
  assert.equal(displays["t1"]?.count, 2);
  assert.equal(allowed(m, displays, NOW + 10 ** 9), false);
  assert.equal(allowed(message({ capping: null }), displays, NOW + 2), true);
});

test("the grace period runs from the last display", () => {
  const m = message({ grace_period_seconds: 3600 });
  const displays = recordShown({}, m, NOW);
  assert.equal(allowed(m, displays, NOW + 3_599_999), false);
  assert.equal(allowed(m, displays, NOW + 3_600_000), true);
});

test("start and end bound the display; end is exclusive", () => {
  const m = message({ start: "2026-06-15T12:00:00Z", end: "2026-06-15T13:00:00Z" });
  assert.equal(allowed(m, {}, NOW - 1), false);
  assert.equal(allowed(m, {}, NOW), true);
  assert.equal(allowed(m, {}, NOW + 3_600_000), false);
});

test("pick takes the first message that fires and is allowed", () => {
  const capped = message({ campaign_token: "a", capping: 1 });
  const second = message({ campaign_token: "b" });
  const displays = recordShown({}, capped, NOW - 1000);
  assert.equal(pick([capped, second], displays, { kind: "session" }, NOW)?.campaign_token, "b");
  assert.equal(pick([capped], displays, { kind: "session" }, NOW), null);
  assert.equal(pick([second], {}, { kind: "answer" }, NOW), null);
});
