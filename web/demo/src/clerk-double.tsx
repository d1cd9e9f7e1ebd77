// A stand-in for @clerk/react 6 in the end-to-end test (vite.config.ts aliases it when
// CLERK_DOUBLE=1). The test decides who is signed in (window.__clerkDouble.setUser) and mints the
// RS256 session tokens with its own key (window.__mintSessionToken, exposed by Playwright), so the
// real api verifies them exactly as it verifies Clerk's. Like Clerk's Core 3 SDKs, `getToken`
// answers null when signed out and throws an error with `code: "clerk_offline"` while the
// browser is offline (Clerk does after ~15 s of retries; this double after a moment).
// `useUser()` gives the signed-in user a Google and a Microsoft external account whose
// `reauthorize` records the call and lets the test play the provider's consent
// (window.__reauthorize, exposed by Playwright: the test's fake Clerk verifies the account again
// and sends `user.updated`), then answers with no consent page to go to.
import { useCallback, useMemo, useSyncExternalStore, type ReactNode } from "react";

declare global {
  interface Window {
    __clerkDouble?: {
      userId: string | null;
      setUser: (id: string | null) => void;
      /** How many times getToken threw `clerk_offline`. */
      offlineErrors: number;
      /** How long getToken takes before it answers (or finds the browser offline). */
      tokenDelayMs: number;
      /** Every `externalAccount.reauthorize` call, in order. */
      reauthorized: { userId: string; provider: string; redirectUrl?: string }[];
    };
    __mintSessionToken?: (userId: string) => Promise<string>;
    __reauthorize?: (userId: string, provider: string) => Promise<void>;
  }
}

const listeners = new Set<() => void>();
let userId: string | null = new URLSearchParams(window.location.search).get("as");
let offlineErrors = 0;

window.__clerkDouble = {
  get userId() {
    return userId;
  },
  setUser(id: string | null) {
    userId = id;
    listeners.forEach((listener) => listener());
  },
  get offlineErrors() {
    return offlineErrors;
  },
  tokenDelayMs: 0,
  reauthorized: [],
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function subscribe(listener: () => void) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Core 3's `ClerkOfflineError`: a `ClerkRuntimeError` with its code. */
class ClerkOfflineError extends Error {
  readonly code = "clerk_offline";
  constructor() {
    super("Network request failed while offline. Returning non-cached token.");
    this.name = "ClerkOfflineError";
  }
}

export function ClerkProvider({ children }: { children: ReactNode; publishableKey?: string }) {
  return <>{children}</>;
}

export function useAuth() {
  const current = useSyncExternalStore(subscribe, () => userId);
  const getToken = useCallback(async (): Promise<string | null> => {
    if (current === null) return null;
    const delay = window.__clerkDouble?.tokenDelayMs ?? 0;
    if (delay > 0) await sleep(delay);
    if (!navigator.onLine) {
      await sleep(300);
      offlineErrors += 1;
      throw new ClerkOfflineError();
    }
    if (!window.__mintSessionToken) return null;
    return window.__mintSessionToken(current);
  }, [current]);
  return {
    isLoaded: true,
    isSignedIn: current !== null,
    userId: current,
    getToken,
  };
}

/** The part of Clerk's `ExternalAccountResource` the demo uses. */
interface ExternalAccountDouble {
  provider: string;
  reauthorize: (params: { redirectUrl?: string }) => Promise<{
    provider: string;
    verification: { externalVerificationRedirectURL: URL | null } | null;
  }>;
}

function externalAccount(owner: string, provider: string): ExternalAccountDouble {
  return {
    provider,
    async reauthorize({ redirectUrl }) {
      window.__clerkDouble?.reauthorized.push({ userId: owner, provider, redirectUrl });
      await window.__reauthorize?.(owner, provider);
      return { provider, verification: { externalVerificationRedirectURL: null } };
    },
  };
}

export function useUser() {
  const current = useSyncExternalStore(subscribe, () => userId);
  const user = useMemo(
    () =>
      current === null
        ? null
        : { id: current, externalAccounts: ["google", "microsoft"].map((p) => externalAccount(current, p)) },
    [current],
  );
  return { isLoaded: true, isSignedIn: current !== null, user };
}
