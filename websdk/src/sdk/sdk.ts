// The page script: `clarion(...)` / `batchSDK(...)` commands, installation, sessions, events,
// identity, Web Push subscription and in-app messages. docs/web-sdk.md is the page author's view of it.

import { render, type Rendered } from "../inapp/render";
import type { SdkAction } from "../inapp/types";
import { pick, recordShown, type Displays, type Occasion, type WireAnswer, type WireMessage } from "./decide";
import { browserFacts } from "./facts";
import { applyEdits, ProfileEditor, userAttributes, userAttributeTypes, type LocalProfile, type UserAttribute } from "./profile";
import { EventQueue, type QueuedEvent } from "./queue";
import { memoryStore, openStore, type Store } from "./storage";
import { Ui, type UiApi } from "./ui";
import { sendSubscription, subscriptionBody, vapidKeyUrl, type WorkerKeys } from "../sw/shared";

export interface Config {
  apiKey?: unknown;
  server?: unknown;
  debug?: unknown;
  serviceWorker?: unknown;
  ui?: unknown;
}

/** getSubscriptionState()'s answer. */
export type SubscriptionState = "subscribed" | "unsubscribed" | "denied" | "unsupported";

export interface InAppAction {
  campaignToken: string;
  position: number;
  label: string;
  action: SdkAction["action"];
  args: Record<string, unknown> | null;
  customPayload: Record<string, unknown> | null;
}
/** Return `false` to keep a deeplink from being followed. */
export type InAppActionHandler = (action: InAppAction) => boolean | void;

export interface EventData {
  label?: string;
  attributes?: Record<string, unknown>;
  tags?: string[];
}

export interface Profile {
  identify(identity: { customId?: string | null }): Promise<void>;
  edit(edit: (editor: ProfileEditor) => void): Promise<Profile>;
}

export interface Api {
  getInstallationID(): Promise<string>;
  trackEvent(name: string, data?: EventData): Promise<void>;
  profile(): Promise<Profile>;
  getUserAttributes(): Promise<Record<string, UserAttribute>>;
  getUserTagCollections(): Promise<Record<string, string[]>>;
  readonly userAttributeTypes: typeof userAttributeTypes;
  onInAppAction(handler: InAppActionHandler): void;
  subscribe(): Promise<boolean>;
  unsubscribe(): Promise<boolean>;
  getSubscriptionState(): Promise<SubscriptionState>;
  isSubscribed(): Promise<boolean>;
  clearInstallationData(): Promise<void>;
  ui: UiApi;
}

/** A new session after this long without the page in view (Batch's and the mobile SDKs'). */
export const SESSION_GAP_MS = 30 * 60 * 1000;
const EVENT_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_]{0,29}$/;
const SESSION_KEY = "clarion.session";
/** IndexedDB key: the language and region profile().edit set, which registration sends in
 * place of the browser's (Batch's setLanguage overrides the detected language). */
const LOCALE_KEY = "locale";
/** IndexedDB key: what this browser's edits set on the current user's profile (LocalProfile). */
const PROFILE_KEY = "profile";
const DEFAULT_WORKER = "/clarion-sw.js";

type Command = unknown[];
interface Stub {
  (...args: unknown[]): void;
  q?: ArrayLike<unknown>[];
}

let debug = false;
function log(...args: unknown[]): void {
  if (debug) console.warn("[clarion]", ...args);
}

function uuid(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
  b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function deferred<T>(): { promise: Promise<T>; resolve(value: T): void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

interface Answer {
  status: number; // 0: no answer
  body: unknown; // the JSON answer, null when there is none
}

class Sdk implements Api {
  readonly userAttributeTypes = userAttributeTypes;
  private store: Store = memoryStore();
  private base = "";
  private id = deferred<string>();
  private registered = deferred<void>();
  private actionHandlers: InAppActionHandler[] = [];
  private answer: WireAnswer | null = null;
  private displays: Displays = {};
  private showing: Rendered | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private configured = false;
  private workerUrl = DEFAULT_WORKER;
  private keys: WorkerKeys | null = null;
  private isRegistered = false;
  readonly ui = new Ui(this);
  readonly queue = new EventQueue({
    send: (events) => this.call("POST", "/events", { events }),
    save: (events) => void this.store.set("events", events),
    schedule: (fn, ms) => void setTimeout(fn, ms),
    retrying: (status, ms) => log(`events not sent (${status || "no answer"}); next try in ${ms} ms`),
    dropped: (events, status) => log(`the server refused ${events.length} event(s) (HTTP ${status})`),
  });

  async setup(config: Config): Promise<void> {
    if (this.configured) return log("setup was called twice; the second call is ignored");
    debug = config.debug === true;
    if (typeof config.apiKey !== "string" || config.apiKey === "") {
      return log("setup: `apiKey` is missing (the web app's Live or Dev API key)");
    }
    if (typeof config.server !== "string" || !/^https?:\/\//.test(config.server)) {
      return log("setup: `server` is missing or not an http(s) URL (your Clarion's address)");
    }
    this.configured = true;
    const server = config.server.replace(/\/+$/, "");
    const worker = config.serviceWorker as { url?: unknown } | undefined;
    if (typeof worker?.url === "string" && worker.url !== "") this.workerUrl = worker.url;
    const opened = await openStore();
    if (opened.fellBack) log("IndexedDB is unavailable: the installation id lasts for this page only");
    this.store = opened.store;
    let id = await this.store.get<string>("installation_id");
    if (typeof id !== "string") {
      id = uuid();
      await this.store.set("installation_id", id);
    }
    this.base = `${server}/sdk/v1/${encodeURIComponent(config.apiKey)}/installations/${encodeURIComponent(id)}`;
    this.keys = { server, apiKey: config.apiKey };
    // For the service worker, which shares this IndexedDB (same origin) and has no page to ask.
    await this.store.set("worker", this.keys);
    this.queue.restore(await this.store.get<QueuedEvent[]>("events"));
    this.displays = (await this.store.get<Displays>("inapp_displays")) ?? {};
    this.id.resolve(id);
    // The prompts need the store, not the registration (subscribe() waits for it).
    void this.ui.setup(config.ui, this.store, log);
    addEventListener("pagehide", () => this.pageHidden());
    await this.register(0);
    this.isRegistered = true;
    this.registered.resolve();
    this.queue.start();
    // Only once registered: an app open or a fetch for an unknown installation is a 404.
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.touch();
      else void this.visible();
    });
    await this.visible();
    // A visitor who allowed notifications: the worker must be there for the pushes, and a
    // subscription the browser renewed since it was last sent is sent again.
    if (pushSupported() && Notification.permission === "granted") await this.resendChanged();
  }

  private async resendChanged(): Promise<void> {
    try {
      const registration = await this.registerWorker();
      const subscription = await registration.pushManager.getSubscription();
      if (!subscription) return;
      const sent = await this.store.get<string>("webpush_sent");
      const body = subscriptionBody(subscription.toJSON());
      if (body && JSON.stringify(body) !== sent) {
        log("the push subscription changed since it was last sent: sending it");
        await sendSubscription(this.base, subscription, this.store);
      }
    } catch (error) {
      log(`service worker ${this.workerUrl}: not registered`, error);
    }
  }

  private registerWorker(): Promise<ServiceWorkerRegistration> {
    return navigator.serviceWorker.register(this.workerUrl, { scope: "/" });
  }

  private async register(failures: number): Promise<void> {
    const facts = {
      ...browserFacts(navigator.userAgent, navigator.language, Intl.DateTimeFormat().resolvedOptions().timeZone),
      ...(await this.store.get<Record<string, string>>(LOCALE_KEY)),
    };
    const status = await this.call("PUT", "", facts);
    if (status >= 200 && status < 300) return;
    if (status !== 0 && status < 500 && status !== 408 && status !== 429) {
      log(`registration refused (HTTP ${status}): check apiKey, and that this origin is allowed`);
    }
    const ms = Math.min(30_000, 1000 * 2 ** failures);
    await new Promise((r) => setTimeout(r, ms));
    return this.register(failures + 1);
  }

  /** The HTTP status of a call to the installation's routes (0: no answer). */
  private async call(method: string, path: string, body?: unknown, keepalive = false): Promise<number> {
    return (await this.request(method, path, body, keepalive)).status;
  }

  /** A call's status, and its JSON answer when it failed or `read` asks for it: a success is
   * not waited for further (the event queue counts on knowing at once what was taken). */
  private async request(method: string, path: string, body?: unknown, keepalive = false, read = false): Promise<Answer> {
    try {
      const init: RequestInit = { method, keepalive };
      if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers = { "Content-Type": "application/json" };
      }
      const response = await fetch(this.base + path, init);
      let answer: unknown = null;
      if (read || !response.ok) {
        const text = await response.text();
        if (!response.ok) log(`${method} ${path || "installation"}: HTTP ${response.status}`, text);
        try {
          answer = text ? JSON.parse(text) : null;
        } catch {
          // Not JSON (a proxy's error page): the status says enough.
        }
      }
      return { status: response.status, body: answer };
    } catch (error) {
      log(
        `${method} ${path || "installation"}: no answer: the server is down, the browser is offline, ` +
          `or ${location.origin} is not in the app's allowed origins`,
        error,
      );
      return { status: 0, body: null };
    }
  }

  /** Session bookkeeping: sessionStorage holds this tab's session and its last activity. */
  private touch(): void {
    try {
      sessionStorage.setItem(SESSION_KEY, String(Date.now()));
    } catch {
      // No sessionStorage: every page is a new session.
    }
  }

  private async visible(): Promise<void> {
    let last = NaN;
    try {
      last = Number(sessionStorage.getItem(SESSION_KEY) ?? NaN);
    } catch {
      // As above.
    }
    const now = Date.now();
    this.touch();
    const newSession = Number.isNaN(last) || now - last > SESSION_GAP_MS;
    if (newSession) void this.call("POST", "/app-opens", {});
    await this.fetchMessages(newSession ? { kind: "session" } : null);
  }

  /** The page is going away: what is queued leaves now, with keepalive (the request outlives
   * the page). While the server is known to be unreachable (the last call failed) the events
   * stay in IndexedDB instead, for the next page to send. */
  private pageHidden(): void {
    this.touch();
    if (!this.isRegistered || this.queue.failures > 0) return;
    for (const events of this.queue.drain()) void this.call("POST", "/events", { events }, true);
  }

  // In-app -----------------------------------------------------------------------------------

  private async fetchMessages(occasion: Occasion | null): Promise<void> {
    clearTimeout(this.refreshTimer);
    const cached = await this.store.get<{ etag: string; answer: WireAnswer }>("inapp");
    let fresh = false;
    try {
      const headers: Record<string, string> = {};
      if (cached) headers["If-None-Match"] = cached.etag;
      const response = await fetch(`${this.base}/inapp-messages`, { headers });
      if (response.status === 200) {
        const answer = (await response.json()) as WireAnswer;
        fresh = JSON.stringify(answer) !== JSON.stringify(cached?.answer);
        this.answer = answer;
        await this.store.set("inapp", { etag: response.headers.get("ETag") ?? "", answer });
      } else {
        if (response.status !== 304) log(`in-app messages: HTTP ${response.status}`);
        this.answer = cached?.answer ?? this.answer;
      }
    } catch (error) {
      log("in-app messages: no answer", error);
      this.answer = cached?.answer ?? this.answer;
    }
    const seconds = Math.max(30, this.answer?.refresh_seconds ?? 300);
    this.refreshTimer = setTimeout(() => void this.fetchMessages(null), seconds * 1000);
    if (occasion) this.consider(occasion);
    else if (fresh) this.consider({ kind: "answer" });
  }

  private consider(occasion: Occasion): void {
    if (this.showing || !this.answer) return;
    const message = pick(this.answer.messages, this.displays, occasion, Date.now());
    log(`in-app (${occasion.kind}): ${message ? `showing ${message.campaign_token}` : "nothing to show"}`);
    if (message) this.show(message, this.answer);
  }

  private show(message: WireMessage, answer: WireAnswer): void {
    const report = (kind: string, extra: Record<string, unknown> = {}) => {
      const event: Record<string, unknown> = { kind, campaign_id: message.campaign_token, ...extra };
      if (message.version !== null) event["version"] = message.version;
      void this.call("POST", "/inapp-events", { events: [event] }, true);
    };
    this.displays = recordShown(this.displays, message, Date.now());
    void this.store.set("inapp_displays", this.displays);
    this.showing = render(
      { ...message, theme: answer.themes[message.theme] ?? {} },
      {
        onAction: (position, action) => {
          this.showing = null;
          report("inapp_clicked", { cta_position: position, cta_label: action.label.slice(0, 255) });
          let follow = true;
          for (const handler of this.actionHandlers) {
            try {
              const given: InAppAction = {
                campaignToken: message.campaign_token,
                position,
                label: action.label,
                action: action.action,
                args: action.args ?? null,
                customPayload: message.custom_payload,
              };
              if (handler(given) === false) follow = false;
            } catch (error) {
              log("an onInAppAction handler threw", error);
            }
          }
          return follow;
        },
        onClose: () => {
          this.showing = null;
          report("inapp_closed");
        },
      },
    );
    report("inapp_shown");
  }

  // Public API -------------------------------------------------------------------------------

  getInstallationID(): Promise<string> {
    return this.id.promise;
  }

  trackEvent(name: string, data: EventData = {}): Promise<void> {
    if (typeof name !== "string" || !EVENT_NAME.test(name)) {
      log(`trackEvent: '${String(name)}' is not 1-30 letters, digits or _, not starting with _`);
      return Promise.reject(new Error("clarion: invalid event name"));
    }
    const event: QueuedEvent = { name, occurred_at: new Date().toISOString() };
    if (typeof data.label === "string") event.label = data.label;
    if (data.attributes && typeof data.attributes === "object") event.attributes = data.attributes;
    if (Array.isArray(data.tags)) event.tags = data.tags;
    this.queue.push(event);
    this.touch();
    this.consider({ kind: "event", name, label: event.label });
    return Promise.resolve();
  }

  profile(): Promise<Profile> {
    const profile: Profile = {
      identify: async ({ customId }: { customId?: string | null }) => {
        await this.registered.promise;
        const id = customId === null || customId === undefined ? null : String(customId);
        const status =
          id === null ? await this.call("DELETE", "/custom_id") : await this.call("PUT", "/custom_id", { custom_id: id });
        if (status < 200 || status >= 300) throw new Error(`clarion: identify failed (HTTP ${status})`);
        // Another user (or none): what the edits of the previous one set is not theirs.
        const local = await this.store.get<LocalProfile>(PROFILE_KEY);
        if (local && local.custom_id !== id) await this.store.set(PROFILE_KEY, null);
      },
      edit: async (edit) => {
        await this.editProfile(edit);
        return profile;
      },
    };
    return Promise.resolve(profile);
  }

  /** Runs the page's editor callback, then sends its edits in one call (POST …/profile/edits):
   * resolved once the server took them all, rejected with the reason otherwise (a bad value,
   * no custom user id yet: decision 0024). */
  private async editProfile(edit: (editor: ProfileEditor) => void): Promise<void> {
    const editor = new ProfileEditor();
    try {
      edit(editor);
    } catch (error) {
      log("profile().edit: nothing sent:", error instanceof Error ? error.message : error);
      throw error;
    }
    const body = editor.body();
    if (!body) return log("profile().edit: nothing to send");
    // setLanguage(null): back to the browser's own language, which registration sends again.
    const detected = body.language === null;
    if (detected) body.language = browserFacts("", navigator.language, undefined).language ?? null;
    await this.registered.promise;
    const answer = await this.request("POST", "/profile/edits", body, false, true);
    if (answer.status !== 200) throw failure(`profile().edit refused: ${refusal(answer)}`);
    const customId = (answer.body as { custom_id?: unknown } | null)?.custom_id;
    if (typeof customId === "string" && (body.attributes || body.tags)) {
      const local = await this.store.get<LocalProfile>(PROFILE_KEY);
      await this.store.set(PROFILE_KEY, applyEdits(local, customId, body));
    }
    if ("language" in body || "region" in body) {
      const locale = { ...(await this.store.get<Record<string, string>>(LOCALE_KEY)) };
      for (const field of ["language", "region"] as const) {
        const value = body[field];
        if (value === undefined) continue;
        if (value === null || (field === "language" && detected)) delete locale[field];
        else locale[field] = value;
      }
      await this.store.set(LOCALE_KEY, locale);
    }
  }

  /** What this browser's edits set on the current user's profile: the SDK API never answers a
   * profile (its key is public: decision 0024). */
  async getUserAttributes(): Promise<Record<string, UserAttribute>> {
    await this.id.promise;
    return userAttributes(await this.store.get<LocalProfile>(PROFILE_KEY));
  }

  async getUserTagCollections(): Promise<Record<string, string[]>> {
    await this.id.promise;
    return { ...(await this.store.get<LocalProfile>(PROFILE_KEY))?.tags };
  }

  onInAppAction(handler: InAppActionHandler): void {
    if (typeof handler === "function") this.actionHandlers.push(handler);
  }

  // Push -------------------------------------------------------------------------------------

  /** Asks for permission (only when called: never on page load), subscribes with the app's VAPID
   * key, sends the subscription with push_optin: true. Rejects when push is unsupported, the
   * permission is refused, or the server does not take the subscription. */
  async subscribe(): Promise<boolean> {
    if (!pushSupported()) throw failure("this browser has no Web Push (service workers, PushManager, Notification)");
    await this.registered.promise;
    const permission = await Notification.requestPermission();
    if (permission !== "granted") throw failure(`notification permission ${permission === "denied" ? "denied" : "not granted"}`);
    const registration = await this.registerWorker();
    await navigator.serviceWorker.ready;
    const answer = await fetch(vapidKeyUrl(this.keys as WorkerKeys));
    if (!answer.ok) throw failure(`no VAPID key (HTTP ${answer.status}): configure Web Push for the app`);
    const { application_server_key: key } = (await answer.json()) as { application_server_key: string };
    const subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    const status = await sendSubscription(this.base, subscription, this.store);
    if (status < 200 || status >= 300) throw failure(`the subscription was not registered (HTTP ${status})`);
    void this.ui.refresh();
    return true;
  }

  /** Unsubscribes the browser and reports push_optin: false. */
  async unsubscribe(): Promise<boolean> {
    await this.registered.promise;
    const subscription = await this.currentSubscription();
    if (subscription) await subscription.unsubscribe();
    await this.store.set("webpush_sent", null);
    const status = await this.call("PUT", "", { push_optin: false });
    if (status < 200 || status >= 300) throw failure(`opt-out not reported (HTTP ${status})`);
    void this.ui.refresh();
    return true;
  }

  async getSubscriptionState(): Promise<SubscriptionState> {
    if (!pushSupported()) return "unsupported";
    if (Notification.permission === "denied") return "denied";
    if (Notification.permission !== "granted") return "unsubscribed";
    return (await this.currentSubscription()) ? "subscribed" : "unsubscribed";
  }

  async isSubscribed(): Promise<boolean> {
    return (await this.getSubscriptionState()) === "subscribed";
  }

  /** Forgets this browser's installation: the next setup (next page) starts a new one. */
  async clearInstallationData(): Promise<void> {
    await this.id.promise;
    this.queue.drain();
    for (const key of ["installation_id", "events", "inapp", "inapp_displays", "webpush_sent", LOCALE_KEY, PROFILE_KEY]) {
      await this.store.set(key, null);
    }
  }

  private async currentSubscription(): Promise<PushSubscription | null> {
    if (!pushSupported()) return null;
    const registration = await navigator.serviceWorker.getRegistration("/");
    return registration ? registration.pushManager.getSubscription() : null;
  }
}

function pushSupported(): boolean {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

/** Why the server refused a call: its Batch-format message, else the status. */
function refusal(answer: Answer): string {
  const message = (answer.body as { message?: unknown } | null)?.message;
  if (typeof message === "string") return message;
  return answer.status ? `HTTP ${answer.status}` : "no answer from the server";
}

function failure(message: string): Error {
  log(message);
  return new Error(`clarion: ${message}`);
}

const sdk = new Sdk();

function run(args: ArrayLike<unknown>): void {
  const [first, second] = Array.from(args);
  if (typeof first === "function") {
    try {
      (first as (api: Api) => void)(sdk);
    } catch (error) {
      log("a clarion(api => ...) callback threw", error);
    }
  } else if (first === "setup") {
    sdk.setup((second ?? {}) as Config).catch((error: unknown) => log("setup failed", error));
  } else if (first === "onInAppAction") {
    sdk.onInAppAction(second as InAppActionHandler);
  } else {
    log(`unknown command '${String(first)}'`);
  }
}

/** Replays what the page's stubs queued (clarion first, then batchSDK) and takes their place. */
export function install(scope: Record<string, unknown>): void {
  const queued: Command[] = [];
  for (const name of ["clarion", "batchSDK"]) {
    const stub = scope[name] as Stub | undefined;
    if (typeof stub === "function" && stub.q) for (const args of Array.from(stub.q)) queued.push(Array.from(args));
  }
  const global = (...args: unknown[]) => run(args);
  scope["clarion"] = global;
  scope["batchSDK"] = global;
  for (const args of queued) run(args);
}
