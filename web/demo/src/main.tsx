import { ClerkProvider, useAuth, useUser } from "@clerk/react";
import { ClerkSyncProvider, useCurrentUser } from "@clerk-sync/react";
import { StrictMode, useCallback, type ReactNode } from "react";
import { createRoot } from "react-dom/client";

import { App, type OnReconnect } from "./App";

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

/**
 * The Reconnect button's handler: Clerk's `externalAccount.reauthorize` for the provider's
 * account, then the provider's consent page, which sends the user back here (Clerk then sends
 * `user.updated`, and clerk-sync checks the account again). Clerk's double (the end-to-end test)
 * answers without a consent page: the user is read again at once.
 */
function useReconnect(): OnReconnect {
  const { user: clerkUser } = useUser();
  const { refresh } = useCurrentUser();
  return useCallback(
    async (provider) => {
      const account = clerkUser?.externalAccounts.find((a) => a.provider === provider);
      if (!account) {
        console.error(`no ${provider} account in Clerk to reconnect`);
        return;
      }
      try {
        const reauthorized = await account.reauthorize({ redirectUrl: window.location.href });
        const consent = reauthorized.verification?.externalVerificationRedirectURL;
        if (consent) {
          window.location.assign(consent.href);
          return;
        }
        await refresh();
      } catch (error) {
        console.error(`could not reconnect ${provider}`, error);
      }
    },
    [clerkUser, refresh],
  );
}

function ReconnectingApp() {
  return <App onReconnect={useReconnect()} />;
}

const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <ClerkProvider publishableKey={publishableKey}>
        <ClerkSync>
          <ReconnectingApp />
        </ClerkSync>
      </ClerkProvider>
    </StrictMode>,
  );
}
