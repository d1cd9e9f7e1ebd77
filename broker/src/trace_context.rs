//! W3C trace context in a message's AMQP headers (`traceparent`, `tracestate`), as the
//! OpenTelemetry messaging conventions carry it across a broker: the publisher writes the
//! context its message was created in, the consumer links its processing to it. Retries and
//! replays copy the headers, so every delivery of an event links back to its first publish.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use telemetry::traces;

/// Writes the context of `span` into `table` (nothing when tracing is off or the span is not
/// exported).
pub fn inject(span: &tracing::Span, table: &mut FieldTable) {
    traces::inject(span, |name, value| {
        table.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    });
}

/// The context a message was published in (empty when its headers carry none).
pub fn extract(table: Option<&FieldTable>) -> traces::Context {
    traces::extract(|name| text(table, name))
}

/// The trace id of the context in a message's headers, if any.
pub fn trace_id(table: Option<&FieldTable>) -> Option<String> {
    traces::trace_id_of(&text(table, "traceparent")?)
}

fn text(table: Option<&FieldTable>, name: &str) -> Option<String> {
    match table?.inner().get(name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_read_from_a_traceparent_header() {
        let mut table = FieldTable::default();
        assert_eq!(trace_id(Some(&table)), None);
        table.insert(
            ShortString::from("traceparent"),
            AMQPValue::LongString(LongString::from(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )),
        );
        assert_eq!(
            trace_id(Some(&table)).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
