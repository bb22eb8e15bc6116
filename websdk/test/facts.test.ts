import assert from "node:assert/strict";
import { test } from "node:test";
import { browserFacts, timeZone } from "../src/sdk/facts";

test("browser and system names from the user agent, within the API's lengths", () => {
  const chrome =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
  assert.deepEqual(browserFacts(chrome, "fr-FR", "Europe/Paris"), {
    language: "fr-FR",
    timezone: "Europe/Paris",
    device_model: "Chrome 131",
    os_version: "Linux",
  });
  const edge =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0";
  assert.equal(browserFacts(edge, undefined, undefined).device_model, "Edge 131");
  const safari =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
  assert.deepEqual(browserFacts(safari, "xx!", undefined), { device_model: "Safari 17", os_version: "iOS 17.4" });
});

test("the time zone from Temporal when there is one, else from Intl (no Worker in Node)", async () => {
  const scope = globalThis as { Temporal?: unknown };
  assert.equal(await timeZone(), Intl.DateTimeFormat().resolvedOptions().timeZone);
  scope.Temporal = { Now: { timeZoneId: () => "Pacific/Chatham" } };
  try {
    assert.equal(await timeZone(), "Pacific/Chatham");
    scope.Temporal = { Now: {} }; // a partial Temporal: as without one
    assert.equal(await timeZone(), Intl.DateTimeFormat().resolvedOptions().timeZone);
  } finally {
    delete scope.Temporal;
  }
});
