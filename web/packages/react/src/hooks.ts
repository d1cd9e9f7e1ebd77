import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useCallback } from "react";

import { call, type CalendarConnection, type ClerkSyncError, type Provider, type User } from "./api";
import { QUERY_KEY, onServer, retry, useClerkSyncSettings } from "./provider";
import type { components } from "./schema";

/** An organization as the API serves it (generated from the API's OpenAPI document). */
export type Organization = components["schemas"]["Organization"];
/** One of the signed-in user's organizations, with their `role` and when they joined. */
export type OrganizationMembership = components["schemas"]["OrganizationMembership"];
/** A member of an organization, as `GET /organizations/{id}/members` serves it. */
export type OrganizationMember = components["schemas"]["OrganizationMember"];

export interface CurrentUser {
  /** The signed-in user as clerk-sync stores it; null while loading, signed out, or unknown. */
  user: User | null;
  /** True until it is known whether someone is signed in and, if so, their user is read. */
  isLoading: boolean;
  /** Whether a user is signed in (the provider's `isSignedIn`); false while loading. */
  isSignedIn: boolean;
  /** The last failure, if reading the user failed (after retries for what can pass). */
  error: ClerkSyncError | null;
  /** Reads the user again. */
  refresh: () => Promise<void>;
}

/**
 * Who is signed in and their session token getter, as the provider was handed them. On a server
 * nobody counts as known to be signed in yet: nothing is fetched there (Clerk's `getToken` throws
 * `clerk_runtime_not_browser` outside a browser) and the hooks render their loading state.
 */
function useSession() {
  const { session } = useClerkSyncSettings();
  return {
    ...session,
    /** Whether the hooks may read the API now. */
    canFetch: session.isSignedIn && !onServer,
  };
}

/**
 * The signed-in user: `GET /me`. A user who just signed up is fetched from Clerk by the API on
 * this first read (lazy sync), so there is no "not synced yet" state to handle.
 */
export function useCurrentUser(): CurrentUser {
  const { apiUrl } = useClerkSyncSettings();
  const session = useSession();
  const query = useQuery<User | null, ClerkSyncError>({
    queryKey: [QUERY_KEY, session.userId, "me"],
    enabled: session.canFetch,
    retry,
    queryFn: () => call<User>(apiUrl, session.getToken, "/me"),
  });
  const { refetch } = query;
  const refresh = useCallback(async () => {
    await refetch();
  }, [refetch]);
  return {
    user: session.isSignedIn ? (query.data ?? null) : null,
    isLoading: !session.isLoaded || (session.isSignedIn && query.isPending && !query.isError),
    isSignedIn: session.isSignedIn,
    error: session.isSignedIn ? (query.error ?? null) : null,
    refresh,
  };
}

export interface CalendarConnections {
  /** The user's calendar connections (no tokens ever); empty while loading or signed out. */
  connections: CalendarConnection[];
  isLoading: boolean;
  error: ClerkSyncError | null;
  refresh: () => Promise<void>;
}

/** The signed-in user's calendar connections: `GET /users/{id}/calendar-connections`. */
export function useCalendarConnections(): CalendarConnections {
  const { apiUrl } = useClerkSyncSettings();
  const session = useSession();
  const { user } = useCurrentUser();
  const query = useQuery<CalendarConnection[], ClerkSyncError>({
    queryKey: [QUERY_KEY, session.userId, "calendar-connections"],
    enabled: session.canFetch && user !== null,
    retry,
    queryFn: () =>
      call<CalendarConnection[]>(
        apiUrl,
        session.getToken,
        `/users/${encodeURIComponent(user?.id ?? "")}/calendar-connections`,
      ),
  });
  const { refetch } = query;
  const refresh = useCallback(async () => {
    await refetch();
  }, [refetch]);
  return {
    connections: query.data ?? [],
    isLoading: session.isSignedIn && (user === null || query.isPending) && !query.isError,
    error: query.error ?? null,
    refresh,
  };
}

export interface Organizations {
  /** The signed-in user's organizations with their role in each; empty while loading or signed out. */
  organizations: OrganizationMembership[];
  isLoading: boolean;
  error: ClerkSyncError | null;
  refresh: () => Promise<void>;
}

/**
 * The signed-in user's organizations: `GET /me/organizations`. Each entry is
 * `{ organization, role, joined_at, created_at, updated_at }`; only memberships linked to the
 * user's own row count.
 */
export function useOrganizations(): Organizations {
  const { apiUrl } = useClerkSyncSettings();
  const session = useSession();
  const query = useQuery<OrganizationMembership[], ClerkSyncError>({
    queryKey: [QUERY_KEY, session.userId, "organizations"],
    enabled: session.canFetch,
    retry,
    queryFn: () => call<OrganizationMembership[]>(apiUrl, session.getToken, "/me/organizations"),
  });
  const { refetch } = query;
  const refresh = useCallback(async () => {
    await refetch();
  }, [refetch]);
  return {
    organizations: session.isSignedIn ? (query.data ?? []) : [],
    isLoading: !session.isLoaded || (session.isSignedIn && query.isPending && !query.isError),
    error: session.isSignedIn ? (query.error ?? null) : null,
    refresh,
  };
}

export interface SetCalendarStatus {
  /**
   * Connects (`true`) or disconnects (`false`) the signed-in user's calendar of `provider`:
   * `PATCH /users/{id}/calendar-status`. A disconnect lasts through later updates from Clerk
   * until the user connects again. Resolves with the updated user.
   */
  setCalendarStatus: (provider: Provider, connected: boolean) => Promise<User>;
  isPending: boolean;
  error: ClerkSyncError | null;
}

/** Changing the signed-in user's calendar status; the cached user and connections follow. */
export function useSetCalendarStatus(): SetCalendarStatus {
  const { apiUrl } = useClerkSyncSettings();
  const session = useSession();
  const { user } = useCurrentUser();
  const client = useQueryClient();
  const mutation = useMutation<User, ClerkSyncError, { provider: Provider; connected: boolean }>({
    mutationFn: ({ provider, connected }) => {
      if (!user) {
        return Promise.reject(new Error("no signed-in user to change"));
      }
      return call<User>(apiUrl, session.getToken, `/users/${encodeURIComponent(user.id)}/calendar-status`, {
        method: "PATCH",
        body: { provider, connected },
      });
    },
    onSuccess: (updated) => {
      client.setQueryData([QUERY_KEY, session.userId, "me"], updated);
      void client.invalidateQueries({ queryKey: [QUERY_KEY, session.userId, "calendar-connections"] });
    },
  });
  const { mutateAsync } = mutation;
  const setCalendarStatus = useCallback(
    (provider: Provider, connected: boolean) => mutateAsync({ provider, connected }),
    [mutateAsync],
  );
  return { setCalendarStatus, isPending: mutation.isPending, error: mutation.error ?? null };
}
