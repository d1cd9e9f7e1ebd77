//! `GET /console`: the queues, this worker's events and rates, how old the oldest work is.

use std::fmt::Write as _;

use http::StatusCode;

use super::super::{
    Console, Outcome,
    auth::Session,
    html::{escape, page, time_ms},
};
use crate::ops::dlq::{self, DlqError, Filter};

/// Depth and consumers of one queue.
struct QueueStats {
    name: String,
    messages: Option<u32>,
    consumers: Option<u32>,
}

/// Passive declares of every queue of the topology (a missing queue shows `-`).
async fn queue_stats(console: &Console) -> Result<Vec<QueueStats>, DlqError> {
    let connection = dlq::connect_first(&console.broker, "console").await?;
    let mut out = Vec::new();
    for name in console.topology.all_queues() {
        let channel = connection.create_channel().await?;
        let depth = broker::queue_depth(&channel, &name).await.ok().flatten();
        let (messages, consumers) = (depth.map(|d| d.messages), depth.map(|d| d.consumers));
        if channel.status().connected() {
            let _ = channel.close(200, "console".into()).await;
        }
        out.push(QueueStats {
            name,
            messages,
            consumers,
        });
    }
    let _ = connection.close(200, "console".into()).await;
    Ok(out)
}

/// Sums of `clerk_sync_events_total` by outcome, and the last reconcile, from this worker's
/// own registry (since it started).
pub(in crate::ops::console) fn metric_counts(
    console: &Console,
) -> (Vec<(&'static str, f64)>, Option<i64>) {
    let text = console
        .registry
        .lock()
        .map(|r| telemetry::encode_metrics(&r))
        .unwrap_or_default();
    let mut counts = vec![("applied", 0.0), ("retried", 0.0), ("dead_lettered", 0.0)];
    let mut last_reconcile = None;
    for line in text.lines() {
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if line.starts_with("clerk_sync_events_total{") {
            for (outcome, sum) in &mut counts {
                if line.contains(&format!("outcome=\"{outcome}\"")) {
                    *sum += value;
                }
            }
        } else if line.starts_with("clerk_sync_reconcile_last_success_timestamp_seconds ")
            && value > 0.0
        {
            last_reconcile = Some(value as i64);
        }
    }
    (counts, last_reconcile)
}

/// `GET /console`.
pub async fn overview(console: &Console, session: &Session) -> Outcome {
    let mut body = String::from("<h2>Queues</h2>");
    match queue_stats(console).await {
        Ok(stats) => {
            body.push_str("<table><tr><th>queue</th><th>messages</th><th>consumers</th></tr>");
            for q in stats {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    escape(&q.name),
                    q.messages.map_or("-".into(), |m| m.to_string()),
                    q.consumers.map_or("-".into(), |c| c.to_string()),
                );
            }
            body.push_str("</table>");
        }
        Err(error) => {
            let _ = write!(
                body,
                "<p class=\"error\">RabbitMQ: {}</p>",
                escape(&error.to_string())
            );
        }
    }
    let (counts, last_reconcile) = metric_counts(console);
    body.push_str(
        "<h2>This worker since it started</h2><table><tr><th>events</th><th>count</th></tr>",
    );
    for (outcome, n) in counts {
        let _ = write!(
            body,
            "<tr><td>{outcome}</td><td class=\"num\">{n}</td></tr>"
        );
    }
    body.push_str("</table>");
    overview_rates(console, &mut body);
    overview_ages(console, &mut body).await;
    let _ = write!(
        body,
        "<p>Last successful scheduled reconcile: {}</p>",
        last_reconcile
            .map(|s| time_ms(Some(s * 1000)))
            .unwrap_or_else(|| "none in this worker".into())
    );
    Outcome::Html(StatusCode::OK, page("Overview", Some(session), &body))
}

/// This worker's events a minute over the last 1, 5 and 15 minutes.
fn overview_rates(console: &Console, body: &mut String) {
    body.push_str(
        "<h2>Events a minute, this worker</h2><table><tr><th>over the last</th>\
         <th>applied</th><th>retried</th><th>dead-lettered</th></tr>",
    );
    for minutes in [1, 5, 15] {
        let cells = match console.rates(std::time::Duration::from_secs(minutes * 60)) {
            Some(rates) => rates
                .iter()
                .map(|r| format!("<td class=\"num\">{r:.1}</td>"))
                .collect::<String>(),
            None => "<td colspan=\"3\">collecting (a sample every 10 s)</td>".into(),
        };
        let _ = write!(body, "<tr><td>{minutes} min</td>{cells}</tr>");
    }
    body.push_str("</table>");
}

/// How old the oldest work is: the lag of the event this worker applied last (the main
/// queue's head is at most about that old while it keeps up), and the oldest dead letter.
async fn overview_ages(console: &Console, body: &mut String) {
    body.push_str("<h2>Ages</h2><table>");
    let now = crate::consume::now_ms();
    let newest = match console.progress.last() {
        Some((lag_ms, at_ms)) => format!(
            "{:.1} s behind the ingress, applied {} s ago",
            lag_ms as f64 / 1000.0,
            (now - at_ms).max(0) / 1000
        ),
        None => "none applied by this worker yet".into(),
    };
    let _ = write!(
        body,
        "<tr><td>newest applied event</td><td>{}</td></tr>",
        escape(&newest)
    );
    let oldest = {
        let _one = console.dlq_lock.lock().await;
        dlq::list(
            &console.broker,
            console.topology.clone(),
            Some(1),
            &Filter::default(),
        )
        .await
    };
    let oldest = match oldest {
        Ok(letters) => match letters.first() {
            Some(letter) => match letter.age_seconds {
                Some(age) => format!("{age} s ({})", letter.id),
                None => format!("unknown ({})", letter.id),
            },
            None => "no dead letters".into(),
        },
        Err(error) => format!("RabbitMQ: {error}"),
    };
    let _ = write!(
        body,
        "<tr><td>oldest dead letter</td><td>{}</td></tr></table>",
        escape(&oldest)
    );
}
