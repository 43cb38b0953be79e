//! Request bodies of the JSON gateway, bounded in bytes.
//!
//! etcd's gateway decodes a body without a limit and the gRPC call it makes is refused above
//! max-request-bytes + 512 KiB ([`crate::api::grpc::max_recv`]). Here a body is not even
//! buffered past the JSON text such a message can take ([`max_json_bytes`]): above it the
//! gateway answers 413 with a JSON error body, before any request is made, so nothing changes.
//!
//! The streaming routes read a stream of JSON values from an endless body. [`Splitter`] finds
//! where each value ends as the bytes arrive, scanning every byte once, and keeps only the
//! unfinished value; each value (with the whitespace before it) is bounded the same way.

use super::json;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;

/// Go's `http.MaxBytesReader` error, the words a Go server uses for a body over its limit.
pub const TOO_LARGE: &str = "http: request body too large";

/// Room for JSON field names, numbers written as strings and whitespace around a message.
const JSON_OVERHEAD: usize = 64 * 1024;

/// The JSON text of the largest request message the gRPC face accepts (`max_recv` bytes): its
/// bytes fields base64-encoded (4 characters per 3 bytes) plus field names and punctuation.
pub fn max_json_bytes(max_recv: usize) -> usize {
    max_recv.div_ceil(3) * 4 + JSON_OVERHEAD
}

/// 413 with the gateway's error body (`ResourceExhausted`, as the gRPC limit refuses).
pub fn too_large() -> Response {
    let msg = serde_json::Value::from(TOO_LARGE);
    let body = format!("{{\"error\":{msg},\"message\":{msg},\"code\":8}}");
    json(StatusCode::PAYLOAD_TOO_LARGE, body.into_bytes())
}

/// The value taking more than the bound, whitespace before it included.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

/// What kind of JSON value is being read, and where its scan stands.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// Between values.
    Idle,
    /// An object or array: nesting depth, inside a string, after a backslash in one.
    Nested {
        depth: u32,
        in_str: bool,
        escaped: bool,
    },
    /// A top-level string.
    Str { escaped: bool },
    /// A top-level number or literal: ends at whitespace or punctuation.
    Scalar,
}

/// Splits a byte stream into the JSON values it carries (concatenated or separated by
/// whitespace, as Go's `json.Decoder` reads them). It only finds value boundaries; the values
/// are checked by the decoder they are handed to, so malformed text still fails there with
/// the decoder's message.
pub struct Splitter {
    max: usize,
    chunk: Bytes,
    pos: usize,
    /// The unfinished value's bytes, from its first one.
    value: Vec<u8>,
    scan: Scan,
    /// Bytes since the end of the previous value.
    since_value: usize,
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'{' | b'}' | b'[' | b']' | b'"' | b',' | b':')
}

impl Splitter {
    /// A splitter refusing any value of more than `max` bytes.
    pub fn new(max: usize) -> Self {
        Splitter {
            max,
            chunk: Bytes::new(),
            pos: 0,
            value: Vec::new(),
            scan: Scan::Idle,
            since_value: 0,
        }
    }

    /// Hands over the next chunk of the body; call once [`Splitter::next_value`] gave `None`.
    pub fn feed(&mut self, chunk: Bytes) {
        debug_assert!(self.pos >= self.chunk.len(), "previous chunk not consumed");
        self.chunk = chunk;
        self.pos = 0;
    }

    /// The next complete value, or `None` when the chunk is used up.
    pub fn next_value(&mut self) -> Result<Option<Vec<u8>>, TooLarge> {
        while self.pos < self.chunk.len() {
            let b = self.chunk[self.pos];
            if let Scan::Scalar = self.scan {
                if is_delimiter(b) {
                    // Ends before this byte, which starts what comes next.
                    return Ok(Some(self.finish_value()));
                }
            }
            self.pos += 1;
            self.since_value += 1;
            if self.since_value > self.max {
                return Err(TooLarge);
            }
            let done = match &mut self.scan {
                Scan::Idle => {
                    if b.is_ascii_whitespace() {
                        continue;
                    }
                    self.scan = match b {
                        b'{' | b'[' => Scan::Nested {
                            depth: 1,
                            in_str: false,
                            escaped: false,
                        },
                        b'"' => Scan::Str { escaped: false },
                        // A stray closing or separating byte: a value of its own, which the
                        // decoder refuses.
                        b'}' | b']' | b',' | b':' => {
                            self.value.push(b);
                            return Ok(Some(self.finish_value()));
                        }
                        _ => Scan::Scalar,
                    };
                    false
                }
                Scan::Nested {
                    depth,
                    in_str,
                    escaped,
                } => {
                    if *in_str {
                        match (*escaped, b) {
                            (true, _) => *escaped = false,
                            (false, b'\\') => *escaped = true,
                            (false, b'"') => *in_str = false,
                            _ => {}
                        }
                        false
                    } else {
                        match b {
                            b'"' => *in_str = true,
                            b'{' | b'[' => *depth += 1,
                            b'}' | b']' => *depth -= 1,
                            _ => {}
                        }
                        *depth == 0
                    }
                }
                Scan::Str { escaped } => match (*escaped, b) {
                    (true, _) => {
                        *escaped = false;
                        false
                    }
                    (false, b'\\') => {
                        *escaped = true;
                        false
                    }
                    (false, b'"') => true,
                    _ => false,
                },
                Scan::Scalar => false,
            };
            self.value.push(b);
            if done {
                return Ok(Some(self.finish_value()));
            }
        }
        Ok(None)
    }

    /// At the end of the body: the unfinished value, if any (a scalar ends here; anything
    /// else is truncated and its decoder says so).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.value.is_empty()).then(|| self.finish_value())
    }

    fn finish_value(&mut self) -> Vec<u8> {
        self.scan = Scan::Idle;
        self.since_value = 0;
        std::mem::take(&mut self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value found in `chunks`, fed one chunk at a time, then what is left at the end.
    fn split(max: usize, chunks: &[&str]) -> Result<Vec<String>, TooLarge> {
        let mut s = Splitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(Bytes::copy_from_slice(c.as_bytes()));
            while let Some(v) = s.next_value()? {
                out.push(String::from_utf8(v).unwrap());
            }
        }
        out.extend(s.finish().map(|v| String::from_utf8(v).unwrap()));
        Ok(out)
    }

    #[test]
    fn values_are_found_across_chunks() {
        assert_eq!(
            split(
                100,
                &[r#"{"a":"}\"{"}{"b""#, r#":[1,{"c":2}]} "x\"y"  12 true"#]
            )
            .unwrap(),
            vec![
                r#"{"a":"}\"{"}"#,
                r#"{"b":[1,{"c":2}]}"#,
                r#""x\"y""#,
                "12",
                "true"
            ]
        );
        assert_eq!(split(100, &["  \n", " "]).unwrap(), Vec::<String>::new());
        assert_eq!(split(100, &["{\"a\":", "1"]).unwrap(), vec!["{\"a\":1"]);
        assert_eq!(split(100, &["1{}]"]).unwrap(), vec!["1", "{}", "]"]);
    }

    #[test]
    fn a_value_or_whitespace_past_the_bound_is_refused() {
        assert_eq!(
            split(10, &["{\"a\":\"12\"}", " {\"b\":1} "]).unwrap().len(),
            2
        );
        assert_eq!(split(10, &["{\"a\":\"123\"}"]), Err(TooLarge));
        assert_eq!(split(10, &["{}", "          ", "x"]), Err(TooLarge));
        // A value that never closes is refused once it passes the bound, in any chunking.
        let mut s = Splitter::new(1000);
        s.feed(Bytes::from_static(b"{\"key\":\""));
        assert_eq!(s.next_value(), Ok(None));
        let mut refused = false;
        for _ in 0..1000 {
            s.feed(Bytes::from_static(b"AAAAAAAAAAAAAAAA"));
            if s.next_value().is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(s.value.len() <= 1000);
    }
}
