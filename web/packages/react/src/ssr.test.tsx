// @vitest-environment node
// Server rendering (Next.js, Remix, …): no window. Clerk's getToken throws
// `clerk_runtime_not_browser` there (Core 3); the hooks must render their loading state and never
// ask for a token.
import { renderToString } from "react-dom/server";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import {
  ClerkSyncProvider,
  useCalendarConnections,
  useCurrentUser,
  useOrganizations,
  useSetCalendarStatus,
} from "./index";

function Page() {
  const { user, isLoading, isSignedIn, error } = useCurrentUser();
  const { connections, isLoading: connectionsLoading } = useCalendarConnections();
  const { organizations, isLoading: organizationsLoading } = useOrganizations();
  const { isPending } = useSetCalendarStatus();
  const me = isLoading ? "loading" : !isSignedIn ? "signed-out" : error ? `error:${error.code}` : `user:${user?.first_name}`;
  return (
    <p>
      {`me=${me} connections=${connectionsLoading ? "loading" : connections.length} ` +
        `organizations=${organizationsLoading ? "loading" : organizations.length} pending=${isPending}`}
    </p>
  );
}

/** Core 3's getToken during server rendering. */
const getToken = vi.fn(async (): Promise<string | null> => {
  const error = new Error("useAuth().getToken() can only be used in browser environments");
  throw Object.assign(error, { code: "clerk_runtime_not_browser" });
});

beforeEach(() => {
  vi.stubGlobal(
    "fetch",
    vi.fn(async () => {
      throw new Error("no request may be made while rendering on the server");
    }),
  );
  getToken.mockClear();
});

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("server rendering", () => {
  it("has no window here", () => {
    expect(typeof window).toBe("undefined");
  });

  it("renders the loading state for a signed-in user without asking for a token", async () => {
    const html = renderToString(
      <ClerkSyncProvider apiUrl="http://api.test" getToken={getToken} isSignedIn={true} userId="user_ada" isLoaded={true}>
        <Page />
      </ClerkSyncProvider>,
    );
    expect(html).toContain("me=loading connections=loading organizations=loading pending=false");
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(getToken).not.toHaveBeenCalled();
    expect(fetch).not.toHaveBeenCalled();
  });

  it("renders the loading state while Clerk loads", () => {
    const html = renderToString(
      <ClerkSyncProvider apiUrl="http://api.test" getToken={getToken} isSignedIn={undefined} userId={undefined}>
        <Page />
      </ClerkSyncProvider>,
    );
    expect(html).toContain("me=loading connections=0 organizations=loading pending=false");
    expect(getToken).not.toHaveBeenCalled();
  });

  it("renders a known sign-out as signed out", () => {
    const html = renderToString(
      <ClerkSyncProvider apiUrl="http://api.test" getToken={getToken} isSignedIn={false} userId={null}>
        <Page />
      </ClerkSyncProvider>,
    );
    expect(html).toContain("me=signed-out connections=0 organizations=0 pending=false");
    expect(getToken).not.toHaveBeenCalled();
  });
});
