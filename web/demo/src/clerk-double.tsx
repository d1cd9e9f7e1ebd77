// A stand-in for @clerk/react 6 in the end-to-end test (vite.config.ts aliases it when
// CLERK_DOUBLE=1). The test decides who is signed in (window.__clerkDouble.setUser) and mints the
// RS256 session tokens with its own key (window.__mintSessionToken, exposed by Playwright), so the
// real api verifies them exactly as it verifies Clerk's. Like Clerk's Core 3 SDKs, `getToken`
// answers null when signed out and throws an error with `code: "clerk_offline"` while the
// browser is offline (Clerk does after ~15 s of retries; this double after a moment).
import { useCallback, useSyncExternalStore, type ReactNode } from "react";

declare global {
  interface Window {
    __clerkDouble?: {
      userId: string | null;
      setUser: (id: string | null) => void;
      /** How many times getToken threw `clerk_offline`. */
      offlineErrors: number;
      /** How long getToken takes before it answers (or finds the browser offline). */
      tokenDelayMs: number;
    };
    __mintSessionToken?: (userId: string) => Promise<string>;
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
