// The dashboard's build: `window.ClarionInApp = {render}` (build.mjs names the global).
export { render } from "./render";
