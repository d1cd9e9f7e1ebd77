// Compatibility check (`npm run compat` in web/): @clerk-sync/react built and packed (`npm pack`),
// then installed from the tarball into two small apps, one on @clerk/react 6 (Core 3, React 19)
// and one on @clerk/clerk-react 5 (Core 2, React 18). Each app's own dependencies come from its
// committed package-lock.json (`npm ci`). In each app:
// - installing ours adds ours and nothing else to the lock (so nothing deprecated either);
// - `npm ls` is clean and shows exactly one Clerk SDK, the app's, and none under ours;
// - `tsc --noEmit` passes on src/App.tsx, which wires the SDK's useAuth() into ClerkSyncProvider;
// - render.mjs renders it in jsdom: loading inside the real ClerkProvider, the user from a fake
//   API with a fake session token, signed out.
// Works in a temporary folder; the apps' folders here are left as they are.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const compat = path.dirname(fileURLToPath(import.meta.url));
const web = path.dirname(compat);
const apps = [
  { dir: "react6", sdk: "@clerk/react" },
  { dir: "clerk-react5", sdk: "@clerk/clerk-react" },
];
/** Clerk's helper packages that come with an SDK; every other `@clerk/*` package is an SDK. */
const clerkHelpers = new Set(["@clerk/shared", "@clerk/types"]);
const ours = "@clerk-sync/react";
const npmQuiet = ["--no-audit", "--no-fund", "--loglevel=error"];

const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
const log = (message) => console.log(`compat [${elapsed()}] ${message}`);

function run(command, args, cwd) {
  execFileSync(command, args, { cwd, stdio: ["ignore", "inherit", "inherit"] });
}

function output(command, args, cwd) {
  return execFileSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
}

/** The lock's packages: `node_modules/…` path → its entry. */
function lockedPackages(dir) {
  const lock = JSON.parse(readFileSync(path.join(dir, "package-lock.json"), "utf8"));
  return Object.fromEntries(Object.entries(lock.packages).filter(([where]) => where !== ""));
}

/** Every package `npm ls --all --json` shows, with the names of the packages it sits under. */
function listed(tree) {
  const found = [];
  const walk = (node, trail) => {
    for (const [name, child] of Object.entries(node.dependencies ?? {})) {
      found.push({ name, version: child.version, trail });
      walk(child, [...trail, name]);
    }
  };
  walk(tree, []);
  return found;
}

const work = mkdtempSync(path.join(tmpdir(), "clerk-sync-compat-"));
let passed = 0;
try {
  log(`building and packing ${ours}`);
  run("npm", ["run", "build", "-w", ours, "--silent"], web);
  const packed = JSON.parse(
    output("npm", ["pack", "--json", "--pack-destination", work, ...npmQuiet], path.join(web, "packages/react")),
  );
  const tarball = path.join(work, packed[0].filename);
  const packedFiles = packed[0].files.map((file) => file.path).sort();
  assert.deepEqual(packedFiles, ["dist/index.d.ts", "dist/index.js", "package.json"], "what the tarball holds");
  const manifest = JSON.parse(readFileSync(path.join(web, "packages/react/package.json"), "utf8"));
  for (const field of ["dependencies", "peerDependencies", "optionalDependencies"]) {
    const clerk = Object.keys(manifest[field] ?? {}).filter((name) => name.startsWith("@clerk/"));
    assert.deepEqual(clerk, [], `${ours} has no Clerk package in ${field}`);
  }

  for (const app of apps) {
    const dir = path.join(work, app.dir);
    cpSync(path.join(compat, app.dir), dir, {
      recursive: true,
      filter: (source) => !/[/\\](node_modules|build)$/.test(source),
    });
    cpSync(path.join(compat, "render.mjs"), path.join(dir, "render.mjs"));

    log(`${app.dir}: npm ci (${app.sdk}, from the committed lock)`);
    run("npm", ["ci", ...npmQuiet], dir);
    const before = lockedPackages(dir);
    log(`${app.dir}: npm install ${path.basename(tarball)}`);
    run("npm", ["install", tarball, ...npmQuiet], dir);
    const after = lockedPackages(dir);

    // Ours adds itself and nothing else: no second Clerk SDK, nothing deprecated.
    const added = Object.keys(after).filter((where) => !(where in before));
    const removed = Object.keys(before).filter((where) => !(where in after));
    const changed = Object.keys(before).filter((where) => where in after && before[where].version !== after[where].version);
    assert.deepEqual(added, [`node_modules/${ours}`], `${app.dir}: installing ours added only ours`);
    assert.deepEqual(removed, [], `${app.dir}: installing ours removed nothing`);
    assert.deepEqual(changed, [], `${app.dir}: installing ours changed no version`);
    assert.equal(after[`node_modules/${ours}`].deprecated, undefined, `${app.dir}: ours is not deprecated`);

    // npm ls: clean (exits non-zero on a missing or invalid peer), one Clerk SDK, none under ours.
    const tree = JSON.parse(output("npm", ["ls", "--all", "--json"], dir));
    const everything = listed(tree);
    const sdks = [...new Set(everything.filter((p) => p.name.startsWith("@clerk/") && !clerkHelpers.has(p.name)).map((p) => `${p.name}@${p.version}`))];
    assert.equal(sdks.length, 1, `${app.dir}: exactly one Clerk SDK, found ${sdks.join(", ")}`);
    assert.ok(sdks[0].startsWith(`${app.sdk}@`), `${app.dir}: the one Clerk SDK is ${app.sdk}, found ${sdks[0]}`);
    const underOurs = everything.filter((p) => p.trail.includes(ours)).map((p) => p.name);
    assert.ok(
      underOurs.every((name) => name === "react" || name === "@tanstack/react-query"),
      `${app.dir}: under ours only its peers, found ${underOurs.join(", ")}`,
    );
    const deprecatedOfOurs = underOurs.filter((name) => after[`node_modules/${name}`]?.deprecated);
    assert.deepEqual(deprecatedOfOurs, [], `${app.dir}: nothing deprecated through ours`);
    process.stdout.write(output("npm", ["ls", ours, app.sdk, "@tanstack/react-query", "react"], dir));

    log(`${app.dir}: tsc --noEmit`);
    const tsc = path.join(dir, "node_modules", ".bin", "tsc");
    run(tsc, ["--noEmit", "-p", "."], dir);
    // The app skips checking libraries' .d.ts (Clerk's need optional packages); ours is checked.
    run(tsc, [
      ...["--noEmit", "--strict", "--skipLibCheck", "false", "--target", "ES2022", "--lib", "ES2022,DOM"],
      ...["--module", "NodeNext", "--moduleResolution", "NodeNext"],
      `node_modules/${ours}/dist/index.d.ts`,
    ], dir);
    run(tsc, ["-p", "."], dir);
    log(`${app.dir}: rendering in jsdom`);
    run("node", ["render.mjs"], dir);
    passed += 1;
    log(`${app.dir}: ok`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
console.log(`compat: ${passed} passed, ${apps.length - passed} failed (${elapsed()})`);
