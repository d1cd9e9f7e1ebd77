import {
  useCurrentUser,
  useSetCalendarStatus,
  type CalendarStatus,
  type Provider,
  type User,
} from "@clerk-sync/react";

/** What the Reconnect button does: the app's own (with Clerk: `externalAccount.reauthorize`). */
export type OnReconnect = (provider: Provider) => void | Promise<void>;

const CALENDARS: { provider: Provider; name: string; status: (user: User) => CalendarStatus }[] = [
  { provider: "google", name: "Google Calendar", status: (user) => user.google_calendar_status },
  { provider: "microsoft", name: "Microsoft Calendar", status: (user) => user.microsoft_calendar_status },
];

const SHOWN: Record<CalendarStatus, string> = {
  connected: "Connected",
  needs_reconnect: "Needs reconnecting",
  not_connected: "Not connected",
};

/** Each provider's calendar as the user sees it, with a Reconnect button where only they can fix it. */
function CalendarStatuses({ user, onReconnect }: { user: User; onReconnect: OnReconnect }) {
  return (
    <ul>
      {CALENDARS.map(({ provider, name, status }) => {
        const current = status(user);
        return (
          <li key={provider}>
            {name}: {SHOWN[current]}
            {current === "needs_reconnect" ? (
              <>
                {" "}
                <button aria-label={`Reconnect ${name}`} onClick={() => void onReconnect(provider)}>
                  Reconnect
                </button>
              </>
            ) : null}
          </li>
        );
      })}
    </ul>
  );
}

/** The integration guide's component, as the CRM's frontend writes it. */
export function MyComponent({ onReconnect }: { onReconnect: OnReconnect }) {
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
      <CalendarStatuses user={user} onReconnect={onReconnect} />
      {error ? (
        <p role="status">
          {error.retryable ? "Could not refresh your profile; trying again." : `Could not refresh: ${error.message}`}
        </p>
      ) : null}
    </div>
  );
}

/** Connects or disconnects the Microsoft calendar (one that needs reconnecting can be disconnected too). */
function CalendarToggle() {
  const { user } = useCurrentUser();
  const { setCalendarStatus, isPending, error } = useSetCalendarStatus();
  if (!user) return null;
  const connected = user.microsoft_calendar_status !== "not_connected";
  return (
    <div>
      <button disabled={isPending} onClick={() => void setCalendarStatus("microsoft", !connected)}>
        {connected ? "Disconnect Microsoft calendar" : "Connect Microsoft calendar"}
      </button>
      {error ? <p role="alert">{error.message}</p> : null}
    </div>
  );
}

export function App({ onReconnect }: { onReconnect: OnReconnect }) {
  return (
    <main style={{ fontFamily: "system-ui, sans-serif", margin: "2rem" }}>
      <MyComponent onReconnect={onReconnect} />
      <CalendarToggle />
    </main>
  );
}
