// @clerk-sync/react: the signed-in user as clerk-sync stores it, for React apps signed in with
// Clerk. Put <ClerkSyncProvider apiUrl=…> inside <ClerkProvider>, then use the hooks.
export { ClerkSyncProvider, type ClerkSyncProviderProps } from "./provider";
export {
  useCurrentUser,
  useCalendarConnections,
  useSetCalendarStatus,
  useOrganizations,
  type CurrentUser,
  type CalendarConnections,
  type SetCalendarStatus,
  type Organizations,
  type Organization,
  type OrganizationMembership,
  type OrganizationMember,
} from "./hooks";
export { ClerkSyncError, type User, type CalendarConnection, type Provider } from "./api";
export type { components, paths } from "./schema";
