// Drives the Lanyard admin portal in headless Chromium (Debian's chromium, through
// playwright-core) for the `portal_browser` test. The Rust test starts the server and plays the
// simulated Mac; this script asks it for help on stdout ("STEP enroll", "STEP answer") and reads
// "OK …" on stdin. Anything else it prints is a log line. Exits non-zero on the first failure.
//
// Environment: LANYARD_URL, LANYARD_ADMIN_PASSWORD, LANYARD_VIEWER_PASSWORD, and optionally
// LANYARD_SCREENSHOTS (a directory to save PNG screenshots in).

import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";
import { check, launch } from "./chromium.mjs";

const require = createRequire(import.meta.url);
const base = must("LANYARD_URL");
const adminPassword = must("LANYARD_ADMIN_PASSWORD");
const viewerPassword = must("LANYARD_VIEWER_PASSWORD");
const shots = process.env.LANYARD_SCREENSHOTS || "";
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

function must(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return v;
}

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the Rust side to do something (enroll the Mac, answer a command); returns its reply. */
async function step(name, arg = "") {
  console.log(arg ? `STEP ${name} ${arg}` : `STEP ${name}`);
  const { value, done } = await lines.next();
  if (done || !value.startsWith("OK")) {
    throw new Error(`step ${name} failed: ${value}`);
  }
  return value.slice(2).trim();
}

async function shot(page, name) {
  if (shots) {
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(shots, `${name}.png`) });
  }
}

/** axe-core accessibility check: no serious or critical violation on the page. */
async function accessible(page, where) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: ["wcag2a", "wcag2aa"] }),
  );
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    const text = bad
      .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`)
      .join("\n");
    throw new Error(`accessibility problems on ${where}:\n${text}`);
  }
  console.log(`axe: ${where} has no serious or critical violations`);
}

async function message(page) {
  return (await page.locator("#message").textContent({ timeout: 10000 })).trim();
}

async function signIn(page, user, password) {
  await page.goto(`${base}/portal`);
  await page.waitForURL(/\/portal\/sign-in/);
  await page.getByLabel("Administrator name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/portal\/summary/);
  check((await page.locator("h1").textContent()) === "Summary", "summary after sign-in");
}

async function signOut(page) {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/portal\/sign-in/);
}

const { page, userDataDir, close } = await launch();

let failed = false;
try {
  const csp = [];
  page.on("console", (m) => {
    if (m.type() === "error") {
      csp.push(m.text());
    }
  });

  // Sign in.
  await page.goto(`${base}/portal/sign-in`);
  await accessible(page, "sign-in");
  await shot(page, "sign-in");
  await signIn(page, "admin", adminPassword);
  await accessible(page, "summary");
  console.log("signed in");

  // Add a user.
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByLabel("Email", { exact: true }).fill("ann@example.com");
  await page.getByLabel("Name", { exact: true }).fill("Ann Example");
  await page.getByLabel("Password (at least 10 characters)").fill("a long password");
  await page.getByRole("button", { name: "Add user" }).click();
  check((await message(page)) === "User added.", "user added message");
  check(await page.getByRole("cell", { name: "ann@example.com" }).first().isVisible(), "user row");
  await accessible(page, "users");
  console.log("user added");

  // Settings: an invalid minimum version is refused whole, then the three enrollment settings
  // (and the domain and minimum version the Mac needs) are saved.
  await page.getByRole("link", { name: "Settings" }).click();
  await page.getByLabel("Default ownership mode").selectOption("employee");
  await page.getByLabel("Minimum macOS version").fill("9.0");
  await page.getByRole("button", { name: "Save settings" }).click();
  const refused = await message(page);
  check(refused.includes("Nothing was saved"), `invalid version refused: ${refused}`);
  await page.getByRole("link", { name: "Settings" }).click();
  check(
    (await page.getByLabel("Default ownership mode").inputValue()) === "prompt",
    "ownership unchanged after a refused save",
  );
  await page.getByLabel("Default ownership mode").selectOption("prompt");
  await page.getByLabel("Minimum macOS version").fill("15.2");
  await page.getByLabel("Managed domains (comma separated)").fill("example.com");
  await page.getByLabel("User enrollment mode: manage only corporate resources").setChecked(true);
  await page.getByLabel("Use email address as managed Apple ID").setChecked(true);
  await page.getByRole("button", { name: "Save settings" }).click();
  check((await message(page)) === "Settings saved.", "settings saved");
  check(
    (await page.getByLabel("Default ownership mode").inputValue()) === "prompt" &&
      (await page.getByLabel("User enrollment mode: manage only corporate resources").isChecked()) &&
      (await page.getByLabel("Use email address as managed Apple ID").isChecked()) &&
      (await page.getByLabel("Managed domains (comma separated)").inputValue()) === "example.com",
    "settings shown as saved",
  );
  await accessible(page, "settings");
  await shot(page, "settings");
  console.log("settings saved");

  // ABM: a key pair, its public key downloaded, a wrong file refused, the token file from
  // the (fake) Apple Business Manager uploaded as the default, then a sync: its progress line is
  // polled in the page until its result.
  await page.getByRole("link", { name: "ABM" }).click();
  await page.getByLabel("Name", { exact: true }).fill("main");
  await page.getByRole("button", { name: "Create key pair" }).click();
  check((await message(page)).startsWith("Key pair for main created"), "key pair created");
  const download = page.waitForEvent("download");
  await page.getByRole("link", { name: "Download public key" }).click();
  const pemPath = path.join(userDataDir, "main.pem");
  await (await download).saveAs(pemPath);
  check(fs.readFileSync(pemPath, "utf8").includes("BEGIN CERTIFICATE"), "public key downloaded");
  const junk = path.join(userDataDir, "junk.p7m");
  fs.writeFileSync(junk, "this is not a token file");
  await page.getByLabel("Token file (.p7m from Apple Business Manager)").setInputFiles(junk);
  await page.getByRole("button", { name: "Upload token" }).click();
  const junkWhy = await message(page);
  check(junkWhy.includes("Nothing was changed"), `wrong file refused: ${junkWhy}`);
  const tokenPath = await step("token", pemPath);
  await page.getByLabel("Token file (.p7m from Apple Business Manager)").setInputFiles(tokenPath);
  await page.getByLabel("Default token for account driven enrollment").setChecked(true);
  await page.getByRole("button", { name: "Upload token" }).click();
  check((await message(page)) === "Token file for main uploaded.", "token uploaded");
  const tokenRow = page.locator("tr[data-token=main]");
  check((await tokenRow.locator("td.account-driven").textContent()) === "Default", "Account Driven");
  check((await tokenRow.textContent()).includes("Example Org"), "organisation shown");
  await tokenRow.getByRole("button", { name: "Sync now" }).click();
  const started = await message(page);
  check(started.startsWith("Sync of main started"), `sync started: ${started}`);
  // The sync runs in the background; the row's progress line is polled until the result.
  const progress = tokenRow.locator(".sync-progress");
  await progress.filter({ hasText: "finished" }).waitFor({ timeout: 20000 });
  const synced = (await progress.textContent()).trim();
  check(synced.includes("Sync of main finished") && synced.includes("3 devices"), `sync: ${synced}`);
  await accessible(page, "abm");
  await shot(page, "abm");
  console.log("token uploaded as default and synced");

  // Declarations: a payload Apple's schema refuses is explained under its field and the typed
  // values are kept; the corrected one is added, a set made and the declaration put in it.
  await page.getByRole("link", { name: "Declarations" }).click();
  await page.locator("#decl_type").fill("com.apple.configuration.account.exchange");
  await page.locator("#decl_identifier").fill("work-mail");
  await page
    .locator("#decl_payload")
    .fill('{"VisibleName": "Work mail", "EnabledProtocolTypes": ["EWS"], "HostName": 42}');
  await page.locator("#add-declaration").getByRole("button", { name: "Add declaration" }).click();
  const payloadError = page.locator("#payload-error");
  await payloadError.waitFor();
  const payloadWhy = (await payloadError.textContent()).trim();
  check(payloadWhy.includes("HostName"), `refusal names the key: ${payloadWhy}`);
  check(
    (await page.locator("#decl_payload").getAttribute("aria-invalid")) === "true",
    "payload marked invalid",
  );
  check((await page.locator("#decl_identifier").inputValue()) === "work-mail", "identifier kept");
  await page.locator("#decl_payload").fill(
    '{"VisibleName": "Work mail", "EnabledProtocolTypes": ["EWS"], "HostName": "mail.example.com"}',
  );
  await page.locator("#add-declaration").getByRole("button", { name: "Add declaration" }).click();
  check((await message(page)) === "Declaration work-mail added.", "declaration added");
  await page.locator("#set_name").fill("work");
  await page.getByRole("button", { name: "Add set" }).click();
  check((await message(page)) === "Set work added.", "set added");
  await page.locator("#member-work").selectOption("work-mail");
  await page.locator("section[data-set=work]").getByRole("button", { name: "Add to set" }).click();
  check((await message(page)) === "Set work saved.", "member added");
  check(
    (await page.locator("section[data-set=work] tr[data-member=work-mail]").count()) === 1,
    "the set lists its member",
  );
  await accessible(page, "declarations");
  await shot(page, "declarations");
  console.log("declaration refused, corrected, added and put in a set");

  // The simulated Mac enrolls; it is listed as a User Enrollment.
  const enrollmentId = await step("enroll");
  await page.getByRole("link", { name: "Devices" }).click();
  const row = page.locator("table.devices tbody tr", { hasText: "ann@example.com" });
  await row.waitFor();
  check((await row.textContent()).includes("User Enrollment"), "device row says User Enrollment");
  check((await row.textContent()).includes("Employee"), "device row shows ownership");
  // Search by the user's email and sort by OS version: still found, the total says one.
  await page.getByLabel("Search managed Apple ID, email or model").fill("ann@");
  await page.getByRole("button", { name: "Search" }).click();
  await page.getByRole("link", { name: "OS version" }).click();
  await page.waitForURL(/sort=os/);
  await row.waitFor();
  check((await page.locator("#total").textContent()) === "1 device", "total after search");
  await accessible(page, "devices");
  await shot(page, "devices");
  console.log("device listed as User Enrollment");

  // A forbidden command is refused with the reason; an allowed one is queued and answered.
  await row.getByRole("link", { name: "ann@example.com" }).click();
  await page.waitForURL(new RegExp(`/portal/devices/${enrollmentId}`));
  await page.getByLabel("Command").selectOption("raw");
  await page.getByLabel("Request type (for Other)").fill("EraseDevice");
  await page.getByRole("button", { name: "Send command" }).click();
  const why = await message(page);
  check(why.includes("not allowed for User Enrollment"), `EraseDevice refused: ${why}`);
  await page.getByLabel("Command").selectOption("DeviceInformation");
  await page.getByRole("button", { name: "Send command" }).click();
  check((await message(page)).startsWith("Command queued"), "command queued");
  await step("answer");
  await page.reload();
  const hist = page.locator("table.history tbody tr", { hasText: "DeviceInformation" }).first();
  check((await hist.getAttribute("data-status")) === "acknowledged", "command acknowledged");
  await hist.getByText("Result").click();
  check((await hist.locator("pre").textContent()).includes("15.2"), "result shows the OS version");
  check(
    await page.locator("table.inventory").getByText("15.2").first().isVisible(),
    "inventory shows the OS version",
  );
  await accessible(page, "device");
  await shot(page, "device");
  console.log("command answered, result shown");

  // A command to every matching device shows its progress, updated by the page's script.
  await page.getByRole("link", { name: "Devices" }).click();
  await page.locator("details.bulk summary").click();
  const bulk = page.locator("details.bulk");
  await bulk.getByLabel("Command").selectOption("SecurityInfo");
  await bulk.getByRole("button", { name: "Send to matching devices" }).click();
  await page.waitForURL(/\/portal\/commands\//);
  check((await page.locator("#progress").textContent()).includes("0 of 1 acknowledged"), "progress 0 of 1");
  await step("answer");
  await page.locator("#progress", { hasText: "1 of 1 acknowledged" }).waitFor();
  await shot(page, "progress");
  console.log("progress updated to 1 of 1");

  // Unenroll, confirmed: queued, with a message on the device list.
  await page.getByRole("link", { name: "Devices" }).click();
  await page
    .locator("table.devices tbody tr", { hasText: "ann@example.com" })
    .getByRole("link", { name: "ann@example.com" })
    .click();
  await page.getByLabel("Remove the MDM profile and the work data from this Mac").setChecked(true);
  await page.getByRole("button", { name: "Unenroll" }).click();
  await page.waitForURL(/done=unenroll/);
  check((await message(page)).startsWith("Unenrollment queued"), "unenrollment queued");
  console.log("unenrollment queued");

  // Identity providers: a bad issuer refused with a message, then a provider added and listed
  // (its client secret never shown).
  await page.getByRole("link", { name: "Identity providers" }).click();
  await page.getByLabel("Name (lower-case letters, digits and dashes)").fill("corp");
  await page.getByLabel("Display name (what the sign-in button says)").fill("Corporate sign-in");
  await page.getByLabel("Issuer URL").fill("http://login.example.com");
  await page.getByLabel("Client id").fill("lanyard-client");
  await page.getByLabel("Client secret (leave blank for a public client)").fill("portal-walk-secret");
  await page.getByRole("button", { name: "Add identity provider" }).click();
  const badIssuer = await message(page);
  check(badIssuer.includes("must use https"), `bad issuer refused: ${badIssuer}`);
  await page.getByLabel("Issuer URL").fill("https://login.example.com");
  await page.getByLabel("Client secret (leave blank for a public client)").fill("portal-walk-secret");
  await page.getByRole("button", { name: "Add identity provider" }).click();
  check((await message(page)) === "Identity provider corp added.", "identity provider added");
  const idpRow = page.locator("tr[data-provider=corp]");
  check((await idpRow.textContent()).includes("https://login.example.com"), "provider listed");
  check((await idpRow.locator("td.secret-set").textContent()) === "Yes", "secret set shown");
  check(!(await page.content()).includes("portal-walk-secret"), "secret never in the page");
  await accessible(page, "identity providers");
  await shot(page, "identity-providers");
  console.log("identity provider added and listed");

  // APNs certificate, step 2 in the page: a request made, a wrong vendor password explained,
  // then the pending request signed with a (throwaway) vendor certificate uploaded in the
  // page; the request file downloads and the Rust side checks it as Apple would.
  await page.getByRole("link", { name: "APNs certificate" }).click();
  await page.getByRole("button", { name: "Make a request", exact: true }).click();
  check((await message(page)).startsWith("Request made"), "push certificate request made");
  const vendorDir = await step("vendor");
  const vendorFile = (name) => path.join(vendorDir, name);
  const fillVendor = async (password) => {
    await page
      .getByLabel("Vendor certificate and key (PKCS#12, .p12)")
      .setInputFiles(vendorFile("vendor.p12"));
    await page.getByLabel("Its password").fill(password);
    await page
      .getByLabel("Apple's WWDR intermediate certificate", { exact: false })
      .setInputFiles(vendorFile("AppleWWDRCA.cer"));
    await page
      .getByLabel("Apple Inc. root certificate")
      .setInputFiles(vendorFile("AppleIncRootCertificate.cer"));
  };
  await fillVendor("not the password");
  await page.getByRole("button", { name: "Sign and download the request file" }).click();
  const wrong = await message(page);
  check(wrong.includes("wrong password"), `wrong vendor password explained: ${wrong}`);
  await fillVendor(fs.readFileSync(vendorFile("password"), "utf8").trim());
  const signed = page.waitForEvent("download");
  await page.getByRole("button", { name: "Sign and download the request file" }).click();
  const requestFile = await signed;
  check(
    requestFile.suggestedFilename() === "lanyard-push-request.b64",
    `request file name: ${requestFile.suggestedFilename()}`,
  );
  await requestFile.saveAs(vendorFile("request.b64"));
  await step("requestfile", vendorFile("request.b64"));
  await page.getByRole("link", { name: "APNs certificate" }).click();
  await accessible(page, "apns");
  await shot(page, "apns");
  console.log("push certificate request signed in the page");

  // A read-only administrator sees the pages and is refused a change.
  await signOut(page);
  await signIn(page, "viewer", viewerPassword);
  await page.getByRole("link", { name: "Settings" }).click();
  check(await page.getByText("read-only administrator").isVisible(), "read-only banner");
  await page.getByLabel("Use email address as managed Apple ID").setChecked(false);
  await page.getByRole("button", { name: "Save settings" }).click();
  const ro = await message(page);
  check(ro.includes("Read-only administrators cannot change anything"), `read-only refused: ${ro}`);
  await page.getByRole("link", { name: "Settings" }).click();
  check(
    await page.getByLabel("Use email address as managed Apple ID").isChecked(),
    "setting unchanged after the read-only refusal",
  );
  await shot(page, "read-only");
  await page.getByRole("link", { name: "APNs certificate" }).click();
  await accessible(page, "apns");
  await page.getByRole("link", { name: "Audit log" }).click();
  check(await page.getByRole("cell", { name: "settings.update" }).first().isVisible(), "audit log");
  await accessible(page, "audit");
  console.log("read-only refused");

  const cspErrors = csp.filter((t) => t.includes("Content Security Policy"));
  check(cspErrors.length === 0, `no CSP violations: ${cspErrors.join("; ")}`);
  console.log("DONE");
} catch (e) {
  failed = true;
  console.error(e && e.stack ? e.stack : String(e));
} finally {
  await close();
}
process.exit(failed ? 1 : 0);
