// Batch-compatible subscription prompts: setup's `ui` (native, alert, banner, switcher, button)
// and `api.ui` (show, hide, get, has, waitUntilDrawn). docs/web-sdk.md "Subscription prompts"
// is the page author's view; uirules.ts decides when each may show.
//
// Each component lives in its own <clarion-ui> element's shadow root (the site's CSS cannot
// reach it), is drawn only when it shows (nothing at all without `ui`), takes tenant text with
// textContent only, and colours, fonts and sizes only after CSS.supports() accepted them, as
// custom properties. Nothing here asks for the permission on page load: the alert, banner and
// bell ask on their own button, and `native` at the visitor's first click.

import { adoptStyles, button } from "../inapp/render";
import type { SubscriptionState } from "./sdk";
import type { Store } from "./storage";
import { UI_NAMES, refusal, timing, type Facts, type UiMemory, type UiName } from "./uirules";

/** What the prompts need of the SDK. */
export interface UiHost {
  subscribe(): Promise<boolean>;
  unsubscribe(): Promise<boolean>;
  getSubscriptionState(): Promise<SubscriptionState>;
}

/** A configured component, as `api.ui.get(name)` gives it (Batch's methods). */
export interface UiComponent {
  show(force?: boolean): Promise<void>;
  hide(): void;
  /** Forgets the visitor's "no" (or native's last question). */
  reset(): Promise<void>;
}

/** `api.ui`. */
export interface UiApi {
  show(name: string, force?: boolean): Promise<void>;
  hide(name: string): Promise<void>;
  get(name: string): UiComponent | null;
  has(name: string): boolean;
  waitUntilDrawn(name: string): Promise<UiComponent>;
}

type Conf = Record<string, unknown>;
type Log = (...args: unknown[]) => void;

interface Part {
  /** The SDK's own show at setup (autoShow, page views, delay). */
  auto(): void;
  show(force: boolean): Promise<void>;
  hide(): void;
  /** The subscription state changed. */
  update(): void;
}

const UI_CSS = `
:host{all:initial!important;display:block!important;visibility:visible!important;opacity:1!important;transform:none!important;z-index:var(--clarion-z,2147483646)!important}
:host([data-ui=alert]),:host([data-ui=button]),:host([data-fixed]){position:fixed!important;inset:0!important;pointer-events:none!important}
:host([data-ui=banner]:not([data-fixed])){position:relative!important}
:host([data-ui=switcher]){display:inline-block!important;vertical-align:middle!important}
*{box-sizing:border-box}
.box{font-family:var(--font,system-ui,sans-serif);font-size:var(--size,15px);line-height:1.4;color:var(--fg,#000);text-align:start}
.card,.bar,.bell,.panel{pointer-events:auto}
.card{position:absolute;display:flex;flex-wrap:wrap;align-items:center;gap:12px;width:min(440px,calc(100% - 24px));margin:12px;padding:16px;background:var(--bg);border-radius:10px;box-shadow:0 6px 28px #0003}
.top{top:0}.bottom{bottom:0}.left{left:0}.right{right:0}.center{left:0;right:0;margin:12px auto}
.icon{width:48px;height:48px;flex:none;border-radius:8px;object-fit:cover}
.text{flex:1 1 200px;margin:0;overflow-wrap:anywhere}
.btns{display:flex;flex-wrap:wrap;justify-content:flex-end;gap:8px;flex:1 1 100%}
.bar .btns{flex:none}
button{font:inherit;margin:0;border:0;cursor:pointer;-webkit-appearance:none;appearance:none;text-transform:none;letter-spacing:normal}
.yes,.no{padding:9px 16px;border-radius:6px;font-weight:600;line-height:1.25}
.yes{min-width:var(--btn-w,0);background:var(--yes-bg);color:var(--yes-fg);font-size:var(--yes-size,inherit)}
.yes:hover{background:var(--yes-hover)}
.no{background:var(--no-bg,transparent);color:var(--no-fg,inherit);font-size:var(--no-size,inherit)}
.no:hover{background:var(--no-hover,#0000000f)}
.shadow{box-shadow:0 2px 4px #0003}
.bar{display:flex;flex-wrap:wrap;align-items:center;gap:12px;padding:10px 16px;background:var(--bg);box-shadow:0 1px 4px #0002}
:host([data-fixed]) .bar{position:absolute;left:0;right:0}
.bar .text{flex-basis:160px}
.close{padding:4px 10px;border-radius:6px;background:none;color:inherit;font-size:24px;line-height:1}
.bell{position:absolute;width:52px;height:52px;margin:16px;padding:13px;border-radius:50%;background:var(--bg);color:var(--fg);box-shadow:0 4px 14px #0004}
.bell:hover,.bell[aria-expanded=true]{background:var(--yes-hover);color:var(--hover-fg)}
.bell svg{display:block;width:26px;height:26px;fill:currentColor}
.tip{position:absolute;display:none;margin:29px 80px;padding:4px 10px;border-radius:6px;background:#1f2933;color:#fff;font-size:13px;white-space:nowrap}
.bell:hover+.tip,.bell:focus-visible+.tip{display:block}
.panel{position:absolute;width:min(300px,calc(100% - 32px));margin:80px 16px;padding:16px;border-radius:10px;background:#fff;color:#1f2933;box-shadow:0 6px 28px #0003}
.panel[hidden],.panel [hidden]{display:none}
.panel p{margin:0 0 12px}
.head{font-weight:700}
.sw{position:relative;display:block;width:44px;height:24px;padding:0;border-radius:12px;background:#7b8794}
.sw::after{content:"";position:absolute;top:2px;left:2px;width:20px;height:20px;border-radius:50%;background:#fff;transition:left .15s}
.sw[aria-checked=true]{background:#0277a8}
.sw[aria-checked=true]::after{left:22px}
.sw[aria-disabled=true]{opacity:.5;cursor:not-allowed}
[aria-busy=true]{opacity:.6;cursor:progress}
.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}
button:focus-visible{outline:3px solid var(--yes-bg,#0277a8);outline-offset:2px}
@media (forced-colors:active){.card,.bar,.panel,.sw{border:1px solid CanvasText}}
@media (prefers-reduced-motion:reduce){*{transition:none!important}}
`;
// A bell: a rounded body, a clapper and a hanger (24 x 24).
const BELL = "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-5v-6a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v6l-2 1.5V19h18v-.5z";

function obj(value: unknown): Conf {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Conf) : {};
}

function words(conf: Conf, key: string, fallback: string): string {
  const value = conf[key];
  return typeof value === "string" && value.trim() !== "" ? value.slice(0, 500) : fallback;
}

/** `value` if the browser takes it for `property` (a colour, a font family), else `fallback`. */
function valid(property: string, value: unknown, fallback: string | null): string | null {
  return typeof value === "string" && value.length <= 200 && CSS.supports(property, value) ? value : fallback;
}

/** A size in px as Batch takes it (15 or "15"), within 8-40 px (btnWidth: 400). */
function px(value: unknown, fallback: string | null, max = 40): string | null {
  const n = typeof value === "number" || typeof value === "string" ? Number.parseFloat(String(value)) : NaN;
  return Number.isFinite(n) ? `${Math.min(max, Math.max(8, n))}px` : fallback;
}

/** An icon from https: or the page's own origin (relative paths included), else none. */
function iconUrl(value: unknown): string | null {
  if (typeof value !== "string" || value.length > 2048) return null;
  try {
    const url = new URL(value, document.baseURI);
    return url.protocol === "https:" || url.origin === location.origin ? url.href : null;
  } catch {
    return null;
  }
}

function el(tag: string, className: string, text = ""): HTMLElement {
  const element = document.createElement(tag);
  element.className = className;
  element.textContent = text;
  return element;
}

/** A <clarion-ui> host in `where` (first or last) with its shadow root's container. */
function mount(name: UiName, conf: Conf, where: Element, first: boolean): { host: HTMLElement; box: HTMLElement } {
  const host = document.createElement("clarion-ui");
  host.setAttribute("data-ui", name);
  if (Number.isInteger(conf["zIndex"])) host.style.setProperty("--clarion-z", String(conf["zIndex"]));
  const root = host.attachShadow({ mode: "open" });
  adoptStyles(root, UI_CSS);
  const box = el("div", "box");
  root.append(box);
  if (first) where.prepend(host);
  else where.append(host);
  return { host, box };
}

function paint(box: HTMLElement, values: Record<string, string | null>): void {
  for (const [name, value] of Object.entries(values)) if (value !== null) box.style.setProperty(name, value);
}

function busy(element: HTMLElement, on: boolean): void {
  if (on) element.setAttribute("aria-busy", "true");
  else element.removeAttribute("aria-busy");
}

export class Ui implements UiApi {
  private parts = new Map<UiName, Part>();
  private configs = new Map<UiName, Conf>();
  private store: Store | null = null;
  private memory: UiMemory = { views: 0, no: {} };
  private state: SubscriptionState = "unsupported";
  private granted = false;
  private done!: () => void;
  private ready = new Promise<void>((resolve) => (this.done = resolve));
  log: Log = () => {};

  constructor(private readonly sdk: UiHost) {}

  /** At setup, once the store is open: counts the page view, reads the state, draws what
   * shows by itself. Without `ui` it only marks api.ui ready. */
  async setup(config: unknown, store: Store, log: Log): Promise<void> {
    this.log = log;
    try {
      if (config === undefined || config === null) return;
      if (typeof config !== "object" || Array.isArray(config)) return log("setup: `ui` must be an object");
      this.store = store;
      const saved = obj(await store.get("ui"));
      const views = typeof saved["views"] === "number" ? saved["views"] : 0;
      this.memory = { views: views + 1, no: obj(saved["no"]) as UiMemory["no"] };
      await this.save();
      for (const [name, raw] of Object.entries(config as Conf)) {
        // Batch's language for its built-in translations: Clarion's texts are the keys given.
        if (name === "language") continue;
        if (!(UI_NAMES as readonly string[]).includes(name)) {
          log(`ui: unknown component '${name}' ignored (known: ${UI_NAMES.join(", ")})`);
          continue;
        }
        const key = name as UiName;
        const conf = obj(raw);
        this.configs.set(key, conf);
        this.parts.set(key, MAKERS[key](this, key, conf));
      }
      if (this.parts.size === 0) return;
      await this.refresh();
      for (const part of this.parts.values()) part.auto();
      // Notifications allowed or blocked in the browser's settings: the controls follow.
      void navigator.permissions?.query({ name: "notifications" }).then(
        (status) => (status.onchange = () => void this.refresh()),
        () => undefined,
      );
    } catch (error) {
      log("ui: setup failed", error);
    } finally {
      this.done();
    }
  }

  facts(): Facts {
    return { state: this.state, granted: this.granted, memory: this.memory, now: Date.now() };
  }

  /** Why `name` does not show (logged), or null. */
  refused(name: UiName, auto: boolean, force = false): string | null {
    const why = refusal(name, this.configs.get(name) ?? {}, this.facts(), auto, force);
    if (why !== null) this.log(`ui ${name}: not shown (${why})`);
    return why;
  }

  /** Runs `later` after the component's `delay`. */
  later(name: UiName, then: () => void): void {
    const seconds = timing(name, this.configs.get(name) ?? {}).delay;
    if (seconds > 0) setTimeout(then, seconds * 1000);
    else then();
  }

  async remember(name: UiName, at: number | undefined): Promise<void> {
    this.memory.no = { ...this.memory.no, [name]: at };
    if (at === undefined) delete this.memory.no[name];
    await this.save();
  }

  private async save(): Promise<void> {
    await this.store?.set("ui", this.memory);
  }

  /** Re-reads the subscription state and redraws what depends on it. */
  async refresh(): Promise<void> {
    if (this.parts.size === 0) return;
    try {
      this.state = await this.sdk.getSubscriptionState();
    } catch (error) {
      return this.log("ui: the subscription state is unknown", error);
    }
    this.granted = this.state !== "unsupported" && Notification.permission === "granted";
    for (const part of this.parts.values()) part.update();
  }

  /** Subscribes, or unsubscribes when subscribed: what the prompts' buttons do. */
  async toggle(): Promise<boolean> {
    const subscribed = this.state === "subscribed";
    try {
      await (subscribed ? this.sdk.unsubscribe() : this.sdk.subscribe());
      return true;
    } catch (error) {
      this.log(`ui: ${subscribed ? "unsubscribe" : "subscribe"} failed`, error);
      return false;
    } finally {
      await this.refresh();
    }
  }

  // api.ui ----------------------------------------------------------------------------------

  async show(name: string, force = false): Promise<void> {
    await this.ready;
    const part = this.parts.get(name as UiName);
    if (part) await part.show(force === true);
    else this.log(`ui.show: '${name}' is not configured in setup's ui`);
  }

  async hide(name: string): Promise<void> {
    await this.ready;
    this.parts.get(name as UiName)?.hide();
  }

  get(name: string): UiComponent | null {
    const key = name as UiName;
    if (!this.parts.has(key)) return null;
    return {
      show: (force = false) => this.show(key, force),
      hide: () => void this.hide(key),
      reset: () => this.remember(key, undefined),
    };
  }

  has(name: string): boolean {
    return this.parts.has(name as UiName);
  }

  async waitUntilDrawn(name: string): Promise<UiComponent> {
    await this.ready;
    const component = this.get(name);
    if (component === null) throw new Error(`clarion: no ui component '${name}' in setup's ui`);
    return component;
  }
}

// The components -----------------------------------------------------------------------------

/** `native`: the browser's own question, at the first click once the page views and delay
 * have passed (browsers refuse or quieten a request without a user gesture). */
function native(ui: Ui, name: UiName): Part {
  let armed: (() => void) | null = null;
  const disarm = () => {
    if (armed) removeEventListener("click", armed, true);
    armed = null;
  };
  const ask = async () => {
    await ui.remember(name, Date.now());
    await ui.toggle();
  };
  return {
    auto() {
      if (ui.refused(name, true)) return;
      ui.later(name, () => {
        ui.log("ui native: the permission will be asked at the next click");
        armed = () => {
          disarm();
          if (!ui.refused(name, false)) void ask();
        };
        addEventListener("click", armed, true);
      });
    },
    async show(force) {
      if (!ui.refused(name, false, force)) await ask();
    },
    hide: disarm,
    update() {},
  };
}

/** `alert` (a card) and `banner` (a bar): a text, a subscribe button and a "no". */
function prompt(ui: Ui, name: UiName, conf: Conf): Part {
  const banner = name === "banner";
  let host: HTMLElement | null = null;
  let yes: HTMLButtonElement | null = null;
  let shownSubscribed = false;
  const remove = () => {
    host?.remove();
    host = yes = null;
  };
  const refuse = () => {
    remove();
    // Logged once the "no" is stored, so that what reads the log (a test reloading the page,
    // a developer) knows the next page will hold the prompt back.
    void ui.remember(name, Date.now()).finally(() => ui.log(`ui ${name}: refused`));
  };
  const draw = () => {
    const attach = String(conf["attach"] ?? "top center");
    const fixed = banner && (conf["fixed"] === true || conf["attachBottom"] === true);
    const mounted = mount(name, conf, document.body, true);
    const box = mounted.box;
    host = mounted.host;
    if (fixed) host.setAttribute("data-fixed", "");
    const place = banner
      ? `bar ${conf["attachBottom"] === true ? "bottom" : "top"}`
      : `card ${attach.includes("bottom") ? "bottom" : "top"} ${attach.includes("left") ? "left" : attach.includes("right") ? "right" : "center"}`;
    box.className += ` ${place}`;
    const yesStyle: Conf = banner
      ? { backgroundColor: conf["btnBackgroundColor"], textColor: conf["btnTextColor"], hoverBackgroundColor: conf["btnHoverColor"] }
      : { shadow: true, ...obj(conf["positiveBtnStyle"]) };
    const noStyle = obj(conf["negativeBtnStyle"]);
    paint(box, {
      "--bg": valid("color", conf["backgroundColor"], "#fff"),
      "--fg": valid("color", conf["textColor"], "#000"),
      "--font": valid("font-family", conf["fontFamily"], null),
      "--size": px(conf["fontSize"], banner ? "14px" : "15px"),
      "--yes-bg": valid("color", yesStyle["backgroundColor"], banner ? "#3e475c" : "#0277a8"),
      "--yes-fg": valid("color", yesStyle["textColor"], "#fff"),
      "--yes-hover": valid("color", yesStyle["hoverBackgroundColor"], banner ? "#303645" : "#015f87"),
      "--yes-size": px(yesStyle["fontSize"] ?? conf["btnFontSize"], "14px"),
      "--no-bg": valid("color", noStyle["backgroundColor"], null),
      "--no-fg": valid("color", noStyle["textColor"], null),
      "--no-hover": valid("color", noStyle["hoverBackgroundColor"], null),
      "--no-size": px(noStyle["fontSize"] ?? conf["btnFontSize"], null),
      "--btn-w": px(conf["btnWidth"], null, 400),
    });
    // Not modal (the page stays usable, as Batch's): it does not take the focus, but comes
    // first in the Tab order, is a labelled dialog, and Escape inside it is a "no".
    box.setAttribute("role", "dialog");
    box.setAttribute("aria-labelledby", "t");
    const icon = iconUrl(conf["icon"]);
    if (icon !== null) {
      const image = el("img", "icon") as HTMLImageElement;
      image.alt = "";
      image.onerror = () => image.remove();
      image.src = icon;
      box.append(image);
    }
    const text = el("p", "text", words(conf, "text", "Never miss an update!"));
    text.id = "t";
    yes = button(yesStyle["shadow"] === true ? "yes shadow" : "yes", "");
    yes.onclick = async () => {
      const target = yes;
      if (target === null || target.hasAttribute("aria-busy")) return;
      busy(target, true);
      const done = await ui.toggle();
      busy(target, false);
      if (done) remove();
    };
    const no = banner
      ? button("close", "\u00d7")
      : button(noStyle["shadow"] === true ? "no shadow" : "no", words(conf, "negativeBtnLabel", "No, thanks"));
    if (banner) no.setAttribute("aria-label", words(conf, "closeLabel", "Close"));
    no.onclick = refuse;
    box.onkeydown = (event) => {
      if (event.key !== "Escape") return;
      event.stopPropagation();
      refuse();
    };
    const row = el("div", "btns");
    if (banner) row.append(yes, no);
    else row.append(no, yes);
    box.append(text, row);
  };
  const part: Part = {
    auto() {
      if (!ui.refused(name, true)) ui.later(name, () => void part.show(false));
    },
    async show(force) {
      if (host || ui.refused(name, false, force)) return;
      shownSubscribed = ui.facts().state === "subscribed";
      draw();
      part.update();
      ui.log(`ui ${name}: shown`);
    },
    hide: remove,
    update() {
      const state = ui.facts().state;
      if (state === "denied" || (state === "subscribed" && !shownSubscribed)) return remove();
      const sub = banner ? ["btnSub", "btnUnsub"] : ["positiveSubBtnLabel", "positiveUnsubBtnLabel"];
      if (yes) {
        yes.textContent =
          state === "subscribed" ? words(conf, sub[1]!, "Unsubscribe") : words(conf, sub[0]!, "Subscribe");
      }
    },
  };
  return part;
}

/** `switcher`: a switch in each element that `selector` matches, on when subscribed. */
function switcher(ui: Ui, name: UiName, conf: Conf): Part {
  let switches: { host: HTMLElement; control: HTMLButtonElement }[] = [];
  const flip = async (control: HTMLButtonElement) => {
    if (control.getAttribute("aria-disabled") === "true" || control.hasAttribute("aria-busy")) return;
    for (const s of switches) busy(s.control, true);
    await ui.toggle();
    for (const s of switches) busy(s.control, false);
  };
  const part: Part = {
    auto() {
      if (!ui.refused(name, true)) void part.show(false);
    },
    async show() {
      const selector = conf["selector"];
      let targets: Element[] = [];
      try {
        if (typeof selector === "string") targets = Array.from(document.querySelectorAll(selector));
      } catch {
        // Not a selector: said below.
      }
      if (targets.length === 0) return ui.log(`ui switcher: no element matches the selector ${String(selector)}`);
      for (const target of targets) {
        if (switches.some((s) => s.host.parentElement === target)) continue;
        const { host, box } = mount(name, conf, target, false);
        const control = button("sw", "");
        control.setAttribute("role", "switch");
        control.setAttribute("aria-label", words(conf, "label", "Push notifications"));
        control.onclick = () => void flip(control);
        const hint = el("span", "vh", words(conf, "deniedText", DENIED));
        hint.id = "d";
        box.append(control, hint);
        switches.push({ host, control });
      }
      part.update();
    },
    hide() {
      for (const s of switches) s.host.remove();
      switches = [];
    },
    update() {
      const state = ui.facts().state;
      for (const { control } of switches) {
        control.setAttribute("aria-checked", String(state === "subscribed"));
        if (state === "denied") {
          control.setAttribute("aria-disabled", "true");
          control.setAttribute("aria-describedby", "d");
        } else {
          control.removeAttribute("aria-disabled");
          control.removeAttribute("aria-describedby");
        }
      }
    },
  };
  return part;
}

const DENIED = "Notifications are blocked for this site: allow them in the browser's site settings.";

/** `button`: a bell in a corner that opens a small panel to subscribe or unsubscribe. */
function bell(ui: Ui, name: UiName, conf: Conf): Part {
  let host: HTMLElement | null = null;
  let update = () => {};
  const part: Part = {
    auto() {
      if (!ui.refused(name, true)) void part.show(false);
    },
    async show(force) {
      if (host || ui.refused(name, false, force)) return;
      const popin = obj(conf["popin"]);
      const corner = String(conf["corner"] ?? "bottom left");
      const place = `${corner.includes("top") ? "top" : "bottom"} ${corner.includes("right") ? "right" : "left"}`;
      const mounted = mount(name, conf, document.body, false);
      const box = mounted.box;
      host = mounted.host;
      paint(box, {
        "--bg": valid("color", conf["backgroundColor"], "#475066"),
        "--fg": valid("color", conf["foregroundColor"], "#fff"),
        "--yes-bg": valid("color", conf["backgroundColor"], "#475066"),
        "--yes-fg": valid("color", conf["foregroundColor"], "#fff"),
        "--yes-hover": valid("color", conf["hoverColor"], "#303645"),
        "--hover-fg": valid("color", conf["hoverForegroundColor"], "#fff"),
      });
      const hover = words(conf, "hover", "Subscribe to push notifications");
      const toggle = button(`bell ${place}`, "");
      toggle.setAttribute("aria-label", hover);
      toggle.setAttribute("aria-expanded", "false");
      toggle.setAttribute("aria-controls", "p");
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("viewBox", "0 0 24 24");
      svg.setAttribute("aria-hidden", "true");
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      path.setAttribute("d", BELL);
      svg.append(path);
      toggle.append(svg);
      const tip = el("span", `tip ${place}`, hover);
      tip.setAttribute("aria-hidden", "true");
      const panel = el("div", `panel ${place}`);
      panel.id = "p";
      panel.hidden = true;
      panel.setAttribute("role", "dialog");
      panel.setAttribute("aria-labelledby", "h");
      const head = el("p", "head", words(conf, "title", words(popin, "title", "Push notifications")));
      head.id = "h";
      const denied = el("p", "", words(conf, "deniedText", DENIED));
      const action = button("yes", "");
      panel.append(head, denied, action);
      box.append(toggle, tip, panel);
      const open = (on: boolean, focus: boolean) => {
        panel.hidden = !on;
        toggle.setAttribute("aria-expanded", String(on));
        if (focus) (on && !action.hidden ? action : toggle).focus();
      };
      toggle.onclick = () => open(toggle.getAttribute("aria-expanded") !== "true", true);
      panel.onkeydown = (event) => {
        if (event.key !== "Escape") return;
        event.stopPropagation();
        open(false, true);
      };
      // A click elsewhere on the page closes the panel.
      document.addEventListener("click", (event) => {
        if (!panel.hidden && host && !event.composedPath().includes(host)) open(false, false);
      });
      action.onclick = async () => {
        if (action.hasAttribute("aria-busy")) return;
        busy(action, true);
        const done = await ui.toggle();
        busy(action, false);
        if (done) open(false, true);
      };
      update = () => {
        const state = ui.facts().state;
        denied.hidden = state !== "denied";
        action.hidden = state === "denied";
        action.textContent =
          state === "subscribed" ? words(popin, "btnUnsub", "Unsubscribe") : words(popin, "btnSub", "Subscribe");
      };
      update();
      ui.log(`ui ${name}: shown`);
    },
    hide() {
      host?.remove();
      host = null;
    },
    update: () => update(),
  };
  return part;
}

const MAKERS: Record<UiName, (ui: Ui, name: UiName, conf: Conf) => Part> = {
  native,
  alert: prompt,
  banner: prompt,
  switcher,
  button: bell,
};
