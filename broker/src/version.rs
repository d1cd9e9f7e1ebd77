//! Which RabbitMQ release a node runs, read from the server properties of the AMQP handshake
//! (`version` in `connection.start`). lapin does not expose them, so the node is asked on a short
//! connection of its own that stops after the server's first frame (no login: nothing but the
//! protocol header is sent). Only plain `amqp://` nodes are asked; over TLS the version stays
//! unknown and the topology uses arguments that are safe on every release.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A RabbitMQ release, major and minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BrokerVersion {
    pub major: u32,
    pub minor: u32,
}

impl BrokerVersion {
    /// Reads `"3.10.8"`, `"4.1.0-rc.1"`, ….
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

impl std::fmt::Display for BrokerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How long asking a node may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The release of the node at `url`, or `None` if it cannot be told (TLS, unreachable, an
/// answer that is not RabbitMQ's).
pub async fn detect(url: &str) -> Option<BrokerVersion> {
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    if uri.scheme != lapin::uri::AMQPScheme::AMQP {
        return None;
    }
    let address = (uri.authority.host.clone(), uri.authority.port);
    tokio::time::timeout(PROBE_TIMEOUT, async move {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await.ok()?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
        // connection.start is small (about 500 bytes); refuse anything unreasonable.
        if size > 64 * 1024 {
            return None;
        }
        let mut payload = vec![0u8; usize::try_from(size).ok()?];
        stream.read_exact(&mut payload).await.ok()?;
        version_from_start(header[0], &payload)
    })
    .await
    .ok()
    .flatten()
}

/// The version in a `connection.start` frame (`frame_type` 1, class 10, method 10).
pub fn version_from_start(frame_type: u8, payload: &[u8]) -> Option<BrokerVersion> {
    if frame_type != 1 || payload.get(0..4)? != [0, 10, 0, 10] {
        return None;
    }
    // class, method, version-major, version-minor, then the server-properties table.
    let table = payload.get(6..)?;
    let length = usize::try_from(u32::from_be_bytes(table.get(0..4)?.try_into().ok()?)).ok()?;
    let mut entries = table.get(4..4 + length)?;
    while !entries.is_empty() {
        let key_length = usize::from(*entries.first()?);
        let key = entries.get(1..1 + key_length)?;
        let kind = *entries.get(1 + key_length)?;
        let value = entries.get(2 + key_length..)?;
        let value_length = field_length(kind, value)?;
        if key == b"version" && kind == b'S' {
            let text = std::str::from_utf8(value.get(4..value_length)?).ok()?;
            return BrokerVersion::parse(text);
        }
        entries = value.get(value_length..)?;
    }
    None
}

/// The encoded length of a field value of type `kind` starting at `value`.
fn field_length(kind: u8, value: &[u8]) -> Option<usize> {
    let long = |value: &[u8]| -> Option<usize> {
        let n = u32::from_be_bytes(value.get(0..4)?.try_into().ok()?);
        Some(4 + usize::try_from(n).ok()?)
    };
    Some(match kind {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'V' => 0,
        b'S' | b'x' | b'F' | b'A' => long(value)?,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(key: &str, kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(key.len()).unwrap_or_default()];
        out.extend_from_slice(key.as_bytes());
        out.push(kind);
        out.extend_from_slice(value);
        out
    }

    fn long_string(text: &str) -> Vec<u8> {
        let mut out = u32::try_from(text.len())
            .unwrap_or_default()
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn start_frame(version: &str) -> Vec<u8> {
        let mut capabilities = field("publisher_confirms", b't', &[1]);
        capabilities.extend(field("consumer_priorities", b't', &[1]));
        let mut nested = u32::try_from(capabilities.len())
            .unwrap_or_default()
            .to_be_bytes()
            .to_vec();
        nested.extend(capabilities);
        let mut table = field("capabilities", b'F', &nested);
        table.extend(field("cluster_name", b'S', &long_string("rabbit@host")));
        table.extend(field("product", b'S', &long_string("RabbitMQ")));
        table.extend(field("version", b'S', &long_string(version)));
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        payload.extend(u32::try_from(table.len()).unwrap_or_default().to_be_bytes());
        payload.extend(table);
        payload
    }

    #[test]
    fn the_version_is_read_from_the_server_properties() {
        assert_eq!(
            version_from_start(1, &start_frame("3.10.8")),
            Some(BrokerVersion {
                major: 3,
                minor: 10
            })
        );
        assert_eq!(
            version_from_start(1, &start_frame("4.1.0-rc.1")),
            Some(BrokerVersion { major: 4, minor: 1 })
        );
        assert_eq!(
            version_from_start(1, &[0, 10, 0, 11]),
            None,
            "another method"
        );
        assert_eq!(
            version_from_start(2, &start_frame("4.0.0")),
            None,
            "another frame type"
        );
        let truncated = start_frame("4.0.0");
        assert_eq!(
            version_from_start(1, &truncated[..truncated.len() - 3]),
            None
        );
    }

    #[tokio::test]
    async fn the_local_broker_tells_its_version() {
        let url = std::env::var("TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let version = detect(&url).await.expect("the machine's RabbitMQ answers");
        assert!(version.major >= 3, "{version}");
        assert_eq!(detect("amqp://guest:guest@127.0.0.1:1/%2f").await, None);
    }
}
