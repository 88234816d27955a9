//! One client connection: handshake, hello (authentication), then a task per request stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::engine::{Job, Outcome};
use super::{Shared, varint};
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
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    // Counted from the first packet, so handshakes in progress count against the limit too.
    let _guard = shared.connections.enter();
    let _counted = shared.metrics.connection();
    let over_limit = shared.connections.get() > shared.limits.max_connections;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            shared.log(format_args!("#{id} {remote}: handshake failed: {e}"));
            return;
        }
    };
    let hello_timeout = shared.limits.hello_timeout;
    let started = Instant::now();
    let connection = match tokio::time::timeout(hello_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.log(format_args!("#{id} {remote}: handshake failed: {e}"));
            return;
        }
        Err(_) => {
            shared.log(format_args!(
                "#{id} {remote}: handshake not done in {} ms",
                hello_timeout.as_millis()
            ));
            return;
        }
    };
    if over_limit {
        // Close after the handshake (not a bare refusal) so the client learns why.
        let reason = format!(
            "too many connections (limit {})",
            shared.limits.max_connections
        );
        shared.log(format_args!("#{id} {remote}: refused: {reason}"));
        connection.close(varint(ErrorCode::Overloaded), reason.as_bytes());
        return;
    }
    let left = hello_timeout.saturating_sub(started.elapsed());
    let client = match tokio::time::timeout(left, hello(&connection, &shared)).await {
        Ok(Ok(client)) => client,
        Ok(Err((code, reason))) => {
            shared.log(format_args!(
                "#{id} {remote}: refused: {}: {reason}",
                code_name(code)
            ));
            connection.close(varint(code), reason.as_bytes());
            return;
        }
        Err(_) => {
            let reason = format!("no hello within {} ms", hello_timeout.as_millis());
            shared.log(format_args!("#{id} {remote}: closed: {reason}"));
            connection.close(varint(ErrorCode::Timeout), reason.as_bytes());
            return;
        }
    };
    shared.metrics.connection_accepted();
    shared.log(format_args!("#{id} {remote}: client '{client}' connected"));
    let who = Arc::new(format!("#{id} {remote}"));
    let mut stopping = shared.stopping.clone();
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
                    tokio::spawn(request(send, recv, shared.clone(), who.clone()));
                }
                Err(e) => break e.to_string(),
            },
        }
    };
    if shared.verbose {
        shared.log(format_args!("{who}: connection ended: {reason}"));
    }
}

/// Reads the hello on the first stream and answers it. Returns the client's name, or why it was
/// refused (the caller closes the connection with that code and reason).
async fn hello(
    connection: &quinn::Connection,
    shared: &Shared,
) -> Result<String, (ErrorCode, String)> {
    let (mut send, mut recv) = connection
        .accept_bi()
        .await
        .map_err(|e| (ErrorCode::BadRequest, format!("no hello: {e}")))?;
    let result = match recv.read_to_end(MAX_HELLO_BYTES).await {
        Ok(bytes) => match protocol::decode_hello(&bytes) {
            Ok(hello) => check_token(shared, &hello.token).map(|()| hello.client),
            Err(e) => Err((e.code(), bounded(format!("bad hello: {e}")))),
        },
        Err(quinn::ReadToEndError::TooLong) => Err((
            ErrorCode::BadRequest,
            format!("hello larger than {MAX_HELLO_BYTES} bytes"),
        )),
        Err(e) => Err((ErrorCode::BadRequest, format!("hello not received: {e}"))),
    };
    let reply = match &result {
        Ok(_) => HelloReply {
            ok: true,
            code: ErrorCode::Ok,
            message: "welcome".into(),
            model: shared.engine.info.name.clone(),
            max_request_bytes: shared.limits.max_request_bytes as u64,
        },
        Err((code, message)) => HelloReply {
            ok: false,
            code: *code,
            message: message.clone(),
            model: String::new(),
            max_request_bytes: 0,
        },
    };
    let _ = recv.stop(varint(ErrorCode::Ok));
    if send
        .write_all(&protocol::encode_hello_reply(&reply).unwrap_or_default())
        .await
        .is_ok()
        && send.finish().is_ok()
        && result.is_err()
    {
        // Let the refusal reach the client before the connection close overtakes it.
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
    result
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
    who: Arc<String>,
) {
    let _in_progress = shared.requests.enter();
    let _counted = shared.metrics.request_in_flight();
    let arrived = Instant::now();
    let limits = &shared.limits;
    // Known once the header is decoded; refusals before that carry frame id 0.
    let mut frame_id = None;
    let outcome = match shared.pending.clone().try_acquire_owned() {
        Err(_) => {
            let _ = recv.stop(varint(ErrorCode::Overloaded));
            Some(Err(refusal(
                0,
                ErrorCode::Overloaded,
                format!("server busy: {} requests in progress", limits.max_pending),
            )))
        }
        Ok(_permit) => {
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
            } else {
                shared.log(line);
            }
            Response::Error(e)
        }
    };
    if send.write_all(&encode_response(response)).await.is_ok() && send.finish().is_ok() {
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
