// What the browser tells about itself, in the SDK API's fields (docs/sdk-api.md): the user
// agent's browser and OS names, short enough for `device_model` (128) and `os_version` (64).

export interface Facts {
  language?: string;
  timezone?: string;
  device_model?: string;
  os_version?: string;
}

export const LANGUAGE = /^[a-zA-Z]{2,3}([-_][A-Za-z0-9]{2,8})*$/;
// Order matters: Edge and Opera say "Chrome" too, Chrome says "Safari".
const BROWSERS: [string, RegExp][] = [
  ["Edge", /Edg(?:e|A|iOS)?\/(\d+)/],
  ["Opera", /OPR\/(\d+)/],
  ["Firefox", /(?:Firefox|FxiOS)\/(\d+)/],
  ["Chrome", /(?:Chrome|CriOS)\/(\d+)/],
  ["Safari", /Version\/(\d+)[\d.]* (?:Mobile\/\S+ )?Safari/],
];
const SYSTEMS: [string, RegExp][] = [
  ["Android", /Android ([\d.]+)?/],
  ["iOS", /(?:iPhone|iPad|iPod).*? OS ([\d_]+)?/],
  ["Windows", /Windows NT ([\d.]+)?/],
  ["macOS", /Mac OS X ([\d_.]+)?/],
  ["ChromeOS", /CrOS/],
  ["Linux", /Linux/],
];

export function browserFacts(userAgent: string, language: string | undefined, timezone: string | undefined): Facts {
  const facts: Facts = {};
  if (language !== undefined && LANGUAGE.test(language)) facts.language = language;
  if (timezone) facts.timezone = timezone;
  for (const [name, pattern] of BROWSERS) {
    const found = pattern.exec(userAgent);
    if (found) {
      facts.device_model = `${name} ${found[1] ?? ""}`.trim();
      break;
    }
  }
  for (const [name, pattern] of SYSTEMS) {
    const found = pattern.exec(userAgent);
    if (found) {
      facts.os_version = `${name} ${(found[1] ?? "").replace(/_/g, ".")}`.trim().slice(0, 64);
      break;
    }
  }
  return facts;
}

const ZONE_SCRIPT = "postMessage(Intl.DateTimeFormat().resolvedOptions().timeZone)";
const ZONE_WAIT_MS = 2000;
interface Temporal {
  Now?: { timeZoneId?: () => unknown };
}

/** The browser's IANA time zone, without a long task on the page's thread: a page's first Intl
 * call prepares ICU's locale data (date patterns), 13-17 ms of the main thread's CPU in
 * Chromium 156 (its trace, tests/test_websdk_e2e.py), where a task of the SDK may take 5 ms.
 * Temporal (Chromium 144, Firefox 139) tells the zone in ~0.1 ms; without it a worker runs
 * Intl (~1 ms of the page's thread, the answer some 20-100 ms later), and the page's thread
 * only where blob workers are refused (CSP, Trusted Types) or mute for 2 s. */
export function timeZone(): Promise<string | undefined> {
  try {
    const zone = (globalThis as { Temporal?: Temporal }).Temporal?.Now?.timeZoneId?.();
    if (typeof zone === "string" && zone !== "") return Promise.resolve(zone);
  } catch {
    // An engine's partial Temporal: as without it.
  }
  return new Promise((resolve) => {
    const here = () => {
      try {
        resolve(Intl.DateTimeFormat().resolvedOptions().timeZone);
      } catch {
        resolve(undefined);
      }
    };
    let url = "";
    let worker: Worker | undefined;
    const done = (zone: unknown) => {
      clearTimeout(timer);
      worker?.terminate();
      if (url) URL.revokeObjectURL(url);
      if (typeof zone === "string" && zone !== "") resolve(zone);
      else here();
    };
    const timer = setTimeout(() => done(undefined), ZONE_WAIT_MS);
    try {
      url = URL.createObjectURL(new Blob([ZONE_SCRIPT], { type: "text/javascript" }));
      worker = new Worker(url);
      worker.onmessage = (message) => done(message.data);
      worker.onerror = () => done(undefined);
    } catch {
      done(undefined);
    }
  });
}
