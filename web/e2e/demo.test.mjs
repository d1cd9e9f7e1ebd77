// End to end: the demo page (on @clerk/react 6) in headless Chromium against the real ingress,
// worker and api on the machine's Postgres and RabbitMQ. Clerk's frontend is a test double, shaped
// like @clerk/react 6 (its getToken throws clerk_offline offline), whose session tokens are
// RS256 JWTs minted here (the api verifies them with this test's public key); Clerk's Backend API
// (lazy sync, calendar tokens, and grants the provider ended: Clerk's `oauth_token_retrieval_error`)
// is a small fake served here. Clerk cannot be reached from here.
//
// Needs: the Rust binaries built (`cargo build -p ingress -p worker -p api`; CLERK_SYNC_BIN names
// their folder, default ../target/debug), Chromium (CHROMIUM, default /usr/bin/chromium), and
// createdb, dropdb and rabbitmqctl on the PATH. Everything it creates (a database, a RabbitMQ
// vhost, processes) is removed at the end. Screenshots go to ../target/web/.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { mkdirSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { committedTypesMatch } from "../scripts/generate-types.mjs";
import { Processes, createIsolation, deliver, dropIsolation, eventually, freePort, ready } from "./harness.mjs";

const web = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const bin = process.env.CLERK_SYNC_BIN ?? path.resolve(web, "../target/debug");
const shots = path.resolve(web, "../target/web");
const run = randomBytes(4).toString("hex");
const database = `clerk_sync_e2e_${run}`;
const processes = new Processes(web);
const clerkSecret = "sk_test_e2e_fake_clerk_backend_api_key";
const serviceKey = `svc-e2e-${randomBytes(16).toString("hex")}`;
const webhookSecret = `whsec_${randomBytes(24).toString("base64")}`;
const tokenKey = randomBytes(32).toString("base64");
const { publicKey, privateKey } = generateKeyPairSync("rsa", {
  modulusLength: 2048,
  publicKeyEncoding: { type: "spki", format: "pem" },
  privateKeyEncoding: { type: "pkcs8", format: "pem" },
});

const b64url = (data) => Buffer.from(data).toString("base64url");

/** A Clerk session token (v2 claims) for `userId`, signed with this test's key. */
function mintSessionToken(userId) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "RS256", typ: "JWT", kid: "ins_e2e" }));
  const claims = b64url(
    JSON.stringify({
      sub: userId,
      sid: `sess_${userId}`,
      iss: "https://clerk.e2e.test",
      iat: now - 5,
      nbf: now - 5,
      exp: now + 60,
      jti: randomBytes(8).toString("hex"),
      v: 2,
    }),
  );
  const signature = sign("RSA-SHA256", Buffer.from(`${header}.${claims}`), privateKey);
  return `${header}.${claims}.${b64url(signature)}`;
}

/** A Clerk user object, with a verified Microsoft calendar account when `microsoft` is set. */
function clerkUser(id, first, updatedAt, microsoft) {
  const email = { id: `idn_${id}`, email_address: `${id}@example.test`, verification: { status: "verified" } };
  return {
    id,
    object: "user",
    first_name: first,
    last_name: "Synth",
    primary_email_address_id: email.id,
    email_addresses: [email],
    external_accounts: microsoft
      ? [
          {
            object: "external_account",
            id: `idn_ms_${id}`,
            external_account_id: `eac_ms_${id}`,
            provider: "oauth_microsoft",
            provider_user_id: `ms-${id}`,
            approved_scopes: "Calendars.ReadWrite offline_access openid User.Read",
            email_address: `${id}@contoso.example`,
            verification: { status: "verified", strategy: "oauth_microsoft" },
            created_at: 1_700_000_000_000,
          },
        ]
      : [],
    created_at: 1_700_000_000_000,
    updated_at: updatedAt,
  };
}

/**
 * Clerk's Backend API, as far as clerk-sync uses it. `revoked` holds `<user id>:<provider>` of the
 * grants the provider ended: Clerk answers their token calls as it does then.
 */
function startFakeClerk() {
  const users = new Map();
  const revoked = new Set();
  const server = createServer((request, response) => {
    const reply = (status, body) => {
      response.writeHead(status, { "Content-Type": "application/json" });
      response.end(JSON.stringify(body));
    };
    if (request.headers.authorization !== `Bearer ${clerkSecret}`) {
      return reply(401, { errors: [{ code: "authentication_invalid" }] });
    }
    const parts = new URL(request.url, "http://x").pathname.split("/").filter(Boolean);
    if (parts[0] === "v1" && parts[1] === "users" && parts.length === 3) {
      const user = users.get(parts[2]);
      return user ? reply(200, user) : reply(404, { errors: [{ code: "resource_not_found" }] });
    }
    if (parts[0] === "v1" && parts[1] === "users" && parts[3] === "oauth_access_tokens") {
      if (revoked.has(`${parts[2]}:${parts[4]}`)) {
        return reply(400, {
          errors: [
            {
              code: "oauth_token_retrieval_error",
              message: "Error retrieving OAuth token",
              long_message: "The OAuth token could not be retrieved. The user may have revoked access.",
            },
          ],
        });
      }
      const user = users.get(parts[2]);
      const account = user?.external_accounts.find((a) => a.provider === parts[4]);
      return reply(
        200,
        account
          ? [
              {
                object: "oauth_access_token",
                external_account_id: account.external_account_id,
                provider_user_id: account.provider_user_id,
                token: `EwB-e2e-${parts[2]}`,
                provider: parts[4],
                expires_at: Date.now() + 3_600_000,
                scopes: ["Calendars.ReadWrite"],
              },
            ]
          : [],
      );
    }
    return reply(404, { errors: [{ code: "resource_not_found" }] });
  });
  return { users, revoked, server };
}

describe("the demo page against the real services", () => {
  const fake = startFakeClerk();
  let urls;
  let browser;
  let page;
  /** What the user consenting again at the provider does (set by the test that reconnects). */
  let onReauthorize = async () => {};

  before(async () => {
    mkdirSync(shots, { recursive: true });
    const isolated = createIsolation(database);
    await new Promise((resolve) => fake.server.listen(0, "127.0.0.1", resolve));
    const [ingressPort, apiPort, workerPort, pagePort] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    urls = {
      ingress: `http://127.0.0.1:${ingressPort}`,
      api: `http://127.0.0.1:${apiPort}`,
      worker: `http://127.0.0.1:${workerPort}`,
      page: `http://127.0.0.1:${pagePort}`,
    };
    const common = {
      ...isolated,
      RETRY_DELAYS: "500ms",
      CLERK_SECRET_KEY: clerkSecret,
      CLERK_API_URL: `http://127.0.0.1:${fake.server.address().port}`,
      TOKEN_ENCRYPTION_KEY: tokenKey,
      RUST_LOG: "warn",
      NO_COLOR: "1",
    };
    const worker = processes.start("worker", path.join(bin, "worker"), [], { ...common, WORKER_ADDR: `127.0.0.1:${workerPort}` });
    await ready(`${urls.worker}/readyz`, worker);
    const api = processes.start("api", path.join(bin, "api"), [], {
      ...common,
      API_ADDR: `127.0.0.1:${apiPort}`,
      CLERK_JWT_KEY: publicKey,
      API_SERVICE_KEYS: serviceKey,
      API_CORS_ORIGINS: urls.page,
    });
    const ingress = processes.start("ingress", path.join(bin, "ingress"), [], {
      ...common,
      INGRESS_ADDR: `127.0.0.1:${ingressPort}`,
      CLERK_WEBHOOK_SECRET: webhookSecret,
    });
    await Promise.all([ready(`${urls.api}/readyz`, api), ready(`${urls.ingress}/readyz`, ingress)]);

    const vite = path.join(web, "node_modules", ".bin", "vite");
    execFileSync(vite, ["build", "--logLevel", "warn"], {
      cwd: path.join(web, "demo"),
      env: { ...process.env, CLERK_DOUBLE: "1", VITE_API_URL: urls.api },
    });
    const preview = processes.start(
      "vite preview",
      vite,
      ["preview", "--host", "127.0.0.1", "--port", String(pagePort)],
      { CLERK_DOUBLE: "1" },
      path.join(web, "demo"),
    );
    await ready(urls.page, preview);

    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      args: ["--no-sandbox"],
    });
    page = await browser.newPage({ viewport: { width: 800, height: 420 } });
    await page.exposeFunction("__mintSessionToken", mintSessionToken);
    // Clerk's double calls it from `externalAccount.reauthorize`: the user consenting again.
    await page.exposeFunction("__reauthorize", (userId, provider) => onReauthorize(userId, provider));
  });

  after(async () => {
    await browser?.close();
    await processes.stopAll();
    fake.server.close();
    dropIsolation(database);
  });

  const text = () => page.locator("main").innerText();
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`) });
  const asService = (route) =>
    fetch(`${urls.api}${route}`, { headers: { Authorization: `Bearer ${serviceKey}` } });

  it("the committed API types match what the api serves", async () => {
    assert.ok(
      await committedTypesMatch(`${urls.api}/openapi.json`),
      "packages/react/src/schema.ts drifted from /openapi.json: run npm run generate-types",
    );
  });

  it("asks a signed-out visitor to sign in", async () => {
    await page.goto(urls.page);
    await page.getByText("Please sign in").waitFor();
    await shot("01-signed-out");
  });

  it("shows a user who exists only in Clerk (no webhook yet) within 2 seconds", async () => {
    fake.users.set("user_e2e_ada", clerkUser("user_e2e_ada", "Ada", 1_700_000_001_000, true));
    const started = Date.now();
    await page.evaluate(() => window.__clerkDouble.setUser("user_e2e_ada"));
    await page.getByText("Welcome, Ada!").waitFor({ timeout: 2_000 });
    const elapsed = Date.now() - started;
    assert.ok(elapsed <= 2_000, `${elapsed} ms`);
    const shown = await text();
    assert.match(shown, /Email: user_e2e_ada@example\.test/);
    assert.match(shown, /Microsoft Calendar: Connected/);
    await shot("02-first-read-lazy-sync");
  });

  it("shows a user.updated from the ingress after the window regains focus", async () => {
    const updated = clerkUser("user_e2e_ada", "Ada Lovelace", 1_700_000_002_000, true);
    fake.users.set("user_e2e_ada", updated);
    await deliver(urls.ingress, webhookSecret, { type: "user.updated", object: "event", timestamp: Date.now(), data: updated });
    await eventually("the worker applied the update", async () => {
      const user = await (await asService("/users/by-clerk-id/user_e2e_ada")).json();
      return user.first_name === "Ada Lovelace";
    });
    assert.match(await text(), /Welcome, Ada!/, "nothing refetches before the refocus");
    // What a browser does when the tab becomes visible again (TanStack Query listens on window).
    await page.evaluate(() => window.dispatchEvent(new Event("visibilitychange")));
    await page.getByText("Welcome, Ada Lovelace!").waitFor({ timeout: 5_000 });
    await shot("03-updated-after-refocus");
  });

  it("disconnects the Microsoft calendar from the toggle", async () => {
    await page.getByRole("button", { name: "Disconnect Microsoft calendar" }).click();
    await page.getByText("Microsoft Calendar: Not connected").waitFor({ timeout: 5_000 });
    const user = await (await asService("/users/by-clerk-id/user_e2e_ada")).json();
    assert.equal(user.microsoft_calendar_connected, false);
    const token = await asService(`/users/${user.id}/calendar-connections/microsoft/token`);
    assert.equal(token.status, 404);
    await shot("04-calendar-disconnected");
  });

  it("never shows the first user's data to a second user", async () => {
    fake.users.set("user_e2e_grace", clerkUser("user_e2e_grace", "Grace", 1_700_000_003_000, false));
    // Every text the page shows from here on.
    await page.evaluate(() => {
      window.__texts = [];
      new MutationObserver(() => window.__texts.push(document.body.innerText)).observe(document.body, {
        subtree: true,
        childList: true,
        characterData: true,
      });
    });
    await page.evaluate(() => window.__clerkDouble.setUser("user_e2e_grace"));
    await page.getByText("Welcome, Grace!").waitFor({ timeout: 5_000 });
    const seen = await page.evaluate(() => window.__texts);
    assert.ok(
      seen.every((shown) => !shown.includes("Ada")),
      `the second user saw the first user's data: ${JSON.stringify(seen)}`,
    );
    // And the api itself refuses Grace's token for Ada.
    const response = await fetch(`${urls.api}/users/by-clerk-id/user_e2e_ada`, {
      headers: { Authorization: `Bearer ${mintSessionToken("user_e2e_grace")}` },
    });
    assert.equal(response.status, 404);
    await shot("05-second-user");

    await page.evaluate(() => window.__clerkDouble.setUser(null));
    await page.getByText("Please sign in").waitFor();
  });

  it("keeps showing a signed-in user while the browser is offline, and a user.updated once back online", async () => {
    fake.users.set("user_e2e_lin", clerkUser("user_e2e_lin", "Lin", 1_700_000_004_000, false));
    await page.evaluate(() => window.__clerkDouble.setUser("user_e2e_lin"));
    await page.getByText("Welcome, Lin!").waitFor({ timeout: 5_000 });
    await page.evaluate(() => {
      window.__offlineTexts = [];
      new MutationObserver(() => window.__offlineTexts.push(document.body.innerText)).observe(document.body, {
        subtree: true,
        childList: true,
        characterData: true,
      });
    });

    // A refocus starts a read, and the browser goes offline while Clerk is fetching the token:
    // getToken throws clerk_offline (Core 3), and the read waits for the network.
    await page.evaluate(() => {
      window.__clerkDouble.tokenDelayMs = 1_000;
      window.dispatchEvent(new Event("visibilitychange"));
    });
    // Offline blocks every request, the api's (another port) included.
    await page.context().setOffline(true);
    assert.equal(await page.evaluate(() => navigator.onLine), false);
    const blocked = await page.evaluate((api) => fetch(`${api}/healthz`).then(() => "answered", () => "blocked"), urls.api);
    assert.equal(blocked, "blocked");
    await eventually("getToken threw clerk_offline", () => page.evaluate(() => window.__clerkDouble.offlineErrors > 0));
    await page.evaluate(() => {
      window.__clerkDouble.tokenDelayMs = 0;
    });
    // Another refocus while offline asks nothing; the last profile read stays on screen.
    await page.evaluate(() => window.dispatchEvent(new Event("visibilitychange")));
    await page.waitForTimeout(1_500);
    const offlineTexts = [...(await page.evaluate(() => window.__offlineTexts)), await page.locator("body").innerText()];
    assert.ok(
      offlineTexts.every(
        (shown) => shown.includes("Welcome, Lin!") && !shown.includes("Please sign in") && !shown.includes("Could not"),
      ),
      `offline, the page stopped showing the user: ${JSON.stringify(offlineTexts)}`,
    );
    assert.match(await text(), /Email: user_e2e_lin@example\.test/);
    await shot("06-offline-cached-user");

    // Back online: the held read goes out by itself.
    const reread = page.waitForResponse((response) => response.url() === `${urls.api}/me` && response.ok());
    await page.context().setOffline(false);
    await reread;

    const updated = clerkUser("user_e2e_lin", "Lin Updated", 1_700_000_005_000, false);
    fake.users.set("user_e2e_lin", updated);
    await deliver(urls.ingress, webhookSecret, { type: "user.updated", object: "event", timestamp: Date.now(), data: updated });
    await eventually("the worker applied the update", async () => {
      const user = await (await asService("/users/by-clerk-id/user_e2e_lin")).json();
      return user.first_name === "Lin Updated";
    });
    assert.match(await text(), /Welcome, Lin!/, "nothing refetches before the refocus");
    await page.evaluate(() => window.dispatchEvent(new Event("visibilitychange")));
    await page.getByText("Welcome, Lin Updated!").waitFor({ timeout: 5_000 });
    assert.doesNotMatch(await text(), /Could not/);
    await shot("07-back-online-updated");
  });

  it("shows a revoked Microsoft grant as needing reconnecting, and Connected after the reconnect", async () => {
    const kim = (version) => clerkUser("user_e2e_kim", "Kim", version, true);
    fake.users.set("user_e2e_kim", kim(1_700_000_010_000));
    await page.evaluate(() => window.__clerkDouble.setUser("user_e2e_kim"));
    await page.getByText("Welcome, Kim!").waitFor({ timeout: 5_000 });
    assert.match(await text(), /Google Calendar: Not connected\s+Microsoft Calendar: Connected/);
    assert.equal(await page.getByRole("button", { name: /Reconnect/ }).count(), 0);

    // Kim removes the app's access at Microsoft. Nobody is told; Clerk refuses the token from
    // now on, and the next token call (here: the next user.updated's) learns it.
    fake.revoked.add("user_e2e_kim:oauth_microsoft");
    await deliver(urls.ingress, webhookSecret, {
      type: "user.updated",
      object: "event",
      timestamp: Date.now(),
      data: kim(1_700_000_011_000),
    });
    const stored = await eventually("the worker recorded the revoked grant", async () => {
      const user = await (await asService("/users/by-clerk-id/user_e2e_kim")).json();
      return user.microsoft_calendar_status === "needs_reconnect" ? user : null;
    });
    assert.equal(stored.microsoft_calendar_connected, false);
    const [connection] = await (await asService(`/users/${stored.id}/calendar-connections`)).json();
    assert.equal(connection.status, "needs_reconnect");
    assert.equal(connection.status_reason, "grant_revoked");
    const refused = await asService(`/users/${stored.id}/calendar-connections/microsoft/token`);
    assert.equal(refused.status, 409);
    const { error, reason } = await refused.json();
    assert.deepEqual({ error, reason }, { error: "needs_reconnect", reason: "grant_revoked" });

    await page.evaluate(() => window.dispatchEvent(new Event("visibilitychange")));
    await page.getByText("Microsoft Calendar: Needs reconnecting").waitFor({ timeout: 5_000 });
    assert.match(await text(), /Google Calendar: Not connected/);
    await shot("08-needs-reconnecting");

    // Kim reconnects: the app's onReconnect calls Clerk's externalAccount.reauthorize; Kim
    // consents again, Clerk holds a token again and sends user.updated (the account verified).
    onReauthorize = async (userId, provider) => {
      assert.equal(`${userId}:${provider}`, "user_e2e_kim:microsoft");
      fake.revoked.delete("user_e2e_kim:oauth_microsoft");
      const again = kim(1_700_000_012_000);
      fake.users.set("user_e2e_kim", again);
      await deliver(urls.ingress, webhookSecret, { type: "user.updated", object: "event", timestamp: Date.now(), data: again });
      await eventually("the worker found the account connected again", async () => {
        const user = await (await asService("/users/by-clerk-id/user_e2e_kim")).json();
        return user.microsoft_calendar_status === "connected";
      });
    };
    await page.getByRole("button", { name: "Reconnect Microsoft Calendar" }).click();
    await page.getByText("Microsoft Calendar: Connected").waitFor({ timeout: 40_000 });
    assert.equal(await page.getByRole("button", { name: /Reconnect/ }).count(), 0);
    const reauthorized = await page.evaluate(() => window.__clerkDouble.reauthorized);
    assert.deepEqual(reauthorized, [{ userId: "user_e2e_kim", provider: "microsoft", redirectUrl: page.url() }]);
    const served = await asService(`/users/${stored.id}/calendar-connections/microsoft/token`);
    assert.equal(served.status, 200);
    assert.equal((await served.json()).access_token, "EwB-e2e-user_e2e_kim");
    await shot("09-reconnected");

    await page.evaluate(() => window.__clerkDouble.setUser(null));
    await page.getByText("Please sign in").waitFor();
  });
});
