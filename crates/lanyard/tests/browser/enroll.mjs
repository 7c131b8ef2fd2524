// Walks Lanyard's enrollment sign-in pages in headless Chromium (Debian's chromium, through
// playwright-core) as a Mac's web authentication view would, for the `enrollment_browser` test:
// open the sign-in URL of the `apple-as-web` challenge (with `?user-identifier=…`), sign in with
// the password form or through the OpenID Connect provider, continue past what the organisation
// can see, choose Employee, fill the attributes and allow remote management. The walk must end
// with the browser following a 308 to
// `apple-remotemanagement-user-login://authentication-results?access-token=…`, the URL the Mac's
// web authentication session takes as its callback, with no Content-Security-Policy violation
// on the way (a `form-action` that does not allow the scheme blocks that redirect: "Sending form
// data … violates … form-action"). Prints `TOKEN <access token>` on success; exits non-zero on
// the first failure.
//
// One Chromium feature the Mac's web view does not have is turned off in the profile: the
// "information you're about to submit is not secure" page Chromium puts before a form that
// is sent on to a scheme other than https (`profile.mixed_forms_warnings`). Chromium has no
// handler for the callback scheme, so that last navigation then fails in the browser; the
// request for it is what the walk catches.
//
// Environment: LANYARD_SIGN_IN_URL, LANYARD_PATH (`password` or `oidc`), LANYARD_LOGIN,
// LANYARD_PASSWORD, LANYARD_DEPARTMENT, and for `oidc` LANYARD_PROVIDER_BUTTON (the link's text).

import { check, launch } from "./chromium.mjs";

const RESULT = "apple-remotemanagement-user-login://authentication-results";

function must(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return v;
}

const signInUrl = must("LANYARD_SIGN_IN_URL");
const flow = must("LANYARD_PATH");
const login = must("LANYARD_LOGIN");
const password = must("LANYARD_PASSWORD");
const department = must("LANYARD_DEPARTMENT");
const identifier = new URL(signInUrl).searchParams.get("user-identifier");
check(identifier, "the sign-in URL carries user-identifier");

const { page, close } = await launch({ profile: { mixed_forms_warnings: false } });
let failed = false;
try {
  const csp = [];
  page.on("console", (m) => {
    if (m.type() === "error" && m.text().includes("Content Security Policy")) {
      csp.push(m.text());
      console.log(`console: ${m.text()}`);
    }
  });
  // The hand-off: the request the browser makes for the callback URL.
  let handOffSeen;
  const handOff = new Promise((resolve) => {
    handOffSeen = resolve;
  });
  page.on("request", (r) => {
    if (r.url().startsWith(`${RESULT}?`)) {
      handOffSeen(r);
    }
  });
  // The last form's request fails when the redirect is blocked (with the CSP message above).
  const blocked = new Promise((resolve) => {
    page.on("requestfailed", (r) => {
      if (r.url().endsWith("/enroll/attributes")) {
        resolve(r);
      }
    });
  });

  await page.goto(signInUrl);
  check((await page.locator("h1").textContent()) === "Sign in", "the sign-in page");
  if (flow === "password") {
    const email = page.getByLabel("Email or managed Apple Account");
    check((await email.inputValue()) === identifier, "email prefilled from user-identifier");
    await email.fill(login);
    await page.getByLabel("Password").fill(password);
    await page.getByRole("button", { name: "Sign in" }).click();
  } else if (flow === "oidc") {
    await page.getByRole("link", { name: must("LANYARD_PROVIDER_BUTTON") }).click();
    await page.waitForURL(/\/interaction\//);
    console.log("at the identity provider");
    await page.getByLabel("Email").fill(login);
    await page.getByLabel("Password").fill(password);
    await page.getByRole("button", { name: "Sign in" }).click();
  } else {
    throw new Error(`unknown LANYARD_PATH ${flow}`);
  }
  await page.waitForURL(/\/enroll\/privacy$/);
  console.log(`signed in (${flow})`);
  await page.getByRole("button", { name: "Continue" }).click();
  await page.waitForURL(/\/enroll\/ownership$/);
  await page.getByLabel("Employee — my own Mac").check();
  await page.getByRole("button", { name: "Continue" }).click();
  await page.waitForURL(/\/enroll\/attributes$/);
  console.log("ownership Employee");
  await page.getByLabel("department").selectOption(department);
  await page.getByRole("button", { name: "Allow remote management" }).click();

  const request = await Promise.race([
    handOff,
    blocked.then((r) => {
      throw new Error(
        `the last form was blocked (${r.failure()?.errorText}); ` +
          `Content-Security-Policy: ${csp.join("; ") || "no violation reported"}`,
      );
    }),
  ]);
  check(csp.length === 0, `no Content-Security-Policy violation: ${csp.join("; ")}`);
  const url = new URL(request.url());
  check(url.protocol === "apple-remotemanagement-user-login:", `scheme ${url.protocol}`);
  check(url.host === "authentication-results", `host ${url.host}`);
  const token = url.searchParams.get("access-token");
  check(token, "the callback carries access-token");
  const from = request.redirectedFrom();
  check(from && new URL(from.url()).pathname === "/enroll/attributes", "redirected from the form");
  const status = (await from.response())?.status();
  check(status === 308, `the hand-off is a 308 Permanent Redirect, not ${status}`);
  check(request.method() === "POST", `a 308 keeps the form's method: ${request.method()}`);
  console.log(`hand-off: ${status} → ${RESULT}?access-token=…`);
  console.log(`TOKEN ${token}`);
} catch (e) {
  failed = true;
  console.error(e && e.stack ? e.stack : String(e));
} finally {
  await close();
}
process.exit(failed ? 1 : 0);
