// Calls to clerk-sync's read API with the signed-in user's Clerk session token.
import type { components } from "./schema";

/** A user as the API serves it (generated from the API's OpenAPI document). */
export type User = components["schemas"]["User"];
/** A calendar connection (never carries a token). */
export type CalendarConnection = components["schemas"]["CalendarConnection"];
/** `google` or `microsoft`. */
export type Provider = components["schemas"]["ProviderName"];
/**
 * How the user's calendar of one provider stands (`user.google_calendar_status`,
 * `user.microsoft_calendar_status`): `connected`, `needs_reconnect` (the grant ended: only the
 * user can fix it, by reconnecting the account in Clerk) or `not_connected`.
 */
export type CalendarStatus = components["schemas"]["CalendarStatus"];
type ErrorBody = components["schemas"]["ErrorBody"];

/** A failed call: the HTTP status (0 when no answer came) and the API's `{error, message}`. */
export class ClerkSyncError extends Error {
  readonly status: number;
  readonly code: string;
  readonly #retryable: boolean | undefined;

  constructor(status: number, code: string, message: string, options: { retryable?: boolean } = {}) {
    super(`${code}: ${message}`);
    this.name = "ClerkSyncError";
    this.status = status;
    this.code = code;
    this.#retryable = options.retryable;
  }

  /**
   * Whether trying again later can help: the API or Clerk was unavailable, the network was down,
   * or the browser was offline (`clerk_offline`).
   */
  get retryable(): boolean {
    return this.#retryable ?? (this.status >= 500 || this.status === 429 || this.status === 0);
  }
}

/**
 * The session token getter: Clerk's `useAuth().getToken`, whichever Clerk React SDK the app uses.
 * Resolves to the token, or null when signed out. Core 2 SDKs (`@clerk/clerk-react` 5) also
 * resolve null while offline; Core 3 ones (`@clerk/react` 6) throw an error with
 * `code: "clerk_offline"` instead, and one with `code: "clerk_runtime_not_browser"` on a server.
 */
export type GetToken = () => Promise<string | null>;

/** The `code` of what a Clerk SDK threw (its `ClerkRuntimeError`s carry one), if any. */
function clerkErrorCode(error: unknown): string | undefined {
  if (typeof error === "object" && error !== null && "code" in error) {
    const { code } = error as { code: unknown };
    if (typeof code === "string") return code;
  }
  return undefined;
}

function browserOffline(): boolean {
  return typeof navigator !== "undefined" && navigator.onLine === false;
}

/** The session token, or a `ClerkSyncError` saying why there is none. */
async function sessionToken(getToken: GetToken): Promise<string> {
  let token: string | null;
  try {
    token = await getToken();
  } catch (error) {
    const code = clerkErrorCode(error);
    const message = error instanceof Error ? error.message : String(error);
    if (code === "clerk_offline") {
      // Core 3 offline: not a sign-out; worth trying again once the browser is back online.
      throw new ClerkSyncError(0, "clerk_offline", message, { retryable: true });
    }
    if (code === "clerk_runtime_not_browser") {
      // Asked for a token while rendering on a server: no point in asking again there.
      throw new ClerkSyncError(0, code, message, { retryable: false });
    }
    throw new ClerkSyncError(0, code ?? "session_token_error", message);
  }
  if (!token) {
    if (browserOffline()) {
      // Core 2 SDKs answer null while offline: the same retryable failure as Core 3's.
      throw new ClerkSyncError(0, "clerk_offline", "no session token while the browser is offline", {
        retryable: true,
      });
    }
    throw new ClerkSyncError(401, "unauthenticated", "signed out: no session token");
  }
  return token;
}

/** `fetch` of `path` on the API with the session token; JSON in and out. */
export async function call<T>(
  apiUrl: string,
  getToken: GetToken,
  path: string,
  init: { method?: string; body?: unknown } = {},
): Promise<T> {
  const token = await sessionToken(getToken);
  let response: Response;
  try {
    response = await fetch(`${apiUrl.replace(/\/+$/, "")}${path}`, {
      method: init.method ?? "GET",
      headers: {
        Authorization: `Bearer ${token}`,
        ...(init.body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
  } catch (error) {
    throw new ClerkSyncError(0, "network_error", String(error));
  }
  if (!response.ok) {
    let body: Partial<ErrorBody> = {};
    try {
      body = (await response.json()) as ErrorBody;
    } catch {
      // Not JSON (a proxy's error page): the status says enough.
    }
    throw new ClerkSyncError(
      response.status,
      body.error ?? "http_error",
      body.message ?? response.statusText,
    );
  }
  return (await response.json()) as T;
}
