//! One client connection: handshake, hello (authentication), then a task per request stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::engine::{Job, Outcome};
use super::{Shared, admission, varint};
use crate::protocol::{self, ErrorCode, ErrorReply, HelloReply, Response};

/// Largest hello read (a token and a client name).
const MAX_HELLO_BYTES: usize = 8 * 1024;
/// How long a finished answer may wait for the peer's acknowledgement, so a shutdown's close
/// does not discard it (and a refusal's reason reaches the client before the close).
const ACK_WAIT: Duration = Duration::from_secs(2);

fn code_name(code: ErrorCode) -> String {
    crate::quic::code_name(code)
}

/// Longest message put in a reply. Error texts can quote the request (serde_json quotes the
/// offending value of a malformed header), and a reply's header must stay within
/// [`protocol::MAX_HEADER_BYTES`]: `protocol::encode` refuses a larger one.
const MAX_MESSAGE_BYTES: usize = 400;

/// Cuts `s` to [`MAX_MESSAGE_BYTES`] on a character boundary.
fn bounded(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Encodes a response whose header is guaranteed to fit a frame: an answer with many or long
/// labels (a large `--max-top-k`, a user's labels file) loses its last classes, then has its
/// labels shortened, rather than make the encoder panic.
fn encode_response(mut response: Response) -> Vec<u8> {
    let fits = |r: &Response| {
        serde_json::to_vec(r).map_or(true, |v| v.len() <= protocol::MAX_HEADER_BYTES)
    };
    while !fits(&response) {
        match &mut response {
            Response::Answer(a) if a.class_ids.len() > 1 => {
                a.class_ids.pop();
                a.scores.pop();
                a.labels.pop();
            }
            Response::Answer(a) => {
                for l in &mut a.labels {
                    *l = bounded(std::mem::take(l));
                }
                if !fits(&response) {
                    // Cannot happen with bounded labels; never panic on it either.
                    response = Response::Error(refusal(0, ErrorCode::Internal, "answer too large"));
                }
            }
            Response::Error(e) => e.message = bounded(std::mem::take(&mut e.message)),
        }
    }
    // The loop above makes it fit; should it not, the client gets a short error, not nothing.
    protocol::encode_response(&response).unwrap_or_else(|_| {
        protocol::encode_response(&Response::Error(refusal(
            0,
            ErrorCode::Internal,
            "answer too large",
        )))
        .unwrap_or_default()
    })
}

/// Serves one incoming connection until it closes or the server stops.
pub(super) async fn handle(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    // Stateless address validation (a QUIC Retry, one round trip more) once half the budget of
    // connections awaiting their hello is taken: the server then keeps nothing for a first packet
    // until its sender has shown it receives at its address, so spoofed first packets cannot take
    // the other half. Not always: the extra round trip counts against a client's connect timeout
    // (2 s in the element), which a long-RTT path would then miss on every attempt.
    let validated = incoming.remote_address_validated();
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let unauthenticated = match shared.admission.try_enter(remote.ip(), validated) {
        Ok(guard) => guard,
        Err(admission::Refusal::Unvalidated) => {
            // Allowed for an unvalidated address; should it fail, dropping the `Incoming`
            // refuses it.
            let _ = incoming.retry();
            return;
        }
        Err(refusal) => {
            shared.metrics.connection_refused();
            shared.log_limited(format_args!("#{id} {remote}: refused: {refusal}"));
            incoming.refuse();
            return;
        }
    };
    let _counted = shared.metrics.connection();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            shared.log_limited(format_args!("#{id} {remote}: handshake failed: {e}"));
            return;
        }
    };
    let hello_timeout = shared.limits.hello_timeout;
    let started = Instant::now();
    let connection = match tokio::time::timeout(hello_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.log_limited(format_args!("#{id} {remote}: handshake failed: {e}"));
            return;
        }
        Err(_) => {
            shared.log_limited(format_args!(
                "#{id} {remote}: handshake not done in {} ms",
                hello_timeout.as_millis()
            ));
            return;
        }
    };
    let left = hello_timeout.saturating_sub(started.elapsed());
    let (client, _connected) = match tokio::time::timeout(left, hello(&connection, &shared)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err((code, reason))) => {
            shared.log_limited(format_args!(
                "#{id} {remote}: refused: {}: {reason}",
                code_name(code)
            ));
            connection.close(varint(code), reason.as_bytes());
            return;
        }
        Err(_) => {
            let reason = format!("no hello within {} ms", hello_timeout.as_millis());
            shared.log_limited(format_args!("#{id} {remote}: closed: {reason}"));
            connection.close(varint(ErrorCode::Timeout), reason.as_bytes());
            return;
        }
    };
    drop(unauthenticated);
    shared.metrics.connection_accepted();
    // The name is the client's to choose: quoted and escaped, so it cannot forge log lines.
    shared.log(format_args!("#{id} {remote}: client {client:?} connected"));
    let peer = Arc::new(Peer {
        id,
        who: format!("#{id} {remote}"),
        refusal_log: LogBudget::default(),
        places: shared.places.clone(),
    });
    let mut stopping = shared.stopping.clone();
    let mut requests = 0u64;
    let reason = loop {
        tokio::select! {
            _ = stopped(&mut stopping) => {
                // The server closes every connection with `shutting-down` once requests in
                // progress are answered; hold the connection open until then.
                connection.closed().await;
                break "server shut down".to_string();
            }
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    requests += 1;
                    tokio::spawn(request(send, recv, shared.clone(), peer.clone()));
                }
                Err(e) => break e.to_string(),
            },
        }
    };
    // Always, as its "connected" line is: an operator sees how long each client stayed and why
    // it left (its idle timeout, its own close, a reset) without the per-request log.
    shared.log(format_args!(
        "{}: connection ended after {:.1} s and {requests} request(s): {reason}",
        peer.who,
        started.elapsed().as_secs_f64()
    ));
}

/// A connection: its number (its key in [`super::places::Places`]), its name in the log and its
/// budget of refusal lines.
struct Peer {
    id: u64,
    who: String,
    refusal_log: LogBudget,
    places: Arc<super::places::Places>,
}

impl Drop for Peer {
    /// Once the connection task and every request task of it are done (each holds the `Peer`
    /// until its place is given back), the connection leaves the places' books: forgotten
    /// earlier, a request task spawned just before the connection ended re-entered it after,
    /// for good.
    fn drop(&mut self) {
        self.places.forget(self.id);
    }
}

/// At most [`LogBudget::LINES_PER_SECOND`] lines a second, then one line saying how many were
/// left out: a client can have every request refused (`overloaded` streams reopened at once
/// made 821 000 log lines, 100 MB, in 10 s) and must not be able to fill the server's disk.
#[derive(Default)]
pub(super) struct LogBudget {
    /// (start of the current second, lines logged in it, lines left out in it).
    window: std::sync::Mutex<Option<(Instant, u32, u64)>>,
}

/// What [`LogBudget::admit`] says of one line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LogTurn {
    /// Log it; before it, say that this many earlier lines were left out.
    Log { left_out: u64 },
    /// Leave it out.
    Skip,
}

impl LogBudget {
    pub(super) const LINES_PER_SECOND: u32 = 20;

    pub(super) fn admit(&self, now: Instant) -> LogTurn {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        match window.as_mut() {
            Some((start, lines, left_out))
                if now.saturating_duration_since(*start) < Duration::from_secs(1) =>
            {
                if *lines < Self::LINES_PER_SECOND {
                    *lines += 1;
                    LogTurn::Log { left_out: 0 }
                } else {
                    *left_out += 1;
                    LogTurn::Skip
                }
            }
            previous => {
                let left_out = previous.map_or(0, |(_, _, n)| *n);
                *window = Some((now, 1, 0));
                LogTurn::Log { left_out }
            }
        }
    }
}

/// Reads the hello on the first stream and answers it. Returns the client's name and its place
/// among the connections, or why it was refused (the caller closes the connection with that code
/// and reason).
async fn hello(
    connection: &quinn::Connection,
    shared: &Shared,
) -> Result<(String, super::GaugeGuard), (ErrorCode, String)> {
    let (mut send, mut recv) = connection
        .accept_bi()
        .await
        .map_err(|e| (ErrorCode::BadRequest, format!("no hello: {e}")))?;
    let result = match recv.read_to_end(MAX_HELLO_BYTES).await {
        Ok(bytes) => match protocol::decode_hello(&bytes) {
            Ok(hello) => check_token(shared, &hello.token).and_then(|()| {
                // Counted once authenticated: a connection that never says hello takes a place
                // in the handshake budget (`admission`), not among the clients served.
                let place = shared.connections.enter();
                if shared.connections.get() > shared.limits.max_connections {
                    Err((
                        ErrorCode::Overloaded,
                        format!(
                            "too many connections (limit {})",
                            shared.limits.max_connections
                        ),
                    ))
                } else {
                    Ok((hello.client, place))
                }
            }),
            Err(e) => Err((e.code(), bounded(format!("bad hello: {e}")))),
        },
        Err(quinn::ReadToEndError::TooLong) => Err((
            ErrorCode::BadRequest,
            format!("hello larger than {MAX_HELLO_BYTES} bytes"),
        )),
        Err(e) => Err((ErrorCode::BadRequest, format!("hello not received: {e}"))),
    };
    let reply = match &result {
        Ok(_) => {
            // Until now the client could open the hello's stream only (its data bounded by one
            // stream's window): unauthenticated, 64 streams of 2 MB each were buffered until the
            // hello timeout, and 16 such connections held 1 GB. Raised before the reply, so the
            // credit reaches the client no later than the welcome.
            connection.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(
                shared.limits.max_streams_per_connection.max(1),
            ));
            HelloReply {
                ok: true,
                code: ErrorCode::Ok,
                message: "welcome".into(),
                model: shared.engine.info.name.clone(),
                max_request_bytes: shared.limits.max_request_bytes as u64,
            }
        }
        Err((code, message)) => HelloReply {
            ok: false,
            code: *code,
            message: message.clone(),
            model: String::new(),
            max_request_bytes: 0,
        },
    };
    let _ = recv.stop(varint(ErrorCode::Ok));
    if write_bounded(
        &mut send,
        &protocol::encode_hello_reply(&reply).unwrap_or_default(),
    )
    .await
        && result.is_err()
    {
        // Let the refusal reach the client before the connection close overtakes it.
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
    result
}

/// Writes `bytes` and finishes the stream, giving up (and resetting it) if the client does not
/// take them within [`ACK_WAIT`]: a client that never reads (a one-byte receive window) would
/// otherwise hold the task until the connection died. True if all was written.
async fn write_bounded(send: &mut quinn::SendStream, bytes: &[u8]) -> bool {
    match tokio::time::timeout(ACK_WAIT, send.write_all(bytes)).await {
        Ok(Ok(())) => send.finish().is_ok(),
        Ok(Err(_)) => false,
        Err(_) => {
            let _ = send.reset(varint(ErrorCode::Timeout));
            false
        }
    }
}

/// Resolves once the server is stopping (without holding the watch's lock across awaits).
pub(super) async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

fn check_token(shared: &Shared, presented: &str) -> Result<(), (ErrorCode, String)> {
    match &shared.token {
        None => Ok(()),
        Some(_) if presented.is_empty() => Err((
            ErrorCode::Unauthorized,
            "this server requires a token and none was given".into(),
        )),
        Some(expected) if protocol::token_matches(expected.as_bytes(), presented.as_bytes()) => {
            Ok(())
        }
        Some(_) => Err((ErrorCode::Unauthorized, "wrong token".into())),
    }
}

fn refusal(frame_id: u64, code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        frame_id,
        code,
        message: message.into(),
    }
}

/// Serves one request stream: read, check, queue for the engine, answer.
async fn request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    peer: Arc<Peer>,
) {
    let who = &peer.who;
    let _in_progress = shared.requests.enter();
    let _counted = shared.metrics.request_in_flight();
    let arrived = Instant::now();
    let limits = &shared.limits;
    // Known once the header is decoded; refusals before that carry frame id 0.
    let mut frame_id = None;
    let outcome = match shared.places.take(peer.id, arrived) {
        Err(why) => {
            let _ = recv.stop(varint(ErrorCode::Overloaded));
            Some(Err(refusal(0, ErrorCode::Overloaded, why.to_string())))
        }
        // Held until the answer is ready (not while it is written and acknowledged).
        Ok(_place) => {
            match tokio::time::timeout(
                limits.request_timeout,
                read_and_classify(&mut recv, &shared, arrived, &mut frame_id),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    // A client still sending gets told to stop; the answer says why.
                    let _ = recv.stop(varint(ErrorCode::Timeout));
                    Some(Err(refusal(
                        frame_id.unwrap_or(0),
                        ErrorCode::Timeout,
                        format!(
                            "not answered within {} ms",
                            limits.request_timeout.as_millis()
                        ),
                    )))
                }
            }
        }
    };
    let Some(outcome) = outcome else {
        // The client abandoned the stream: nobody to answer.
        shared.metrics.request("abandoned", arrived.elapsed());
        return;
    };
    shared.metrics.request(
        &match &outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => code_name(e.code),
        },
        arrived.elapsed(),
    );
    let response = match outcome {
        Ok(answer) => {
            shared.answered.fetch_add(1, Ordering::Relaxed);
            if shared.verbose {
                shared.log(format_args!(
                    "{who}: frame {} -> {} ({:.3}) decode {} us, queue {} us, inference {} us, batch {}",
                    answer.frame_id,
                    answer.labels.first().map(String::as_str).unwrap_or("?"),
                    answer.scores.first().copied().unwrap_or(0.0),
                    answer.decode_us,
                    answer.queue_us,
                    answer.inference_us,
                    answer.batch
                ));
            }
            Response::Answer(answer)
        }
        Err(mut e) => {
            e.message = bounded(e.message);
            shared.refused.fetch_add(1, Ordering::Relaxed);
            let what = match frame_id {
                Some(id) => format!("frame {id}"),
                None => "request".to_string(),
            };
            let line = format_args!(
                "{who}: {what} refused: {}: {}",
                code_name(e.code),
                e.message
            );
            if e.code == ErrorCode::Overloaded && !shared.readiness.is_ready() {
                // Every frame while the backend is down: its state changes are logged instead.
                tracing::debug!("{line}");
            } else if let LogTurn::Log { left_out } = peer.refusal_log.admit(Instant::now()) {
                if left_out > 0 {
                    shared.log(format_args!(
                        "{who}: {left_out} more refusal(s) in the last second not logged"
                    ));
                }
                shared.log(line);
            }
            Response::Error(e)
        }
    };
    if write_bounded(&mut send, &encode_response(response)).await {
        // Keep counting as in progress until the client has the answer, so a shutdown drain
        // does not close the connection under it.
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
}

/// Reads the request and runs it through the engine. `None`: the client reset the stream or the
/// connection went away.
async fn read_and_classify(
    recv: &mut quinn::RecvStream,
    shared: &Shared,
    arrived: Instant,
    frame_id: &mut Option<u64>,
) -> Option<Outcome> {
    let limits = &shared.limits;
    let bytes = match recv.read_to_end(limits.max_request_bytes).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::TooLong) => {
            let _ = recv.stop(varint(ErrorCode::TooLarge));
            return Some(Err(refusal(
                0,
                ErrorCode::TooLarge,
                format!("request larger than {} bytes", limits.max_request_bytes),
            )));
        }
        Err(quinn::ReadToEndError::Read(_)) => return None,
    };
    let (header, jpeg) = match protocol::decode_request(&bytes) {
        Ok(r) => r,
        Err(e) => return Some(Err(refusal(0, e.code(), e.to_string()))),
    };
    *frame_id = Some(header.frame_id);
    let jpeg_offset = bytes.len() - jpeg.len();
    let budget = if header.deadline_ms > 0 {
        limits
            .request_timeout
            .min(Duration::from_millis(header.deadline_ms.into()))
    } else {
        limits.request_timeout
    };
    let deadline = arrived + budget;
    let (reply, answer) = oneshot::channel();
    let job = Job {
        frame_id: header.frame_id,
        top_k: usize::from(header.top_k).clamp(1, limits.max_top_k.max(1)),
        received: Instant::now(),
        deadline,
        jpeg_offset,
        bytes,
        reply,
    };
    if let Err(e) = shared.engine.submit(job) {
        return Some(Err(e));
    }
    // Answered `timeout` at its deadline even when a slow backend still holds the work ahead
    // of it; dropping `answer` tells the engine to skip it (it is never sent to the backend).
    match tokio::time::timeout_at(deadline.into(), answer).await {
        Ok(outcome) => Some(outcome.unwrap_or_else(|_| {
            Err(refusal(
                header.frame_id,
                ErrorCode::Internal,
                "the inference worker dropped the request",
            ))
        })),
        Err(_) => Some(Err(refusal(
            header.frame_id,
            ErrorCode::Timeout,
            format!("deadline of {} ms passed", budget.as_millis()),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Answer;

    #[test]
    fn refusal_lines_are_limited_per_second_and_the_left_out_counted() {
        let budget = LogBudget::default();
        let t0 = Instant::now();
        for i in 0..LogBudget::LINES_PER_SECOND {
            let at = t0 + Duration::from_millis(u64::from(i));
            assert_eq!(budget.admit(at), LogTurn::Log { left_out: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(budget.admit(t0 + Duration::from_millis(500)), LogTurn::Skip);
        }
        // The next second's first line says how many the last one left out.
        assert_eq!(
            budget.admit(t0 + Duration::from_millis(1000)),
            LogTurn::Log { left_out: 1000 }
        );
        assert_eq!(
            budget.admit(t0 + Duration::from_millis(1001)),
            LogTurn::Log { left_out: 0 }
        );
    }

    #[test]
    fn messages_are_cut_on_character_boundaries() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES + 3);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn oversized_replies_are_shrunk_to_fit_a_frame() {
        let n = 255;
        let answer = Answer {
            frame_id: 1,
            class_ids: (0..n).collect(),
            scores: vec![0.001; n as usize],
            labels: (0..n)
                .map(|i| format!("a rather long class name {i}"))
                .collect(),
            decode_us: 1,
            queue_us: 2,
            inference_us: 3,
            batch: 4,
        };
        let bytes = encode_response(Response::Answer(answer.clone()));
        let Response::Answer(got) = protocol::decode_response(&bytes).unwrap() else {
            panic!("still an answer");
        };
        assert!(got.class_ids.len() > 10 && got.class_ids.len() < n as usize);
        assert_eq!(got.class_ids[..], answer.class_ids[..got.class_ids.len()]);
        assert_eq!(got.labels.len(), got.class_ids.len());

        // One class with a label of control characters (6 bytes each once escaped).
        let mut one = answer;
        one.class_ids.truncate(1);
        one.scores.truncate(1);
        one.labels = vec!["\u{1}".repeat(3000)];
        let bytes = encode_response(Response::Answer(one));
        assert!(matches!(
            protocol::decode_response(&bytes).unwrap(),
            Response::Answer(_)
        ));

        let error = refusal(3, ErrorCode::BadRequest, "\"".repeat(5000));
        let bytes = encode_response(Response::Error(error));
        assert!(matches!(
            protocol::decode_response(&bytes).unwrap(),
            Response::Error(ErrorReply { frame_id: 3, .. })
        ));
    }
}
