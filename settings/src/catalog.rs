//! Every setting the services read from the environment, with who reads it, its default and what
//! it means: the one list the configuration table of docs/configuration.md is generated from
//! (`cargo xtask settings-table`). Tests check that that table is this list, that
//! `.env.example` names every setting, and that each service's configuration reads only settings
//! listed here.

/// One environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The variable's name, e.g. `DATABASE_URL`.
    pub name: &'static str,
    /// The processes that read it (`ingress`, `worker`, `api`, `all`, …).
    pub used_by: &'static str,
    /// Its default, as the docs show it (Markdown).
    pub default: &'static str,
    /// What it means (Markdown).
    pub meaning: &'static str,
}

/// Every setting, in the docs' order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "CLERK_WEBHOOK_SECRET",
        used_by: "ingress",
        default: "(required)",
        meaning: "one or more `whsec_…` signing secrets separated by spaces; any may match (secret rotation)",
    },
    Setting {
        name: "AMQP_URL",
        used_by: "all",
        default: "`amqp://guest:guest@localhost:5672/%2f`",
        meaning: "broker URL; several comma separated URLs name the nodes of a cluster, tried in turn",
    },
    Setting {
        name: "QUEUE_PREFIX",
        used_by: "all",
        default: "`clerk_sync`",
        meaning: "prefix of the exchange and queue names",
    },
    Setting {
        name: "QUEUE_REPLICAS",
        used_by: "all",
        default: "broker default (all nodes)",
        meaning: "quorum group size of newly declared queues",
    },
    Setting {
        name: "RETRY_DELAYS",
        used_by: "all",
        default: "`5s,30s,5m`",
        meaning: "delays of the retry tiers (one queue each); attempt *n* waits the *n*-th delay, the last one repeats",
    },
    Setting {
        name: "INGRESS_ADDR",
        used_by: "ingress",
        default: "`127.0.0.1:8080`",
        meaning: "listen address",
    },
    Setting {
        name: "INGRESS_BODY_LIMIT",
        used_by: "ingress",
        default: "`262144` (256 KiB)",
        meaning: "largest body in bytes; larger gets `413` (checked on `Content-Length` and while reading). Clerk's payloads are a few tens of KB even for a user with many accounts; bodies in memory are bounded by `INGRESS_MAX_CONNECTIONS` × this limit (256 MiB at the defaults, reached only if every connection sends a maximal body at once)",
    },
    Setting {
        name: "INGRESS_BODY_TIMEOUT",
        used_by: "ingress",
        default: "`10s`",
        meaning: "time a client has to send the body (`408` after)",
    },
    Setting {
        name: "INGRESS_HEADER_TIMEOUT",
        used_by: "ingress",
        default: "`10s`",
        meaning: "time a client has to send the request headers",
    },
    Setting {
        name: "INGRESS_MAX_CONNECTIONS",
        used_by: "ingress",
        default: "`1024`",
        meaning: "connections served at once",
    },
    Setting {
        name: "PUBLISH_TIMEOUT",
        used_by: "ingress",
        default: "`5s`",
        meaning: "how long a webhook may wait for the broker's confirm (nacks and reconnects are retried within it) before `503`",
    },
    Setting {
        name: "PUBLISH_CHANNELS",
        used_by: "ingress",
        default: "`2`",
        meaning: "confirm-mode channels shared by all requests",
    },
    Setting {
        name: "DATABASE_URL",
        used_by: "worker, migration, api",
        default: "`postgres://postgres@localhost:5432/clerk_sync`",
        meaning: "Postgres URL (the api connects lazily: it starts while Postgres is down, `/readyz` says `503`)",
    },
    Setting {
        name: "DATABASE_MAX_CONNECTIONS",
        used_by: "worker, api",
        default: "`10`",
        meaning: "pool size (the api opens a second pool of this size to `DATABASE_READ_URL` when set)",
    },
    Setting {
        name: "DATABASE_POOLER",
        used_by: "worker, migration, api",
        default: "`none`",
        meaning: "what sits in front of `DATABASE_URL`: `none` (direct connections), `session` (a pooler in session mode) or `transaction` (a pooler in transaction mode, e.g. PgBouncer's `pool_mode = transaction`, Supavisor's port 6543, Neon's pooled endpoint: every statement then runs in a transaction of its own and no named prepared statement outlives it). See \"Deploying on managed Postgres\"",
    },
    Setting {
        name: "DATABASE_DIRECT_URL",
        used_by: "worker, migration",
        default: "(none: migrations use `DATABASE_URL`)",
        meaning: "a connection that bypasses the pooler (e.g. Neon's direct endpoint, Supavisor's session port), used only to apply migrations; without it they go through `DATABASE_URL` too, safely in any pooler mode",
    },
    Setting {
        name: "DATABASE_READ_URL",
        used_by: "api",
        default: "(none: reads go to `DATABASE_URL`)",
        meaning: "a streaming replica of the database for the api's reads; reads that must see a write just made (lazy sync, `PATCH …/calendar-status`, the token endpoint) stay on `DATABASE_URL`, and so do all reads while the replica is unreachable or too far behind",
    },
    Setting {
        name: "DATABASE_READ_MAX_LAG",
        used_by: "api",
        default: "`5s`",
        meaning: "how far behind `DATABASE_READ_URL` may be (its last replayed transaction, checked every second in the background) before reads go to the primary",
    },
    Setting {
        name: "WORKER_ADDR",
        used_by: "worker",
        default: "`127.0.0.1:8082`",
        meaning: "health, readiness and metrics; the operator's console too when `CONSOLE_USERS` is set",
    },
    Setting {
        name: "WORKER_PREFETCH",
        used_by: "worker",
        default: "`512`",
        meaning: "deliveries RabbitMQ sends ahead (at least `WORKER_BATCH_SIZE` × `WORKER_CONCURRENCY` to keep batches full)",
    },
    Setting {
        name: "WORKER_CONCURRENCY",
        used_by: "worker",
        default: "`3`",
        meaning: "batches (or single events) applied at once; each holds a database connection",
    },
    Setting {
        name: "WORKER_BATCH_SIZE",
        used_by: "worker",
        default: "`128`",
        meaning: "events applied in one transaction at most; `1` applies every event on its own",
    },
    Setting {
        name: "MAX_ATTEMPTS",
        used_by: "worker",
        default: "`10`",
        meaning: "failed attempts before an event is dead-lettered",
    },
    Setting {
        name: "IN_PROCESS_RETRIES",
        used_by: "worker",
        default: "`3`",
        meaning: "quick retries (50 ms doubling to 1 s, with jitter) before an event goes to a retry queue",
    },
    Setting {
        name: "RECONCILE_INTERVAL",
        used_by: "worker",
        default: "(off)",
        meaning: "how often `worker run` reconciles the tables with Clerk in the background (e.g. `24h`; needs `CLERK_SECRET_KEY`); one worker at a time (a lease row in the database), once per interval across all workers. See \"Repairing drift\"",
    },
    Setting {
        name: "CALENDAR_HEALTH_INTERVAL",
        used_by: "worker",
        default: "(off)",
        meaning: "how often `worker run` asks Clerk about each calendar connection, least recently checked first, to find grants Google or Microsoft ended without a webhook (e.g. `1h`; needs `CLERK_SECRET_KEY` and `TOKEN_ENCRYPTION_KEY`); one worker at a time (a lease row in the database), once per interval across all workers. See \"Calendar connection health\"",
    },
    Setting {
        name: "CALENDAR_HEALTH_BUDGET",
        used_by: "worker",
        default: "a tenth of Clerk's limit over the interval",
        meaning: "calls to Clerk one health check run makes at most (one per connection); the default, 10 a second over the interval, is a tenth of Clerk's production rate limit (1,000 per 10 s); the run is paced to spread it over the interval",
    },
    Setting {
        name: "PROCESSED_EVENTS_RETENTION",
        used_by: "worker",
        default: "`168h`",
        meaning: "how long Svix ids are kept for duplicate detection (Svix stops retrying after about 28 h; older replays are still harmless thanks to versions and tombstones). Expired ids are deleted hourly (every half retention when that is shorter) in batches of 2,000 paced to at most a tenth of one database connection, by one worker at a time",
    },
    Setting {
        name: "CONSOLE_USERS",
        used_by: "worker",
        default: "(none: no console)",
        meaning: "comma separated `name:role:key` entries that enable the operator's console at `/console` on `WORKER_ADDR`; role `viewer` (reads) or `operator` (also replays and drops dead letters, reveals personal fields); each key at least 32 characters (`openssl rand -base64 32`), the `.env.example` placeholder is refused. See \"The console\"",
    },
    Setting {
        name: "TRACE_URL_TEMPLATE",
        used_by: "worker",
        default: "(none: trace ids are shown unlinked)",
        meaning: "the tracing UI's URL of one trace, `{trace_id}` where the id goes (e.g. `https://tempo.example.com/explore?traceId={trace_id}` or `http://jaeger:16686/trace/{trace_id}`); `worker dlq show` and the console's dead-letter page link a dead letter's trace id (from its `traceparent` header) with it. Must be an `http(s)://` URL with a host and `{trace_id}`, else the worker and its commands refuse to start",
    },
    Setting {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        used_by: "ingress, worker run, api",
        default: "(none: tracing off)",
        meaning: "base URL of an OpenTelemetry collector's OTLP/HTTP receiver (e.g. `http://otel-collector:4318`); `/v1/traces` is appended. Set, each service exports its spans there (docs/operating.md, *Traces*)",
    },
    Setting {
        name: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        used_by: "ingress, worker run, api",
        default: "(none)",
        meaning: "the traces URL itself, used as it is; wins over `OTEL_EXPORTER_OTLP_ENDPOINT`",
    },
    Setting {
        name: "OTEL_EXPORTER_OTLP_PROTOCOL",
        used_by: "ingress, worker run, api",
        default: "`http/protobuf`",
        meaning: "only `http/protobuf` is built in (no gRPC): anything else is refused at start-up. `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` likewise",
    },
    Setting {
        name: "OTEL_EXPORTER_OTLP_HEADERS",
        used_by: "ingress, worker run, api",
        default: "(none)",
        meaning: "headers sent with each export, `key=value` comma separated (a collector's API key); `OTEL_EXPORTER_OTLP_TIMEOUT` (ms, default 10000) bounds an export",
    },
    Setting {
        name: "OTEL_SERVICE_NAME",
        used_by: "ingress, worker run, api",
        default: "`clerk-sync-ingress`, `clerk-sync-worker`, `clerk-sync-api`",
        meaning: "the `service.name` of the process's spans",
    },
    Setting {
        name: "OTEL_TRACES_SAMPLER",
        used_by: "ingress, worker run, api",
        default: "`parentbased_always_on`",
        meaning: "`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off` or `parentbased_traceidratio`; with `OTEL_TRACES_SAMPLER_ARG` the ratio (0 to 1) of the ratio samplers. Parent-based samplers follow an incoming `traceparent`'s decision",
    },
    Setting {
        name: "OTEL_BSP_MAX_QUEUE_SIZE",
        used_by: "ingress, worker run, api",
        default: "`2048`",
        meaning: "spans waiting for export at most; more are dropped and counted (`clerk_sync_trace_spans_dropped_total{reason=\"queue_full\"}`). `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) and `OTEL_BSP_SCHEDULE_DELAY` (ms, 5000) shape the batches",
    },
    Setting {
        name: "OTEL_SDK_DISABLED",
        used_by: "ingress, worker run, api",
        default: "`false`",
        meaning: "`true` turns tracing off even with an endpoint set (as does `OTEL_TRACES_EXPORTER=none`)",
    },
    Setting {
        name: "CLERK_SECRET_KEY",
        used_by: "worker, api",
        default: "(none)",
        meaning: "Clerk Backend API key: calendar tokens, backfill, token refresh. Without it (or without `TOKEN_ENCRYPTION_KEY`) calendar connections are recorded as `unavailable` (`clerk_unavailable`)",
    },
    Setting {
        name: "CLERK_API_URL",
        used_by: "worker, api",
        default: "`https://api.clerk.com`",
        meaning: "Clerk Backend API base URL",
    },
    Setting {
        name: "CLERK_API_TIMEOUT",
        used_by: "worker, api",
        default: "`10s`",
        meaning: "timeout of one Clerk API call",
    },
    Setting {
        name: "TOKEN_ENCRYPTION_KEY",
        used_by: "worker, api",
        default: "(none)",
        meaning: "base64 of 32 bytes (`openssl rand -base64 32`); several space separated during a rotation, the first encrypts",
    },
    Setting {
        name: "SYNC_PRIVATE_METADATA",
        used_by: "worker, api",
        default: "`false`",
        meaning: "`true` stores users' `private_metadata` and `unsafe_metadata` (every path that writes users: events, backfill, reconcile, lazy sync); `false` writes those columns NULL. The API never returns them. Turned on later, a user's metadata is stored from their next update",
    },
    Setting {
        name: "API_ADDR",
        used_by: "api",
        default: "`127.0.0.1:8081`",
        meaning: "listen address of the read API",
    },
    Setting {
        name: "API_LAZY_SYNC",
        used_by: "api",
        default: "on when `CLERK_SECRET_KEY` is set",
        meaning: "`true`/`false`: a signed-in user's first read (`/me`, or `/users/by-clerk-id/` with their own id) before any webhook stored them fetches the user from Clerk's Backend API and stores it as the worker would (one Clerk call per user and process however many reads arrive at once)",
    },
    Setting {
        name: "API_HEADER_TIMEOUT",
        used_by: "api",
        default: "`10s`",
        meaning: "time a client has to send the request headers",
    },
    Setting {
        name: "API_MAX_CONNECTIONS",
        used_by: "api",
        default: "`1024`",
        meaning: "connections served at once",
    },
    Setting {
        name: "CLERK_JWT_KEY",
        used_by: "api",
        default: "(none)",
        meaning: "PEM public key of the Clerk instance (Dashboard > API keys) to verify session JWTs; literal `\\n` accepted",
    },
    Setting {
        name: "CLERK_AUTHORIZED_PARTIES",
        used_by: "api",
        default: "(none)",
        meaning: "comma separated origins; when set, a session JWT's `azp` must be one of them",
    },
    Setting {
        name: "CLERK_ISSUER",
        used_by: "api",
        default: "(none: not checked)",
        meaning: "the instance's Frontend API URL (e.g. `https://clerk.example.com`, the `iss` of its session tokens); when set, a session JWT's `iss` must be it",
    },
    Setting {
        name: "API_SERVICE_KEYS",
        used_by: "api",
        default: "(none)",
        meaning: "comma separated keys for trusted backends (at least one of these or `CLERK_JWT_KEY` is required). Each key at least 32 characters (`openssl rand -base64 32`); the `.env.example` placeholder is refused. A key may carry a scope: `read:<key>` reads users and connections only, `tokens:<key>` also reads calendar access tokens; a bare `<key>` has every right, calendar-status changes included",
    },
    Setting {
        name: "API_CORS_ORIGINS",
        used_by: "api",
        default: "(none: no CORS headers)",
        meaning: "comma separated frontend origins allowed by CORS (`GET`, `PATCH`, `OPTIONS`; credentials allowed for the `__session` cookie)",
    },
    Setting {
        name: "LOG_FORMAT",
        used_by: "all",
        default: "`plain`",
        meaning: "`plain` or `json`",
    },
    Setting {
        name: "RUST_LOG",
        used_by: "all",
        default: "`info`",
        meaning: "log filter (`tracing` syntax)",
    },
];

/// Whether `name` is a listed setting.
pub fn is_listed(name: &str) -> bool {
    SETTINGS.iter().any(|s| s.name == name)
}

/// The names `read` asks for that are not listed (for the services' configuration tests): `read`
/// gets a lookup that answers `values` and records every name asked.
pub fn unlisted_reads(
    values: &[(&str, &str)],
    read: impl FnOnce(&dyn Fn(&str) -> Option<String>),
) -> Vec<String> {
    let asked = std::sync::Mutex::new(Vec::<String>::new());
    let lookup = |name: &str| {
        if let Ok(mut asked) = asked.lock() {
            asked.push(name.to_owned());
        }
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    };
    read(&lookup);
    let asked = asked.into_inner().unwrap_or_default();
    asked.into_iter().filter(|name| !is_listed(name)).collect()
}

/// The configuration table as the docs show it.
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | used by | default | meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s.name, s.used_by, s.default, s.meaning
        ));
    }
    out
}

/// The marker lines around the generated table in docs/configuration.md.
pub const TABLE_START: &str = "<!-- settings table: generated from settings/src/catalog.rs by `cargo xtask settings-table` -->";
/// The line after the generated table.
pub const TABLE_END: &str = "<!-- end of settings table -->";

/// `readme` with its table between the markers replaced by [`markdown_table`]; `None` when the
/// markers are missing.
pub fn with_table(readme: &str) -> Option<String> {
    let start = readme.find(TABLE_START)? + TABLE_START.len();
    let end = readme[start..].find(TABLE_END)? + start;
    Some(format!(
        "{}\n{}{}",
        &readme[..start],
        markdown_table(),
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project_file(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_configuration_doc_table_is_this_list() {
        let readme = project_file("docs/configuration.md");
        let expected = with_table(&readme).expect("docs/configuration.md has the table markers");
        assert!(
            readme == expected,
            "docs/configuration.md's settings table differs from settings/src/catalog.rs: run `cargo xtask settings-table`"
        );
    }

    #[test]
    fn env_example_names_every_setting() {
        let example = project_file(".env.example");
        for s in SETTINGS {
            let named = example.lines().any(|line| {
                let line = line.trim_start_matches('#').trim_start();
                line.strip_prefix(s.name)
                    .is_some_and(|rest| rest.starts_with('='))
            });
            assert!(named, ".env.example does not name {}", s.name);
        }
    }

    #[test]
    fn a_name_that_is_not_listed_is_reported() {
        let unlisted = unlisted_reads(&[("DATABASE_URL", "postgres://x")], |lookup| {
            assert_eq!(lookup("DATABASE_URL").as_deref(), Some("postgres://x"));
            lookup("NOT_A_SETTING");
        });
        assert_eq!(unlisted, vec!["NOT_A_SETTING".to_owned()]);
    }

    #[test]
    fn names_are_unique() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(
                !SETTINGS[i + 1..].iter().any(|t| t.name == s.name),
                "{}",
                s.name
            );
        }
    }
}
