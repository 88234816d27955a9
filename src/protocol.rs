//! The cbo wire protocol between `cbofilter` and `cboserver` (pure codec, no sockets).
//!
//! Transport: QUIC (TLS 1.3), ALPN [`ALPN`]. Every message is one *frame* written on a QUIC
//! stream and ended by the stream's FIN:
//!
//! ```text
//! magic "CB" (2 bytes) | version u8 (= 1) | kind u8 | header length u16 BE | header (JSON) | payload
//! ```
//!
//! The header is a small JSON object (at most [`MAX_HEADER_BYTES`]); the payload is raw bytes
//! (a JPEG for requests, empty otherwise).
//!
//! 1. After the handshake the client opens one bidirectional stream and sends [`Hello`] (the
//!    bearer token); the server answers [`HelloReply`] on it. A server with a token refuses every
//!    other stream until the hello succeeded, and closes the connection with
//!    [`ErrorCode::Unauthorized`] (reason in the close frame) when the token is wrong.
//! 2. Each offloaded frame then gets its own bidirectional stream (no head-of-line blocking):
//!    the client sends a [`RequestHeader`] + JPEG payload and finishes the stream; the server
//!    answers one [`Response`] (an [`Answer`] or an [`ErrorReply`]) and finishes.
//!
//! Decoders never panic on any input (a `cargo fuzz` target checks this: `fuzz/`).

use serde::{Deserialize, Serialize};

/// ALPN protocol id.
pub const ALPN: &[u8] = b"cbo/1";
pub const MAGIC: [u8; 2] = *b"CB";
pub const VERSION: u8 = 1;
/// Fixed bytes before the header.
pub const PREFIX_BYTES: usize = 6;
pub const MAX_HEADER_BYTES: usize = 4096;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    HelloReply = 2,
    Request = 3,
    Response = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::HelloReply,
            3 => Kind::Request,
            4 => Kind::Response,
            _ => return None,
        })
    }
}

/// Error codes: in [`ErrorReply`]s and as QUIC application close / stream reset codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u32)]
pub enum ErrorCode {
    /// Not an error: a clean close.
    Ok = 0,
    /// Malformed frame or header.
    BadRequest = 1,
    UnsupportedVersion = 2,
    /// Request larger than the server accepts.
    TooLarge = 3,
    /// The payload is not a decodable JPEG (or too large an image).
    NotJpeg = 4,
    /// Server queue full or too many connections.
    Overloaded = 5,
    /// The request was not answered in the server's per-request time.
    Timeout = 6,
    /// Missing or wrong token.
    Unauthorized = 7,
    Internal = 8,
    /// The server is shutting down.
    ShuttingDown = 9,
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => ErrorCode::Ok,
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::TooLarge,
            4 => ErrorCode::NotJpeg,
            5 => ErrorCode::Overloaded,
            6 => ErrorCode::Timeout,
            7 => ErrorCode::Unauthorized,
            8 => ErrorCode::Internal,
            9 => ErrorCode::ShuttingDown,
            _ => return None,
        })
    }
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::Ok,
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::TooLarge,
        ErrorCode::NotJpeg,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
        ErrorCode::ShuttingDown,
    ];
}

/// First message of a connection, client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Bearer token (empty when the client has none).
    pub token: String,
    /// Free-form client description, for the server's log.
    pub client: String,
}

/// Server → client answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub ok: bool,
    pub code: ErrorCode,
    pub message: String,
    /// Server model file name, for the client's log.
    pub model: String,
    /// Largest request (header + JPEG) the server accepts.
    pub max_request_bytes: u64,
}

/// Header of an offload request; the JPEG follows as the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestHeader {
    pub frame_id: u64,
    /// Size of the encoded image.
    pub width: u32,
    pub height: u32,
    /// Requested short side (the resolution the policy chose).
    pub short_side: u32,
    /// Time left until the frame's deadline when sent, in ms (a hint: the server may drop work
    /// that cannot finish in time).
    pub deadline_ms: u32,
    /// Payload length; must equal the bytes after the header.
    pub jpeg_len: u32,
    /// Classes wanted in the answer.
    pub top_k: u8,
}

/// A server classification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub frame_id: u64,
    /// Top classes, best first (label index; -1 = background), with their probabilities.
    pub class_ids: Vec<i32>,
    pub scores: Vec<f32>,
    pub labels: Vec<String>,
    pub decode_us: u64,
    pub queue_us: u64,
    pub inference_us: u64,
    /// Frames in the batch this one ran in.
    pub batch: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub frame_id: u64,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Answer(Answer),
    Error(ErrorReply),
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("truncated frame: {0} bytes")]
    Truncated(usize),
    #[error("not a cbo frame (bad magic)")]
    BadMagic,
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("expected a {expected:?} frame, got {got:?}")]
    UnexpectedKind { expected: Kind, got: Kind },
    #[error("header of {0} bytes exceeds {MAX_HEADER_BYTES}")]
    HeaderTooLarge(usize),
    #[error("malformed header: {0}")]
    BadHeader(String),
    #[error("payload is {actual} bytes, header says {declared}")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("unexpected payload of {0} bytes")]
    UnexpectedPayload(usize),
}

impl ProtocolError {
    /// The error code a server answers this with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// Encodes one frame. A header that does not fit [`MAX_HEADER_BYTES`] (a multi-kilobyte token,
/// a long error text) is an error for the caller to report, as the decoder would refuse it.
pub fn encode<H: Serialize>(
    kind: Kind,
    header: &H,
    payload: &[u8],
) -> Result<Vec<u8>, ProtocolError> {
    let json = serde_json::to_vec(header).map_err(|e| ProtocolError::BadHeader(e.to_string()))?;
    if json.len() > MAX_HEADER_BYTES {
        return Err(ProtocolError::HeaderTooLarge(json.len()));
    }
    let mut out = Vec::with_capacity(PREFIX_BYTES + json.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&(json.len() as u16).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Splits a frame into kind, header JSON and payload, checking magic, version and sizes.
pub fn split(bytes: &[u8]) -> Result<(Kind, &[u8], &[u8]), ProtocolError> {
    if bytes.len() < PREFIX_BYTES {
        if bytes.len() >= 2 && bytes[..2] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        return Err(ProtocolError::Truncated(bytes.len()));
    }
    if bytes[..2] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    if bytes[2] != VERSION {
        return Err(ProtocolError::UnsupportedVersion(bytes[2]));
    }
    let kind = Kind::from_u8(bytes[3]).ok_or(ProtocolError::UnknownKind(bytes[3]))?;
    let len = u16::from_be_bytes([bytes[4], bytes[5]]) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(ProtocolError::HeaderTooLarge(len));
    }
    let rest = &bytes[PREFIX_BYTES..];
    if rest.len() < len {
        return Err(ProtocolError::Truncated(bytes.len()));
    }
    Ok((kind, &rest[..len], &rest[len..]))
}

fn decode_as<'a, H: Deserialize<'a>>(
    bytes: &'a [u8],
    expected: Kind,
) -> Result<(H, &'a [u8]), ProtocolError> {
    let (kind, header, payload) = split(bytes)?;
    if kind != expected {
        return Err(ProtocolError::UnexpectedKind {
            expected,
            got: kind,
        });
    }
    let h = serde_json::from_slice(header).map_err(|e| ProtocolError::BadHeader(e.to_string()))?;
    Ok((h, payload))
}

fn no_payload<H>((h, payload): (H, &[u8])) -> Result<H, ProtocolError> {
    if payload.is_empty() {
        Ok(h)
    } else {
        Err(ProtocolError::UnexpectedPayload(payload.len()))
    }
}

pub fn encode_hello(h: &Hello) -> Result<Vec<u8>, ProtocolError> {
    encode(Kind::Hello, h, &[])
}

pub fn decode_hello(bytes: &[u8]) -> Result<Hello, ProtocolError> {
    no_payload(decode_as(bytes, Kind::Hello)?)
}

pub fn encode_hello_reply(h: &HelloReply) -> Result<Vec<u8>, ProtocolError> {
    encode(Kind::HelloReply, h, &[])
}

pub fn decode_hello_reply(bytes: &[u8]) -> Result<HelloReply, ProtocolError> {
    no_payload(decode_as(bytes, Kind::HelloReply)?)
}

/// Encodes a request; `header.jpeg_len` is set from `jpeg`.
pub fn encode_request(header: &RequestHeader, jpeg: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let mut h = header.clone();
    h.jpeg_len = jpeg.len() as u32;
    encode(Kind::Request, &h, jpeg)
}

/// Decodes a request, returning the header and the JPEG bytes.
pub fn decode_request(bytes: &[u8]) -> Result<(RequestHeader, &[u8]), ProtocolError> {
    let (h, payload): (RequestHeader, &[u8]) = decode_as(bytes, Kind::Request)?;
    if h.jpeg_len as usize != payload.len() {
        return Err(ProtocolError::LengthMismatch {
            declared: h.jpeg_len as u64,
            actual: payload.len() as u64,
        });
    }
    Ok((h, payload))
}

pub fn encode_response(r: &Response) -> Result<Vec<u8>, ProtocolError> {
    encode(Kind::Response, r, &[])
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, ProtocolError> {
    no_payload(decode_as(bytes, Kind::Response)?)
}

/// Compares a presented token with the expected one in time independent of where they differ.
pub fn token_matches(expected: &[u8], presented: &[u8]) -> bool {
    // Length is not secret (tokens are fixed-size in practice); contents are.
    let mut diff = expected.len() ^ presented.len();
    for (i, &e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!e);
        diff |= usize::from(e ^ p);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestHeader {
        RequestHeader {
            frame_id: 42,
            width: 298,
            height: 224,
            short_side: 224,
            deadline_ms: 180,
            jpeg_len: 0,
            top_k: 5,
        }
    }

    #[test]
    fn an_oversized_header_is_an_error_not_a_panic() {
        let hello = Hello {
            token: "t".repeat(MAX_HEADER_BYTES),
            client: "c".into(),
        };
        assert!(matches!(
            encode_hello(&hello),
            Err(ProtocolError::HeaderTooLarge(n)) if n > MAX_HEADER_BYTES
        ));
    }

    #[test]
    fn round_trips() {
        let jpeg = vec![0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9];
        let bytes = encode_request(&request(), &jpeg).unwrap();
        let (h, payload) = decode_request(&bytes).unwrap();
        assert_eq!(h.frame_id, 42);
        assert_eq!(h.jpeg_len, 7);
        assert_eq!(payload, &jpeg[..]);

        let hello = Hello {
            token: "s3cret".into(),
            client: "test".into(),
        };
        assert_eq!(decode_hello(&encode_hello(&hello).unwrap()).unwrap(), hello);
        let reply = HelloReply {
            ok: false,
            code: ErrorCode::Unauthorized,
            message: "wrong token".into(),
            model: "m.onnx".into(),
            max_request_bytes: 1 << 20,
        };
        assert_eq!(
            decode_hello_reply(&encode_hello_reply(&reply).unwrap()).unwrap(),
            reply
        );
        for r in [
            Response::Answer(Answer {
                frame_id: 1,
                class_ids: vec![898, -1],
                scores: vec![0.75, 0.01],
                labels: vec!["water bottle".into(), "background".into()],
                decode_us: 300,
                queue_us: 20,
                inference_us: 15_000,
                batch: 3,
            }),
            Response::Error(ErrorReply {
                frame_id: 2,
                code: ErrorCode::NotJpeg,
                message: "not a JPEG".into(),
            }),
        ] {
            assert_eq!(decode_response(&encode_response(&r).unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        let good = encode_request(&request(), b"jpeg").unwrap();
        assert_eq!(decode_request(b""), Err(ProtocolError::Truncated(0)));
        assert_eq!(
            decode_request(b"GET / HTTP/1.1"),
            Err(ProtocolError::BadMagic)
        );
        assert!(matches!(
            decode_request(&good[..good.len() - 2]),
            Err(ProtocolError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode_request(&good[..10]),
            Err(ProtocolError::Truncated(_))
        ));
        let mut v2 = good.clone();
        v2[2] = 2;
        assert_eq!(
            decode_request(&v2),
            Err(ProtocolError::UnsupportedVersion(2))
        );
        assert_eq!(
            ProtocolError::UnsupportedVersion(2).code(),
            ErrorCode::UnsupportedVersion
        );
        let mut kind = good.clone();
        kind[3] = 99;
        assert_eq!(decode_request(&kind), Err(ProtocolError::UnknownKind(99)));
        assert!(matches!(
            decode_hello(&good),
            Err(ProtocolError::UnexpectedKind { .. })
        ));
        let mut huge = good.clone();
        huge[4] = 0xFF;
        assert!(matches!(
            decode_request(&huge),
            Err(ProtocolError::HeaderTooLarge(_))
        ));
        let garbage = encode(Kind::Request, &serde_json::json!({"frame_id": "x"}), b"").unwrap();
        assert!(matches!(
            decode_request(&garbage),
            Err(ProtocolError::BadHeader(_))
        ));
        let hello_with_payload = encode(
            Kind::Hello,
            &Hello {
                token: String::new(),
                client: String::new(),
            },
            b"extra",
        )
        .unwrap();
        assert_eq!(
            decode_hello(&hello_with_payload),
            Err(ProtocolError::UnexpectedPayload(5))
        );
        // Every prefix of a valid frame is refused cleanly.
        for n in 0..good.len() {
            assert!(decode_request(&good[..n]).is_err());
        }
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"ab"));
        assert!(!token_matches(b"abc", b"abcd"));
        assert!(!token_matches(b"abc", b""));
        assert!(token_matches(b"", b""));
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u32(c.as_u32()), Some(c));
        }
        assert_eq!(ErrorCode::from_u32(1000), None);
    }
}
