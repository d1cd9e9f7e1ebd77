//! Request ids: every HTTP response carries `x-request-id`, the caller's when it sent a sane one,
//! else a fresh UUID, and the request's log lines carry it too.

use http::{HeaderMap, HeaderValue, header::HeaderName};

/// The header name.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's request id if it is short and printable, else a new UUID v4.
pub fn from_headers(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(new)
}

/// A fresh request id.
pub fn new() -> HeaderValue {
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
        .unwrap_or(HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_id_is_kept_and_a_hostile_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(from_headers(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(from_headers(&headers), "has space");
        assert_eq!(from_headers(&HeaderMap::new()).len(), 36);
    }
}
