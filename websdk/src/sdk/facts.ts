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
