// When a subscription prompt of setup's `ui` may show (docs/web-sdk.md "Subscription prompts"):
// the keys that time it, read from the page's configuration, and the decision over the
// visitor's state. Pure: the state, the memory and the clock are given (ui.ts draws).

import type { SubscriptionState } from "./sdk";

/** The components, by Batch's names. `popin` (Batch's HTTP-mode window) has no use here. */
export const UI_NAMES = ["native", "alert", "banner", "switcher", "button"] as const;
export type UiName = (typeof UI_NAMES)[number];

/** Kept in the store (key `ui`): page views with a `ui` setup, and per prompt when the
 * visitor last said no (alert, banner) or was last asked (native), in ms. */
export interface UiMemory {
  views: number;
  no: Partial<Record<UiName, number>>;
}

export interface Timing {
  /** Show by itself (else only on api.ui.show). */
  autoShow: boolean;
  /** Seconds after setup before an automatic show (native: before it waits for a click). */
  delay: number;
  /** The page view (1 the first) from which an automatic show may happen. */
  pageViews: number;
  /** Seconds a "no" (native: a question) holds the prompt back; Infinity: for good. */
  hideFor: number;
}

export interface Facts {
  state: SubscriptionState;
  /** Notification.permission === "granted" (state can be "unsubscribed" with it). */
  granted: boolean;
  memory: UiMemory;
  now: number;
}

const WEEK = 604_800;
const DAY = 86_400;
const TEN_YEARS = 10 * 365 * DAY;

function seconds(value: unknown, fallback: number, max: number): number {
  const n = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  return typeof n === "number" && Number.isFinite(n) && n >= 0 ? Math.min(n, max) : fallback;
}

/** The timing keys of one component's configuration, with Batch's defaults: `autoShow` true;
 * alert and banner `hideFor` a week (0: a "no" is final, as Batch's); native `backoffDuration`
 * a day (0: no backoff, as Batch's). `delay` (0) and `pageViews` (1) are Clarion's. */
export function timing(name: UiName, config: Record<string, unknown>): Timing {
  let hideFor = 0;
  if (name === "native") hideFor = seconds(config["backoffDuration"], DAY, TEN_YEARS);
  else if (name === "alert" || name === "banner") {
    hideFor = seconds(config["hideFor"], WEEK, TEN_YEARS) || Infinity;
  }
  return {
    autoShow: config["autoShow"] !== false,
    delay: seconds(config["delay"], 0, 3600),
    pageViews: Math.max(1, Math.floor(seconds(config["pageViews"], 1, 1000))),
    hideFor,
  };
}

/** Why `name` does not show now, or null when it does. `auto`: the SDK's own show at page load
 * (autoShow, page views; the delay is the caller's timer); else `api.ui.show(name, force)`,
 * where `force` passes over a remembered "no" and an existing subscription. Never shown in a
 * browser without Web Push, and a prompt never shows once notifications are blocked. */
export function refusal(
  name: UiName,
  config: Record<string, unknown>,
  facts: Facts,
  auto: boolean,
  force = false,
): string | null {
  const t = timing(name, config);
  if (facts.state === "unsupported") return "this browser has no Web Push";
  if (auto && !t.autoShow) return "autoShow is false: waiting for api.ui.show";
  if (auto && facts.memory.views < t.pageViews) {
    return `page view ${facts.memory.views} of the ${t.pageViews} pageViews asks`;
  }
  // The switcher and the bell are the visitor's controls: there whatever the state.
  if (name === "switcher" || name === "button") return null;
  if (facts.state === "denied") return "notifications are blocked in this browser";
  if (force) return null;
  if (facts.state === "subscribed") return "already subscribed";
  // The browser has nothing left to ask, and subscribing without asking would undo an
  // unsubscribe() the visitor made.
  if (name === "native" && auto && facts.granted) return "the permission is already granted";
  if (name === "alert" && facts.granted && config["showIfPermissionGranted"] === false) {
    return "the permission is already granted (showIfPermissionGranted: false)";
  }
  const last = facts.memory.no[name];
  if (last !== undefined && facts.now - last < t.hideFor * 1000) {
    const ago = Math.round((facts.now - last) / 1000);
    const held = name === "native" ? `asked ${ago} s ago (backoffDuration` : `refused ${ago} s ago (hideFor`;
    return `${held} ${t.hideFor === Infinity ? "0: for good" : `${t.hideFor} s`})`;
  }
  return null;
}
