//! JSON errors that can be logged and stored: they name the field and the kind of problem, never
//! the value. serde_json's own messages quote what they found (`invalid type: string
//! "ada@example.com", expected i64`), and bodies from Clerk are personal data (emails, names) or
//! secrets (tokens); those messages end up in logs and dead-letter reasons.

use serde::de::DeserializeOwned;

/// A JSON document that does not have the expected shape. Holds no value from the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.path, .problem, .line, .column))]
pub struct ShapeError {
    /// Where: `data.updated_at`, `external_accounts[2].id`, or empty for the document itself.
    pub path: String,
    /// What, without the value found: `missing field \`id\``, `invalid type, expected i64`, ….
    pub problem: String,
    pub line: usize,
    pub column: usize,
}

fn describe(path: &str, problem: &str, line: &usize, column: &usize) -> String {
    let at = if *line > 0 {
        format!(" (line {line}, column {column})")
    } else {
        String::new()
    };
    if path.is_empty() || path == "." || path.contains('?') {
        format!("{problem}{at}")
    } else {
        format!("field `{path}`: {problem}{at}")
    }
}

/// serde_json's message for `error`, with any quoted value left out.
fn problem(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let message = error.to_string();
    // serde_json appends " at line L column C"; the position is reported separately.
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message.as_str(),
    };
    match error.classify() {
        // Syntax errors describe the grammar, never the content.
        Category::Syntax | Category::Eof | Category::Io => message.to_owned(),
        Category::Data => {
            let expected = message
                .find(", expected ")
                .map(|i| &message[i + 2..])
                .unwrap_or_default();
            let kind = if message.starts_with("invalid type") {
                "invalid type"
            } else if message.starts_with("unknown variant") {
                "unknown variant"
            } else if message.starts_with("missing field")
                || message.starts_with("duplicate field")
                || message.starts_with("invalid length")
            {
                // Field names and counts come from the schema, not the document.
                return message.to_owned();
            } else {
                "invalid value"
            };
            if expected.is_empty() {
                kind.to_owned()
            } else {
                format!("{kind}, {expected}")
            }
        }
    }
}

fn shape_error(error: serde_path_to_error::Error<serde_json::Error>) -> ShapeError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    ShapeError {
        path,
        problem: problem(&inner),
        line: inner.line(),
        column: inner.column(),
    }
}

/// Parses `bytes` as a `T`; the error names the field, never its value.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ShapeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(shape_error)?;
    deserializer.end().map_err(|e| ShapeError {
        path: String::new(),
        problem: problem(&e),
        line: e.line(),
        column: e.column(),
    })?;
    Ok(value)
}

/// Reads a parsed JSON value as a `T`; the error names the field, never its value.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ShapeError> {
    serde_path_to_error::deserialize(value).map_err(shape_error)
}

/// Describes a serde_json error (from a parse done without [`from_slice`], e.g. a borrowing one
/// on a hot path) without quoting values; the field is named when `bytes`, parsed again as `T`,
/// says which.
pub fn describe_error<T: DeserializeOwned>(bytes: &[u8], error: &serde_json::Error) -> ShapeError {
    match from_slice::<T>(bytes) {
        Err(shape) => shape,
        Ok(_) => ShapeError {
            path: String::new(),
            problem: problem(error),
            line: error.line(),
            column: error.column(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct User {
        id: String,
        updated_at: i64,
        #[serde(default)]
        accounts: Vec<Account>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Account {
        provider: Kind,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Google,
    }

    #[test]
    fn errors_name_the_field_and_never_quote_the_value() {
        let cases: [(&str, &str); 5] = [
            (
                r#"{"id": "user_1", "updated_at": "ada@example.com"}"#,
                "field `updated_at`: invalid type, expected i64",
            ),
            (
                r#"{"id": "user_1", "updated_at": 1, "accounts": [{"provider": "secret-ya29"}]}"#,
                "field `accounts[0].provider`: unknown variant, expected `google`",
            ),
            (r#"{"id": "ada@example.com"}"#, "missing field `updated_at`"),
            (
                r#"{"id": 5, "updated_at": 1}"#,
                "field `id`: invalid type, expected a string",
            ),
            (r#"{"id": "ada@example.com", "#, "EOF while parsing"),
        ];
        for (json, expected) in cases {
            let error = from_slice::<User>(json.as_bytes()).expect_err(json);
            let text = error.to_string();
            assert!(text.starts_with(expected), "{text} (for {json})");
            for secret in ["ada@example.com", "secret-ya29", "ya29"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
        let value = serde_json::json!({"id": "user_1", "updated_at": "ada@example.com"});
        let text = from_value::<User>(value).expect_err("bad").to_string();
        assert!(text.contains("updated_at"), "{text}");
        assert!(!text.contains("ada@"), "{text}");
    }

    #[test]
    fn a_borrowing_parse_error_is_described_through_a_second_parse() {
        let json = br#"{"id": "user_1", "updated_at": "ada@example.com"}"#;
        let error = serde_json::from_slice::<User>(json).expect_err("bad");
        assert!(
            error.to_string().contains("ada@example.com"),
            "serde quotes it"
        );
        let described = describe_error::<User>(json, &error).to_string();
        assert!(described.contains("updated_at"), "{described}");
        assert!(!described.contains("ada@"), "{described}");
    }
}
