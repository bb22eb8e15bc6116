// Which in-app message to show, and when: the trigger, capping, grace period and dates of
// each message the server handed (docs/inapp.md "Delivery to installations"), decided on the
// device. Pure: the state and the clock are given.

import type { SdkMessage, SdkTheme, SdkTrigger } from "../inapp/types";

/** A message as the server sends it: its theme is a code, a key of the answer's `themes`. */
export type WireMessage = Omit<SdkMessage, "theme" | "trigger"> & { theme: string; trigger: SdkTrigger };

export interface WireAnswer {
  messages: WireMessage[];
  themes: Record<string, SdkTheme>;
  refresh_seconds: number;
}

/** Per campaign token: how often it was shown, when last (ms), and the `last_server_event_at`
 * of a `ue.` trigger last acted on. Kept in IndexedDB across pages and sessions. */
export interface Displays {
  [token: string]: { count: number; last: number; ue?: string };
}

/** Why the SDK looks for a message: a session started (and its fetch answered), a new answer
 * arrived mid-session, or the page tracked an event. */
export type Occasion =
  | { kind: "session" }
  | { kind: "answer" }
  | { kind: "event"; name: string; label?: string | undefined };

function instant(value: string | null | undefined): number | null {
  if (value === null || value === undefined) return null;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms;
}

/** Whether capping, grace period and dates let `message` be shown at `now`. */
export function allowed(message: WireMessage, displays: Displays, now: number): boolean {
  const start = instant(message.start);
  const end = instant(message.end);
  if (start !== null && now < start) return false;
  if (end !== null && now >= end) return false;
  const seen = displays[message.campaign_token];
  if (seen === undefined) return true;
  if (message.capping !== null && seen.count >= message.capping) return false;
  return now - seen.last >= message.grace_period_seconds * 1000;
}

/** Whether the trigger of `message` fires on `occasion`. */
export function fires(message: WireMessage, displays: Displays, occasion: Occasion): boolean {
  const trigger = message.trigger;
  // "now": as soon as it is received (a session start or a new answer), not on each event.
  if (trigger.when === "now") return occasion.kind !== "event";
  if (trigger.when === "next_session") return occasion.kind === "session";
  const event = trigger.event ?? "";
  if (event.startsWith("ue.")) {
    // Shown at the next foreground moment, once per server event newer than the last acted on.
    if (occasion.kind === "event") return false;
    const at = instant(trigger.last_server_event_at);
    if (at === null) return false;
    const acted = instant(displays[message.campaign_token]?.ue);
    return acted === null || at > acted;
  }
  if (occasion.kind !== "event" || !event.startsWith("e.")) return false;
  if (event.slice(2).toLowerCase() !== occasion.name.toLowerCase()) return false;
  const label = trigger.label;
  return label === null || label === undefined || label === occasion.label;
}

/** The first message of the answer that fires and is allowed, or null. */
export function pick(
  messages: readonly WireMessage[],
  displays: Displays,
  occasion: Occasion,
  now: number,
): WireMessage | null {
  for (const message of messages) {
    if (fires(message, displays, occasion) && allowed(message, displays, now)) return message;
  }
  return null;
}

/** `displays` after `message` was shown at `now`. */
export function recordShown(displays: Displays, message: WireMessage, now: number): Displays {
  const seen = displays[message.campaign_token];
  const entry: Displays[string] = { count: (seen?.count ?? 0) + 1, last: now };
  const ue = message.trigger.last_server_event_at ?? seen?.ue;
  if (ue !== null && ue !== undefined) entry.ue = ue;
  return { ...displays, [message.campaign_token]: entry };
}
