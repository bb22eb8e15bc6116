/**
 * Clarion's in-app message renderer: the one drawing of a message, used by the dashboard's live
 * preview (built into clarion/dashboard/static/inapp-render.js as `window.ClarionInApp.render`)
 * and imported as an ES module by the Web SDK.
 *
 *     render(message, options) -> {close(): void, element: HTMLElement}
 *
 * - `message`: an `SdkMessage` as the server hands it out (types.ts mirrors
 *   clarion/inapp/schemas.py); the preview may leave out the delivery fields (trigger, dates).
 * - `options.container`: where the message's host element goes (default: document.body).
 * - `options.preview`: draw inside `container` (made `position: relative` if it is static)
 *   instead of fixed over the page; the preview never moves the focus, never listens to the
 *   page's keys, never closes by itself and never navigates.
 * - `options.onAction(position, action)`: a button was clicked (`position` 0 for the first).
 *   The message is closed just before the call (a callback that throws or moves the focus
 *   cannot leave it open or have the focus taken back); then, for a deeplink action, the page
 *   goes to `args.l` unless onAction returned `false` (the SDK's custom-action hook).
 *   `onClose` is not called.
 * - `options.onClose()`: closed without a button: the close button, Escape, a click on a
 *   modal's backdrop, or a banner's `auto_close_seconds` running out.
 * - The result: `element` is the host element (its open shadow root holds the message);
 *   `close()` removes it without calling either callback.
 *
 * Layouts: modal, fullscreen and image are dialogs (`aria-modal`, focus moved in, Tab kept
 * inside, focus given back when closed); banner_top and banner_bottom leave the page usable.
 * The image layout draws the image alone as one button: a click runs the first action, or
 * opens the message's `deeplink` when it has no action.
 *
 * Security: tenant text goes in with textContent only; the image is loaded only from https:;
 * links go only to http(s) or an app scheme (never javascript:, data:, vbscript:, blob:, file:);
 * colours, font and sizes are checked again here and set with style.setProperty, never written
 * into CSS text.
 */

import { CSS } from "./styles";
import type { RenderableMessage, SdkAction, SdkThemeColours } from "./types";

export type {
  ActionKind,
  CloseButton,
  Layout,
  RenderableMessage,
  SdkAction,
  SdkMessage,
  SdkTheme,
  SdkThemeColours,
  SdkThemeFont,
  SdkTrigger,
} from "./types";

export interface RenderOptions {
  container?: HTMLElement;
  /** Return `false` to keep a deeplink action from navigating (the caller handles it). */
  onAction?(position: number, action: SdkAction): boolean | void;
  onClose?(): void;
  preview?: boolean;
}

export interface Rendered {
  close(): void;
  element: HTMLElement;
}

// The server's defaults (ThemeColours / ThemeFont in schemas.py), for a field left out.
const COLOURS: Required<SdkThemeColours> = {
  background: "#FFFFFF",
  text: "#1F2933",
  header: "#52606D",
  title: "#1F2933",
  button_background: "#2563EB",
  button_text: "#FFFFFF",
  close: "#52606D",
  backdrop: "#00000080",
};
// The custom property each colour is set as (styles.ts reads them).
const COLOUR_VARS: Record<keyof SdkThemeColours, string> = {
  background: "--bg",
  text: "--text",
  header: "--header",
  title: "--title",
  button_background: "--btn-bg",
  button_text: "--btn-text",
  close: "--close",
  backdrop: "--backdrop",
};
// The same patterns as the server's (_COLOUR, _FONT_FAMILY).
const COLOUR = /^#(?:[0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8})$/i;
const FONT_FAMILY = /^[A-Za-z0-9 ,'-]{1,100}$/;
const DIALOGS = new Set(["modal", "fullscreen", "image"]);
const LAYOUTS = new Set(["modal", "banner_top", "banner_bottom", "fullscreen", "image"]);
const REFUSED_SCHEMES = new Set(["javascript:", "data:", "vbscript:", "blob:", "file:"]);

const sheets = new Map<string, CSSStyleSheet>();

/** Gives a shadow root the stylesheet `css` (the message's by default; the Web SDK's
 * subscription prompts, src/sdk/ui.ts, give theirs). A constructed sheet passes the dashboard's
 * Content-Security-Policy (`style-src 'self'` refuses a <style> element) and is parsed once
 * for every root; browsers without one (Safari before 16.4) get a <style>. */
export function adoptStyles(root: ShadowRoot, css: string = CSS): void {
  if ("adoptedStyleSheets" in root && typeof CSSStyleSheet.prototype.replaceSync === "function") {
    let sheet = sheets.get(css);
    if (!sheet) {
      sheet = new CSSStyleSheet();
      sheet.replaceSync(css);
      sheets.set(css, sheet);
    }
    root.adoptedStyleSheets = [sheet];
  } else {
    const style = document.createElement("style");
    style.textContent = css;
    root.append(style);
  }
}

/** The URL a link may open, or null: http(s) and app schemes, resolved against the page. The
 * URL parser drops tabs and newlines and lowercases the scheme, so "Java\tScript:" is caught. */
export function safeLink(link: unknown): string | null {
  if (typeof link !== "string" || link.length === 0 || link.length > 2048) return null;
  let url: URL;
  try {
    url = new URL(link, document.baseURI);
  } catch {
    return null;
  }
  return REFUSED_SCHEMES.has(url.protocol) ? null : url.href;
}

function httpsImage(image: unknown): string | null {
  if (typeof image !== "string") return null;
  try {
    const url = new URL(image);
    return url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function text(tag: string, className: string, value: string | null | undefined): HTMLElement | null {
  if (typeof value !== "string" || value.length === 0) return null;
  const element = document.createElement(tag);
  element.className = className;
  element.textContent = value;
  return element;
}

export function button(className: string, label: string): HTMLButtonElement {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.textContent = label;
  return element;
}

function clamp(value: unknown, low: number, high: number, fallback: number): number {
  return typeof value === "number" && Number.isFinite(value)
    ? Math.min(high, Math.max(low, Math.round(value)))
    : fallback;
}

function applyTheme(root: HTMLElement, message: RenderableMessage): void {
  const theme = message.theme ?? {};
  const colours = theme.colours ?? {};
  for (const key of Object.keys(COLOURS) as (keyof SdkThemeColours)[]) {
    const value = colours[key];
    root.style.setProperty(
      COLOUR_VARS[key],
      typeof value === "string" && COLOUR.test(value) ? value : COLOURS[key],
    );
  }
  const family = theme.font?.family;
  root.style.setProperty(
    "--font",
    typeof family === "string" && FONT_FAMILY.test(family) ? family : "system-ui, sans-serif",
  );
  root.style.setProperty("--size", `${clamp(theme.font?.size, 10, 32, 16)}px`);
  root.style.setProperty("--radius", `${clamp(theme.corner_radius, 0, 48, 12)}px`);
}

export function render(message: RenderableMessage, options: RenderOptions = {}): Rendered {
  const theme = message.theme ?? {};
  const layout = theme.layout !== undefined && LAYOUTS.has(theme.layout) ? theme.layout : "modal";
  const isDialog = DIALOGS.has(layout);
  const preview = options.preview === true;
  const container = options.container ?? document.body;
  const actions = Array.isArray(message.actions) ? message.actions : [];

  const host = document.createElement("clarion-inapp");
  if (preview) {
    host.setAttribute("data-preview", "");
    if (getComputedStyle(container).position === "static") {
      container.style.setProperty("position", "relative");
    }
  }
  const shadow = host.attachShadow({ mode: "open" });
  adoptStyles(shadow);

  const closeSide = theme.close_button === "top_left" ? "cl" : theme.close_button === "none" ? "" : "cr";
  const root = document.createElement("div");
  root.className = isDialog ? `root ${layout}` : `root banner ${layout}`;
  applyTheme(root, message);

  const dialog = document.createElement("div");
  dialog.className = closeSide ? `msg ${closeSide}` : "msg";
  dialog.setAttribute("role", "dialog");
  dialog.tabIndex = -1;
  if (isDialog) dialog.setAttribute("aria-modal", "true");

  let backdrop: HTMLElement | null = null;
  if (isDialog) {
    backdrop = document.createElement("div");
    backdrop.className = "backdrop";
    root.append(backdrop);
  }
  root.append(dialog);
  shadow.append(root);

  // State and teardown --------------------------------------------------------------------------
  let open = true;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const previousFocus =
    isDialog && !preview && document.activeElement instanceof HTMLElement ? document.activeElement : null;

  function close(): void {
    if (!open) return;
    open = false;
    if (timer !== undefined) clearTimeout(timer);
    document.removeEventListener("keydown", onDocumentKey, true);
    host.remove();
    if (previousFocus?.isConnected) previousFocus.focus();
  }

  function dismiss(): void {
    if (!open) return;
    close();
    options.onClose?.();
  }

  function act(position: number, action: SdkAction): void {
    if (!open) return;
    close();
    const given: SdkAction = { label: action.label, action: action.action, args: action.args ?? null };
    const answer = options.onAction?.(position, given);
    if (given.action === "deeplink" && answer !== false && !preview) {
      const href = safeLink(given.args?.["l"]);
      if (href !== null) window.location.assign(href);
    }
  }

  // Content -------------------------------------------------------------------------------------
  const imageUrl = httpsImage(message.image);
  const image = imageUrl === null ? null : document.createElement("img");
  if (image !== null && imageUrl !== null) {
    image.className = "img";
    image.alt = message.image_description ?? "";
    image.decoding = "async";
    image.referrerPolicy = "no-referrer";
    image.src = imageUrl;
  }

  if (layout === "image") {
    const first = actions[0];
    const tap: SdkAction | null =
      first ?? (message.deeplink ? { label: "image", action: "deeplink", args: { l: message.deeplink } } : null);
    const target = button("imgbtn", "");
    target.setAttribute("aria-label", message.image_description || message.title || tap?.label || "Open");
    if (image !== null) target.append(image);
    target.addEventListener("click", () => (tap === null ? dismiss() : act(0, tap)));
    dialog.setAttribute("aria-label", message.image_description || message.title || "Message");
    dialog.append(target);
  } else {
    if (image !== null) dialog.append(image);
    const content = document.createElement("div");
    content.className = "content";
    const title = text("h2", "title", message.title);
    const parts = [text("p", "header", message.header), title, text("p", "body", message.body)];
    for (const part of parts) if (part !== null) content.append(part);
    if (title !== null) {
      title.id = "clarion-inapp-title";
      dialog.setAttribute("aria-labelledby", title.id);
    } else {
      dialog.setAttribute("aria-label", message.header || message.image_description || "Message");
    }
    dialog.append(content);
    if (actions.length > 0) {
      const row = document.createElement("div");
      row.className = "actions";
      actions.forEach((action, position) => {
        const cta = button("cta", action.label);
        cta.addEventListener("click", () => act(position, action));
        row.append(cta);
      });
      dialog.append(row);
    }
  }

  if (closeSide) {
    const closer = button("close", "\u00d7");
    closer.setAttribute("aria-label", "Close");
    closer.addEventListener("click", dismiss);
    dialog.prepend(closer);
  }
  backdrop?.addEventListener("click", dismiss);

  // Keys: Escape closes; Tab stays inside a dialog ------------------------------------------
  function onDocumentKey(event: KeyboardEvent): void {
    if (event.key === "Escape") {
      event.stopPropagation();
      dismiss();
    }
  }
  dialog.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      dismiss();
    } else if (event.key === "Tab" && isDialog) {
      const stops = Array.from(dialog.querySelectorAll("button"));
      if (stops.length === 0) return event.preventDefault();
      const first = stops[0]!;
      const last = stops[stops.length - 1]!;
      const current = shadow.activeElement;
      if (event.shiftKey && (current === first || current === dialog)) {
        event.preventDefault();
        last.focus();
      } else if (!event.shiftKey && current === last) {
        event.preventDefault();
        first.focus();
      }
    }
  });

  container.append(host);

  if (!preview) {
    // A dialog owns the keyboard wherever the focus is; a banner hears Escape only from inside.
    if (isDialog) {
      document.addEventListener("keydown", onDocumentKey, true);
      dialog.focus({ preventScroll: true });
    }
    const seconds = clamp(theme.auto_close_seconds, 0, 120, 0);
    if (!isDialog && seconds > 0) timer = setTimeout(dismiss, seconds * 1000);
  }

  return { close, element: host };
}
