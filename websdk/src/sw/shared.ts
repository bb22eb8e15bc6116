// What the page script and the service worker both do: find the installation's address from
// the shared IndexedDB, and send a push subscription.

import { openStore, type Store } from "../sdk/storage";

/** Written by the page at setup (`worker` key), read by the worker. */
export interface WorkerKeys {
  server: string;
  apiKey: string;
}

export function installationBase(keys: WorkerKeys, installationId: string): string {
  return `${keys.server}/sdk/v1/${encodeURIComponent(keys.apiKey)}/installations/${encodeURIComponent(installationId)}`;
}

export function vapidKeyUrl(keys: WorkerKeys): string {
  return `${keys.server}/sdk/v1/${encodeURIComponent(keys.apiKey)}/webpush/vapid-key`;
}

/** The installation's base URL and the VAPID key's URL, or null before the page's first setup. */
export async function workerConfig(): Promise<{ base: string; keyUrl: string } | null> {
  const { store } = await openStore();
  const keys = await store.get<WorkerKeys>("worker");
  const id = await store.get<string>("installation_id");
  if (!keys || typeof id !== "string") return null;
  return { base: installationBase(keys, id), keyUrl: vapidKeyUrl(keys) };
}

/** The subscription as the SDK API takes it (`webpush_subscription`: endpoint and keys only). */
export function subscriptionBody(json: PushSubscriptionJSON): { endpoint: string; keys: Record<string, string> } | null {
  const keys = json.keys;
  if (!json.endpoint || !keys?.["p256dh"] || !keys["auth"]) return null;
  return { endpoint: json.endpoint, keys: { p256dh: keys["p256dh"], auth: keys["auth"] } };
}

/** PUTs the subscription with `push_optin: true` and remembers what was sent (`webpush_sent`),
 * so that the page re-sends it only when it changed. The HTTP status (0: no answer). */
export async function sendSubscription(base: string, subscription: PushSubscription, store: Store): Promise<number> {
  const body = subscriptionBody(subscription.toJSON());
  if (!body) return 0;
  try {
    const response = await fetch(base, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ webpush_subscription: body, push_optin: true }),
    });
    if (response.ok) await store.set("webpush_sent", JSON.stringify(body));
    return response.status;
  } catch {
    return 0;
  }
}
