import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import {
  ClerkSyncProvider,
  useCurrentUser,
  useOrganizations,
  useSetCalendarStatus,
  type OrganizationMembership,
  type User,
} from "./index";

// Clerk's `useAuth`, played by a controllable double.
const auth = vi.hoisted(() => ({
  state: { isLoaded: true, isSignedIn: false, userId: null as string | null },
  getToken: async (): Promise<string | null> => null,
}));
vi.mock("@clerk/clerk-react", () => ({
  useAuth: () => ({ ...auth.state, getToken: auth.getToken }),
}));

function user(id: string, first: string, microsoft = false): User {
  return {
    id: `00000000-0000-4000-8000-${id.padStart(12, "0")}`,
    clerk_user_id: id,
    email: `${id}@example.test`,
    first_name: first,
    last_name: "Synth",
    microsoft_calendar_connected: microsoft,
    google_calendar_connected: false,
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
  auth.state = { isLoaded: true, isSignedIn: userId !== null, userId };
  auth.getToken = async () => (userId ? `token-of-${userId}` : null);
}

function Probe({ name }: { name: string }) {
  const { user, isLoading, isSignedIn, error } = useCurrentUser();
  const state = isLoading
    ? "loading"
    : !isSignedIn
      ? "signed-out"
      : error
        ? `error:${error.status}:${error.code}`
        : `user:${user?.first_name}`;
  return <div data-testid={name}>{state}</div>;
}

function renderApp(children: React.ReactNode) {
  return render(<ClerkSyncProvider apiUrl="http://api.test/">{children}</ClerkSyncProvider>);
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
});

describe("useCurrentUser", () => {
  it("is loading until Clerk has loaded", () => {
    auth.state = { isLoaded: false, isSignedIn: false, userId: null };
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
    rerender(
      <ClerkSyncProvider apiUrl="http://api.test/">
        <Probe name="a" />
      </ClerkSyncProvider>,
    );
    expect(screen.getByTestId("a").textContent).toBe("signed-out");

    signIn("user_bob");
    const seen: string[] = [];
    function Recorder() {
      const { user: current } = useCurrentUser();
      if (current) seen.push(current.first_name ?? "");
      return <Probe name="a" />;
    }
    rerender(
      <ClerkSyncProvider apiUrl="http://api.test/">
        <Recorder />
      </ClerkSyncProvider>,
    );
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
    rerender(
      <ClerkSyncProvider apiUrl="http://api.test/">
        <Recorder />
      </ClerkSyncProvider>,
    );
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("BobCo=org:member"));
    expect(seen).not.toContain("Acme");
  });
});
