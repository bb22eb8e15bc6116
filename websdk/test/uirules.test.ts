// When the subscription prompts show (src/sdk/uirules.ts): configuration, permission,
// subscription, a remembered "no", page views.
import assert from "node:assert/strict";
import { test } from "node:test";
import { refusal, timing, type Facts } from "../src/sdk/uirules";

const NOW = Date.parse("2026-06-15T12:00:00Z");
const DAY_MS = 86_400_000;

function facts(fields: Partial<Facts> = {}): Facts {
  return { state: "unsubscribed", granted: false, memory: { views: 1, no: {} }, now: NOW, ...fields };
}

test("Batch's defaults: autoShow, a week's hideFor for alert and banner, a day's backoff for native", () => {
  assert.deepEqual(timing("alert", {}), { autoShow: true, delay: 0, pageViews: 1, hideFor: 604_800 });
  assert.equal(timing("banner", {}).hideFor, 604_800);
  assert.equal(timing("native", {}).hideFor, 86_400);
  assert.equal(timing("switcher", {}).hideFor, 0);
  // 0 means for good for a "no" (alert, banner), no backoff for native, as Batch's.
  assert.equal(timing("alert", { hideFor: 0 }).hideFor, Infinity);
  assert.equal(timing("native", { backoffDuration: 0 }).hideFor, 0);
  // Numbers as Batch's pages give them (strings too); anything else is the default.
  assert.equal(timing("alert", { hideFor: "3600" }).hideFor, 3600);
  assert.equal(timing("alert", { hideFor: -5 }).hideFor, 604_800);
  assert.equal(timing("alert", { hideFor: "soon" }).hideFor, 604_800);
  assert.deepEqual(timing("native", { autoShow: false, delay: 5, pageViews: 2.7 }), {
    autoShow: false,
    delay: 5,
    pageViews: 2,
    hideFor: 86_400,
  });
  assert.equal(timing("alert", { delay: 10 ** 9 }).delay, 3600);
  assert.equal(timing("alert", { pageViews: 0 }).pageViews, 1);
});

test("nothing shows in a browser without Web Push, even forced", () => {
  for (const name of ["native", "alert", "banner", "switcher", "button"] as const) {
    assert.equal(refusal(name, {}, facts({ state: "unsupported" }), false, true), "this browser has no Web Push");
  }
});

test("a prompt shows for an unsubscribed visitor, not for a subscribed one unless forced", () => {
  assert.equal(refusal("alert", {}, facts(), true), null);
  assert.equal(refusal("alert", {}, facts({ state: "subscribed", granted: true }), true), "already subscribed");
  assert.equal(refusal("banner", {}, facts({ state: "subscribed", granted: true }), false), "already subscribed");
  assert.equal(refusal("alert", {}, facts({ state: "subscribed", granted: true }), false, true), null);
});

test("nothing asks once notifications are blocked, even forced; the controls stay", () => {
  const blocked = facts({ state: "denied" });
  for (const name of ["native", "alert", "banner"] as const) {
    assert.equal(refusal(name, {}, blocked, false, true), "notifications are blocked in this browser");
  }
  assert.equal(refusal("switcher", {}, blocked, true), null);
  assert.equal(refusal("button", {}, facts({ state: "subscribed", granted: true }), true), null);
});

test("autoShow false waits for api.ui.show", () => {
  const off = { autoShow: false };
  assert.match(refusal("alert", off, facts(), true) ?? "", /autoShow is false/);
  assert.equal(refusal("alert", off, facts(), false), null);
  assert.match(refusal("button", off, facts(), true) ?? "", /autoShow is false/);
});

test("pageViews holds the automatic show back until that page view, not api.ui.show", () => {
  const third = { pageViews: 3 };
  assert.match(refusal("native", third, facts({ memory: { views: 2, no: {} } }), true) ?? "", /page view 2 of the 3/);
  assert.equal(refusal("native", third, facts({ memory: { views: 3, no: {} } }), true), null);
  assert.equal(refusal("native", third, facts({ memory: { views: 9, no: {} } }), true), null);
  assert.equal(refusal("alert", third, facts(), false), null);
});

test("a no holds the alert back for hideFor; force passes over it", () => {
  const refused = facts({ memory: { views: 1, no: { alert: NOW - 6 * DAY_MS } } });
  assert.match(refusal("alert", {}, refused, true) ?? "", /refused 518400 s ago \(hideFor 604800 s\)/);
  assert.equal(refusal("alert", {}, refused, false, true), null);
  assert.equal(refusal("alert", {}, { ...refused, now: NOW + DAY_MS }, true), null);
  assert.equal(refusal("alert", { hideFor: 3600 }, refused, true), null);
  assert.match(refusal("alert", { hideFor: 0 }, { ...refused, now: NOW + 999 * DAY_MS }, true) ?? "", /for good/);
  // Each prompt remembers its own no.
  assert.equal(refusal("banner", {}, refused, true), null);
});

test("native asks only while the permission is to be asked, once per backoffDuration", () => {
  assert.equal(refusal("native", {}, facts(), true), null);
  // Granted but not subscribed (the visitor unsubscribed): the SDK does not subscribe by itself,
  // api.ui.show('native') does (as Batch's).
  assert.equal(refusal("native", {}, facts({ granted: true }), true), "the permission is already granted");
  assert.equal(refusal("native", {}, facts({ granted: true }), false), null);
  const asked = facts({ memory: { views: 1, no: { native: NOW - 3_600_000 } } });
  assert.match(refusal("native", {}, asked, true) ?? "", /asked 3600 s ago \(backoffDuration 86400 s\)/);
  assert.equal(refusal("native", { backoffDuration: 0 }, asked, true), null);
  assert.equal(refusal("native", {}, { ...asked, now: NOW + DAY_MS }, true), null);
});

test("showIfPermissionGranted: false keeps the alert from a visitor who already allowed", () => {
  const granted = facts({ granted: true });
  assert.equal(refusal("alert", {}, granted, true), null);
  assert.match(refusal("alert", { showIfPermissionGranted: false }, granted, true) ?? "", /already granted/);
  assert.equal(refusal("alert", { showIfPermissionGranted: false }, granted, false, true), null);
});
