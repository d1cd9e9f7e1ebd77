import { ClerkProvider } from "@clerk/clerk-react";
import { ClerkSyncProvider } from "@clerk-sync/react";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import { App } from "./App";

const publishableKey = import.meta.env.VITE_CLERK_PUBLISHABLE_KEY ?? "";
const apiUrl = import.meta.env.VITE_API_URL ?? "http://127.0.0.1:8081";

const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <ClerkProvider publishableKey={publishableKey}>
        <ClerkSyncProvider apiUrl={apiUrl}>
          <App />
        </ClerkSyncProvider>
      </ClerkProvider>
    </StrictMode>,
  );
}
