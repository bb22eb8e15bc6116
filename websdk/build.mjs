// Builds the committed browser bundles from src/ (`npm run build`, or `make web` at the
// repository root):
//   clarion/dashboard/static/inapp-render.js  the in-app renderer for the dashboard's preview
//   clarion/sdk/web/clarion.js                the Web SDK's page script (served at /sdk/web/v1/)
//   clarion/sdk/web/clarion-sw.js             its service worker (a site's /clarion-sw.js imports it)
// `--out FILE` builds only the renderer, into FILE, `--sdk-out FILE` only the SDK and
// `--sw-out FILE` only the service worker: the tests
// that the committed files are current build into a temporary folder and compare the bytes.
// `--tests DIR` compiles test/*.test.ts into DIR for `node --test` (`npm test`).
import { build } from "esbuild";
import { readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, "..");
const arg = (name) => {
  const at = process.argv.indexOf(name);
  return at === -1 ? null : path.resolve(process.argv[at + 1]);
};

const common = {
  bundle: true,
  minify: true,
  format: "iife",
  // Browsers with shadow DOM, custom properties, URL and IndexedDB (2020 on).
  target: ["es2020"],
  charset: "ascii",
  legalComments: "none",
  // Output depends on the sources only: no source map (its paths are the machine's), no dates.
  sourcemap: false,
  logLevel: "warning",
};

const renderer = {
  ...common,
  entryPoints: [path.join(here, "src", "inapp", "global.ts")],
  globalName: "ClarionInApp",
  banner: {
    js: "/* Generated from websdk/src/inapp/ by `make web` (cd websdk && npm ci && npm run build); do not edit. */",
  },
};
const sdk = {
  ...common,
  entryPoints: [path.join(here, "src", "sdk", "main.ts")],
  banner: {
    js: "/* Clarion Web SDK. Generated from websdk/src/ by `make web` (cd websdk && npm ci && npm run build); do not edit. */",
  },
};

const worker = {
  ...common,
  entryPoints: [path.join(here, "src", "sw", "worker.ts")],
  banner: {
    js: "/* Clarion Web SDK service worker. Generated from websdk/src/ by `make web` (cd websdk && npm ci && npm run build); do not edit. */",
  },
};

const tests = arg("--tests");
const out = arg("--out");
const sdkOut = arg("--sdk-out");
const swOut = arg("--sw-out");
if (tests) {
  const dir = path.join(here, "test");
  await build({
    entryPoints: readdirSync(dir)
      .filter((name) => name.endsWith(".test.ts"))
      .map((name) => path.join(dir, name)),
    outdir: tests,
    outExtension: { ".js": ".mjs" },
    bundle: true,
    format: "esm",
    platform: "node",
    target: ["node20"],
    external: ["node:*"],
    logLevel: "warning",
  });
} else if (out || sdkOut || swOut) {
  if (out) await build({ ...renderer, outfile: out });
  if (sdkOut) await build({ ...sdk, outfile: sdkOut });
  if (swOut) await build({ ...worker, outfile: swOut });
} else {
  await build({ ...renderer, outfile: path.join(root, "clarion", "dashboard", "static", "inapp-render.js") });
  await build({ ...sdk, outfile: path.join(root, "clarion", "sdk", "web", "clarion.js") });
  await build({ ...worker, outfile: path.join(root, "clarion", "sdk", "web", "clarion-sw.js") });
}
