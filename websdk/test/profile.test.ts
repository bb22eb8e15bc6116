// profile().edit's editor (src/sdk/profile.ts): the type each value is sent with, the checks
// that refuse a bad value at the call, how tag edits fold into one body; the local profile the
// accepted edits build, and getUserAttributes' values read from it.
import assert from "node:assert/strict";
import { test } from "node:test";
import { applyEdits, ProfileEditor, typedValue, userAttributes, userAttributeTypes as T } from "../src/sdk/profile";

const edits = (fn: (editor: ProfileEditor) => void) => {
  const editor = new ProfileEditor();
  fn(editor);
  return editor.body();
};

test("setAttribute infers the types Batch infers", () => {
  assert.deepEqual(typedValue("t", "premium"), { type: "string", value: "premium" });
  assert.deepEqual(typedValue("t", ""), { type: "string", value: "" });
  assert.deepEqual(typedValue("t", 42), { type: "integer", value: 42 });
  assert.deepEqual(typedValue("t", -7), { type: "integer", value: -7 });
  assert.deepEqual(typedValue("t", 3.0), { type: "integer", value: 3 }); // 3.0 === 3 in JavaScript
  assert.deepEqual(typedValue("t", 0.25), { type: "float", value: 0.25 });
  assert.deepEqual(typedValue("t", 2 ** 60), { type: "float", value: 2 ** 60 }); // not exact: a float
  assert.deepEqual(typedValue("t", true), { type: "boolean", value: true });
  assert.deepEqual(typedValue("t", new Date(Date.UTC(2026, 10, 23, 10, 0, 0, 250))), {
    type: "date",
    value: "2026-11-23T10:00:00.250",
  });
  assert.deepEqual(typedValue("t", new URL("https://shop.example/u?id=1")), {
    type: "url",
    value: "https://shop.example/u?id=1",
  });
  // A URL given as a string is a string, as in Batch's SDK: the explicit form makes it a URL.
  assert.equal(typedValue("t", "https://shop.example").type, "string");
});

test("the explicit {type, value} form sends the type given", () => {
  assert.deepEqual(typedValue("t", { type: T.FLOAT, value: 3 }), { type: "float", value: 3 });
  assert.deepEqual(typedValue("t", { type: T.INTEGER, value: 3 }), { type: "integer", value: 3 });
  assert.deepEqual(typedValue("t", { type: T.URL, value: "https://a.example" }), {
    type: "url",
    value: "https://a.example",
  });
  assert.deepEqual(typedValue("t", { type: T.DATE, value: Date.UTC(2026, 0, 1) }), {
    type: "date",
    value: "2026-01-01T00:00:00.000",
  });
  assert.deepEqual(typedValue("t", { type: T.STRING, value: "x" }), { type: "string", value: "x" });
  assert.deepEqual(typedValue("t", { type: T.BOOLEAN, value: false }), { type: "boolean", value: false });
});

test("bad values throw a clear Error naming the call", () => {
  const refused: [unknown, RegExp][] = [
    ["x".repeat(65), /strings have at most 64 characters/],
    [NaN, /finite/],
    [Infinity, /finite/],
    [new Date("nope"), /invalid Date/],
    [new Date(Date.UTC(10000, 0, 1)), /years 1-9999/],
    [null, /a string, number, boolean, Date, URL/],
    [undefined, /a string, number, boolean, Date, URL/],
    [{ a: 1 }, /a string, number, boolean, Date, URL/],
    [{ type: "text", value: "x" }, /unknown type 'text'/],
    [{ type: T.INTEGER, value: 1.5 }, /an INTEGER is a whole number/],
    [{ type: T.INTEGER, value: "1" }, /an INTEGER is a whole number/],
    [{ type: T.FLOAT, value: "1.5" }, /a FLOAT is a finite number/],
    [{ type: T.BOOLEAN, value: 1 }, /a BOOLEAN is true or false/],
    [{ type: T.STRING, value: 1 }, /a STRING is a string/],
    [{ type: T.DATE, value: "2026-01-01" }, /a DATE is a Date or a time in milliseconds/],
    [{ type: T.URL, value: "shop.example" }, /a URL is scheme:\/\/…/],
    [{ type: T.URL, value: "https://a.example/" + "x".repeat(2048) }, /at most 2048/],
  ];
  for (const [value, why] of refused) {
    assert.throws(() => typedValue("setAttribute('a')", value), (error: Error) => {
      assert.match(error.message, /^clarion: setAttribute\('a'\): /);
      assert.match(error.message, why);
      return true;
    });
  }
  // Characters as the server counts them: 64 emoji are 64 characters (128 UTF-16 units).
  assert.equal(typedValue("t", "😀".repeat(64)).type, "string");
  assert.throws(() => typedValue("t", "😀".repeat(65)), /at most 64/);
});

test("an edit's calls become one body; names are lowercased and checked", () => {
  const body = edits((e) =>
    e
      .setAttribute("Plan", "premium")
      .setAttribute("visits", 42)
      .setAttribute("score", { type: T.FLOAT, value: 3 })
      .setAttribute("interests", ["Sport", "cinema"])
      .removeAttribute("old")
      .setLanguage("de-AT")
      .setRegion("at"),
  );
  assert.deepEqual(body, {
    attributes: {
      plan: { type: "string", value: "premium" },
      visits: { type: "integer", value: 42 },
      score: { type: "float", value: 3 },
      old: null,
    },
    tags: { interests: ["sport", "cinema"], old: null },
    language: "de-AT",
    region: "AT",
  });
  assert.throws(() => edits((e) => e.setAttribute("bad-name", 1)), /'bad-name' is not 1-30 letters/);
  assert.throws(() => edits((e) => e.setAttribute("x".repeat(31), 1)), /is not 1-30 letters/);
  assert.throws(() => edits((e) => e.setLanguage("not a language")), /setLanguage: 'not a language'/);
  assert.throws(() => edits((e) => e.setRegion("FRA")), /setRegion: 'FRA'/);
  assert.equal(edits(() => {}), null);
  assert.deepEqual(edits((e) => e.setLanguage(null)), { language: null });
});

test("array edits fold in call order into the Custom Data API's ut. values", () => {
  assert.deepEqual(
    edits((e) => e.addToArray("a", ["x", "Y"]).removeFromArray("a", "x").removeFromArray("b", ["z"])),
    // x may have been there before the edit: added then removed, it is removed.
    { tags: { a: { $add: ["y"], $remove: ["x"] }, b: { $remove: ["z"] } } },
  );
  // Removed then added again: added (the server applies removals first, so it must not see both).
  assert.deepEqual(edits((e) => e.removeFromArray("a", "x").addToArray("a", "x")), {
    tags: { a: { $add: ["x"] } },
  });
  // Replaced, then changed: still a replacement.
  assert.deepEqual(edits((e) => e.setAttribute("a", ["x", "y"]).addToArray("a", "z").removeFromArray("a", "x")), {
    tags: { a: ["y", "z"] },
  });
  // Emptied: the collection is removed.
  assert.deepEqual(edits((e) => e.setAttribute("a", ["x"]).removeFromArray("a", "x")), { tags: { a: null } });
  const many = Array.from({ length: 26 }, (_, i) => `t${i}`);
  assert.throws(() => edits((e) => e.setAttribute("a", many)), /at most 25 values/);
  assert.throws(() => edits((e) => e.addToArray("a", many)), /addToArray: an array has at most 25/);
  assert.throws(() => edits((e) => e.addToArray("a", [""])), /strings of 1-64 characters/);
  assert.throws(() => edits((e) => e.addToArray("a", [3 as unknown as string])), /strings of 1-64/);
});

test("email calls reject: Clarion has no email channel", () => {
  assert.throws(() => edits((e) => e.setEmailAddress("a@b.example")), /setEmailAddress: Clarion has no email channel/);
  assert.throws(() => edits((e) => e.setEmailMarketingSubscription("subscribed")), /no email channel/);
});

test("accepted edits build the local profile of their custom id", () => {
  const first = applyEdits(undefined, "u1", {
    attributes: { plan: { type: "string", value: "premium" }, visits: { type: "integer", value: 1 } },
    tags: { interests: ["sport", "cinema"], sizes: ["m"] },
    language: "de",
  });
  assert.deepEqual(first, {
    custom_id: "u1",
    attributes: { plan: { type: "string", value: "premium" }, visits: { type: "integer", value: 1 } },
    tags: { interests: ["cinema", "sport"], sizes: ["m"] },
  });
  const second = applyEdits(first, "u1", {
    attributes: { plan: null, visits: { type: "integer", value: 2 } },
    tags: { interests: { $add: ["golf"], $remove: ["sport"] }, sizes: null, new: { $add: ["x"] } },
  });
  assert.deepEqual(second, {
    custom_id: "u1",
    attributes: { visits: { type: "integer", value: 2 } },
    tags: { interests: ["cinema", "golf"], new: ["x"] },
  });
  assert.equal(first.tags["sizes"]?.length, 1, "the previous profile is left as it was");
  // Another user's edit starts from nothing.
  assert.deepEqual(applyEdits(second, "u2", { tags: { a: { $remove: ["x"] } } }), {
    custom_id: "u2",
    attributes: {},
    tags: {},
  });
});

test("getUserAttributes' values are typed, with Batch's getters", () => {
  const found = userAttributes({
    custom_id: "u",
    attributes: {
      plan: { type: "string", value: "premium" },
      visits: { type: "integer", value: 42 },
      signed_up: { type: "date", value: "2026-11-23T10:00:00.250" },
      home: { type: "url", value: "https://shop.example/u" },
      interests: { type: "string", value: "shadowed" },
    },
    tags: { interests: ["sport"], colours: ["red", "blue"] },
  });
  assert.equal(found["plan"]?.getStringValue(), "premium");
  assert.equal(found["plan"]?.getNumberValue(), undefined);
  assert.equal(found["visits"]?.getNumberValue(), 42);
  assert.equal(found["signed_up"]?.getDateValue()?.getTime(), Date.UTC(2026, 10, 23, 10, 0, 0, 250));
  assert.equal(found["home"]?.getURLValue()?.pathname, "/u");
  assert.deepEqual(found["colours"]?.getArrayValue(), ["red", "blue"]);
  assert.equal(found["interests"]?.getType(), "string"); // an attribute over a collection's name
  assert.deepEqual(userAttributes(undefined), {});
});
