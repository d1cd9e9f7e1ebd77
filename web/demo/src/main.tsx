import { ClerkProvider, useAuth } from "@clerk/react";
import { ClerkSyncProvider } from "@clerk-sync/react";
import { StrictMode, type ReactNode } from "react";
import { createRoot } from "react-dom/client";

import { App } from "./App";

const publishableKey = import.meta.env.VITE_CLERK_PUBLISHABLE_KEY ?? "";
const apiUrl = import.meta.env.VITE_API_URL ?? "http://127.0.0.1:8081";

/** clerk-sync's provider, handed what this app's Clerk SDK (`@clerk/react` 6) says. */
function ClerkSync({ children }: { children: ReactNode }) {
  const { getToken, isLoaded, isSignedIn, userId } = useAuth();
  return (
    <ClerkSyncProvider
      apiUrl={apiUrl}
      getToken={getToken}
      isLoaded={isLoaded}
      isSignedIn={isSignedIn}
      userId={userId}
    >
      {children}
    </ClerkSyncProvider>
  );
}

const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <ClerkProvider publishableKey={publishableKey}>
        <ClerkSync>
          <App />
        </ClerkSync>
      </ClerkProvider>
    </StrictMode>,
  );
}
