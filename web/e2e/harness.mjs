// What the end-to-end tests share: free ports, waiting for a condition, the services as child
// processes (stopped together), a database and a RabbitMQ vhost of their own, and webhooks
// signed as Svix signs them.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { createServer as createNetServer } from "node:net";

/** A TCP port nothing listens on right now. */
export async function freePort() {
  const server = createNetServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Calls `check` until it returns something truthy (returned), or fails after `timeoutMs`. */
export async function eventually(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ""}`);
}

/** Child processes started by a test; `stopAll` sends SIGTERM and waits for them. */
export class Processes {
  constructor(cwd) {
    this.cwd = cwd;
    this.children = [];
  }

  start(name, command, args, env, cwd = this.cwd) {
    const child = spawn(command, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    child.output = "";
    const collect = (chunk) => {
      child.output += chunk;
    };
    child.stdout.on("data", collect);
    child.stderr.on("data", collect);
    child.name = name;
    this.children.push(child);
    return child;
  }

  async stopAll() {
    for (const child of this.children) child.kill("SIGTERM");
    await Promise.all(
      this.children.map((child) =>
        child.exitCode !== null ? null : new Promise((resolve) => child.once("exit", resolve)),
      ),
    );
  }
}

/** Waits until `url` answers 2xx; fails at once if `child` exited, with its output. */
export async function ready(url, child) {
  await eventually(`${child.name} at ${url}`, async () => {
    if (child.exitCode !== null) throw new Error(`${child.name} exited: ${child.output}`);
    return (await fetch(url)).ok;
  });
}

/** A Postgres database and a RabbitMQ vhost named `name`, for one test file. */
export function createIsolation(name) {
  execFileSync("createdb", ["-h", "127.0.0.1", "-U", "postgres", name]);
  execFileSync("rabbitmqctl", ["-q", "add_vhost", name]);
  execFileSync("rabbitmqctl", ["-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
  return {
    DATABASE_URL: `postgres://postgres@127.0.0.1:5432/${name}`,
    AMQP_URL: `amqp://guest:guest@127.0.0.1:5672/${encodeURIComponent(name)}`,
  };
}

/** Removes what `createIsolation(name)` made. */
export function dropIsolation(name) {
  execFileSync("dropdb", ["-h", "127.0.0.1", "-U", "postgres", "--force", "--if-exists", name]);
  execFileSync("rabbitmqctl", ["-q", "delete_vhost", name]);
}

/** Delivers a Clerk event to the ingress, signed with `secret` as Svix signs it; returns its id. */
export async function deliver(ingress, secret, event, prefix = "msg_e2e") {
  const body = JSON.stringify(event);
  const id = `${prefix}_${randomBytes(6).toString("hex")}`;
  const timestamp = Math.floor(Date.now() / 1000);
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const signature = createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64");
  const response = await fetch(`${ingress}/webhooks/clerk`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "svix-id": id,
      "svix-timestamp": String(timestamp),
      "svix-signature": `v1,${signature}`,
    },
    body,
  });
  assert.equal(response.status, 200, await response.text());
  return id;
}
