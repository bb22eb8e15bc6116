// The service worker's reading of a push (src/sw/payload.ts): what is shown, where a click goes.
import assert from "node:assert/strict";
import { test } from "node:test";
import { clickTarget, matchingWindow, parsePush } from "../src/sw/payload";

const SITE = "https://shop.example";

// What clarion/delivery/providers/webpush.py build_payload sends, with every media field.
const FULL = {
  title: "Soldes",
  alert: "Half price today",
  tag_in_custom_payload: "kept",
  "com.batch": {
    i: "send-123",
    od: { n: "campaign-9" },
    da: { a: "batch.deeplink", args: { l: "https://shop.example/sale" } },
    icu: "https://cdn.example/icon.png",
    imu: "https://cdn.example/big.jpg",
    aa: [
      { l: "See", a: "batch.deeplink", args: { l: "/sale/see" }, i: "https://cdn.example/eye.png" },
      { l: "Later", a: "batch.dismiss" },
      { l: "Third", a: "batch.dismiss" },
    ],
  },
};

test("a full payload becomes the notification: title, body, icon, image, two actions", () => {
  const shown = parsePush(JSON.stringify(FULL));
  assert.ok(shown);
  assert.equal(shown.title, "Soldes");
  assert.equal(shown.options.body, "Half price today");
  assert.equal(shown.options.icon, "https://cdn.example/icon.png");
  assert.equal(shown.options.image, "https://cdn.example/big.jpg");
  assert.deepEqual(shown.options.actions, [
    { action: "0", title: "See", icon: "https://cdn.example/eye.png" },
    { action: "1", title: "Later" },
  ]);
  assert.deepEqual(shown.options.data, {
    sendId: "send-123",
    openData: { n: "campaign-9" },
    deeplink: "https://shop.example/sale",
    actionLinks: ["/sale/see", null],
  });
});

test("the minimal payload (no deeplink, no media) is shown with no actions", () => {
  const shown = parsePush(JSON.stringify({ title: "", alert: "Hi", "com.batch": { i: "s" } }));
  assert.ok(shown);
  assert.equal(shown.title, "");
  assert.equal(shown.options.body, "Hi");
  assert.deepEqual(shown.options.actions, []);
  assert.equal(shown.options.icon, undefined);
  assert.equal(shown.options.data.deeplink, null);
});

test("Batch's flags are passed on; renotify without a tag is dropped (browsers refuse it)", () => {
  const flags = (batch: Record<string, unknown>) =>
    parsePush(JSON.stringify({ title: "t", alert: "a", "com.batch": { i: "s", ...batch } }))?.options;
  const tagged = flags({ ni: "news", rn: true, ri: true, sl: false, siu: "/badge.png" });
  assert.equal(tagged?.tag, "news");
  assert.equal(tagged?.renotify, true);
  assert.equal(tagged?.requireInteraction, true);
  assert.equal(tagged?.silent, false);
  assert.equal(tagged?.badge, "/badge.png");
  assert.equal(flags({ rn: true })?.renotify, undefined);
  assert.equal(flags({ ri: "yes" })?.requireInteraction, undefined);
});

test("what is not a Clarion push is not shown", () => {
  assert.equal(parsePush("not json"), null);
  assert.equal(parsePush(""), null);
  assert.equal(parsePush("[1]"), null);
  assert.equal(parsePush(JSON.stringify({ title: "t", alert: "a" })), null); // another sender's push
  assert.equal(parsePush(JSON.stringify({ title: "", alert: "", "com.batch": { i: "s" } })), null);
  assert.equal(parsePush(JSON.stringify({ title: 5, alert: ["x"], "com.batch": {} })), null);
});

test("a click opens the button's deeplink, else the push's, else the site's root", () => {
  const data = parsePush(JSON.stringify(FULL))?.options.data;
  assert.equal(clickTarget(data, "", SITE), "https://shop.example/sale");
  assert.equal(clickTarget(data, "0", SITE), "https://shop.example/sale/see"); // relative, resolved
  assert.equal(clickTarget(data, "1", SITE), "https://shop.example/sale"); // a dismiss button
  assert.equal(clickTarget(data, "7", SITE), "https://shop.example/sale");
  assert.equal(clickTarget(null, "", SITE), "https://shop.example/");
  const minimal = parsePush(JSON.stringify({ title: "t", alert: "a", "com.batch": { i: "s" } }))?.options.data;
  assert.equal(clickTarget(minimal, "", SITE), "https://shop.example/");
});

test("a deeplink that is no http(s) URL opens the site's root", () => {
  for (const link of ["javascript:alert(1)", "data:text/html,x", "http://[bad"]) {
    const data = { sendId: "s", openData: null, deeplink: link, actionLinks: [] };
    assert.equal(clickTarget(data, "", SITE), "https://shop.example/", link);
  }
});

test("an open tab showing the target (fragment aside) is the one focused", () => {
  const tabs = ["https://shop.example/", "https://shop.example/sale#top", "https://other.example/sale"];
  assert.equal(matchingWindow(tabs, "https://shop.example/sale"), 1);
  assert.equal(matchingWindow(tabs, "https://shop.example/"), 0);
  assert.equal(matchingWindow(tabs, "https://shop.example/sale?x=1"), -1);
  assert.equal(matchingWindow([], "https://shop.example/"), -1);
});
