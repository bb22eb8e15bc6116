// What the server hands the SDK for one in-app message: the TypeScript twin of `SdkMessage`,
// `SdkTheme` and `SdkTrigger` in clarion/inapp/schemas.py (GET /sdk/v1/{key}/installations/
// {id}/inapp-messages). Change both together.

export type Layout = "modal" | "banner_top" | "banner_bottom" | "fullscreen" | "image";

export type CloseButton = "top_right" | "top_left" | "none";

export type ActionKind = "continue" | "dismiss" | "deeplink";

/** `ThemeColours`: #RGB, #RGBA, #RRGGBB or #RRGGBBAA. The server sends every key; the renderer
 * falls back to the server's defaults for a missing one, so the dashboard can preview a theme
 * that is being edited. */
export interface SdkThemeColours {
  background?: string;
  text?: string;
  header?: string;
  title?: string;
  button_background?: string;
  button_text?: string;
  close?: string;
  /** Behind a modal, full-screen or image message. */
  backdrop?: string;
}

/** `ThemeFont`. */
export interface SdkThemeFont {
  family?: string;
  /** The body's size in px (10 to 32); titles scale from it. */
  size?: number;
}

export interface SdkTheme {
  code: string;
  layout: Layout;
  colours: SdkThemeColours;
  font: SdkThemeFont;
  close_button: CloseButton;
  /** px, 0 to 48. */
  corner_radius: number;
  /** Banners close by themselves after this many seconds (0: they stay). */
  auto_close_seconds: number;
}

/** `LandingAction`: a button. A deeplink action carries its link in `args.l`. */
export interface SdkAction {
  label: string;
  action: ActionKind;
  args?: Record<string, unknown> | null;
}

export interface SdkTrigger {
  when: "next_session" | "now" | "event";
  event?: string | null;
  label?: string | null;
  /** For a `ue.` event: when the Trigger Events API last received it for this user (UTC). */
  last_server_event_at?: string | null;
}

export interface SdkMessage {
  campaign_token: string;
  version: string | null;
  trigger: SdkTrigger;
  capping: number | null;
  grace_period_seconds: number;
  /** UTC instants (ISO 8601) between which it may be shown. */
  start: string | null;
  end: string | null;
  theme: SdkTheme;
  /** An https: URL (the renderer draws nothing else). */
  image: string | null;
  image_description: string | null;
  header: string | null;
  title: string | null;
  body: string | null;
  actions: SdkAction[];
  deeplink: string | null;
  custom_payload: Record<string, unknown> | null;
}

/** What `render` needs; every SdkMessage is one. The SDK's delivery fields (trigger, capping,
 * dates) are the SDK's business, and a theme field left out takes the server's default, so the
 * dashboard's preview can hand a message that is being edited. */
export type RenderableMessage = { theme: Partial<SdkTheme> } & Partial<
  Pick<
    SdkMessage,
    "campaign_token" | "image" | "image_description" | "header" | "title" | "body" | "actions" | "deeplink"
  >
>;
