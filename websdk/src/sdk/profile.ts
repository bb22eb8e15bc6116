// profile().edit's editor, in the SDK API's wire format (docs/sdk-api.md: POST …/profile/edits),
// and getUserAttributes' values, read from what this browser's edits set (the SDK API never
// answers a profile: decision 0024). Batch's Web SDK names. No DOM: unit-tested under Node
// (test/profile.test.ts). The server applies the Custom Data API's rules again; these checks
// are here so that a page learns of a bad value at the call that made it.

import { LANGUAGE } from "./facts";

/** Batch's `api.userAttributeTypes`: for setAttribute(key, {type, value}). */
export const userAttributeTypes = {
  STRING: "string",
  INTEGER: "integer",
  FLOAT: "float",
  BOOLEAN: "boolean",
  DATE: "date",
  URL: "url",
} as const;
export type AttributeType = (typeof userAttributeTypes)[keyof typeof userAttributeTypes];

export interface TypedValue {
  type: AttributeType;
  value: string | number | boolean;
}
export type TagChange = string[] | { $add?: string[]; $remove?: string[] } | null;
/** The body of POST …/profile/edits. */
export interface ProfileEdits {
  attributes?: Record<string, TypedValue | null>;
  tags?: Record<string, TagChange>;
  language?: string | null;
  region?: string | null;
}

// The Custom Data API's limits (spec §7.1), as the server applies them.
const NAME = /^[a-z0-9_]{1,30}$/;
const URL_TEXT = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/\S*$/;
const REGION = /^[A-Za-z]{2}$|^[0-9]{3}$/;
const MAX_STRING = 64;
const MAX_URL = 2048;
const MAX_TAGS = 25;

function fail(call: string, why: string): never {
  throw new Error(`clarion: ${call}: ${why}`);
}

/** Characters as the server counts them (code points): "😀".length is 2. */
function length(text: string): number {
  let count = 0;
  for (const _ of text) count++;
  return count;
}

function attributeName(call: string, key: unknown): string {
  const name = typeof key === "string" ? key.toLowerCase() : "";
  if (!NAME.test(name)) fail(call, `'${String(key)}' is not 1-30 letters, digits or _`);
  return name;
}

/** A Date as the server reads dates: YYYY-MM-DDTHH:MM:SS.sss, in UTC. */
function dateText(call: string, date: Date): string {
  const text = Number.isNaN(date.getTime()) ? "" : date.toISOString();
  if (!/^\d{4}-/.test(text)) fail(call, "an invalid Date, or one outside the years 1-9999");
  return text.slice(0, -1); // without its "Z": the server takes dates as UTC
}

function urlText(call: string, value: unknown): string {
  const text = value instanceof URL ? value.href : value;
  if (typeof text !== "string" || !URL_TEXT.test(text) || length(text) > MAX_URL) {
    fail(call, `a URL is scheme://…, at most ${MAX_URL} characters`);
  }
  return text;
}

/** setAttribute's value as the wire's typed value: the type Batch infers (string, integer or
 * float number, boolean, Date, URL), or the one given explicitly as {type, value}. */
export function typedValue(call: string, value: unknown): TypedValue {
  if (typeof value === "string") {
    if (length(value) > MAX_STRING) fail(call, `strings have at most ${MAX_STRING} characters`);
    return { type: "string", value };
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) fail(call, "a number must be finite");
    // Beyond 2^53 an integer is no longer exact in JavaScript: a float, as the value really is.
    return { type: Number.isSafeInteger(value) ? "integer" : "float", value };
  }
  if (typeof value === "boolean") return { type: "boolean", value };
  if (value instanceof Date) return { type: "date", value: dateText(call, value) };
  if (value instanceof URL) return { type: "url", value: urlText(call, value) };
  if (value !== null && typeof value === "object" && "type" in value && "value" in value) {
    return explicit(call, String(value.type), value.value);
  }
  return fail(call, "a string, number, boolean, Date, URL, array of strings or {type, value}");
}

function explicit(call: string, type: string, value: unknown): TypedValue {
  switch (type) {
    case "string":
      if (typeof value !== "string") fail(call, "a STRING is a string");
      return typedValue(call, value);
    case "integer":
      if (typeof value !== "number" || !Number.isSafeInteger(value)) {
        fail(call, "an INTEGER is a whole number within ±2^53");
      }
      return { type, value };
    case "float":
      if (typeof value !== "number" || !Number.isFinite(value)) fail(call, "a FLOAT is a finite number");
      return { type, value };
    case "boolean":
      if (typeof value !== "boolean") fail(call, "a BOOLEAN is true or false");
      return { type, value };
    case "date":
      if (typeof value === "number") return { type, value: dateText(call, new Date(value)) };
      if (!(value instanceof Date)) fail(call, "a DATE is a Date or a time in milliseconds");
      return { type, value: dateText(call, value) };
    case "url":
      return { type, value: urlText(call, value) };
    default:
      return fail(call, `unknown type '${type}' (see api.userAttributeTypes)`);
  }
}

function tagList(call: string, values: unknown): string[] {
  const list = Array.isArray(values) ? values : [values];
  return list.map((tag) => {
    // Batch's Web SDK lowercases array values; tags are 1-64 characters.
    const text = typeof tag === "string" ? tag.toLowerCase() : "";
    if (text === "" || length(text) > MAX_STRING) fail(call, `array values are strings of 1-${MAX_STRING} characters`);
    return text;
  });
}

/** What the edit does to one tag collection: replaces it, or adds and removes tags. */
type TagEdit = { replace: Set<string> } | { add: Set<string>; remove: Set<string> };

function capped(call: string, tags: Set<string>): void {
  if (tags.size > MAX_TAGS) fail(call, `an array has at most ${MAX_TAGS} values`);
}

/** The editor a profile().edit callback receives (Batch's names). Each call checks its value
 * and throws an Error for a bad one, which rejects the edit: nothing of it is sent. */
export class ProfileEditor {
  private attributes: Record<string, TypedValue | null> = {};
  private tags: Record<string, TagEdit> = {};
  private locale: { language?: string | null; region?: string | null } = {};

  setAttribute(key: string, value: unknown): this {
    const name = attributeName("setAttribute", key);
    if (Array.isArray(value)) {
      const replace = new Set(tagList("setAttribute", value));
      capped("setAttribute", replace);
      this.tags[name] = { replace };
    } else {
      this.attributes[name] = typedValue(`setAttribute('${name}')`, value);
    }
    return this;
  }

  /** Removes the attribute `key`, and the array of that name. */
  removeAttribute(key: string): this {
    const name = attributeName("removeAttribute", key);
    this.attributes[name] = null;
    this.tags[name] = { replace: new Set() };
    return this;
  }

  addToArray(key: string, values: string | string[]): this {
    return this.changeArray("addToArray", key, values, true);
  }

  removeFromArray(key: string, values: string | string[]): this {
    return this.changeArray("removeFromArray", key, values, false);
  }

  /** null: back to the browser's language. */
  setLanguage(language: string | null): this {
    if (language !== null && (typeof language !== "string" || !LANGUAGE.test(language))) {
      fail("setLanguage", `'${String(language)}' is not a language code (fr, en-GB)`);
    }
    this.locale.language = language;
    return this;
  }

  /** null: no region. */
  setRegion(region: string | null): this {
    if (region !== null && (typeof region !== "string" || !REGION.test(region))) {
      fail("setRegion", `'${String(region)}' is not a region code (FR, 419)`);
    }
    this.locale.region = region === null ? null : region.toUpperCase();
    return this;
  }

  setEmailAddress(_email: unknown): this {
    return fail("setEmailAddress", "Clarion has no email channel (docs/web-sdk.md)");
  }

  setEmailMarketingSubscription(_state: unknown): this {
    return fail("setEmailMarketingSubscription", "Clarion has no email channel (docs/web-sdk.md)");
  }

  private changeArray(call: string, key: string, values: string | string[], add: boolean): this {
    const name = attributeName(call, key);
    const edit = (this.tags[name] ??= { add: new Set(), remove: new Set() });
    for (const tag of tagList(call, values)) {
      if ("replace" in edit) {
        if (add) edit.replace.add(tag);
        else edit.replace.delete(tag);
      } else {
        (add ? edit.add : edit.remove).add(tag);
        (add ? edit.remove : edit.add).delete(tag);
      }
    }
    for (const tags of "replace" in edit ? [edit.replace] : [edit.add, edit.remove]) capped(call, tags);
    return this;
  }

  /** The edits as the route's body; null when there is nothing to send. */
  body(): ProfileEdits | null {
    const body: ProfileEdits = {};
    if (Object.keys(this.attributes).length) body.attributes = this.attributes;
    const tags: Record<string, TagChange> = {};
    for (const [name, edit] of Object.entries(this.tags)) {
      if ("replace" in edit) {
        tags[name] = edit.replace.size ? [...edit.replace] : null;
      } else if (edit.add.size || edit.remove.size) {
        const change: { $add?: string[]; $remove?: string[] } = {};
        if (edit.add.size) change.$add = [...edit.add];
        if (edit.remove.size) change.$remove = [...edit.remove];
        tags[name] = change;
      }
    }
    if (Object.keys(tags).length) body.tags = tags;
    if (this.locale.language !== undefined) body.language = this.locale.language;
    if (this.locale.region !== undefined) body.region = this.locale.region;
    return Object.keys(body).length ? body : null;
  }
}

/** What this browser's accepted edits set on the profile of `custom_id` (IndexedDB `profile`). */
export interface LocalProfile {
  custom_id: string;
  attributes: Record<string, TypedValue>;
  tags: Record<string, string[]>;
}

/** The local profile once the server accepted `edits` for `customId`: a profile of another
 * user (a new identify in between) is started again. */
export function applyEdits(local: LocalProfile | undefined | null, customId: string, edits: ProfileEdits): LocalProfile {
  const next: LocalProfile =
    local?.custom_id === customId
      ? { custom_id: customId, attributes: { ...local.attributes }, tags: { ...local.tags } }
      : { custom_id: customId, attributes: {}, tags: {} };
  for (const [name, value] of Object.entries(edits.attributes ?? {})) {
    if (value === null) delete next.attributes[name];
    else next.attributes[name] = value;
  }
  for (const [name, change] of Object.entries(edits.tags ?? {})) {
    let tags: string[];
    if (change === null) tags = [];
    else if (Array.isArray(change)) tags = change;
    else {
      const removed = new Set(change.$remove ?? []);
      tags = [...new Set([...(next.tags[name] ?? []), ...(change.$add ?? [])])].filter((tag) => !removed.has(tag));
    }
    if (tags.length) next.tags[name] = [...tags].sort();
    else delete next.tags[name];
  }
  return next;
}

export type AttributeValue = string | number | boolean | Date | URL | string[];

/** One value of getUserAttributes(), with the getters of Batch's Web SDK. */
export class UserAttribute {
  readonly type: AttributeType | "array";
  readonly value: AttributeValue;
  constructor(type: AttributeType | "array", value: AttributeValue) {
    this.type = type;
    this.value = value;
  }
  getType(): AttributeType | "array" {
    return this.type;
  }
  getValue(): AttributeValue {
    return this.value;
  }
  getStringValue(): string | undefined {
    return this.type === "string" ? (this.value as string) : undefined;
  }
  getNumberValue(): number | undefined {
    return this.type === "integer" || this.type === "float" ? (this.value as number) : undefined;
  }
  getBooleanValue(): boolean | undefined {
    return this.type === "boolean" ? (this.value as boolean) : undefined;
  }
  getDateValue(): Date | undefined {
    return this.type === "date" ? (this.value as Date) : undefined;
  }
  getURLValue(): URL | undefined {
    return this.type === "url" ? (this.value as URL) : undefined;
  }
  getArrayValue(): string[] | undefined {
    return this.type === "array" ? (this.value as string[]) : undefined;
  }
}

/** getUserAttributes()'s object: each attribute typed (Date, URL objects), and each tag
 * collection as an array; an attribute keeps its name over a collection of the same name
 * (getUserTagCollections() has them all). */
export function userAttributes(local: LocalProfile | undefined | null): Record<string, UserAttribute> {
  const found: Record<string, UserAttribute> = {};
  for (const [name, tags] of Object.entries(local?.tags ?? {})) found[name] = new UserAttribute("array", tags);
  for (const [name, { type, value }] of Object.entries(local?.attributes ?? {})) {
    let typed: AttributeValue = value;
    if (type === "date") typed = new Date(`${String(value)}Z`); // sent as UTC without its "Z"
    else if (type === "url") {
      try {
        typed = new URL(String(value));
      } catch {
        // A URL only the Custom Data API's looser rule takes (scheme://, no more): kept as text.
      }
    }
    found[name] = new UserAttribute(type, typed);
  }
  return found;
}
