//! Server-rendered HTML: escaping, the page frame, the style sheet, and form / query decoding.
//! Every value that comes from a message, the database or a request goes through [`escape`].

use super::auth::Session;

/// `value` with `& < > " '` replaced by entities: safe in element text and in quoted
/// attribute values.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// The console's style sheet (`/console/style.css`): the CSP allows styles from here only.
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}\
header{background:#24292f;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center;flex-wrap:wrap}\
header a{color:#fff;text-decoration:none}header .who{margin-left:auto}\
main{padding:1rem;max-width:80rem}\
table{border-collapse:collapse;background:#fff;margin:.5rem 0;display:block;max-width:100%;overflow-x:auto}\
td{overflow-wrap:anywhere}\
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}\
td.num{text-align:right}\
pre{background:#fff;border:1px solid #d0d7de;padding:.5rem;overflow:auto;max-height:40rem}\
form.inline{display:inline}\
.notice{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem;margin:.5rem 0}\
.error{background:#ffebe9;border:1px solid #cf222e;padding:.5rem;margin:.5rem 0}\
.ok{background:#dafbe1;border:1px solid #2da44e;padding:.5rem;margin:.5rem 0}\
button{cursor:pointer}button.danger{color:#cf222e}\
label{margin-right:.6rem}";

/// A whole page: header with the navigation and the user (with a logout form), then `body`.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let nav = match session {
        Some(s) => format!(
            "<a href=\"/console\">Overview</a><a href=\"/console/dead-letters\">Dead letters</a>\
             <a href=\"/console/events\">Events</a>\
             <a href=\"/console/connections\">Calendar connections</a><a href=\"/console/audit\">Audit log</a>\
             <span class=\"who\">{} ({})</span>\
             <form class=\"inline\" method=\"post\" action=\"/console/logout\">{}<button>Log out</button></form>",
            escape(&s.user),
            s.role.as_str(),
            csrf_field(s)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · clerk-sync console</title><link rel=\"stylesheet\" href=\"/console/style.css\"></head>\
         <body><header><strong>clerk-sync</strong>{nav}</header><main><h1>{}</h1>{body}</main></body></html>",
        escape(title),
        escape(title)
    )
}

/// The hidden CSRF field of `session`'s forms.
pub fn csrf_field(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(&session.csrf)
    )
}

/// A hidden field.
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        escape(name),
        escape(value)
    )
}

/// Decoded `application/x-www-form-urlencoded` pairs (a query string or a POST body).
#[derive(Debug, Default, Clone)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(input: &str) -> Self {
        Self(
            input
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// Percent-decoding, `+` as a space; invalid escapes are kept as they are.
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes a query component.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Milliseconds since the epoch as UTC time.
pub fn time_ms(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;y&#x27;"
        );
        assert_eq!(escape("plain é"), "plain é");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn forms_decode_percent_and_plus_and_encode_back() {
        let form = Form::parse("type=user.created&reason=simulated+outage%21&empty=&bad=%zz%4");
        assert_eq!(form.get("type"), Some("user.created"));
        assert_eq!(form.get("reason"), Some("simulated outage!"));
        assert_eq!(form.get("empty"), None);
        assert_eq!(form.get("bad"), Some("%zz%4"));
        assert_eq!(encode("a b&c=é"), "a%20b%26c%3D%C3%A9");
        let back = Form::parse(&format!("x={}", encode("a b&c=é")));
        assert_eq!(back.get("x"), Some("a b&c=é"));
    }
}
