// Generated from clerk-sync's /openapi.json by web/scripts/generate-types.mjs: do not edit.
// `npm run generate-types -- <api-url>/openapi.json` regenerates it; CI fails when it drifts.

export interface paths {
    "/healthz": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** Liveness: the process answers. */
        get: operations["healthz"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/me": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * The signed-in user. A user not synced yet is fetched from Clerk and stored (lazy sync,
         *     `API_LAZY_SYNC`), so the first read after sign-up finds them.
         */
        get: operations["me"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/me/organizations": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** The signed-in user's organizations, with their role in each. */
        get: operations["my_organizations"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/metrics": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** Prometheus metrics (OpenMetrics text). */
        get: operations["metrics"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/openapi.json": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** This document: the OpenAPI description of every route, generated from the code. */
        get: operations["openapi_json"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/organizations/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** An organization by id. */
        get: operations["get_organization"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/organizations/{id}/members": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** An organization's members (those whose user is stored here). */
        get: operations["list_members"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/readyz": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** Readiness: the database answers `SELECT 1`. */
        get: operations["readyz"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/users": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** A user by email address (service keys only). */
        get: operations["find_user_by_email"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/users/by-clerk-id/{clerk_user_id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** A user by Clerk user id (the caller's own id is synced lazily, as `/me`). */
        get: operations["get_user_by_clerk_id"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/users/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** A user by id. */
        get: operations["get_user"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/users/{id}/calendar-connections": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** The user's calendar connections. */
        get: operations["list_connections"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/users/{id}/calendar-connections/{provider}/token": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * A fresh access token of the user's calendar account (service keys only). Refreshed through
         *     Clerk when the stored one has expired or is about to.
         */
        get: operations["access_token"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/users/{id}/calendar-status": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        /** Marks a calendar connected or disconnected. */
        patch: operations["update_calendar_status"];
        trace?: never;
    };
}
export type webhooks = Record<string, never>;
export interface components {
    schemas: {
        /** @description A usable access token for a trusted backend. */
        AccessToken: {
            /** @description The provider's OAuth access token. */
            access_token: string;
            /**
             * Format: date-time
             * @description When it expires (unknown for some providers).
             */
            expires_at?: string | null;
            provider: components["schemas"]["ProviderName"];
            /** @description The account's id at the provider. */
            provider_user_id: string;
            /** @description Approved scopes, space separated. */
            scopes: string;
        };
        /** @description A connected (or formerly connected) calendar account. Tokens are never part of it. */
        CalendarConnection: {
            /** Format: date-time */
            created_at: string;
            /** @description The account's email address at the provider. */
            email?: string | null;
            /**
             * Format: date-time
             * @description When the stored access token expires.
             */
            expires_at?: string | null;
            /** @description Clerk's external account id (`eac_…`). */
            external_account_id: string;
            /** Format: uuid */
            id: string;
            /**
             * @description `google` or `microsoft`.
             * @example google
             */
            provider: string;
            /** @description The account's id at the provider. */
            provider_user_id: string;
            /** @description Approved scopes, space separated. */
            scopes: string;
            /**
             * @description `connected`, `needs_reconnect` (only the user can fix it: reconnect the account in
             *     Clerk) or `unavailable` (Clerk could not be asked lately; a stored token is still
             *     served while fresh).
             * @example needs_reconnect
             */
            status: string;
            /**
             * Format: date-time
             * @description Since when the status (and reason) hold.
             */
            status_changed_at: string;
            /**
             * Format: date-time
             * @description When Clerk was last asked about this connection.
             */
            status_checked_at?: string | null;
            /**
             * @description A stable code for a status other than `connected`: `grant_revoked`,
             *     `missing_refresh_token`, `missing_scopes`, `account_unverified`, `provider_disabled`,
             *     `clerk_unavailable`.
             * @example grant_revoked
             */
            status_reason?: string | null;
            /** Format: date-time */
            updated_at: string;
        };
        /**
         * @description How a user's calendar of one provider stands, as the frontend shows it.
         * @enum {string}
         */
        CalendarStatus: "connected" | "needs_reconnect" | "not_connected";
        /** @description The body of `PATCH /users/{id}/calendar-status`. */
        CalendarStatusUpdate: {
            /**
             * @description `false` disconnects: the provider's connections and their tokens are deleted, and later
             *     updates from Clerk that still list the account do not connect it again. `true` connects
             *     again: the accounts Clerk lists for the provider are stored with fresh tokens (`409` when
             *     there is none).
             */
            connected: boolean;
            /** @description `google` or `microsoft`. */
            provider: components["schemas"]["ProviderName"];
        };
        /** @description The body of every error response. */
        ErrorBody: {
            /**
             * @description A stable machine-readable code, e.g. `not_found`, `unauthenticated`.
             * @example not_found
             */
            error: string;
            /**
             * @description What went wrong, for a human.
             * @example no such user
             */
            message: string;
            /**
             * @description With `needs_reconnect`: why only the user can fix the calendar connection
             *     (`grant_revoked`, `missing_refresh_token`, `missing_scopes`, `account_unverified`,
             *     `provider_disabled`).
             * @example grant_revoked
             */
            reason?: string | null;
        };
        /** @description An organization as synced from Clerk. */
        Organization: {
            /**
             * @description Clerk's id (`org_…`).
             * @example org_2abc
             */
            clerk_organization_id: string;
            /**
             * Format: date-time
             * @description When the row was created here.
             */
            created_at: string;
            /**
             * Format: uuid
             * @description This service's id of the organization.
             */
            id: string;
            image_url?: string | null;
            /**
             * Format: int32
             * @description Clerk's member count, when the last update from Clerk carried one.
             */
            members_count?: number | null;
            name: string;
            /** @description Clerk's `public_metadata` (`{}` when none): an object of any JSON values. */
            public_metadata: {
                [key: string]: unknown;
            };
            slug?: string | null;
            /**
             * Format: date-time
             * @description When the row last changed here.
             */
            updated_at: string;
        };
        /** @description A member of an organization. */
        OrganizationMember: {
            /**
             * @description Clerk's id (`user_…`).
             * @example user_2abc
             */
            clerk_user_id: string;
            /** @description The primary email address (Clerk allows users without one). */
            email?: string | null;
            first_name?: string | null;
            /**
             * Format: date-time
             * @description When the user joined (Clerk's `created_at` of the membership; when Clerk gave none, when
             *     the membership was stored here).
             */
            joined_at: string;
            last_name?: string | null;
            /**
             * @description Clerk's role key, e.g. `org:admin`, `org:member`.
             * @example org:member
             */
            role: string;
            /**
             * Format: uuid
             * @description This service's id of the user.
             */
            user_id: string;
        };
        /** @description One of the caller's organizations, with the caller's membership in it. */
        OrganizationMembership: {
            /**
             * Format: date-time
             * @description When the membership was stored here.
             */
            created_at: string;
            /**
             * Format: date-time
             * @description When the caller joined (Clerk's `created_at` of the membership; when Clerk gave none,
             *     when the membership was stored here).
             */
            joined_at: string;
            organization: components["schemas"]["Organization"];
            /**
             * @description The caller's role in it: Clerk's role key, e.g. `org:admin`, `org:member`.
             * @example org:admin
             */
            role: string;
            /**
             * Format: date-time
             * @description When the membership (e.g. its role) last changed here.
             */
            updated_at: string;
        };
        /**
         * @description A calendar provider.
         * @enum {string}
         */
        ProviderName: "google" | "microsoft";
        /** @description A user as the frontend reads it. */
        User: {
            /** @description Whether Clerk bans the user from signing in. */
            banned: boolean;
            /**
             * Format: date-time
             * @description When the user was created in Clerk.
             */
            clerk_created_at?: string | null;
            /**
             * @description Clerk's id (`user_…`).
             * @example user_2abc
             */
            clerk_user_id: string;
            /**
             * Format: date-time
             * @description When the row was created here.
             */
            created_at: string;
            /** @description The primary email address (Clerk allows users without one). */
            email?: string | null;
            /** @description The id the product gave the user in Clerk (`external_id`). */
            external_id?: string | null;
            first_name?: string | null;
            /**
             * @description Whether a Google calendar is connected (usable by the backend): true only when
             *     `google_calendar_status` is `connected`.
             */
            google_calendar_connected: boolean;
            /**
             * @description `connected`, `needs_reconnect` (the grant ended: only the user can fix it, by
             *     reconnecting the account) or `not_connected`.
             */
            google_calendar_status: components["schemas"]["CalendarStatus"];
            /**
             * Format: uuid
             * @description This service's id of the user.
             */
            id: string;
            /** @description The profile image's URL. */
            image_url?: string | null;
            last_name?: string | null;
            /**
             * Format: date-time
             * @description The user's last sign-in, as Clerk recorded it.
             */
            last_sign_in_at?: string | null;
            /** @description Whether Clerk has locked the user out (too many failed sign-ins). */
            locked: boolean;
            /**
             * @description Whether a Microsoft calendar is connected (usable by the backend): true only when
             *     `microsoft_calendar_status` is `connected`.
             */
            microsoft_calendar_connected: boolean;
            /** @description `connected`, `needs_reconnect` or `not_connected`, as for Google. */
            microsoft_calendar_status: components["schemas"]["CalendarStatus"];
            /**
             * @description The primary phone number (E.164, as Clerk holds it); the user's own profile, like the
             *     email.
             */
            primary_phone_number?: string | null;
            /**
             * @description Clerk's `public_metadata` (`{}` when none). Private and unsafe metadata are never
             *     returned.
             */
            public_metadata: {
                [key: string]: unknown;
            };
            /**
             * Format: date-time
             * @description When the row last changed here.
             */
            updated_at: string;
            username?: string | null;
        };
    };
    responses: never;
    parameters: never;
    requestBodies: never;
    headers: never;
    pathItems: never;
}
export type $defs = Record<string, never>;
export interface operations {
    healthz: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Alive */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "text/plain": string;
                };
            };
        };
    };
    me: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The caller's own user (synced from Clerk first if no webhook brought it yet) */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["User"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description A service key has no user of its own */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description The user does not exist in Clerk, was deleted, or is not synced (lazy sync off) */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Not synced yet, and Clerk's answer could not be used */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Not synced yet, and Clerk or the database is unavailable; retry (`Retry-After`) */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    my_organizations: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The organizations the caller is a member of, by name (at most 500), each with the caller's role; empty when none */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["OrganizationMembership"][];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description A service key has no user of its own */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description The user does not exist in Clerk, was deleted, or is not synced (lazy sync off) */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Not synced yet, and Clerk's answer could not be used */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Not synced yet, and Clerk or the database is unavailable; retry (`Retry-After`) */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    metrics: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Metrics in OpenMetrics text format */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/openmetrics-text": string;
                };
            };
        };
    };
    openapi_json: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The OpenAPI document */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": Record<string, never>;
                };
            };
        };
    };
    get_organization: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description The organization's id (this service's, not Clerk's) */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The organization */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Organization"];
                };
            };
            /** @description The id is not a UUID */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No such organization, or (session token) one the caller is not a member of */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    list_members: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description The organization's id (this service's, not Clerk's) */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The members, longest-standing first, at most 500 (not paginated). Memberships whose user is not synced yet are not listed */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["OrganizationMember"][];
                };
            };
            /** @description The id is not a UUID */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No such organization, or (session token) one the caller is not a member of */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    readyz: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The database is reachable */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "text/plain": string;
                };
            };
            /** @description The database is not reachable */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "text/plain": string;
                };
            };
        };
    };
    find_user_by_email: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description The email address to look up. */
                email: string | null;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The user with this email address */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["User"];
                };
            };
            /** @description No `email` given */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Session tokens may not look users up by email */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No user has this email address */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    get_user_by_clerk_id: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description Clerk's user id (`user_…`) */
                clerk_user_id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The user */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["User"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No such user, or another user's id with a session token */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description The caller's own user, not synced yet, and Clerk's answer could not be used */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description The caller's own user, not synced yet, and Clerk or the database is unavailable; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    get_user: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description The user's id */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The user */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["User"];
                };
            };
            /** @description The id is not a UUID */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No such user, or another user's id with a session token */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    list_connections: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description The user's id */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The connections (no tokens) */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["CalendarConnection"][];
                };
            };
            /** @description The id is not a UUID */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No such user, or another user's id with a session token */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    access_token: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description The user's id */
                id: string;
                /** @description `google` or `microsoft` */
                provider: components["schemas"]["ProviderName"];
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description A usable access token */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["AccessToken"];
                };
            };
            /** @description Bad id or unknown provider */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Session tokens and `read`-scoped service keys may not read tokens */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No such user, or no usable connection of that provider (none connected, or the user disconnected it) */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description `stored_token_invalid`: the stored token does not decrypt for this connection (moved or altered in the database); it is never served */
            500: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Clerk refused to hand out a token */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Clerk or the database is unavailable, or the endpoint is not configured; retry later */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
    update_calendar_status: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description The user's id */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CalendarStatusUpdate"];
            };
        };
        responses: {
            /** @description The updated user */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["User"];
                };
            };
            /** @description Malformed JSON or id */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No or invalid credentials */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description A service key with the `read` or `tokens` scope */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description No such user, or another user's id with a session token */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description `connected: true` but the user has no connected account of that provider in Clerk */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Not `Content-Type: application/json` */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Unknown provider or missing field */
            422: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Clerk refused to hand out the account's token */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
            /** @description Clerk or the database is unavailable; retry later */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorBody"];
                };
            };
        };
    };
}
