// clarion.js's entry point (build.mjs): take over the page's `clarion` / `batchSDK` stubs.
import { install } from "./sdk";

install(window as unknown as Record<string, unknown>);
