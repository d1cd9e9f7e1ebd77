import { QueryClient, QueryClientProvider, onlineManager, useQueryClient, type Query } from "@tanstack/react-query";
import { createContext, useContext, useEffect, useMemo, useState, type ReactNode } from "react";

import { ClerkSyncError, type GetToken } from "./api";

/** The prefix of every query key this package uses. */
export const QUERY_KEY = "clerk-sync";

/** Who is signed in, as the provider's props tell it. */
export interface Session {
  /** False while Clerk loads: it is not known yet whether someone is signed in. */
  isLoaded: boolean;
  isSignedIn: boolean;
  /** The signed-in user's Clerk id; null while loading or signed out. */
  userId: string | null;
  getToken: GetToken;
}

interface Settings {
  apiUrl: string;
  session: Session;
}

const SettingsContext = createContext<Settings | null>(null);

/** The provider's settings; throws outside `<ClerkSyncProvider>`. */
export function useClerkSyncSettings(): Settings {
  const settings = useContext(SettingsContext);
  if (!settings) {
    throw new Error(
      "clerk-sync hooks must be used inside <ClerkSyncProvider apiUrl getToken isSignedIn userId>",
    );
  }
  return settings;
}

/**
 * Retries what can pass (the API or Clerk unavailable, the browser offline), at most 3 times;
 * never 4xx. Set on each query, so it holds with an app's own QueryClient too. While the browser
 * is offline TanStack Query holds a retry until it is back online.
 */
export function retry(failures: number, error: unknown): boolean {
  return failures < 3 && error instanceof ClerkSyncError && error.retryable;
}

/** True during server rendering (no `window`): the hooks then render their loading state. */
export const onServer = typeof window === "undefined";

function failedOffline(query: Query): boolean {
  const failure = query.state.error ?? query.state.fetchFailureReason;
  return (
    failure instanceof ClerkSyncError && (failure.code === "clerk_offline" || failure.code === "network_error")
  );
}

/**
 * Reads again, once the browser is back online, whatever failed because it was offline. TanStack
 * Query refetches on reconnect too, but only when it saw the browser go offline, and not when the
 * app's QueryClient turned `refetchOnReconnect` off; Clerk can report `clerk_offline` without that.
 */
function RefetchOnReconnect() {
  const client = useQueryClient();
  useEffect(() => {
    const refetch = () => {
      void client.refetchQueries(
        { queryKey: [QUERY_KEY], type: "active", predicate: failedOffline },
        { cancelRefetch: false },
      );
    };
    const unsubscribe = onlineManager.subscribe((online) => {
      if (online) refetch();
    });
    // React Native has a `window` without `addEventListener`.
    const target = typeof window !== "undefined" && typeof window.addEventListener === "function" ? window : null;
    target?.addEventListener("online", refetch);
    return () => {
      unsubscribe();
      target?.removeEventListener("online", refetch);
    };
  }, [client]);
  return null;
}

/** Drops every cached answer when the user signs out or another user signs in. */
function ClearOnSignOut({ session }: { session: Session }) {
  const client = useQueryClient();
  const [seen, setSeen] = useState<string | null | undefined>(undefined);
  const current = session.isLoaded ? session.userId : undefined;
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
  return null;
}

let warnedMissingUserId = false;

/** What the props say, in the hooks' terms. */
function toSession(props: ClerkSyncProviderProps): Session {
  const { isLoaded, isSignedIn, userId, getToken } = props;
  if (isLoaded === false || isSignedIn === undefined || isSignedIn === null) {
    return { isLoaded: false, isSignedIn: false, userId: null, getToken };
  }
  if (!isSignedIn) {
    return { isLoaded: true, isSignedIn: false, userId: null, getToken };
  }
  if (!userId) {
    // Signed in, but whose answers to cache is unknown: wait (Clerk gives both together).
    if (!warnedMissingUserId) {
      warnedMissingUserId = true;
      console.error("<ClerkSyncProvider>: isSignedIn is true but userId is missing; pass useAuth()'s userId");
    }
    return { isLoaded: false, isSignedIn: false, userId: null, getToken };
  }
  return { isLoaded: true, isSignedIn: true, userId, getToken };
}

export interface ClerkSyncProviderProps {
  /** Where clerk-sync's api listens, e.g. `https://api.example.com`. */
  apiUrl: string;
  /** `useAuth().getToken` of the app's Clerk SDK. */
  getToken: GetToken;
  /** `useAuth().isSignedIn`: `undefined` while Clerk loads, then `false` or `true`. */
  isSignedIn: boolean | undefined;
  /** `useAuth().userId`: the signed-in user's Clerk id; `null` or `undefined` otherwise. */
  userId: string | null | undefined;
  /** `useAuth().isLoaded`, optional: `false` counts as loading whatever `isSignedIn` says. */
  isLoaded?: boolean;
  /** A QueryClient of the app's own; by default the provider makes one. */
  queryClient?: QueryClient;
  children?: ReactNode;
}

/**
 * Makes the hooks work. Put it inside Clerk's `<ClerkProvider>` and hand it what the app's own
 * Clerk SDK's `useAuth()` returns; this package imports no Clerk package, so any Clerk React SDK
 * works. Answers are cached per signed-in user (one request however many components ask),
 * refetched when the window regains focus or the browser comes back online, and dropped on
 * sign-out.
 */
export function ClerkSyncProvider(props: ClerkSyncProviderProps) {
  const { apiUrl, queryClient, children } = props;
  const [client] = useState(() => queryClient ?? new QueryClient());
  const { isLoaded, isSignedIn, userId, getToken } = toSession(props);
  const settings = useMemo<Settings>(
    () => ({ apiUrl, session: { isLoaded, isSignedIn, userId, getToken } }),
    [apiUrl, isLoaded, isSignedIn, userId, getToken],
  );
  return (
    <SettingsContext.Provider value={settings}>
      <QueryClientProvider client={client}>
        <ClearOnSignOut session={settings.session} />
        <RefetchOnReconnect />
        {children}
      </QueryClientProvider>
    </SettingsContext.Provider>
  );
}
