//! The dead-letter queue tools for ops: list, show, replay and drop dead letters.
//!
//! Every command reads the queue with `basic.get` without acking, then acts only on the selected
//! messages; the others are returned to the queue, in their order, when the channel closes.
//! Listing therefore neither consumes nor reorders. RabbitMQ counts those returns as deliveries:
//! the dead-letter queue is declared without a delivery limit (see `broker::Topology`), so no
//! number of listings can drop a dead letter; `list --limit` and `show` read no further than
//! they need. A replayed message is published (confirmed)
//! to the main queue before its dead letter is acked: nothing is lost in between.

use broker::{
    BrokerConfig, EVENTS_ROUTING_KEY, PublishError, Topology, headers,
    lapin::{
        Channel, Connection,
        message::Delivery,
        options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions},
    },
    publish_confirmed,
};
use serde::Serialize;

use super::trace_url::TraceUrlTemplate;
use crate::consume::{copy_properties, now_ms};

/// What can go wrong in a DLQ command.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] broker::lapin::Error),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(
        "the action could not be recorded in the audit log ({0}), so nothing was done; check the database and try again"
    )]
    NotRecorded(String),
    #[error("no dead letter with id {0:?}; `worker dlq list` shows the ids")]
    NotFound(String),
    #[error(
        "{0} has consumers: stop every worker before migrating the queues, then run the command again"
    )]
    QueueInUse(String),
    #[error(
        "moving a message from {from} to {to} was not confirmed ({source}); it stays in {from}: run the command again"
    )]
    Move {
        from: String,
        to: String,
        #[source]
        source: PublishError,
    },
    #[error(
        "publishing {id} back to the main queue was not confirmed ({source}); its dead letter was kept"
    )]
    Replay {
        id: String,
        #[source]
        source: PublishError,
    },
}

/// One dead letter, as ops see it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The Svix message id (`-` if the message had none).
    pub id: String,
    pub event_type: Option<String>,
    pub reason: Option<String>,
    pub attempts: i64,
    /// Milliseconds since the epoch of the first failure, if recorded.
    pub first_failure_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    /// Seconds since the first failure (or since the ingress accepted it).
    pub age_seconds: Option<i64>,
    /// The Clerk user the event is about, read from the body: `data.public_user_data.user_id`
    /// (memberships) or `data.id` when it is a user id (`user_…`).
    pub clerk_user_id: Option<String>,
    /// The trace the event was published in: the trace id of its `traceparent` header, when
    /// that is valid W3C trace context ([`headers::trace_id`]).
    pub trace_id: Option<String>,
    /// Every AMQP header, stringified.
    pub headers: Vec<(String, String)>,
    /// The raw body, as received from Clerk.
    pub body: String,
}

impl DeadLetter {
    fn from_delivery(delivery: &Delivery) -> Self {
        let props = &delivery.properties;
        let table = props.headers().as_ref();
        let id = headers::svix_id(props).unwrap_or_else(|| "-".into());
        // Messages the broker dead-lettered itself (delivery limit) carry only x-death headers.
        let reason = headers::get_str(table, headers::REASON).or_else(|| {
            headers::get_str(table, "x-first-death-reason").map(|r| format!("broker: {r}"))
        });
        let first = headers::get_i64(table, headers::FIRST_FAILURE_AT);
        let since = first.or_else(|| headers::get_i64(table, headers::RECEIVED_AT));
        Self {
            id,
            event_type: headers::get_str(table, headers::EVENT_TYPE)
                .or_else(|| store::event::event_type(&delivery.data)),
            reason,
            attempts: headers::get_i64(table, headers::ATTEMPTS).unwrap_or(0),
            first_failure_at: first,
            last_failure_at: headers::get_i64(table, headers::LAST_FAILURE_AT),
            age_seconds: since.map(|t| (now_ms() - t).max(0) / 1000),
            clerk_user_id: clerk_user_id_of(&delivery.data),
            trace_id: headers::trace_id(table),
            headers: table
                .map(|t| {
                    t.inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), header_text(v)))
                        .collect()
                })
                .unwrap_or_default(),
            body: String::from_utf8_lossy(&delivery.data).into_owned(),
        }
    }
}

/// A header value as text: strings as they are, numbers as numbers, anything else (x-death
/// tables, arrays) in its debug form.
fn header_text(value: &broker::lapin::types::AMQPValue) -> String {
    use broker::lapin::types::AMQPValue;
    match value {
        AMQPValue::LongString(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        AMQPValue::ShortString(v) => v.as_str().to_owned(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        AMQPValue::Boolean(v) => v.to_string(),
        other => format!("{other:?}"),
    }
}

/// The Clerk user id an event body is about: `data.public_user_data.user_id`, else `data.id`
/// when it names a user (`user_…`).
pub fn clerk_user_id_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        id: Option<serde_json::Value>,
        public_user_data: Option<PublicUserData>,
    }
    #[derive(serde::Deserialize)]
    struct PublicUserData {
        user_id: Option<serde_json::Value>,
    }
    let data = serde_json::from_slice::<Envelope>(body).ok()?.data?;
    if let Some(serde_json::Value::String(id)) = data.public_user_data.and_then(|p| p.user_id) {
        return Some(id);
    }
    match data.id {
        Some(serde_json::Value::String(id)) if id.starts_with("user_") => Some(id),
        _ => None,
    }
}

/// Which dead letters a listing or an action is about; every part that is set must match. The
/// CLI (`worker dlq list|replay --type … --reason … --clerk-user-id … --older-than …`) and the
/// console share it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The event type, exactly (`user.created`).
    pub event_type: Option<String>,
    /// A substring of the reason, case-insensitive.
    pub reason: Option<String>,
    /// The Clerk user id, exactly (see [`DeadLetter::clerk_user_id`]).
    pub clerk_user_id: Option<String>,
    /// Dead letters at least this many seconds old (see [`DeadLetter::age_seconds`]).
    pub older_than_seconds: Option<i64>,
    /// Dead letters at most this many seconds old.
    pub newer_than_seconds: Option<i64>,
    /// A substring of the raw body (payload search: an email, a provider id, a name). Personal
    /// data: the console offers it to operators only, and it is never echoed in descriptions.
    pub body_contains: Option<String>,
}

impl Filter {
    /// Whether nothing is set (every dead letter matches).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `letter` matches every part that is set. A letter of unknown age matches no age
    /// bound.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let type_ok = self
            .event_type
            .as_deref()
            .is_none_or(|t| letter.event_type.as_deref() == Some(t));
        let reason_ok = self.reason.as_deref().is_none_or(|r| {
            letter
                .reason
                .as_deref()
                .is_some_and(|reason| reason.to_lowercase().contains(&r.to_lowercase()))
        });
        let user_ok = self
            .clerk_user_id
            .as_deref()
            .is_none_or(|u| letter.clerk_user_id.as_deref() == Some(u));
        let older_ok = self
            .older_than_seconds
            .is_none_or(|min| letter.age_seconds.is_some_and(|age| age >= min));
        let newer_ok = self
            .newer_than_seconds
            .is_none_or(|max| letter.age_seconds.is_some_and(|age| age <= max));
        let body_ok = self
            .body_contains
            .as_deref()
            .is_none_or(|text| letter.body.contains(text));
        type_ok && reason_ok && user_ok && older_ok && newer_ok && body_ok
    }

    /// A one-line description, for summaries and the audit log (`all` when empty).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.event_type {
            parts.push(format!("type={t}"));
        }
        if let Some(r) = &self.reason {
            parts.push(format!("reason~{r}"));
        }
        if let Some(u) = &self.clerk_user_id {
            parts.push(format!("clerk_user_id={u}"));
        }
        if let Some(s) = self.older_than_seconds {
            parts.push(format!("older_than={s}s"));
        }
        if let Some(s) = self.newer_than_seconds {
            parts.push(format!("newer_than={s}s"));
        }
        if let Some(text) = &self.body_contains {
            // The searched text may be personal data: only its length is described.
            parts.push(format!("body~({} chars)", text.chars().count()));
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(" ")
        }
    }
}

/// A connection to the first node of `broker` that answers, for an ops command.
pub(crate) async fn connect_first(
    broker: &BrokerConfig,
    purpose: &str,
) -> Result<Connection, DlqError> {
    Ok(broker::connect_first(broker, purpose).await?)
}

/// An open view of the dead-letter queue. Dropping it (or `close`) returns every message not
/// acked to the queue.
pub struct DeadLetterQueue {
    connection: Connection,
    channel: Channel,
    confirm: Channel,
    topology: Topology,
}

impl DeadLetterQueue {
    /// Connects to the first reachable node and declares the topology.
    pub async fn open(broker: &BrokerConfig, topology: Topology) -> Result<Self, DlqError> {
        let connection = connect_first(broker, "dlq").await?;
        topology
            .declare(&connection, broker.server_version().await)
            .await?;
        let channel = connection.create_channel().await?;
        let confirm = connection.create_channel().await?;
        confirm
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
            confirm,
            topology,
        })
    }

    /// Reads the queue once and keeps the deliveries `selection` names, with their ids, oldest
    /// first (the others are not kept: they return to the queue when the channel closes). An
    /// id of [`Selection::Ids`] that is not in the queue is an error; those of
    /// [`Selection::Previewed`] that are gone are left out.
    async fn select(&self, selection: &Selection) -> Result<Vec<(String, Delivery)>, DlqError> {
        let queue = self.topology.dead_queue();
        let mut chosen = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            let letter = DeadLetter::from_delivery(&message.delivery);
            let selected = match selection {
                Selection::All => true,
                Selection::Ids(ids) | Selection::Previewed(ids) => ids.contains(&letter.id),
                Selection::Matching(filter) => filter.matches(&letter),
            };
            if selected {
                chosen.push((letter.id, message.delivery));
            }
        }
        if let Selection::Ids(ids) = selection
            && let Some(missing) = ids.iter().find(|id| !chosen.iter().any(|(c, _)| c == *id))
        {
            return Err(DlqError::NotFound(missing.clone()));
        }
        Ok(chosen)
    }

    /// The dead letter `id`, reading no further than it; the others read are not kept.
    async fn find(&self, id: &str) -> Result<Option<DeadLetter>, DlqError> {
        let queue = self.topology.dead_queue();
        while let Some(message) = self
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            let letter = DeadLetter::from_delivery(&message.delivery);
            if letter.id == id {
                return Ok(Some(letter));
            }
        }
        Ok(None)
    }

    /// See [`scan`].
    async fn scan(&self, filter: &Filter, window: Window) -> Result<Scanned, DlqError> {
        let queue = self.topology.dead_queue();
        let mut out = Scanned::default();
        while out.read < window.scan_at_most {
            let Some(message) = self
                .channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                out.complete = true;
                break;
            };
            out.read += 1;
            // The delivery is dropped unacked: it goes back to the queue when the channel closes.
            let letter = DeadLetter::from_delivery(&message.delivery);
            if !filter.matches(&letter) {
                continue;
            }
            out.matched += 1;
            if out.matched > window.skip && out.letters.len() < window.take {
                out.letters.push(letter);
            }
            if !window.count_all && out.letters.len() >= window.take {
                break;
            }
        }
        Ok(out)
    }

    /// Publishes a dead letter back to the main queue (confirmed), then acks it.
    pub async fn replay(&self, id: &str, delivery: &Delivery) -> Result<(), DlqError> {
        let old = delivery.properties.headers().as_ref();
        let mut table = old.cloned().unwrap_or_default();
        // A replay gets a fresh set of attempts; the history headers stay for the record.
        headers::set_i64(&mut table, headers::ATTEMPTS, 0);
        headers::set_i64(&mut table, "clerk-sync-replayed-at", now_ms());
        let properties = copy_properties(&delivery.properties).with_headers(table);
        publish_confirmed(
            &self.confirm,
            self.topology.exchange(),
            EVENTS_ROUTING_KEY,
            &delivery.data,
            properties,
        )
        .await
        .map_err(|source| DlqError::Replay {
            id: id.to_owned(),
            source,
        })?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Removes a dead letter for good.
    pub async fn drop_letter(&self, delivery: &Delivery) -> Result<(), DlqError> {
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Returns every message not acked to the queue and disconnects.
    pub async fn close(self) {
        let _ = self.channel.close(200, "dlq done".into()).await;
        let _ = self.confirm.close(200, "dlq done".into()).await;
        let _ = self.connection.close(200, "dlq done".into()).await;
    }
}

/// `worker dlq list [--limit N] [filter flags]`: the dead letters that match `filter`, oldest
/// first; with a limit, reading stops at the `limit`-th match (the others are not redelivered).
pub async fn list(
    broker: &BrokerConfig,
    topology: Topology,
    limit: Option<usize>,
    filter: &Filter,
) -> Result<Vec<DeadLetter>, DlqError> {
    if limit == Some(0) {
        return Ok(Vec::new());
    }
    let window = Window {
        skip: 0,
        take: limit.unwrap_or(usize::MAX),
        scan_at_most: usize::MAX,
        count_all: false,
    };
    Ok(scan(broker, topology, filter, window).await?.letters)
}

/// Which part of a listing to keep, and how far to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Matches to pass over before keeping any (earlier pages).
    pub skip: usize,
    /// Matches to keep at most.
    pub take: usize,
    /// Dead letters to read at most.
    pub scan_at_most: usize,
    /// Keep reading after `take` matches are kept, to count every match (a page count);
    /// otherwise reading stops there.
    pub count_all: bool,
}

/// A window of a listing.
#[derive(Debug, Clone, Default)]
pub struct Scanned {
    /// The matches kept, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Matches among the dead letters read.
    pub matched: usize,
    /// Dead letters read.
    pub read: usize,
    /// Whether the queue was read to its end (else `matched` counts the first `read` only).
    pub complete: bool,
}

/// Reads dead letters oldest first, keeping only the matches in `window`: what the listing
/// holds in memory is bounded by `window.take`, whatever the queue's length. Nothing is acked:
/// every message read returns to the queue, in its order, when the channel closes.
pub async fn scan(
    broker: &BrokerConfig,
    topology: Topology,
    filter: &Filter,
    window: Window,
) -> Result<Scanned, DlqError> {
    let dlq = DeadLetterQueue::open(broker, topology).await?;
    let result = dlq.scan(filter, window).await;
    dlq.close().await;
    result
}

/// `worker dlq show <id>`: reads dead letters up to the one asked for, no further.
pub async fn show(
    broker: &BrokerConfig,
    topology: Topology,
    id: &str,
) -> Result<DeadLetter, DlqError> {
    let dlq = DeadLetterQueue::open(broker, topology).await?;
    let found = dlq.find(id).await;
    dlq.close().await;
    found?.ok_or_else(|| DlqError::NotFound(id.to_owned()))
}

/// Which dead letters a command acts on.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    /// These dead letters; one not in the queue is an error, and nothing is done.
    Ids(Vec<String>),
    /// Every dead letter the filter matches (none is not an error).
    Matching(Filter),
    /// What a preview selected: those of these still in the queue (others were replayed or
    /// dropped meanwhile; the summary's count tells).
    Previewed(Vec<String>),
}

/// What `replay` or `drop` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub selected: Vec<String>,
    pub done: usize,
    pub dry_run: bool,
}

/// What `act` does to the selected dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish back to the main queue (confirmed), then remove (`worker dlq replay`).
    Replay,
    /// Remove for good (`worker dlq drop`).
    Drop,
    /// Change nothing: the summary lists what would be selected (`--dry-run`).
    Preview,
}

/// `worker dlq replay` and `worker dlq drop`. An id that is not in the queue is an error,
/// reported before anything is changed.
pub async fn act(
    broker: &BrokerConfig,
    topology: Topology,
    selection: &Selection,
    action: Action,
    progress: impl FnMut(usize, usize),
) -> Result<Summary, DlqError> {
    act_approved(broker, topology, selection, action, progress, async |_| {
        Ok(())
    })
    .await
}

/// [`act`], with `approve` called with the selected ids once they are known and before
/// anything is changed (not for a preview): an error from it cancels the action (the console
/// records the action in its audit log there, and does not act when it cannot).
pub async fn act_approved(
    broker: &BrokerConfig,
    topology: Topology,
    selection: &Selection,
    action: Action,
    mut progress: impl FnMut(usize, usize),
    approve: impl AsyncFnOnce(&[String]) -> Result<(), DlqError>,
) -> Result<Summary, DlqError> {
    let dlq = DeadLetterQueue::open(broker, topology).await?;
    let result = async {
        let chosen = dlq.select(selection).await?;
        let mut summary = Summary {
            selected: chosen.iter().map(|(id, _)| id.clone()).collect(),
            done: 0,
            dry_run: action == Action::Preview,
        };
        if action == Action::Preview {
            return Ok(summary);
        }
        approve(&summary.selected).await?;
        for (n, (id, delivery)) in chosen.iter().enumerate() {
            if action == Action::Drop {
                dlq.drop_letter(delivery).await?;
            } else {
                dlq.replay(id, delivery).await?;
            }
            summary.done += 1;
            progress(n + 1, chosen.len());
        }
        Ok(summary)
    }
    .await;
    dlq.close().await;
    result
}

/// Formats the listing as a table.
pub fn format_table(letters: &[DeadLetter]) -> String {
    let mut out = format!(
        "{:<36} {:<16} {:>8} {:>9}  {}\n",
        "ID", "TYPE", "ATTEMPTS", "AGE", "REASON"
    );
    for l in letters {
        out.push_str(&format!(
            "{:<36} {:<16} {:>8} {:>9}  {}\n",
            l.id,
            l.event_type.as_deref().unwrap_or("-"),
            l.attempts,
            l.age_seconds.map(format_age).unwrap_or_else(|| "-".into()),
            l.reason.as_deref().unwrap_or("-"),
        ));
    }
    out.push_str(&format!("{} dead letter(s)\n", letters.len()));
    out
}

/// One dead letter as `worker dlq show` prints it: its fields, its trace (the id, and its URL
/// when `TRACE_URL_TEMPLATE` is set; `-` without a trace), its headers and its body.
pub fn format_letter(letter: &DeadLetter, trace_url: Option<&TraceUrlTemplate>) -> String {
    let mut out = format!(
        "id:         {}\nevent type: {}\nattempts:   {}\nreason:     {}\n",
        letter.id,
        letter.event_type.as_deref().unwrap_or("-"),
        letter.attempts,
        letter.reason.as_deref().unwrap_or("-"),
    );
    match (&letter.trace_id, trace_url) {
        (Some(id), Some(template)) => {
            out.push_str(&format!("trace:      {id} {}\n", template.url(id)));
        }
        (Some(id), None) => out.push_str(&format!("trace:      {id}\n")),
        (None, _) => out.push_str("trace:      -\n"),
    }
    out.push_str("headers:\n");
    for (name, value) in &letter.headers {
        out.push_str(&format!("  {name}: {value}\n"));
    }
    out.push_str(&format!("body:\n{}\n", letter.body));
    out
}

fn format_age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(body: &str, age: Option<i64>) -> DeadLetter {
        DeadLetter {
            id: "msg_1".into(),
            event_type: Some("user.created".into()),
            reason: Some("database: simulated bug".into()),
            attempts: 1,
            first_failure_at: None,
            last_failure_at: None,
            age_seconds: age,
            clerk_user_id: Some("user_1".into()),
            trace_id: None,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    #[test]
    fn every_part_of_a_filter_that_is_set_must_match() {
        let dead = letter(
            r#"{"data":{"id":"user_1","email":"ada@example.com"}}"#,
            Some(120),
        );
        assert!(Filter::default().matches(&dead));
        let by = |filter: Filter| filter.matches(&dead);
        assert!(by(Filter {
            event_type: Some("user.created".into()),
            reason: Some("SIMULATED".into()),
            clerk_user_id: Some("user_1".into()),
            older_than_seconds: Some(60),
            newer_than_seconds: Some(600),
            body_contains: Some("ada@example.com".into()),
        }));
        assert!(!by(Filter {
            event_type: Some("user.updated".into()),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            body_contains: Some("grace@example.com".into()),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            older_than_seconds: Some(300),
            ..Filter::default()
        }));
        assert!(
            !Filter {
                newer_than_seconds: Some(600),
                ..Filter::default()
            }
            .matches(&letter("{}", None)),
            "unknown age matches no age bound"
        );
    }

    #[test]
    fn a_description_never_echoes_the_searched_body_text() {
        let filter = Filter {
            event_type: Some("user.created".into()),
            body_contains: Some("ada@example.com".into()),
            ..Filter::default()
        };
        assert_eq!(filter.describe(), "type=user.created body~(15 chars)");
        assert_eq!(Filter::default().describe(), "all");
    }

    #[test]
    fn show_prints_the_trace_id_linked_when_there_is_a_template_and_a_dash_without_a_trace() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traced = DeadLetter {
            trace_id: Some(trace.into()),
            ..letter("{}", None)
        };
        let template =
            TraceUrlTemplate::parse("http://jaeger:16686/trace/{trace_id}").expect("valid");
        let shown = format_letter(&traced, Some(&template));
        assert!(
            shown.contains(&format!(
                "\ntrace:      {trace} http://jaeger:16686/trace/{trace}\n"
            )),
            "{shown}"
        );
        let shown = format_letter(&traced, None);
        assert!(
            shown.contains(&format!("\ntrace:      {trace}\n")),
            "{shown}"
        );
        let shown = format_letter(&letter("{}", None), Some(&template));
        assert!(shown.contains("\ntrace:      -\n"), "{shown}");
        assert!(!shown.contains("jaeger"), "{shown}");
    }
}
