//! Client side of the cbo QUIC link (see [`crate::protocol`] for the flow): connecting with the
//! hello exchange, and one request per bidirectional stream. Used by the element's offload client
//! and by `cbo loadgen`; the server lives in [`crate::server`].
//!
//! Errors are sorted by what a user must do about them: an untrusted certificate ([`ConnectError::Tls`])
//! is a configuration problem on the client, a refused token ([`ConnectError::Unauthorized`]) one
//! of credentials, an unreachable or timed-out server one of the network or the server.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::protocol::{self, Answer, ErrorCode, ErrorReply, HelloReply, RequestHeader, Response};

/// Largest hello reply a client reads (it is a few hundred bytes).
const MAX_HELLO_REPLY_BYTES: usize = 16 * 1024;

/// An authenticated connection to a server.
pub struct Session {
    pub connection: quinn::Connection,
    /// The server's reply to the hello (`ok` is true): its model and request size limit.
    pub hello: HelloReply,
}

/// Why [`connect`] failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectError {
    /// No usable connection (address, network, server gone or shutting down).
    Unreachable(String),
    /// The server refused the connection for now: it serves `--max-connections` clients
    /// already, or too many connections await their hello (from this address or in all). A later
    /// attempt may succeed.
    Busy(String),
    /// The TLS handshake failed: most often the server's certificate is not the trusted one.
    Tls(String),
    /// The server refused the token.
    Unauthorized(String),
    /// The server spoke something other than the cbo protocol.
    Protocol(String),
    /// Handshake and hello did not complete within the timeout.
    Timeout,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Unreachable(m) => write!(f, "cannot reach the server: {m}"),
            ConnectError::Busy(m) => {
                write!(f, "the server is busy: {m} (a later attempt may succeed)")
            }
            ConnectError::Tls(m) => write!(f, "untrusted server certificate: {m}"),
            ConnectError::Unauthorized(m) => write!(f, "server refused the token: {m}"),
            ConnectError::Protocol(m) => write!(f, "server protocol error: {m}"),
            ConnectError::Timeout => write!(
                f,
                "no answer from the server within the connect timeout (is it running and reachable?)"
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Why one [`request`] failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    /// The connection is gone (the caller should reconnect).
    Connection(String),
    /// The server answered with an error (or reset the stream with an error code).
    Server(ErrorReply),
    /// The server's answer is not a valid response to this request.
    Protocol(String),
    /// The server gave up on the request in its per-request time.
    Timeout,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Connection(m) => write!(f, "connection to the server lost: {m}"),
            RequestError::Server(e) => write!(
                f,
                "server error {}: {} (frame {})",
                code_name(e.code),
                e.message,
                e.frame_id
            ),
            RequestError::Protocol(m) => write!(f, "server protocol error: {m}"),
            RequestError::Timeout => write!(f, "the server did not answer in time"),
        }
    }
}

impl std::error::Error for RequestError {}

/// The kebab-case name of a code, as on the wire.
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{code:?}"))
}

fn varint(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.as_u32())
}

/// Describes an application close by the server, e.g. "unauthorized: wrong token".
fn describe_close(close: &quinn::ApplicationClose) -> (Option<ErrorCode>, String) {
    let code = u32::try_from(close.error_code.into_inner())
        .ok()
        .and_then(ErrorCode::from_u32);
    let reason = String::from_utf8_lossy(&close.reason).into_owned();
    let name = code
        .map(code_name)
        .unwrap_or_else(|| format!("code {}", close.error_code));
    (code, format!("{name}: {reason}"))
}

/// Whether a QUIC transport error code carries a TLS alert (RFC 9001 §4.8: 0x100 + alert).
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// rustls's text for a verifier's own error, without its wrapping: `invalid peer certificate:
/// Other(OtherError(MESSAGE))` (rustls shows `CertificateError::Other` by `Debug`) becomes
/// `MESSAGE`. The two refusals a trusted PEM file gives a server whose certificate is not in it
/// are rustls's variant names only, so they gain what they mean and what to do: a self-signed
/// certificate made again (`cboserver --self-signed` in an emptied directory, or on another
/// machine) has the old one's name but another key, which reads `BadSignature`. Any other
/// reason is kept as it is.
fn plain_tls_reason(reason: &str) -> String {
    const HINT: &str = "give the client the server's current cert.pem, or pin its fingerprint";
    match reason.strip_prefix("invalid peer certificate: ") {
        Some(r) if r.starts_with("Other(OtherError(") && r.ends_with("))") => {
            r["Other(OtherError(".len()..r.len() - 2].to_string()
        }
        Some("BadSignature") => format!(
            "{reason} (the server's certificate was not signed with the trusted certificate's \
             key: it was probably made again since the trusted file was copied; {HINT})"
        ),
        Some("UnknownIssuer") => format!(
            "{reason} (the server's certificate is not among, nor issued by, the trusted \
             certificates; {HINT}, or the CA certificate that signed it)"
        ),
        _ => reason.to_string(),
    }
}

fn connect_error(e: quinn::ConnectionError) -> ConnectError {
    use quinn::ConnectionError as E;
    match e {
        E::TransportError(t) if is_crypto(t.code) => ConnectError::Tls(plain_tls_reason(&t.reason)),
        E::ConnectionClosed(c) if is_crypto(c.error_code) => ConnectError::Tls(format!(
            "the server aborted the handshake: {}",
            String::from_utf8_lossy(&c.reason)
        )),
        E::ApplicationClosed(c) => match describe_close(&c) {
            (Some(ErrorCode::Unauthorized), _) => {
                ConnectError::Unauthorized(String::from_utf8_lossy(&c.reason).into_owned())
            }
            (Some(ErrorCode::BadRequest | ErrorCode::UnsupportedVersion), m) => {
                ConnectError::Protocol(format!("server closed the connection: {m}"))
            }
            (Some(ErrorCode::Overloaded), m) => ConnectError::Busy(m),
            (_, m) => ConnectError::Unreachable(format!("server closed the connection: {m}")),
        },
        E::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            ConnectError::Busy("it refused the connection attempt".into())
        }
        E::TimedOut => ConnectError::Timeout,
        E::VersionMismatch | E::TransportError(_) | E::ConnectionClosed(_) => {
            ConnectError::Protocol(e.to_string())
        }
        E::Reset => ConnectError::Unreachable(lost_reason(&e)),
        E::LocallyClosed | E::CidsExhausted => ConnectError::Unreachable(e.to_string()),
    }
}

/// Client endpoint on an ephemeral UDP port: dual-stack `[::]:0` where the host allows it (so both
/// `127.0.0.1` and `::1` servers are reachable), else `0.0.0.0:0`. Must be called inside a tokio
/// runtime.
pub fn client_endpoint() -> Result<quinn::Endpoint, String> {
    let dual = std::net::UdpSocket::bind("[::]:0")
        .ok()
        .filter(accepts_ipv4);
    let socket = match dual {
        Some(s) => s,
        None => std::net::UdpSocket::bind("0.0.0.0:0")
            .map_err(|e| format!("cannot bind a UDP socket: {e}"))?,
    };
    let runtime = quinn::default_runtime()
        .ok_or_else(|| "client_endpoint() must run inside a tokio runtime".to_string())?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .map_err(|e| format!("cannot create a QUIC endpoint: {e}"))
}

/// Whether an IPv6 socket also carries IPv4 (`IPV6_V6ONLY` off, the Linux default).
fn accepts_ipv4(socket: &std::net::UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let mut only_v6: libc::c_int = 1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads one int option of a socket we own into a correctly sized buffer.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&mut only_v6 as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && only_v6 == 0
}

/// Connects to `addr` (TLS name `server_name`), sends the hello with `token` and waits for the
/// server's acceptance, all within `timeout`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    config: quinn::ClientConfig,
    token: &str,
    client_name: &str,
    timeout: Duration,
) -> Result<Session, ConnectError> {
    let connecting = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|e| ConnectError::Unreachable(format!("{addr}: {e}")))?;
    let hello = protocol::encode_hello(&protocol::Hello {
        token: token.to_string(),
        client: client_name.to_string(),
    })
    .map_err(|e| ConnectError::Protocol(format!("cannot send the token: {e}")))?;
    let attempt = async {
        let connection = connecting.await.map_err(connect_error)?;
        match exchange_hello(&connection, &hello).await {
            Ok(reply) => Ok(Session {
                connection,
                hello: reply,
            }),
            Err(e) => {
                connection.close(varint(ErrorCode::Ok), b"hello failed");
                Err(e)
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn exchange_hello(
    connection: &quinn::Connection,
    hello: &[u8],
) -> Result<HelloReply, ConnectError> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(connect_error)?;
    // A refused hello may have the connection closed under the write or the read: the close
    // reason then says why (`connect_error`), which is as good as the reply.
    let lost = |e: quinn::ConnectionError| connect_error(e);
    if let Err(e) = send.write_all(hello).await {
        return Err(match e {
            quinn::WriteError::ConnectionLost(c) => lost(c),
            other => ConnectError::Protocol(format!("cannot send the hello: {other}")),
        });
    }
    let _ = send.finish();
    let bytes = match recv.read_to_end(MAX_HELLO_REPLY_BYTES).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c))) => {
            return Err(lost(c));
        }
        Err(e) => return Err(ConnectError::Protocol(format!("hello reply: {e}"))),
    };
    let reply = protocol::decode_hello_reply(&bytes)
        .map_err(|e| ConnectError::Protocol(format!("hello reply: {e}")))?;
    if reply.ok {
        return Ok(reply);
    }
    Err(match reply.code {
        ErrorCode::Unauthorized => ConnectError::Unauthorized(reply.message),
        ErrorCode::BadRequest | ErrorCode::UnsupportedVersion => {
            ConnectError::Protocol(format!("{}: {}", code_name(reply.code), reply.message))
        }
        ErrorCode::Overloaded => ConnectError::Busy(reply.message),
        code => ConnectError::Unreachable(format!("{}: {}", code_name(code), reply.message)),
    })
}

fn request_connection_error(e: quinn::ConnectionError) -> RequestError {
    RequestError::Connection(lost_reason(&e))
}

/// Why an established connection ended, in a user's words. quinn's own texts name the QUIC
/// mechanism ("reset by peer", "timed out"); a user needs what it means here: a stateless reset
/// comes from a server that has no state for the connection (it restarted), an idle timeout
/// from a server or network silent for that long.
pub fn lost_reason(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match e {
        // Say why the server closed (shutting down, ...).
        E::ApplicationClosed(c) => {
            format!("server closed the connection: {}", describe_close(c).1)
        }
        E::Reset => "the server reset the connection, as a restarted server does (or one that \
                     no longer knows this connection)"
            .to_string(),
        E::TimedOut => "nothing heard from the server for the idle timeout, as when the server \
                        is gone or the network is down"
            .to_string(),
        _ => e.to_string(),
    }
}

/// A stream reset or stop by the server carries an [`ErrorCode`].
fn reset_error(code: quinn::VarInt, frame_id: u64, what: &str) -> RequestError {
    match u32::try_from(code.into_inner())
        .ok()
        .and_then(ErrorCode::from_u32)
    {
        Some(ErrorCode::Timeout) => RequestError::Timeout,
        Some(code) => RequestError::Server(ErrorReply {
            frame_id,
            code,
            message: format!("the server {what} the stream"),
        }),
        None => RequestError::Protocol(format!("the server {what} the stream with code {code}")),
    }
}

/// Sends one frame on a new bidirectional stream and waits for its answer (no timeout here: the
/// server answers within its per-request time or sends [`ErrorCode::Timeout`]; callers that need a
/// shorter bound use [`request_until`]).
pub async fn request(
    connection: &quinn::Connection,
    header: &RequestHeader,
    jpeg: &[u8],
    max_response_bytes: usize,
) -> Result<Answer, RequestError> {
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(request_connection_error)?;
    exchange(&mut send, &mut recv, header, jpeg, max_response_bytes).await
}

/// [`request`] with a deadline. When the deadline passes first, the request's stream is reset
/// (and its answer stream stopped): the bytes of it the transport has not yet sent stop taking
/// the uplink from the frames after it, since an answer after the deadline is worth nothing.
/// `None` then.
pub async fn request_until(
    connection: &quinn::Connection,
    header: &RequestHeader,
    jpeg: &[u8],
    max_response_bytes: usize,
    deadline: tokio::time::Instant,
) -> Option<Result<Answer, RequestError>> {
    let never = std::future::pending::<()>();
    request_until_or(
        connection,
        header,
        jpeg,
        max_response_bytes,
        deadline,
        never,
    )
    .await
}

/// [`request_until`], also given up (its stream reset the same way) when `cancel` completes
/// first: an element that stops withdraws its requests from a connection others still use.
pub async fn request_until_or(
    connection: &quinn::Connection,
    header: &RequestHeader,
    jpeg: &[u8],
    max_response_bytes: usize,
    deadline: tokio::time::Instant,
    cancel: impl std::future::Future<Output = ()>,
) -> Option<Result<Answer, RequestError>> {
    tokio::pin!(cancel);
    let opened = tokio::select! {
        r = tokio::time::timeout_at(deadline, connection.open_bi()) => r,
        _ = &mut cancel => return None,
    };
    let (mut send, mut recv) = match opened {
        Err(_) => return None,
        Ok(Err(e)) => return Some(Err(request_connection_error(e))),
        Ok(Ok(streams)) => streams,
    };
    let outcome = tokio::select! {
        r = exchange(&mut send, &mut recv, header, jpeg, max_response_bytes) => Some(r),
        _ = tokio::time::sleep_until(deadline) => None,
        _ = &mut cancel => None,
    };
    if outcome.is_none() {
        let _ = send.reset(varint(ErrorCode::Timeout));
        let _ = recv.stop(varint(ErrorCode::Timeout));
    }
    outcome
}

/// One request on its open streams: the frame out, the answer back.
async fn exchange(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    header: &RequestHeader,
    jpeg: &[u8],
    max_response_bytes: usize,
) -> Result<Answer, RequestError> {
    let frame_id = header.frame_id;
    let bytes = protocol::encode_request(header, jpeg)
        .map_err(|e| RequestError::Protocol(format!("cannot encode the request: {e}")))?;
    let mut stopped = None;
    match send.write_all(&bytes).await {
        Ok(()) => {
            let _ = send.finish();
        }
        // The server stops reading a request it refuses (too large, overloaded) but still
        // answers why on its half of the stream: read that answer below.
        Err(quinn::WriteError::Stopped(code)) => stopped = Some(code),
        Err(quinn::WriteError::ConnectionLost(e)) => {
            return Err(request_connection_error(e));
        }
        Err(e) => return Err(RequestError::Connection(e.to_string())),
    }
    let reply = match recv.read_to_end(max_response_bytes).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            return Err(reset_error(code, frame_id, "reset"));
        }
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => {
            return Err(match stopped {
                Some(code) => reset_error(code, frame_id, "stopped"),
                None => request_connection_error(e),
            });
        }
        Err(quinn::ReadToEndError::TooLong) => {
            return Err(RequestError::Protocol(format!(
                "response larger than {max_response_bytes} bytes"
            )));
        }
        Err(e) => return Err(RequestError::Connection(e.to_string())),
    };
    match protocol::decode_response(&reply) {
        Ok(Response::Answer(a)) if a.frame_id == frame_id => Ok(a),
        Ok(Response::Answer(a)) => Err(RequestError::Protocol(format!(
            "answer for frame {} on the stream of frame {frame_id}",
            a.frame_id
        ))),
        Ok(Response::Error(e)) if e.code == ErrorCode::Timeout => Err(RequestError::Timeout),
        // On this frame's stream, so for this frame: the server names frame 0 when it refused
        // the request before reading its header (too large, say).
        Ok(Response::Error(e)) => Err(RequestError::Server(ErrorReply { frame_id, ..e })),
        Err(e) => Err(RequestError::Protocol(format!("response: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_says_what_it_means() {
        assert!(lost_reason(&quinn::ConnectionError::Reset).contains("restarted"));
        assert!(lost_reason(&quinn::ConnectionError::TimedOut).contains("idle timeout"));
        let closed = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: varint(ErrorCode::ShuttingDown),
            reason: "drain".into(),
        });
        assert_eq!(
            lost_reason(&closed),
            "server closed the connection: shutting-down: drain"
        );
    }

    #[test]
    fn a_pinned_fingerprint_mismatch_reads_as_its_message() {
        let message = "server certificate fingerprint ab.. does not match the pinned cd..";
        let e =
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                std::sync::Arc::new(crate::tls::FingerprintMismatch(message.to_string())),
            )));
        assert_eq!(plain_tls_reason(&e.to_string()), message);
        // The two refusals of a trusted PEM file say what they mean.
        for (e, meaning) in [
            (rustls::CertificateError::BadSignature, "made again"),
            (rustls::CertificateError::UnknownIssuer, "not among"),
        ] {
            let e = rustls::Error::InvalidCertificate(e).to_string();
            let reason = plain_tls_reason(&e);
            assert!(reason.starts_with(&e), "{reason}");
            assert!(reason.contains(meaning), "{reason}");
            assert!(reason.contains("current cert.pem"), "{reason}");
        }
        // Any other reason is left alone.
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert_eq!(plain_tls_reason(&e.to_string()), e.to_string());
    }
}
