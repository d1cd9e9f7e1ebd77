import { useAuth } from "@clerk/clerk-react";
import { QueryClient, QueryClientProvider, useQueryClient } from "@tanstack/react-query";
import { createContext, useContext, useEffect, useState, type ReactNode } from "react";

import { ClerkSyncError } from "./api";

/** The prefix of every query key this package uses. */
export const QUERY_KEY = "clerk-sync";

interface Settings {
  apiUrl: string;
}

const SettingsContext = createContext<Settings | null>(null);

/** The provider's settings; throws outside `<ClerkSyncProvider>`. */
export function useClerkSyncSettings(): Settings {
  const settings = useContext(SettingsContext);
  if (!settings) {
    throw new Error("clerk-sync hooks must be used inside <ClerkSyncProvider apiUrl=…>");
  }
  return settings;
}

/** Retries what can pass (the API or Clerk unavailable), at most 3 times; never 4xx. */
function retry(failures: number, error: unknown): boolean {
  return failures < 3 && error instanceof ClerkSyncError && error.retryable;
}

function makeQueryClient(): QueryClient {
  return new QueryClient({ defaultOptions: { queries: { retry } } });
}

/** Drops every cached answer when the user signs out or another user signs in. */
function ClearOnSignOut({ children }: { children: ReactNode }) {
  const { isLoaded, isSignedIn, userId } = useAuth();
  const client = useQueryClient();
  const [seen, setSeen] = useState<string | null | undefined>(undefined);
  const current = isLoaded ? (isSignedIn ? (userId ?? null) : null) : undefined;
  useEffect(() => {
    if (current === undefined) return;
    if (seen !== undefined && seen !== current) {
      // Every other user's answers go; the current user's (maybe being fetched) stay.
      client.removeQueries({
        queryKey: [QUERY_KEY],
        predicate: (query) => query.queryKey[1] !== current,
      });
    }
    setSeen(current);
  }, [client, current, seen]);
  return <>{children}</>;
}

export interface ClerkSyncProviderProps {
  /** Where clerk-sync's api listens, e.g. `https://api.example.com`. */
  apiUrl: string;
  /** A QueryClient of the app's own; by default the provider makes one. */
  queryClient?: QueryClient;
  children: ReactNode;
}

/**
 * Makes the hooks work: put it inside Clerk's `<ClerkProvider>`. Answers are cached per signed-in
 * user (one request however many components ask), refetched when the window regains focus, and
 * dropped on sign-out.
 */
export function ClerkSyncProvider({ apiUrl, queryClient, children }: ClerkSyncProviderProps) {
  const [client] = useState(() => queryClient ?? makeQueryClient());
  return (
    <SettingsContext.Provider value={{ apiUrl }}>
      <QueryClientProvider client={client}>
        <ClearOnSignOut>{children}</ClearOnSignOut>
      </QueryClientProvider>
    </SettingsContext.Provider>
  );
}
