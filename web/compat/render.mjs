// Renders a compat app's components (build/App.js, compiled from src/App.tsx) in jsdom, with the
// @clerk-sync/react installed from the packed tarball. run.mjs copies this file into each app and
// runs it there, so every import resolves in that app's node_modules.
//
// 1. Inside the real SDK's <ClerkProvider> (a made-up publishable key: Clerk cannot load here),
//    the app's own useAuth() feeds clerk-sync: the hook says `loading`, and nothing throws
//    ("useAuth can only be used within <ClerkProvider />" is what a second copy of Clerk gives).
// 2. With a signed-in session's values (a fake token), useCurrentUser reads /me from a fake API
//    with that token and shows the user.
// 3. Signed out, it says so and asks nothing.
import assert from "node:assert/strict";
import { createServer } from "node:http";

import { JSDOM } from "jsdom";

const dom = new JSDOM('<!doctype html><html><body><div id="root"></div></body></html>', {
  url: "http://app.example.test/",
  pretendToBeVisual: true,
});
// What a browser has as globals, from jsdom (React DOM and Clerk read them at call time).
for (const key of [
  "window",
  "document",
  "navigator",
  "location",
  "localStorage",
  "sessionStorage",
  "HTMLElement",
  "HTMLIFrameElement",
  "HTMLScriptElement",
  "Element",
  "Node",
  "Text",
  "DocumentFragment",
  "Event",
  "CustomEvent",
  "MutationObserver",
  "getComputedStyle",
  "requestAnimationFrame",
  "cancelAnimationFrame",
]) {
  const value = dom.window[key];
  Object.defineProperty(globalThis, key, {
    value: typeof value === "function" && /^[a-z]/.test(key) ? value.bind(dom.window) : value,
    configurable: true,
    writable: true,
  });
}
globalThis.self = dom.window;

const { createElement: h, StrictMode } = await import("react");
const { createRoot } = await import("react-dom/client");
const { ClerkSyncProvider } = await import("@clerk-sync/react");
const { App, Profile } = await import("./build/App.js");

// The fake API: /me for the fake session token.
const token = "fake-session-token";
const requests = [];
const api = createServer((request, response) => {
  requests.push({ url: request.url, authorization: request.headers.authorization });
  const reply = (status, body) => {
    response.writeHead(status, { "Content-Type": "application/json" });
    response.end(JSON.stringify(body));
  };
  if (request.headers.authorization !== `Bearer ${token}`) {
    return reply(401, { error: "unauthenticated", message: "no or invalid credentials" });
  }
  if (request.url !== "/me") return reply(404, { error: "not_found", message: request.url });
  return reply(200, {
    id: "00000000-0000-4000-8000-000000000001",
    clerk_user_id: "user_compat",
    email: "compat@example.test",
    first_name: "Compat",
    last_name: "Check",
    microsoft_calendar_connected: false,
    microsoft_calendar_status: "not_connected",
    google_calendar_connected: false,
    google_calendar_status: "not_connected",
    public_metadata: {},
    banned: false,
    locked: false,
    created_at: "2026-01-01T00:00:00Z",
    updated_at: "2026-01-01T00:00:00Z",
  });
});
await new Promise((resolve) => api.listen(0, "127.0.0.1", resolve));
const apiUrl = `http://127.0.0.1:${api.address().port}`;

const uncaught = [];
/** Renders `element` into a fresh root; returns the root's text getter and an unmount. */
function mount(element) {
  const container = document.createElement("div");
  document.body.appendChild(container);
  const root = createRoot(container, {
    onUncaughtError: (error) => uncaught.push(error),
  });
  root.render(h(StrictMode, null, element));
  return {
    text: () => container.textContent,
    unmount: () => {
      root.unmount();
      container.remove();
    },
  };
}

async function until(what, check, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (check()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// 1. The real ClerkProvider and the app's own useAuth().
const publishableKey = `pk_test_${Buffer.from("compat.clerk.accounts.dev$").toString("base64")}`;
let view = mount(h(App, { publishableKey, apiUrl }));
await until("the app inside ClerkProvider to render", () => view.text() !== "");
await sleep(200);
assert.equal(view.text(), "loading", "inside the real ClerkProvider (Clerk not loaded here)");
assert.deepEqual(uncaught, [], "nothing thrown inside the real ClerkProvider");
view.unmount();

// 2. Signed in, a fake session token.
const signedIn = (children) =>
  h(ClerkSyncProvider, { apiUrl, getToken: async () => token, isLoaded: true, isSignedIn: true, userId: "user_compat" }, children);
view = mount(signedIn(h("div", null, h(Profile), h(Profile))));
await until("the user from the fake API", () => view.text() === "user:Compatuser:Compat");
assert.deepEqual(requests, [{ url: "/me", authorization: `Bearer ${token}` }], "one read of /me with the token");
view.unmount();

// 3. Signed out (Core 2 and 3 both answer null then), and 4. still loading.
requests.length = 0;
view = mount(h(ClerkSyncProvider, { apiUrl, getToken: async () => null, isSignedIn: false, userId: null }, h(Profile)));
await until("signed out", () => view.text() !== "");
await sleep(100);
assert.equal(view.text(), "signed-out");
view.unmount();
view = mount(h(ClerkSyncProvider, { apiUrl, getToken: async () => null, isSignedIn: undefined, userId: undefined }, h(Profile)));
await until("loading", () => view.text() !== "");
assert.equal(view.text(), "loading");
view.unmount();
assert.deepEqual(requests, [], "nothing asked while signed out or loading");
assert.deepEqual(uncaught, []);

api.close();
console.log("rendered: inside ClerkProvider loading; signed in user:Compat (one /me, Bearer token); signed out; loading");
// Clerk's provider may still be waiting for its script: do not wait for it.
process.exit(0);
