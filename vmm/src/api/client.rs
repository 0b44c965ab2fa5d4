//! A client of the host API on its unix socket (`mempart-vmm ctl` and the tests use it).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Errors of talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket cannot be reached or broke.
    #[error("{path}: {source}")]
    Socket {
        /// The socket.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The answer is not HTTP.
    #[error("{0}: the answer is not HTTP")]
    NotHttp(String),
    /// The API refused: its status and message.
    #[error("{status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The API's error message.
        message: String,
    },
}

/// Sends one request and returns the body of a 2xx answer.
pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> Result<String, CtlError> {
    let io = |source| CtlError::Socket {
        path: sock.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(sock).map_err(io)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CtlError::NotHttp(sock.display().to_string()))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(refusal(status, body))
    }
}

/// Bytes escaped in a resource path: controls, space, `%` and what HTTP gives a meaning
/// (`?`, `#`, …); `/` stays the separator. Bytes beyond ASCII are always escaped.
const PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'+')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Bytes escaped in a query value: everything but letters, digits and `/-_.`.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.');

/// A name-space path as it goes into a request line: `"/partition/mem/class 1"` becomes
/// `/partition/mem/class%201`.
pub fn encode_path(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, PATH).to_string()
}

/// The API's refusal: its status and the message of its JSON error (or the body).
fn refusal(status: u16, body: String) -> CtlError {
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(body);
    CtlError::Refused { status, message }
}

/// Follows `GET /events?path=…`: calls `each` with every event line (heartbeat blank
/// lines skipped) until it returns `false` or the stream ends (the partition is gone).
pub fn follow_events(
    sock: &Path,
    path: &str,
    mut each: impl FnMut(&str) -> bool,
) -> Result<(), CtlError> {
    let io = |source| CtlError::Socket {
        path: sock.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(sock).map_err(io)?;
    let query = percent_encoding::utf8_percent_encode(path, QUERY_VALUE).to_string();
    let request = format!(
        "GET /events?path={query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut reader = std::io::BufReader::new(stream);
    let head = bounded_line(&mut reader).map_err(io)?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CtlError::NotHttp(sock.display().to_string()))?;
    loop {
        let line = bounded_line(&mut reader).map_err(io)?;
        if line.is_empty() || line == "\r\n" {
            break;
        }
    }
    if status != 200 {
        let mut body = String::new();
        reader.read_to_string(&mut body).map_err(io)?;
        return Err(refusal(status, body));
    }
    let mut body = std::io::BufReader::new(chunked_transfer::Decoder::new(reader));
    loop {
        let line = bounded_line(&mut body).map_err(io)?;
        if line.is_empty() {
            return Ok(());
        }
        let event = line.trim_end_matches(['\r', '\n']);
        if !event.is_empty() && !each(event) {
            return Ok(());
        }
    }
}

/// The longest line `follow_events` accepts from the API (an event is far shorter).
pub const MAX_LINE: usize = 64 * 1024;

/// The next line, `\n` included (empty at the end), refused past [`MAX_LINE`] bytes.
fn bounded_line(reader: &mut impl std::io::BufRead) -> std::io::Result<String> {
    use std::io::{BufRead, Read};
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut bytes)?;
    if bytes.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line longer than {MAX_LINE} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_and_bounded() {
        let mut ok = std::io::Cursor::new(b"one\r\ntwo\n".to_vec());
        assert_eq!(bounded_line(&mut ok).ok().as_deref(), Some("one\r\n"));
        assert_eq!(bounded_line(&mut ok).ok().as_deref(), Some("two\n"));
        assert_eq!(bounded_line(&mut ok).ok().as_deref(), Some(""));
        let mut long = std::io::Cursor::new(vec![b'x'; MAX_LINE + 10]);
        let refused = bounded_line(&mut long).err().map(|e| e.kind());
        assert_eq!(refused, Some(std::io::ErrorKind::InvalidData));
        let mut fits = std::io::Cursor::new(vec![b'x'; MAX_LINE]);
        assert_eq!(
            bounded_line(&mut fits).map(|l| l.len()).ok(),
            Some(MAX_LINE)
        );
    }
}
