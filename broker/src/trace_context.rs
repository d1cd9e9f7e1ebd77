//! W3C trace context in a message's AMQP headers (`traceparent`, `tracestate`), as the
//! OpenTelemetry messaging conventions carry it across a broker: the publisher writes the
//! context its message was created in, the consumer links its processing to it. Retries and
//! replays copy the headers, so every delivery of an event links back to its first publish.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use telemetry::traces;

/// Writes the context of `span` into `table` (nothing when tracing is off or the span is not
/// exported).
pub fn inject(span: &tracing::Span, table: &mut FieldTable) {
    traces::inject(span, writer(table));
}

/// The setter that trace context injection writes a message's headers through, for a span
/// made without `tracing` ([`traces::DirectSpan::inject`]).
pub fn writer(table: &mut FieldTable) -> impl FnMut(&'static str, String) + '_ {
    |name, value| {
        table.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

/// The context a message was published in (empty when its headers carry none).
pub fn extract(table: Option<&FieldTable>) -> traces::Context {
    traces::extract(|name| crate::headers::get_str(table, name))
}
