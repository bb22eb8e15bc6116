// Builds clarion/dashboard/static/inapp-render.js from src/ (`npm run build`, or `make web` at
// the repository root). `node build.mjs --out FILE` writes elsewhere: the test that the
// committed file is current builds into a temporary folder and compares the bytes.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const flag = process.argv.indexOf("--out");
const outfile =
  flag === -1
    ? path.join(here, "..", "clarion", "dashboard", "static", "inapp-render.js")
    : path.resolve(process.argv[flag + 1]);

await build({
  entryPoints: [path.join(here, "src", "inapp", "global.ts")],
  outfile,
  bundle: true,
  minify: true,
  format: "iife",
  globalName: "ClarionInApp",
  // Browsers with shadow DOM, custom properties and URL (2020 on).
  target: ["es2020"],
  charset: "ascii",
  legalComments: "none",
  // Output depends on the sources only: no source map (its paths are the machine's), no dates.
  sourcemap: false,
  banner: {
    js: "/* Generated from websdk/src/inapp/ by `make web` (cd websdk && npm ci && npm run build); do not edit. */",
  },
  logLevel: "warning",
});
