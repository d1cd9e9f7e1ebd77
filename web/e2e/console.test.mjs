// End to end: the worker's operator console (/console on WORKER_ADDR, CONSOLE_USERS set) in
// headless Chromium against the real ingress and worker on the machine's Postgres and RabbitMQ.
// A webhook the worker can never apply (a user.updated without updated_at) is dead-lettered at
// once; an operator logs in, filters the dead letters, sees the body masked, reveals it (audited),
// drops it after the confirmation, and finds both in the audit log. Three sign-ups hit a bug (a
// trigger that refuses them) and are dead-lettered; once it is fixed the operator replays one,
// sees it applied, and replays the rest with one action. A viewer sees no actions, and the
// action URLs refuse them. A user whose Microsoft account's verification expired in Clerk is
// listed on the Calendar connections page, to an operator and to a viewer.
//
// Needs what demo.test.mjs needs (the Rust binaries built, Chromium, createdb, dropdb and
// rabbitmqctl). Screenshots go to ../target/console/.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { Processes, createIsolation, deliver, dropIsolation, eventually, freePort, ready } from "./harness.mjs";

const web = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const bin = process.env.CLERK_SYNC_BIN ?? path.resolve(web, "../target/debug");
const shots = path.resolve(web, "../target/console");
const run = randomBytes(4).toString("hex");
const database = `clerk_sync_console_${run}`;
const processes = new Processes(web);
const webhookSecret = `whsec_${randomBytes(24).toString("base64")}`;
/** Delivers `event` to the ingress, signed; returns its Svix id (`msg_console_…`). */
const send = (ingress, event) => deliver(ingress, webhookSecret, event, "msg_console");
const operatorKey = randomBytes(24).toString("base64");
const viewerKey = randomBytes(24).toString("base64");

/** Runs SQL in the test's database. */
function psql(sql) {
  execFileSync("psql", ["-h", "127.0.0.1", "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]);
}

/** A `user.created` event for `id` at version `version`. */
function userCreated(id, version) {
  return {
    type: "user.created",
    object: "event",
    timestamp: Date.now(),
    data: {
      id,
      object: "user",
      first_name: "Poison",
      last_name: "Pill",
      primary_email_address_id: "idn_1",
      email_addresses: [{ id: "idn_1", email_address: `${id}@example.test` }],
      created_at: 1735689600000,
      updated_at: version,
    },
  };
}

describe("the operator console in a browser", () => {
  let urls;
  let browser;
  let svixId;

  before(async () => {
    mkdirSync(shots, { recursive: true });
    const isolated = createIsolation(database);
    const [ingressPort, workerPort] = await Promise.all([freePort(), freePort()]);
    urls = { ingress: `http://127.0.0.1:${ingressPort}`, worker: `http://127.0.0.1:${workerPort}` };
    const common = {
      ...isolated,
      RUST_LOG: "warn",
      NO_COLOR: "1",
    };
    const worker = processes.start("worker", path.join(bin, "worker"), [], {
      ...common,
      WORKER_ADDR: `127.0.0.1:${workerPort}`,
      CONSOLE_USERS: `ada:operator:${operatorKey},grace:viewer:${viewerKey}`,
    });
    await ready(`${urls.worker}/readyz`, worker);
    const ingress = processes.start("ingress", path.join(bin, "ingress"), [], {
      ...common,
      INGRESS_ADDR: `127.0.0.1:${ingressPort}`,
      CLERK_WEBHOOK_SECRET: webhookSecret,
    });
    await ready(`${urls.ingress}/readyz`, ingress);
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      args: ["--no-sandbox"],
    });
    // No updated_at: the worker can never apply it and dead-letters it at once.
    svixId = await send(urls.ingress, {
      type: "user.updated",
      object: "event",
      timestamp: Date.now(),
      data: {
        id: "user_console_ada",
        first_name: "Ada",
        last_name: "Lovelace",
        email_addresses: [{ id: "idn_1", email_address: "ada@example.test" }],
        public_metadata: { plan: "secret-plan" },
      },
    });
  });

  after(async () => {
    await browser?.close();
    await processes.stopAll();
    dropIsolation(database);
  });

  async function login(name, key) {
    const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const page = await context.newPage();
    const violations = [];
    page.on("console", (message) => {
      if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
    });
    page.violations = violations;
    await page.goto(`${urls.worker}/console`);
    assert.match(page.url(), /\/console\/login$/);
    await page.getByLabel("Name").fill(name);
    await page.getByLabel("Key").fill(key);
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    return page;
  }

  const shot = (page, name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

  it("refuses a wrong key", async () => {
    const page = await browser.newPage();
    await page.goto(`${urls.worker}/console/login`);
    await page.getByLabel("Name").fill("ada");
    await page.getByLabel("Key").fill("x".repeat(40));
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByText("Unknown name or wrong key.").waitFor();
    await shot(page, "01-login-refused");
    await page.close();
  });

  it("lets an operator filter, reveal (audited) and drop a dead letter", async () => {
    const page = await login("ada", operatorKey);
    const main = () => page.locator("main").innerText();
    await eventually("the dead letter in the overview", async () => {
      await page.reload();
      return /dead_lettered\s+1/.test(await main());
    });
    // The style sheet applied: the header is dark.
    const background = await page.locator("header").evaluate((h) => getComputedStyle(h).backgroundColor);
    assert.equal(background, "rgb(36, 41, 47)");
    await shot(page, "02-overview");

    await page.getByRole("link", { name: "Dead letters" }).click();
    await page.getByLabel("Type").fill("user.updated");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.getByText("1 dead letter(s) match type=user.updated").waitFor();
    await shot(page, "03-dead-letters-filtered");

    await page.getByRole("link", { name: svixId }).click();
    await page.getByText("personal fields masked").waitFor();
    let shown = await main();
    assert.ok(!shown.includes("ada@example.test") && !shown.includes("Lovelace") && !shown.includes("secret-plan"), shown);
    assert.match(shown, /user_console_ada/);
    assert.match(shown, /clerk-sync-event-type\s+user\.updated/, "headers read as text");
    await shot(page, "04-dead-letter-masked");

    await page.getByRole("button", { name: /Reveal personal fields/ }).click();
    await page.getByText("This reveal is in the audit log.").waitFor();
    shown = await main();
    assert.match(shown, /ada@example\.test/);
    await shot(page, "05-dead-letter-revealed");

    await page.getByRole("button", { name: "Drop…" }).click();
    await page.getByText("This will drop 1 dead letter(s)").waitFor();
    await shot(page, "06-drop-confirmation");
    await page.getByRole("button", { name: "Yes, drop 1" }).click();
    await page.getByText("Dropped 1 dead letter(s)").waitFor();
    await shot(page, "07-dropped");

    await page.getByRole("link", { name: "Audit log" }).first().click();
    shown = await main();
    assert.match(shown, /ada\s+operator\s+drop\s+msg_console_\w+\s+1/);
    assert.match(shown, /ada\s+operator\s+reveal\s+msg_console_\w+\s+1/);
    await shot(page, "08-audit-log");
    assert.deepEqual(page.violations, [], "no Content-Security-Policy violation");
    await page.context().close();
  });

  it("lets an operator replay dead letters once their cause is fixed", async () => {
    // The bug: writes of these users fail with an error retrying cannot help.
    psql(
      "CREATE FUNCTION console_bug() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN " +
        "IF NEW.clerk_user_id LIKE 'user_poison_%' THEN RAISE EXCEPTION 'simulated bug'; END IF; " +
        "RETURN NEW; END $$; " +
        "CREATE TRIGGER console_bug BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION console_bug()",
    );
    const ids = [];
    for (const n of [1, 2, 3]) ids.push(await send(urls.ingress, userCreated(`user_poison_${n}`, n)));
    const page = await login("ada", operatorKey);
    const main = () => page.locator("main").innerText();
    await eventually("three dead letters of type user.created", async () => {
      await page.goto(`${urls.worker}/console/dead-letters?type=user.created`);
      return /3 dead letter\(s\) match type=user\.created/.test(await main());
    });
    await shot(page, "10-poisoned");

    psql("DROP TRIGGER console_bug ON users");
    await page.getByRole("link", { name: ids[0] }).click();
    await page.getByRole("button", { name: "Replay…" }).click();
    await page.getByText("This will replay 1 dead letter(s)").waitFor();
    await page.getByRole("button", { name: "Yes, replay 1" }).click();
    await page.getByText("Replayed 1 dead letter(s)").waitFor();
    const applied = async (user) => {
      await page.goto(`${urls.worker}/console/events?clerk_user_id=${user}`);
      const shown = await main();
      return shown.includes(`User ${user}`) && !shown.includes("No row in users.");
    };
    await eventually("user_poison_1 applied", () => applied("user_poison_1"));
    await shot(page, "11-replayed-one-applied");

    await page.goto(`${urls.worker}/console/dead-letters?type=user.created`);
    await page.getByText("2 dead letter(s) match type=user.created").waitFor();
    await page.getByRole("button", { name: "Replay all 2 matching…" }).click();
    await page.getByText("This will replay 2 dead letter(s)").waitFor();
    await page.getByRole("button", { name: "Yes, replay 2" }).click();
    await page.getByText("Replayed 2 dead letter(s)").waitFor();
    await eventually("user_poison_2 applied", () => applied("user_poison_2"));
    await eventually("user_poison_3 applied", () => applied("user_poison_3"));
    await page.goto(`${urls.worker}/console/dead-letters?type=user.created`);
    await page.getByText("0 dead letter(s) match type=user.created").waitFor();

    await page.getByRole("link", { name: "Audit log" }).first().click();
    const log = await main();
    assert.match(log, new RegExp(`ada\\s+operator\\s+replay\\s+${ids[0]}\\s+1`));
    assert.match(log, /ada\s+operator\s+replay_matching\s+type=user\.created\s+2/);
    await shot(page, "12-audit-log-replays");
    assert.deepEqual(page.violations, [], "no Content-Security-Policy violation");
    await page.context().close();
  });

  it("shows a viewer no action buttons", async () => {
    const page = await login("grace", viewerKey);
    await page.getByRole("link", { name: "Dead letters" }).click();
    assert.equal(await page.getByRole("button", { name: /Replay|Drop|Reveal/ }).count(), 0);
    // The action URLs refuse a viewer, even with the session's CSRF token.
    const csrf = await page.locator("input[name=csrf]").first().getAttribute("value").catch(() => null);
    for (const action of ["/console/dead-letter/replay", "/console/dead-letter/drop", "/console/dead-letters/replay"]) {
      const response = await page.request.post(`${urls.worker}${action}`, {
        form: { csrf: csrf ?? "", id: "msg_any", confirm: "yes" },
      });
      assert.equal(response.status(), 403, action);
    }
    await page.getByRole("link", { name: "Audit log" }).first().click();
    await shot(page, "09-viewer-audit-log");
    await page.getByRole("button", { name: "Log out" }).click();
    await page.getByRole("heading", { name: "Log in" }).waitFor();
    await page.context().close();
  });

  it("lists a user whose calendar needs reconnecting to an operator and a viewer", async () => {
    // The account's verification expired in Clerk: the connection needs the user, no Clerk call.
    await send(urls.ingress, {
      type: "user.created",
      object: "event",
      timestamp: Date.now(),
      data: {
        id: "user_console_kim",
        object: "user",
        first_name: "Kim",
        last_name: "Reconnect",
        primary_email_address_id: "idn_kim",
        email_addresses: [{ id: "idn_kim", email_address: "kim@example.test" }],
        external_accounts: [
          {
            object: "external_account",
            id: "idn_ms_kim",
            external_account_id: "eac_ms_kim",
            provider: "oauth_microsoft",
            provider_user_id: "ms-kim",
            approved_scopes: "Calendars.ReadWrite offline_access openid User.Read",
            email_address: "kim@contoso.example",
            verification: { status: "expired", strategy: "oauth_microsoft" },
          },
        ],
        created_at: 1735689600000,
        updated_at: 1735689600000,
      },
    });
    for (const [name, key] of [
      ["ada", operatorKey],
      ["grace", viewerKey],
    ]) {
      const page = await login(name, key);
      const main = () => page.locator("main").innerText();
      await page.getByRole("link", { name: "Calendar connections" }).click();
      await page.getByRole("heading", { name: "Calendar connections" }).waitFor();
      await eventually(`user_console_kim listed for ${name}`, async () => {
        await page.reload();
        return /user_console_kim\s+microsoft\s+account_unverified\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/.test(await main());
      });
      const shown = await main();
      assert.match(shown, /microsoft\s+needs_reconnect\s+account_unverified\s+1/);
      assert.match(shown, /1 connection\(s\) need reconnecting, newest first\./);
      assert.ok(!shown.includes("kim@"), `no email: ${shown}`);
      await shot(page, `13-connections-${name}`);
      assert.deepEqual(page.violations, [], "no Content-Security-Policy violation");
      await page.context().close();
    }
  });
});
