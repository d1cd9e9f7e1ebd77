// @clerk-sync/react: the signed-in user as clerk-sync stores it, for React apps signed in with
// Clerk. Put <ClerkSyncProvider apiUrl getToken isSignedIn userId> inside <ClerkProvider>, with
// what the app's own Clerk SDK's useAuth() returns, then use the hooks. No Clerk package is
// imported here, so any Clerk React SDK works (@clerk/react, @clerk/nextjs, @clerk/clerk-react…).
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
export { ClerkSyncError, type GetToken, type User, type CalendarConnection, type CalendarStatus, type Provider } from "./api";
export type { components, paths } from "./schema";
