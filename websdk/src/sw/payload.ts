// What the service worker makes of a push: the notification to show (Clarion's Web Push
// provider sends Batch's payload, Appendix A of the spec) and where a click goes. Pure
// functions, unit-tested under Node (test/payload.test.ts).

export interface NotificationAction {
  action: string;
  title: string;
  icon?: string;
}

/** What the worker keeps on the notification (`data`) for the click. */
export interface ClickData {
  sendId: string | null;
  openData: Record<string, unknown> | null;
  deeplink: string | null;
  /** The action buttons' deeplinks, by position (`action` is the position as a string). */
  actionLinks: (string | null)[];
}

export interface Shown {
  title: string;
  options: {
    body: string;
    icon?: string;
    image?: string;
    badge?: string;
    tag?: string;
    renotify?: boolean;
    requireInteraction?: boolean;
    silent?: boolean;
    actions: NotificationAction[];
    data: ClickData;
  };
}

// Browsers show 2 action buttons (Chrome's maximum); more would be dropped silently.
export const MAX_ACTIONS = 2;
const MAX_TEXT = 4096;

function object(value: unknown): Record<string, unknown> | null {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : null;
}

function text(value: unknown): string {
  return typeof value === "string" ? value.slice(0, MAX_TEXT) : "";
}

/** `{"a": "batch.deeplink", "args": {"l": url}}` → url; anything else → null. */
function deeplinkOf(action: unknown): string | null {
  const link = object(object(action)?.["args"])?.["l"];
  return typeof link === "string" && link !== "" ? link : null;
}

/** The notification for a push's JSON text, or null when it is not a Clarion/Batch push (no
 * `com.batch` object, or neither title nor body: nothing a user could read). */
export function parsePush(raw: string): Shown | null {
  let payload: Record<string, unknown> | null;
  try {
    payload = object(JSON.parse(raw));
  } catch {
    return null;
  }
  const batch = object(payload?.["com.batch"]);
  if (!payload || !batch) return null;
  const title = text(payload["title"]);
  const body = text(payload["alert"]);
  if (title === "" && body === "") return null;
  const actions: NotificationAction[] = [];
  const actionLinks: (string | null)[] = [];
  const given = Array.isArray(batch["aa"]) ? (batch["aa"] as unknown[]) : [];
  for (const item of given.slice(0, MAX_ACTIONS)) {
    const label = text(object(item)?.["l"]);
    if (label === "") continue;
    const action: NotificationAction = { action: String(actions.length), title: label };
    const icon = text(object(item)?.["i"]);
    if (icon !== "") action.icon = icon;
    actions.push(action);
    actionLinks.push(deeplinkOf(item));
  }
  const sendId = text(batch["i"]);
  const options: Shown["options"] = {
    body,
    actions,
    data: { sendId: sendId || null, openData: object(batch["od"]), deeplink: deeplinkOf(batch["da"]), actionLinks },
  };
  const strings: [keyof Shown["options"] & ("icon" | "image" | "badge" | "tag"), string][] = [
    ["icon", "icu"],
    ["image", "imu"],
    ["badge", "siu"],
    ["tag", "ni"],
  ];
  for (const [option, key] of strings) {
    const value = text(batch[key]);
    if (value !== "") options[option] = value;
  }
  const flags: [keyof Shown["options"] & ("renotify" | "requireInteraction" | "silent"), string][] = [
    ["renotify", "rn"],
    ["requireInteraction", "ri"],
    ["silent", "sl"],
  ];
  for (const [option, key] of flags) if (typeof batch[key] === "boolean") options[option] = batch[key] as boolean;
  // Browsers refuse renotify without a tag (TypeError from showNotification).
  if (options.renotify && options.tag === undefined) delete options.renotify;
  return { title, options };
}

/** The URL a click opens: the button's deeplink, else the push's, else the site's root. Only
 * http(s) URLs, resolved against the site (`javascript:` and the like go to the root). */
export function clickTarget(data: ClickData | null | undefined, action: string, origin: string): string {
  const root = new URL("/", origin).href;
  const index = action === "" ? -1 : Number(action);
  const link = (Number.isInteger(index) && index >= 0 ? data?.actionLinks?.[index] : null) ?? data?.deeplink ?? null;
  if (!link) return root;
  try {
    const url = new URL(link, origin);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : root;
  } catch {
    return root;
  }
}

/** Of the open windows' URLs, the index of one showing `target` (ignoring the #fragment), or -1. */
export function matchingWindow(urls: readonly string[], target: string): number {
  const bare = (url: string) => {
    try {
      const parsed = new URL(url);
      parsed.hash = "";
      return parsed.href;
    } catch {
      return url;
    }
  };
  const wanted = bare(target);
  return urls.findIndex((url) => bare(url) === wanted);
}
