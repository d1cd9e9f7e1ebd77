import { useCurrentUser, useSetCalendarStatus } from "@clerk-sync/react";

/** The integration guide's component, as the CRM's frontend writes it. */
export function MyComponent() {
  const { user, isLoading, isSignedIn, error } = useCurrentUser();

  if (isLoading) return <div>Loading...</div>;
  if (!isSignedIn) return <div>Please sign in</div>;
  if (!user) {
    return error ? <div role="alert">Could not load your profile: {error.message}</div> : <div>Loading...</div>;
  }

  // A failed refresh (offline, say) leaves the last profile read on screen.
  return (
    <div>
      <h1>Welcome, {user.first_name}!</h1>
      <p>Email: {user.email}</p>
      <p>
        Microsoft Calendar: {user.microsoft_calendar_connected ? "Connected" : "Not Connected"}
      </p>
      {error ? (
        <p role="status">
          {error.retryable ? "Could not refresh your profile; trying again." : `Could not refresh: ${error.message}`}
        </p>
      ) : null}
    </div>
  );
}

/** Connects or disconnects the Microsoft calendar. */
function CalendarToggle() {
  const { user } = useCurrentUser();
  const { setCalendarStatus, isPending, error } = useSetCalendarStatus();
  if (!user) return null;
  const connected = user.microsoft_calendar_connected;
  return (
    <div>
      <button disabled={isPending} onClick={() => void setCalendarStatus("microsoft", !connected)}>
        {connected ? "Disconnect Microsoft calendar" : "Connect Microsoft calendar"}
      </button>
      {error ? <p role="alert">{error.message}</p> : null}
    </div>
  );
}

export function App() {
  return (
    <main style={{ fontFamily: "system-ui, sans-serif", margin: "2rem" }}>
      <MyComponent />
      <CalendarToggle />
    </main>
  );
}
