import { fileURLToPath } from "node:url";

import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// CLERK_DOUBLE=1 builds the page against a stand-in for Clerk's frontend SDK, @clerk/react 6
// (src/clerk-double.tsx), whose session tokens the end-to-end test mints: Clerk itself cannot be
// reached from the test machine. Every other build uses @clerk/react.
const double = process.env.CLERK_DOUBLE === "1";

export default defineConfig({
  plugins: [react()],
  resolve: {
    alias: double
      ? { "@clerk/react": fileURLToPath(new URL("./src/clerk-double.tsx", import.meta.url)) }
      : {},
  },
  build: { outDir: double ? "dist-e2e" : "dist" },
  preview: { strictPort: true },
});
