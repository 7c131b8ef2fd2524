// Headless Chromium (Debian's /usr/bin/chromium) through playwright-core, with a throw-away
// profile, for the browser tests' scripts.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/**
 * Launches Chromium with a fresh profile directory, optionally with profile `preferences` (the
 * profile's `Preferences` JSON); returns the context, its first page and the profile directory.
 * `close()` closes the browser and removes the directory.
 */
export async function launch(preferences = null) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "lanyard-chromium-"));
  if (preferences) {
    fs.mkdirSync(path.join(userDataDir, "Default"));
    fs.writeFileSync(path.join(userDataDir, "Default", "Preferences"), JSON.stringify(preferences));
  }
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    ignoreHTTPSErrors: true, // the test server's certificate comes from its own CA
    viewport: { width: 1200, height: 800 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(15000);
  const close = async () => {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, page, userDataDir, close };
}

/** Throws `what` unless `cond`. */
export function check(cond, what) {
  if (!cond) {
    throw new Error(`check failed: ${what}`);
  }
}
