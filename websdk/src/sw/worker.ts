// The service worker (clarion-sw.js): shows pushes, reports opens, follows a changed
// subscription. A site's own `/clarion-sw.js` imports it (docs/web-sdk.md). The page script
// writes what the worker needs into their shared IndexedDB (same origin): `worker` =
// {server, apiKey} and `installation_id`; the worker only reads them.

import { openStore } from "../sdk/storage";
import { clickTarget, matchingWindow, parsePush, type ClickData } from "./payload";
import { sendSubscription, workerConfig } from "./shared";

// The parts of the service worker's global scope used here (the TypeScript "webworker" lib
// cannot be combined with the page's "dom" lib in one project).
interface ExtendableEvent extends Event {
  waitUntil(promise: Promise<unknown>): void;
}
interface PushEvent extends ExtendableEvent {
  data: { text(): string } | null;
}
interface NotificationEvent extends ExtendableEvent {
  notification: Notification & { data: ClickData | null };
  action: string;
}
interface WindowClient {
  url: string;
  focus(): Promise<WindowClient>;
}
interface WorkerScope {
  location: Location;
  registration: ServiceWorkerRegistration;
  clients: {
    matchAll(options: { type: "window"; includeUncontrolled: boolean }): Promise<WindowClient[]>;
    openWindow(url: string): Promise<WindowClient | null>;
  };
  addEventListener(type: string, listener: (event: never) => void): void;
  skipWaiting(): Promise<void>;
}
declare const self: WorkerScope;

/** waitUntil, and still run when the event was built by a script (a test's dispatchEvent), whose
 * waitUntil throws InvalidStateError. */
function keep(event: ExtendableEvent, work: Promise<unknown>): void {
  try {
    event.waitUntil(work);
  } catch {
    // The work runs all the same.
  }
}

async function show(event: PushEvent): Promise<void> {
  const shown = parsePush(event.data?.text() ?? "");
  if (shown) await self.registration.showNotification(shown.title, shown.options as NotificationOptions);
}

async function reportOpen(data: ClickData | null): Promise<void> {
  if (!data?.sendId) return;
  const config = await workerConfig();
  if (!config) return;
  await fetch(`${config.base}/opens`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ send_id: data.sendId, occurred_at: new Date().toISOString() }),
  }).catch(() => undefined);
}

/** Reports the open first: opening or focusing a window needs the click's user activation,
 * which a script-dispatched event lacks; the report does not. */
async function click(event: NotificationEvent): Promise<void> {
  const data = event.notification.data;
  event.notification.close();
  await reportOpen(data);
  const target = clickTarget(data, event.action, self.location.origin);
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const open = windows[matchingWindow(windows.map((w) => w.url), target)];
  try {
    if (open) await open.focus();
    else await self.clients.openWindow(target);
  } catch {
    // Refused without the click's user activation (InvalidAccessError): the open is reported.
  }
}

/** The push service replaced the subscription: subscribe again with the app's key and send it. */
async function resubscribe(): Promise<void> {
  const config = await workerConfig();
  if (!config) return;
  const answer = await fetch(config.keyUrl);
  if (!answer.ok) return;
  const { application_server_key: key } = (await answer.json()) as { application_server_key: string };
  const subscription = await self.registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: key,
  });
  await sendSubscription(config.base, subscription, await openStore().then((o) => o.store));
}

self.addEventListener("install", () => void self.skipWaiting());
self.addEventListener("push", (event: PushEvent) => keep(event, show(event)));
self.addEventListener("notificationclick", (event: NotificationEvent) => keep(event, click(event)));
self.addEventListener("pushsubscriptionchange", (event: ExtendableEvent) => keep(event, resubscribe()));
