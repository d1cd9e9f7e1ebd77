// An app on @clerk/react 6 (Core 3), wired to clerk-sync as the README says: the app's own
// useAuth() values go to <ClerkSyncProvider>. Type-checked against the packed @clerk-sync/react and
// rendered by ../render.mjs (see ../run.mjs).
import { ClerkProvider, useAuth } from "@clerk/react";
import { ClerkSyncError, ClerkSyncProvider, useCurrentUser, type User } from "@clerk-sync/react";
import type { ReactNode } from "react";

/** clerk-sync's provider, handed what this app's Clerk SDK says. */
export function ClerkSync({ apiUrl, children }: { apiUrl: string; children: ReactNode }) {
  const { getToken, isLoaded, isSignedIn, userId } = useAuth();
  return (
    <ClerkSyncProvider apiUrl={apiUrl} getToken={getToken} isLoaded={isLoaded} isSignedIn={isSignedIn} userId={userId}>
      {children}
    </ClerkSyncProvider>
  );
}

/** The hook's state as one word and a name: `loading`, `signed-out`, `user:<first name>`, `error:<code>`. */
export function Profile() {
  const { user, isLoading, isSignedIn, error } = useCurrentUser();
  if (isLoading) return <p>loading</p>;
  if (!isSignedIn) return <p>signed-out</p>;
  if (!user) return <p>{error instanceof ClerkSyncError ? `error:${error.code}` : "none"}</p>;
  const shown: User = user;
  return <p>{`user:${shown.first_name ?? ""}`}</p>;
}

/** The whole app: Clerk's provider, then clerk-sync's inside it. */
export function App({ publishableKey, apiUrl }: { publishableKey: string; apiUrl: string }) {
  return (
    <ClerkProvider publishableKey={publishableKey}>
      <ClerkSync apiUrl={apiUrl}>
        <Profile />
      </ClerkSync>
    </ClerkProvider>
  );
}
