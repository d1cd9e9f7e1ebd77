// A stand-in for @clerk/clerk-react in the end-to-end test (vite.config.ts aliases it when
// CLERK_DOUBLE=1). The test decides who is signed in (window.__clerkDouble.setUser) and mints the
// RS256 session tokens with its own key (window.__mintSessionToken, exposed by Playwright), so the
// real api verifies them exactly as it verifies Clerk's.
import { useSyncExternalStore, type ReactNode } from "react";

declare global {
  interface Window {
    __clerkDouble?: { userId: string | null; setUser: (id: string | null) => void };
    __mintSessionToken?: (userId: string) => Promise<string>;
  }
}

const listeners = new Set<() => void>();
let userId: string | null = new URLSearchParams(window.location.search).get("as");

window.__clerkDouble = {
  get userId() {
    return userId;
  },
  setUser(id: string | null) {
    userId = id;
    listeners.forEach((listener) => listener());
  },
};

function subscribe(listener: () => void) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function ClerkProvider({ children }: { children: ReactNode; publishableKey?: string }) {
  return <>{children}</>;
}

export function useAuth() {
  const current = useSyncExternalStore(subscribe, () => userId);
  return {
    isLoaded: true,
    isSignedIn: current !== null,
    userId: current,
    getToken: async () => {
      if (current === null || !window.__mintSessionToken) return null;
      return window.__mintSessionToken(current);
    },
  };
}
