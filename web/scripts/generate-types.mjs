// Generates packages/react/src/schema.ts from the api's OpenAPI document, so that the package's
// types are never written by hand.
//
//   node scripts/generate-types.mjs <url-or-file>           write the types
//   node scripts/generate-types.mjs --check <url-or-file>   exit 1 if the committed types differ
//
// The source is a running api's /openapi.json (e.g. http://127.0.0.1:8081/openapi.json) or a
// file holding it.
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import openapiTS, { astToString } from "openapi-typescript";

const target = fileURLToPath(new URL("../packages/react/src/schema.ts", import.meta.url));
const header =
  "// Generated from clerk-sync's /openapi.json by web/scripts/generate-types.mjs: do not edit.\n" +
  "// `npm run generate-types -- <api-url>/openapi.json` regenerates it; CI fails when it drifts.\n\n";

/** The types for the OpenAPI document at `source` (a URL or a file path). */
export async function generate(source) {
  const text = /^https?:\/\//.test(source)
    ? await (await fetch(source)).text()
    : await readFile(source, "utf8");
  const ast = await openapiTS(JSON.parse(text));
  return header + astToString(ast);
}

/** Whether the committed types equal those generated from `source`. */
export async function committedTypesMatch(source) {
  const [fresh, committed] = await Promise.all([generate(source), readFile(target, "utf8")]);
  return fresh === committed;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const check = args[0] === "--check";
  const source = check ? args[1] : args[0];
  if (!source) {
    console.error("usage: generate-types.mjs [--check] <openapi.json URL or file>");
    process.exit(2);
  }
  if (check) {
    if (!(await committedTypesMatch(source))) {
      console.error(
        `packages/react/src/schema.ts differs from what the api serves at ${source}: run npm run generate-types -- ${source}`,
      );
      process.exit(1);
    }
    console.log("packages/react/src/schema.ts matches the api's OpenAPI document");
  } else {
    await writeFile(target, await generate(source));
    console.log(`wrote ${target}`);
  }
}
