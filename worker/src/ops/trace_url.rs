//! Links from a dead letter to its trace: `TRACE_URL_TEMPLATE`, a URL of the tracing backend's
//! UI with `{trace_id}` where a trace id goes (`http://jaeger:16686/trace/{trace_id}`).

/// What [`TraceUrlTemplate::url`] replaces with the trace id.
pub const PLACEHOLDER: &str = "{trace_id}";

/// A validated `TRACE_URL_TEMPLATE`: an `http` or `https` URL with a host and at least one
/// [`PLACEHOLDER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceUrlTemplate(String);

impl TraceUrlTemplate {
    /// Checks a template; the error says what to fix.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        const EXAMPLE: &str = "e.g. https://tempo.example.com/explore?traceId={trace_id}";
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
            .ok_or_else(|| format!("must be an http:// or https:// URL, {EXAMPLE}"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || host.contains(PLACEHOLDER) {
            return Err(format!(
                "must name the tracing UI's host before its path, {EXAMPLE}"
            ));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        if !value.contains(PLACEHOLDER) {
            return Err(format!(
                "must contain {PLACEHOLDER} where the trace id goes, {EXAMPLE}"
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The URL of trace `trace_id` (32 hex digits, as `broker::headers::trace_id` gives).
    pub fn url(&self, trace_id: &str) -> String {
        self.0.replace(PLACEHOLDER, trace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_puts_the_trace_id_where_it_says() {
        let jaeger =
            TraceUrlTemplate::parse("http://jaeger:16686/trace/{trace_id}").expect("valid");
        assert_eq!(
            jaeger.url("4bf92f3577b34da6a3ce929d0e0e4736"),
            "http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let tempo = TraceUrlTemplate::parse(
            " https://tempo.example.com/explore?traceId={trace_id}&q={trace_id}\n",
        )
        .expect("valid, trimmed");
        assert_eq!(
            tempo.url("ab"),
            "https://tempo.example.com/explore?traceId=ab&q=ab"
        );
    }

    #[test]
    fn a_template_that_is_not_an_http_url_with_the_placeholder_is_refused() {
        for (bad, says) in [
            ("jaeger:16686/trace/{trace_id}", "http:// or https://"),
            ("ftp://example.com/{trace_id}", "http:// or https://"),
            ("javascript:alert(1)//{trace_id}", "http:// or https://"),
            ("https:///trace/{trace_id}", "host"),
            ("https://{trace_id}.example.com/", "host"),
            ("https://tempo.example.com/explore?traceId=", "{trace_id}"),
            ("https://tempo.example.com/{traceid}", "{trace_id}"),
            ("https://tempo.example.com/a b/{trace_id}", "spaces"),
        ] {
            let err = TraceUrlTemplate::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
