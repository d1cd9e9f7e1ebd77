// Calls to clerk-sync's read API with the signed-in user's Clerk session token.
import type { components } from "./schema";

/** A user as the API serves it (generated from the API's OpenAPI document). */
export type User = components["schemas"]["User"];
/** A calendar connection (never carries a token). */
export type CalendarConnection = components["schemas"]["CalendarConnection"];
/** `google` or `microsoft`. */
export type Provider = components["schemas"]["ProviderName"];
type ErrorBody = components["schemas"]["ErrorBody"];

/** A failed call: the HTTP status and the API's `{error, message}`. */
export class ClerkSyncError extends Error {
  readonly status: number;
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(`${code}: ${message}`);
    this.name = "ClerkSyncError";
    this.status = status;
    this.code = code;
  }

  /** Whether trying again later can help (the API or Clerk was unavailable). */
  get retryable(): boolean {
    return this.status >= 500 || this.status === 429 || this.status === 0;
  }
}

/** Returns the current session token, or null when signed out (Clerk's `getToken`). */
export type GetToken = () => Promise<string | null>;

/** `fetch` of `path` on the API with the session token; JSON in and out. */
export async function call<T>(
  apiUrl: string,
  getToken: GetToken,
  path: string,
  init: { method?: string; body?: unknown } = {},
): Promise<T> {
  const token = await getToken();
  if (!token) {
    throw new ClerkSyncError(401, "unauthenticated", "signed out: no session token");
  }
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
