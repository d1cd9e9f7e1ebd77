import { QueryClient, onlineManager } from "@tanstack/react-query";
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import type { ReactNode } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import {
  ClerkSyncError,
  ClerkSyncProvider,
  useCurrentUser,
  useOrganizations,
  useSetCalendarStatus,
  type OrganizationMembership,
  type User,
} from "./index";

// What the app's Clerk SDK's `useAuth()` returns, handed to the provider as props. `isSignedIn`
// is undefined while Clerk loads; `getToken` defaults to Core 2's shape (null when signed out).
const auth: {
  isLoaded: boolean | undefined;
  isSignedIn: boolean | undefined;
  userId: string | null | undefined;
  getToken: () => Promise<string | null>;
} = { isLoaded: true, isSignedIn: false, userId: null, getToken: async () => null };
function user(id: string, first: string, microsoft = false): User {
  return {
    id: `00000000-0000-4000-8000-${id.padStart(12, "0")}`,
    clerk_user_id: id,
    email: `${id}@example.test`,
    first_name: first,
    last_name: "Synth",
    microsoft_calendar_connected: microsoft,
    microsoft_calendar_status: microsoft ? "connected" : "not_connected",
    google_calendar_connected: false,
    google_calendar_status: "not_connected",
    public_metadata: {},
    banned: false,
    locked: false,
    created_at: "2026-11-30T00:00:00Z",
    updated_at: "2026-11-30T00:00:00Z",
  };
}

type Handler = (url: string, init: RequestInit) => Response;
let calls: { url: string; init: RequestInit }[] = [];
let handler: Handler;

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json" },
  });
}

function signIn(userId: string | null) {
  auth.isLoaded = true;
  auth.isSignedIn = userId !== null;
  auth.userId = userId;
  auth.getToken = async () => (userId ? `token-of-${userId}` : null);
}

/** Clerk's getToken is one function that asks the current session, like this one. */
const getToken = () => auth.getToken();

/** The provider as an app wires it: `<ClerkSyncProvider apiUrl {...useAuth()}>`. */
function app(children: ReactNode, queryClient?: QueryClient) {
  return (
    <ClerkSyncProvider
      apiUrl="http://api.test/"
      {...(queryClient ? { queryClient } : {})}
      getToken={getToken}
      isSignedIn={auth.isSignedIn}
      userId={auth.userId}
      {...(auth.isLoaded === undefined ? {} : { isLoaded: auth.isLoaded })}
    >
      {children}
    </ClerkSyncProvider>
  );
}

/** The hook's state as text: `loading`, `signed-out`, or the user and/or the error. */
function Probe({ name }: { name: string }) {
  const { user, isLoading, isSignedIn, error } = useCurrentUser();
  const shown = [user ? `user:${user.first_name}` : "", error ? `error:${error.status}:${error.code}` : ""];
  const state = isLoading ? "loading" : !isSignedIn ? "signed-out" : shown.filter(Boolean).join(" ") || "none";
  return <div data-testid={name}>{state}</div>;
}

function renderApp(children: ReactNode, queryClient?: QueryClient) {
  return render(app(children, queryClient));
}

beforeEach(() => {
  calls = [];
  handler = () => json(500, { error: "unexpected", message: "no handler" });
  vi.stubGlobal(
    "fetch",
    vi.fn(async (url: string, init: RequestInit) => {
      calls.push({ url, init });
      return handler(url, init);
    }),
  );
  signIn(null);
});

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
  onlineManager.setOnline(true);
});

describe("useCurrentUser", () => {
  it("is loading while Clerk loads (isSignedIn undefined), without asking the API", () => {
    auth.isLoaded = undefined;
    auth.isSignedIn = undefined;
    auth.userId = undefined;
    renderApp(<Probe name="a" />);
    expect(screen.getByTestId("a").textContent).toBe("loading");
    expect(calls).toHaveLength(0);
  });

  it("is loading while isLoaded is false, whatever isSignedIn says", () => {
    signIn("user_ada");
    auth.isLoaded = false;
    handler = () => json(200, user("user_ada", "Ada"));
    renderApp(<Probe name="a" />);
    expect(screen.getByTestId("a").textContent).toBe("loading");
    expect(calls).toHaveLength(0);
  });

  it("is signed out without asking the API", () => {
    renderApp(<Probe name="a" />);
    expect(screen.getByTestId("a").textContent).toBe("signed-out");
    expect(calls).toHaveLength(0);
  });

  it("reads /me once with the session token however many components ask", async () => {
    signIn("user_ada");
    handler = () => json(200, user("user_ada", "Ada"));
    renderApp(
      <>
        <Probe name="a" />
        <Probe name="b" />
        <Probe name="c" />
      </>,
    );
    expect(screen.getByTestId("a").textContent).toBe("loading");
    await waitFor(() => expect(screen.getByTestId("c").textContent).toBe("user:Ada"));
    expect(calls).toHaveLength(1);
    expect(calls[0]?.url).toBe("http://api.test/me");
    expect(new Headers(calls[0]?.init.headers).get("Authorization")).toBe("Bearer token-of-user_ada");
  });

  it("surfaces a client error without retrying it", async () => {
    signIn("user_gone");
    handler = () => json(404, { error: "not_found", message: "no such user" });
    renderApp(<Probe name="a" />);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("error:404:not_found"));
    expect(calls).toHaveLength(1);
  });

  it("reads again when the window regains focus", async () => {
    signIn("user_ada");
    let name = "Ada";
    handler = () => json(200, user("user_ada", name));
    renderApp(<Probe name="a" />);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada"));
    name = "Ada Lovelace";
    act(() => {
      window.dispatchEvent(new Event("visibilitychange"));
      document.dispatchEvent(new Event("visibilitychange"));
    });
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada Lovelace"));
  });

  it("drops the first user's data on sign-out and never shows it to the next user", async () => {
    signIn("user_ada");
    handler = (url, init) => {
      const token = new Headers(init.headers).get("Authorization");
      return token === "Bearer token-of-user_ada"
        ? json(200, user("user_ada", "Ada"))
        : json(200, user("user_bob", "Bob"));
    };
    const { rerender } = renderApp(<Probe name="a" />);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada"));

    signIn(null);
    rerender(app(<Probe name="a" />));
    expect(screen.getByTestId("a").textContent).toBe("signed-out");

    signIn("user_bob");
    const seen: string[] = [];
    function Recorder() {
      const { user: current } = useCurrentUser();
      if (current) seen.push(current.first_name ?? "");
      return <Probe name="a" />;
    }
    rerender(app(<Recorder />));
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Bob"));
    expect(seen).not.toContain("Ada");
  });
});

describe("useSetCalendarStatus", () => {
  it("patches the status and the cached user follows", async () => {
    signIn("user_ada");
    let connected = true;
    handler = (url, init) => {
      if (init.method === "PATCH") {
        const body = JSON.parse(String(init.body)) as { provider: string; connected: boolean };
        expect(body).toEqual({ provider: "microsoft", connected: false });
        connected = false;
      }
      return json(200, user("user_ada", "Ada", connected));
    };
    function Toggle() {
      const { user: current } = useCurrentUser();
      const { setCalendarStatus } = useSetCalendarStatus();
      return (
        <button onClick={() => void setCalendarStatus("microsoft", false)}>
          {current ? (current.microsoft_calendar_connected ? "Connected" : "Not Connected") : "…"}
        </button>
      );
    }
    renderApp(<Toggle />);
    await waitFor(() => expect(screen.getByRole("button").textContent).toBe("Connected"));
    act(() => screen.getByRole("button").click());
    await waitFor(() => expect(screen.getByRole("button").textContent).toBe("Not Connected"));
    const patch = calls.find((c) => c.init.method === "PATCH");
    expect(patch?.url).toBe(`http://api.test/users/${user("user_ada", "Ada").id}/calendar-status`);
  });
});

function membership(clerkId: string, name: string, role: string): OrganizationMembership {
  return {
    organization: {
      id: `00000000-0000-4000-9000-${clerkId.length.toString().padStart(12, "0")}`,
      clerk_organization_id: clerkId,
      name,
      slug: name.toLowerCase(),
      image_url: null,
      public_metadata: { plan: "pro" },
      members_count: 2,
      created_at: "2026-11-30T00:00:00Z",
      updated_at: "2026-11-30T00:00:00Z",
    },
    role,
    joined_at: "2026-11-01T00:00:00Z",
    created_at: "2026-11-30T00:00:00Z",
    updated_at: "2026-11-30T00:00:00Z",
  };
}

function Orgs({ name }: { name: string }) {
  const { organizations, isLoading, error } = useOrganizations();
  const state = isLoading
    ? "loading"
    : error
      ? `error:${error.status}:${error.code}`
      : organizations.map((m) => `${m.organization.name}=${m.role}`).join(",") || "none";
  return <div data-testid={name}>{state}</div>;
}

describe("useOrganizations", () => {
  it("asks nothing and lists nothing when signed out", () => {
    renderApp(<Orgs name="a" />);
    expect(screen.getByTestId("a").textContent).toBe("none");
    expect(calls).toHaveLength(0);
  });

  it("reads /me/organizations once with the session token, with the caller's roles", async () => {
    signIn("user_ada");
    handler = () =>
      json(200, [membership("org_acme", "Acme", "org:admin"), membership("org_beta", "Beta", "org:member")]);
    renderApp(
      <>
        <Orgs name="a" />
        <Orgs name="b" />
      </>,
    );
    expect(screen.getByTestId("a").textContent).toBe("loading");
    await waitFor(() => expect(screen.getByTestId("b").textContent).toBe("Acme=org:admin,Beta=org:member"));
    expect(calls).toHaveLength(1);
    expect(calls[0]?.url).toBe("http://api.test/me/organizations");
    expect(new Headers(calls[0]?.init.headers).get("Authorization")).toBe("Bearer token-of-user_ada");
  });

  it("is an empty list for a user in no organization", async () => {
    signIn("user_eve");
    handler = () => json(200, []);
    renderApp(<Orgs name="a" />);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("none"));
  });

  it("surfaces a client error without retrying it", async () => {
    signIn("user_gone");
    handler = () => json(404, { error: "not_found", message: "no such user" });
    renderApp(<Orgs name="a" />);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("error:404:not_found"));
    expect(calls).toHaveLength(1);
  });

  it("never shows the first user's organizations to the next user", async () => {
    signIn("user_ada");
    handler = (url, init) =>
      new Headers(init.headers).get("Authorization") === "Bearer token-of-user_ada"
        ? json(200, [membership("org_acme", "Acme", "org:admin")])
        : json(200, [membership("org_bobco", "BobCo", "org:member")]);
    const { rerender } = renderApp(<Orgs name="a" />);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("Acme=org:admin"));
    signIn("user_bob");
    const seen: string[] = [];
    function Recorder() {
      const { organizations } = useOrganizations();
      seen.push(...organizations.map((m) => m.organization.name));
      return <Orgs name="a" />;
    }
    rerender(app(<Recorder />));
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("BobCo=org:member"));
    expect(seen).not.toContain("Acme");
  });
});

/** An app's own QueryClient whose retries come at once (the package's retry policy still holds). */
function quickRetries(): QueryClient {
  return new QueryClient({ defaultOptions: { queries: { retryDelay: 1 } } });
}

/** Clerk's `ClerkRuntimeError`s (`ClerkOfflineError` among them): an Error with a `code`. */
class ClerkRuntimeErrorLike extends Error {
  readonly code: string;
  constructor(message: string, code: string) {
    super(message);
    this.code = code;
  }
}

/** What `navigator.onLine` answers from now on; `event` also fires `online`/`offline` on window. */
function browserOnline(online: boolean, event = true) {
  vi.spyOn(navigator, "onLine", "get").mockReturnValue(online);
  if (event) {
    act(() => {
      window.dispatchEvent(new Event(online ? "online" : "offline"));
    });
  }
}

/** What the window does when the tab becomes visible again (TanStack Query refetches then). */
function refocus() {
  act(() => {
    window.dispatchEvent(new Event("visibilitychange"));
  });
}

/** Records every error `useCurrentUser` reports. */
const errors: unknown[] = [];
function ErrorRecorder() {
  const { error } = useCurrentUser();
  if (error && errors.at(-1) !== error) errors.push(error);
  return null;
}

describe("with a Core 2 getToken (@clerk/clerk-react 5: null when signed out or offline)", () => {
  it("signed out: getToken is never asked and nothing is read", async () => {
    const getToken = vi.fn(async () => null);
    auth.getToken = getToken;
    renderApp(<Probe name="a" />);
    expect(screen.getByTestId("a").textContent).toBe("signed-out");
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(getToken).not.toHaveBeenCalled();
    expect(calls).toHaveLength(0);
  });

  it("a null token while the browser is offline is a retryable clerk_offline, not a sign-out", async () => {
    signIn("user_ada");
    let name = "Ada";
    handler = () => json(200, user("user_ada", name));
    errors.length = 0;
    renderApp(
      <>
        <Probe name="a" />
        <ErrorRecorder />
      </>,
      quickRetries(),
    );
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada"));

    // The SDK noticed before the browser's offline event: Core 2 answers null.
    browserOnline(false, false);
    auth.getToken = async () => null;
    refocus();
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada error:0:clerk_offline"));
    const error = errors.at(-1);
    expect(error).toBeInstanceOf(ClerkSyncError);
    expect((error as ClerkSyncError).retryable).toBe(true);

    signIn("user_ada");
    name = "Ada Lovelace";
    browserOnline(true);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada Lovelace"));
  });
});

describe("with a Core 3 getToken (@clerk/react 6: throws clerk_offline while offline)", () => {
  const offline = () => new ClerkRuntimeErrorLike("Network request failed while offline", "clerk_offline");

  it("a first read while offline is a retryable clerk_offline error, retried, then read once back online", async () => {
    signIn("user_ada");
    const getToken = vi.fn(async (): Promise<string | null> => {
      throw offline();
    });
    auth.getToken = getToken;
    handler = () => json(200, user("user_ada", "Ada"));
    errors.length = 0;
    renderApp(
      <>
        <Probe name="a" />
        <ErrorRecorder />
      </>,
      quickRetries(),
    );
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("error:0:clerk_offline"));
    expect(getToken).toHaveBeenCalledTimes(4); // the read and 3 retries
    expect(calls).toHaveLength(0);
    const error = errors.at(-1);
    expect(error).toBeInstanceOf(ClerkSyncError);
    expect((error as ClerkSyncError).code).toBe("clerk_offline");
    expect((error as ClerkSyncError).retryable).toBe(true);

    // Back online (the browser had not said it was offline): the hook reads again by itself.
    getToken.mockImplementation(async () => "token-of-user_ada");
    browserOnline(true);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada"));
    expect(calls).toHaveLength(1);
  });

  it("keeps the cached user while offline and finishes the held read once back online", async () => {
    signIn("user_ada");
    let name = "Ada";
    handler = () => json(200, user("user_ada", name));
    const seen: string[] = [];
    function Recorder() {
      const { isSignedIn, isLoading, user: current } = useCurrentUser();
      seen.push(isLoading ? "loading" : !isSignedIn ? "signed-out" : (current?.first_name ?? "none"));
      return <Probe name="a" />;
    }
    renderApp(<Recorder />, quickRetries());
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada"));
    seen.length = 0;

    // A read starts; the browser goes offline while Clerk is fetching the token, and Clerk gives up.
    let fail: (error: Error) => void = () => {};
    const getToken = vi.fn(
      () =>
        new Promise<string | null>((_, reject) => {
          fail = reject;
        }),
    );
    auth.getToken = getToken;
    refocus();
    await waitFor(() => expect(getToken).toHaveBeenCalledTimes(1));
    browserOnline(false);
    await act(async () => {
      fail(offline());
      await new Promise((resolve) => setTimeout(resolve, 50));
    });
    // The retry waits for the browser; a refocus while offline asks nothing either.
    refocus();
    await act(async () => {
      await new Promise((resolve) => setTimeout(resolve, 50));
    });
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(screen.getByTestId("a").textContent).toBe("user:Ada");

    name = "Ada Lovelace";
    getToken.mockImplementation(async () => "token-of-user_ada");
    browserOnline(true);
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("user:Ada Lovelace"));
    expect(seen.every((state) => state === "Ada" || state === "Ada Lovelace")).toBe(true);
  });
});
