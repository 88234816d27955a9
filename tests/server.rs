//! cboserver on real models over real QUIC on 127.0.0.1: correct answers, dynamic batching, and
//! every fault (bad bytes, limits, credentials, certificates) answered or closed cleanly while a
//! well-behaved client on another connection keeps getting correct answers. One test drives the
//! real binary through SIGTERM.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gstcbo::inference::{self, Classifier, ModelConfig};
use gstcbo::jpeg::{EncodedFrame, FrameDecoder};
use gstcbo::postprocess::Classification;
use gstcbo::preprocess::Normalization;
use gstcbo::protocol::{
    self, Answer, ErrorCode, ErrorReply, Hello, HelloReply, RequestHeader, Response,
};
use gstcbo::quic::{self, ConnectError, RequestError};
use gstcbo::server::{Limits, Server, ServerConfig};
use gstcbo::tls::{self, Trust};

const TOKEN: &str = "test-token-0123456789";
/// beer, pill, pop, water, wine bottles and the two jugs: what a bottle clip may fairly be called.
const BOTTLE_LIKE: [i32; 7] = [440, 720, 737, 898, 899, 901, 907];
const MAX_REQUEST: usize = 256 * 1024;
const MAX_STREAMS: u32 = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);
/// Every session of the shared fixture must say hello within this; 2 s leaves room for a
/// handshake on a loaded machine.
const HELLO_TIMEOUT: Duration = Duration::from_millis(2000);
const MAX_TOP_K: usize = 20;

/// A running in-process server and what its clients need.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: Server,
    addr: SocketAddr,
    cert_pem: PathBuf,
    fingerprint: String,
    token: Option<String>,
    frames: Vec<EncodedFrame>,
    /// What the server's model says in-process on each frame's decoded JPEG.
    expected: Vec<Classification>,
    _dir: tempfile::TempDir,
}

fn model_config(model: PathBuf, mean: f32) -> ModelConfig {
    ModelConfig {
        model,
        normalization: Normalization {
            mean: [mean; 3],
            std: [128.0; 3],
        },
        top_k: 5,
        ..ModelConfig::default()
    }
}

/// Real JPEGs: eight frames spread over the first 40 of the bottle clip, encoded at 224 px.
fn frames() -> &'static Vec<EncodedFrame> {
    static FRAMES: OnceLock<Vec<EncodedFrame>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        common::init();
        gstcbo::tools::loadgen::encode_clip(&common::bottle_clip(), 40, 224, 80)
            .unwrap()
            .into_iter()
            .step_by(5)
            .collect()
    })
}

fn classify_in_process(config: &ModelConfig, frames: &[EncodedFrame]) -> Vec<Classification> {
    let mut classifier = Classifier::load(config).unwrap();
    let mut decoder = FrameDecoder::new().unwrap();
    frames
        .iter()
        .map(|f| {
            let decoded = decoder.decode(&f.bytes).unwrap();
            classifier
                .classify_frame(&decoded.frame().unwrap())
                .unwrap()
                .0
        })
        .collect()
}

fn start_fixture(
    model: ModelConfig,
    token: Option<&str>,
    limits: Limits,
    max_batch: usize,
    batch_timeout: Duration,
) -> Fixture {
    common::init();
    let frames = frames().clone();
    let expected = classify_in_process(&model, &frames);
    let dir = tempfile::tempdir().unwrap();
    let identity = tls::load_or_create_self_signed(dir.path()).unwrap();
    let fingerprint = tls::fingerprint(&identity.0[0]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), model, identity);
    config.token = token.map(str::to_string);
    config.limits = limits;
    config.max_batch = max_batch;
    config.batch_timeout = batch_timeout;
    config.decode_threads = 2;
    let server = runtime.block_on(Server::start(config)).unwrap();
    Fixture {
        addr: server.local_addr(),
        server,
        runtime,
        cert_pem: dir.path().join("cert.pem"),
        fingerprint,
        token: token.map(str::to_string),
        frames,
        expected,
        _dir: dir,
    }
}

/// The shared server: the default server model (dynamic batch), a token, small limits.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let limits = Limits {
            max_request_bytes: MAX_REQUEST,
            max_streams_per_connection: MAX_STREAMS,
            request_timeout: REQUEST_TIMEOUT,
            hello_timeout: HELLO_TIMEOUT,
            max_top_k: MAX_TOP_K,
            ..Limits::default()
        };
        start_fixture(
            model_config(
                inference::models_dir().join(inference::DEFAULT_SERVER_MODEL),
                127.0,
            ),
            Some(TOKEN),
            limits,
            8,
            Duration::from_millis(10),
        )
    })
}

impl Fixture {
    fn trust(&self) -> Trust {
        Trust::Fingerprint(self.fingerprint.clone())
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// A connected, authenticated session.
    async fn session(&self) -> (quinn::Endpoint, quic::Session) {
        let endpoint = quic::client_endpoint().unwrap();
        let session = quic::connect(
            &endpoint,
            self.addr,
            "localhost",
            tls::client_config(&self.trust()).unwrap(),
            self.token.as_deref().unwrap_or(""),
            "test",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        (endpoint, session)
    }

    /// A QUIC connection after the handshake only: no hello yet.
    async fn raw_connection(&self) -> (quinn::Endpoint, quinn::Connection) {
        let endpoint = quic::client_endpoint().unwrap();
        let connection = endpoint
            .connect_with(
                tls::client_config(&self.trust()).unwrap(),
                self.addr,
                "localhost",
            )
            .unwrap()
            .await
            .unwrap();
        (endpoint, connection)
    }

    fn header(&self, frame_id: u64, index: usize) -> RequestHeader {
        let f = &self.frames[index];
        RequestHeader {
            frame_id,
            width: f.width,
            height: f.height,
            short_side: f.width.min(f.height),
            deadline_ms: 0,
            jpeg_len: 0,
            top_k: 5,
        }
    }

    /// Checks an answer for frame `index` against the in-process classification.
    fn check(&self, answer: &Answer, index: usize) {
        let want = &self.expected[index];
        assert_eq!(answer.class_ids[0], want.class_id, "top-1 of frame {index}");
        assert_eq!(answer.labels[0], want.label);
        assert!(
            (answer.scores[0] as f64 - want.confidence).abs() < 0.01,
            "score {} vs in-process {}",
            answer.scores[0],
            want.confidence
        );
        assert_eq!(answer.class_ids.len(), answer.scores.len());
        assert_eq!(answer.class_ids.len(), answer.labels.len());
        assert!(answer.scores.windows(2).all(|w| w[0] >= w[1]));
        assert!(answer.batch >= 1);
    }

    /// Sends frame `index` on `connection` and checks the answer.
    async fn good_request(&self, connection: &quinn::Connection, frame_id: u64, index: usize) {
        let index = index % self.frames.len();
        let answer = quic::request(
            connection,
            &self.header(frame_id, index),
            &self.frames[index].bytes,
            64 * 1024,
        )
        .await
        .unwrap_or_else(|e| panic!("well-behaved request {frame_id} failed: {e}"));
        assert_eq!(answer.frame_id, frame_id);
        self.check(&answer, index);
    }

    /// Runs `fault` while a well-behaved client on its own connection keeps sending frames;
    /// every one of its answers must be right, and it must get answers during and after the
    /// fault.
    async fn while_serving<F: std::future::Future>(&self, fault: F) -> F::Output {
        let stop = Arc::new(AtomicBool::new(false));
        let good = {
            let stop = stop.clone();
            let (endpoint, session) = self.session().await;
            async move {
                let mut n = 0u64;
                let mut after_stop = 0;
                while after_stop < 2 {
                    if stop.load(Ordering::Relaxed) {
                        after_stop += 1;
                    }
                    self.good_request(&session.connection, n, n as usize).await;
                    n += 1;
                }
                session.connection.close(0u32.into(), b"done");
                drop(endpoint);
                n
            }
        };
        let fault = async {
            let out = fault.await;
            stop.store(true, Ordering::Relaxed);
            out
        };
        let (out, answered) = tokio::join!(fault, good);
        assert!(answered >= 2);
        out
    }
}

/// Sends raw bytes on a new stream and reads the raw response.
async fn raw_exchange(connection: &quinn::Connection, bytes: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(64 * 1024).await.unwrap()
}

async fn raw_error(connection: &quinn::Connection, bytes: &[u8]) -> ErrorReply {
    match protocol::decode_response(&raw_exchange(connection, bytes).await).unwrap() {
        Response::Error(e) => e,
        Response::Answer(a) => panic!("expected an error, got {a:?}"),
    }
}

async fn hello(connection: &quinn::Connection, bytes: &[u8]) -> HelloReply {
    protocol::decode_hello_reply(&raw_exchange(connection, bytes).await).unwrap()
}

fn hello_bytes(token: &str) -> Vec<u8> {
    protocol::encode_hello(&Hello {
        token: token.into(),
        client: "raw".into(),
    })
    .unwrap()
}

fn close_code(e: &quinn::ConnectionError) -> Option<ErrorCode> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            ErrorCode::from_u32(c.error_code.into_inner() as u32)
        }
        _ => None,
    }
}

#[test]
fn answers_match_the_in_process_classifier_and_name_the_bottles() {
    let fx = fixture();
    let bottles = fx
        .expected
        .iter()
        .filter(|c| BOTTLE_LIKE.contains(&c.class_id))
        .count();
    assert!(
        bottles * 4 >= fx.expected.len() * 3,
        "the server model calls only {bottles} of {} bottle frames a bottle",
        fx.expected.len()
    );
    fx.block_on(async {
        let (_endpoint, session) = fx.session().await;
        assert!(session.hello.ok);
        assert_eq!(session.hello.model, inference::DEFAULT_SERVER_MODEL);
        assert_eq!(session.hello.max_request_bytes, MAX_REQUEST as u64);
        for i in 0..fx.frames.len() {
            fx.good_request(&session.connection, 100 + i as u64, i)
                .await;
        }
        // top_k is honoured, at least 1 and capped.
        for (asked, got) in [(0u8, 1usize), (1, 1), (3, 3), (255, MAX_TOP_K)] {
            let mut h = fx.header(7, 0);
            h.top_k = asked;
            let a = quic::request(&session.connection, &h, &fx.frames[0].bytes, 64 * 1024)
                .await
                .unwrap();
            assert_eq!(a.class_ids.len(), got, "top_k {asked}");
            fx.check(&a, 0);
        }
    });
}

#[test]
fn a_request_past_its_deadline_or_given_up_is_cancelled_and_the_connection_goes_on() {
    let fx = fixture();
    fx.block_on(async {
        let (_endpoint, session) = fx.session().await;
        // A deadline that has passed: the request's stream is reset, no answer is awaited.
        let passed = tokio::time::Instant::now();
        let cancelled = quic::request_until(
            &session.connection,
            &fx.header(50, 0),
            &fx.frames[0].bytes,
            64 * 1024,
            passed,
        )
        .await;
        assert!(cancelled.is_none(), "{cancelled:?}");
        // Given up by its caller (an element stopping) long before the deadline: the same.
        let later = tokio::time::Instant::now() + Duration::from_secs(20);
        let given_up = quic::request_until_or(
            &session.connection,
            &fx.header(60, 0),
            &fx.frames[0].bytes,
            64 * 1024,
            later,
            async {},
        )
        .await;
        assert!(given_up.is_none(), "{given_up:?}");
        // The same connection serves the next requests, with and without a deadline.
        let a = quic::request_until(
            &session.connection,
            &fx.header(51, 1),
            &fx.frames[1].bytes,
            64 * 1024,
            later,
        )
        .await
        .expect("answered before a 20 s deadline")
        .unwrap();
        assert_eq!(a.frame_id, 51);
        fx.check(&a, 1);
        fx.good_request(&session.connection, 52, 2).await;
    });
}

#[test]
fn garbage_bytes_on_a_request_stream_are_answered_bad_request() {
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        let (_endpoint, session) = fx.session().await;
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let e = raw_error(&session.connection, &garbage).await;
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("not a cbo frame"), "{}", e.message);
        // An HTTP request, an empty stream: the same, and the connection keeps working.
        for bytes in [&b"GET / HTTP/1.1\r\n\r\n"[..], b""] {
            assert_eq!(
                raw_error(&session.connection, bytes).await.code,
                ErrorCode::BadRequest
            );
        }
        // A header whose error message would quote a huge value: answered with a short message
        // (an unbounded one would not fit in a reply header).
        let quoted = "A".repeat(protocol::MAX_HEADER_BYTES - 200);
        let header = serde_json::json!({ "frame_id": quoted, "top_k": 5 });
        let bytes = protocol::encode(protocol::Kind::Request, &header, b"").unwrap();
        let e = raw_error(&session.connection, &bytes).await;
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.len() < 1000, "{} byte message", e.message.len());
        fx.good_request(&session.connection, 1, 1).await;
    }));
}

#[test]
fn a_truncated_header_is_answered_bad_request() {
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        let (_endpoint, session) = fx.session().await;
        let full = protocol::encode_request(&fx.header(5, 0), &fx.frames[0].bytes).unwrap();
        let cut = &full[..protocol::PREFIX_BYTES + 20];
        let e = raw_error(&session.connection, cut).await;
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("truncated"), "{}", e.message);
        // A header that says more JPEG bytes than follow.
        let short = &full[..full.len() - 100];
        let e = raw_error(&session.connection, short).await;
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("header says"), "{}", e.message);
        fx.good_request(&session.connection, 2, 2).await;
    }));
}

#[test]
fn an_oversized_payload_is_refused_too_large() {
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        let (_endpoint, session) = fx.session().await;
        let big = vec![0xABu8; 4 * MAX_REQUEST];
        let started = Instant::now();
        match quic::request(&session.connection, &fx.header(9, 0), &big, 64 * 1024).await {
            Err(RequestError::Server(e)) => {
                assert_eq!(e.code, ErrorCode::TooLarge);
                // Refused before its header was read, the server says frame 0; the client
                // names the frame of the stream (it printed "for frame 0").
                assert_eq!(e.frame_id, 9);
                assert!(
                    e.message.contains(&MAX_REQUEST.to_string()),
                    "{}",
                    e.message
                );
            }
            other => panic!("expected too-large, got {other:?}"),
        }
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "refused early, not timed out"
        );
        fx.good_request(&session.connection, 3, 3).await;
    }));
}

#[test]
fn a_valid_header_with_non_jpeg_bytes_is_answered_not_jpeg() {
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        let (_endpoint, session) = fx.session().await;
        let mut png_ish = b"\x89PNG\r\n\x1a\n".to_vec();
        png_ish.extend(std::iter::repeat_n(7u8, 3000));
        // A JPEG cut after its first bytes: the header cannot be read.
        let cut_jpeg = fx.frames[0].bytes[..40].to_vec();
        for (id, payload) in [(41u64, png_ish), (42, cut_jpeg)] {
            match quic::request(&session.connection, &fx.header(id, 0), &payload, 64 * 1024).await {
                Err(RequestError::Server(e)) => {
                    assert_eq!(e.code, ErrorCode::NotJpeg);
                    assert_eq!(e.frame_id, id, "the refusal names the frame");
                }
                other => panic!("expected not-jpeg, got {other:?}"),
            }
        }
        fx.good_request(&session.connection, 4, 4).await;
    }));
}

#[test]
fn a_jpeg_over_the_side_limit_is_refused_too_large_not_as_no_jpeg() {
    // A valid JPEG, 8x5000 (over the 4096-pixel side limit): "too large", which it is, rather
    // than "not a JPEG", which sent users looking for an encoder bug.
    let pixels = vec![128u8; 8 * 5000 * 3];
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width: 8,
        pitch: 8 * 3,
        height: 5000,
        format: turbojpeg::PixelFormat::RGB,
    };
    let tall = turbojpeg::compress(image, 80, turbojpeg::Subsamp::Sub2x2)
        .unwrap()
        .to_vec();
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        let (_endpoint, session) = fx.session().await;
        match quic::request(&session.connection, &fx.header(43, 0), &tall, 64 * 1024).await {
            Err(RequestError::Server(e)) => {
                assert_eq!(e.code, ErrorCode::TooLarge, "{}", e.message);
                assert!(e.message.contains("8x5000"), "{}", e.message);
            }
            other => panic!("expected too-large, got {other:?}"),
        }
        fx.good_request(&session.connection, 5, 5).await;
    }));
}

#[test]
fn a_wrong_protocol_version_is_refused_on_hello_and_request() {
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        // Hello of version 2: refused in the reply, then the connection is closed.
        let (_e1, connection) = fx.raw_connection().await;
        let mut h = hello_bytes(TOKEN);
        h[2] = 2;
        let reply = hello(&connection, &h).await;
        assert!(!reply.ok);
        assert_eq!(reply.code, ErrorCode::UnsupportedVersion);
        assert!(reply.message.contains("version 2"), "{}", reply.message);
        let closed = connection.closed().await;
        assert_eq!(close_code(&closed), Some(ErrorCode::UnsupportedVersion));

        // Request of version 2 on an authenticated connection: answered, connection kept.
        let (_e2, session) = fx.session().await;
        let mut r = protocol::encode_request(&fx.header(6, 0), &fx.frames[0].bytes).unwrap();
        r[2] = 2;
        let e = raw_error(&session.connection, &r).await;
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        fx.good_request(&session.connection, 5, 5).await;
    }));
}

#[test]
fn extra_streams_wait_for_credit_and_stalled_streams_time_out() {
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        let (_endpoint, session) = fx.session().await;
        let conn = &session.connection;
        let request = protocol::encode_request(&fx.header(8, 0), &fx.frames[0].bytes).unwrap();
        // Fill the connection's stream limit with requests that never finish.
        let mut stalled = Vec::new();
        for _ in 0..MAX_STREAMS {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&request[..100]).await.unwrap();
            stalled.push((send, recv));
        }
        let started = Instant::now();
        // One stream more is not granted while those are open...
        let extra = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await;
        assert!(
            extra.is_err(),
            "the server granted more than {MAX_STREAMS} streams"
        );
        // ...until the server gives up on the stalled ones with a timeout answer.
        for (send, mut recv) in stalled {
            let bytes = recv.read_to_end(64 * 1024).await.unwrap();
            match protocol::decode_response(&bytes).unwrap() {
                Response::Error(e) => assert_eq!(e.code, ErrorCode::Timeout),
                other => panic!("expected a timeout, got {other:?}"),
            }
            drop(send);
        }
        let waited = started.elapsed();
        assert!(
            waited + Duration::from_millis(300) >= REQUEST_TIMEOUT,
            "timed out after {waited:?}, before the {REQUEST_TIMEOUT:?} request timeout"
        );
        // The connection is usable again.
        fx.good_request(conn, 9, 6).await;
    }));
}

#[test]
fn missing_or_wrong_tokens_are_refused_with_a_reason() {
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        let endpoint = quic::client_endpoint().unwrap();
        let config = tls::client_config(&fx.trust()).unwrap();
        for (token, reason) in [("", "requires a token"), ("wrong-token", "wrong token")] {
            let err = quic::connect(
                &endpoint,
                fx.addr,
                "localhost",
                config.clone(),
                token,
                "t",
                Duration::from_secs(10),
            )
            .await
            .err()
            .expect("connect with a bad token must fail");
            match &err {
                ConnectError::Unauthorized(m) => assert!(m.contains(reason), "{m}"),
                other => panic!("expected Unauthorized, got {other:?}"),
            }
            assert!(err.to_string().starts_with("server refused the token"));
        }
        // A client that skips the hello gets no work done: its first stream must be a hello.
        let (_e, connection) = fx.raw_connection().await;
        let request = protocol::encode_request(&fx.header(1, 0), &fx.frames[0].bytes).unwrap();
        let reply = hello(&connection, &request).await;
        assert!(!reply.ok);
        assert_eq!(reply.code, ErrorCode::BadRequest);
        assert_eq!(
            close_code(&connection.closed().await),
            Some(ErrorCode::BadRequest)
        );
    }));
}

#[test]
fn an_untrusted_certificate_is_a_tls_error() {
    let fx = fixture();
    let other = tempfile::tempdir().unwrap();
    let (certs, _) = tls::load_or_create_self_signed(other.path()).unwrap();
    let wrong_pin = tls::fingerprint(&certs[0]);
    assert_ne!(wrong_pin, fx.fingerprint);
    fx.block_on(fx.while_serving(async {
        let endpoint = quic::client_endpoint().unwrap();
        for trust in [
            Trust::Fingerprint(wrong_pin.clone()),
            Trust::Pem(other.path().join("cert.pem")),
        ] {
            let err = quic::connect(
                &endpoint,
                fx.addr,
                "localhost",
                tls::client_config(&trust).unwrap(),
                TOKEN,
                "t",
                Duration::from_secs(10),
            )
            .await
            .err()
            .expect("an untrusted server must be refused");
            assert!(matches!(err, ConnectError::Tls(_)), "{trust:?}: {err:?}");
            assert!(err.to_string().starts_with("untrusted server certificate"));
            // Another self-signed certificate has the same name and another key: what a
            // server whose certificate was made again presents. The message says so.
            if let Trust::Pem(_) = trust {
                assert!(err.to_string().contains("made again"), "{err}");
            }
        }
        // The right PEM and the right pin (colon-separated, upper case) both work.
        let colons: Vec<String> = fx
            .fingerprint
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        for trust in [
            Trust::Pem(fx.cert_pem.clone()),
            Trust::Fingerprint(colons.join(":")),
        ] {
            let s = quic::connect(
                &endpoint,
                fx.addr,
                "localhost",
                tls::client_config(&trust).unwrap(),
                TOKEN,
                "t",
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|e| panic!("{trust:?}: {e}"));
            fx.good_request(&s.connection, 10, 7).await;
        }
        // The PEM also checks the name: the certificate is not valid for another host.
        let err = quic::connect(
            &endpoint,
            fx.addr,
            "example.com",
            tls::client_config(&Trust::Pem(fx.cert_pem.clone())).unwrap(),
            TOKEN,
            "t",
            Duration::from_secs(10),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, ConnectError::Tls(_)), "{err:?}");
    }));
}

#[test]
fn a_silent_connection_is_closed_after_the_hello_timeout() {
    let fx = fixture();
    fx.block_on(fx.while_serving(async {
        let started = Instant::now();
        let (_e, connection) = fx.raw_connection().await;
        let closed = connection.closed().await;
        assert_eq!(close_code(&closed), Some(ErrorCode::Timeout), "{closed:?}");
        let waited = started.elapsed();
        assert!(
            waited >= HELLO_TIMEOUT / 2 && waited < HELLO_TIMEOUT * 4,
            "{waited:?}"
        );
    }));
}

#[test]
fn concurrent_requests_from_several_connections_are_batched() {
    let fx = fixture();
    fx.block_on(async {
        let mut sessions = Vec::new();
        for _ in 0..8 {
            sessions.push(fx.session().await);
        }
        let mut largest = 0;
        for round in 0..5u64 {
            let tasks: Vec<_> = sessions
                .iter()
                .enumerate()
                .map(|(i, (_, s))| {
                    let connection = s.connection.clone();
                    tokio::spawn(async move {
                        let a = quic::request(
                            &connection,
                            &fx.header(round * 100 + i as u64, i),
                            &fx.frames[i].bytes,
                            64 * 1024,
                        )
                        .await
                        .unwrap();
                        fx.check(&a, i);
                        a.batch
                    })
                })
                .collect();
            let mut batches = Vec::new();
            for t in tasks {
                batches.push(t.await.unwrap());
            }
            assert!(batches.iter().all(|&b| (1..=8).contains(&b)), "{batches:?}");
            largest = largest.max(*batches.iter().max().unwrap());
            if largest > 1 {
                break;
            }
        }
        assert!(largest > 1, "8 concurrent requests never shared a batch");
    });
}

/// A server of its own for a test of limits: a small model with a fixed batch of 1 (1001 classes,
/// probabilities), batching off.
fn small_server(token: Option<&str>, limits: Limits) -> Fixture {
    let model = model_config(
        common::assets().join("models/mobilenet-v2-1.0-int8-224.onnx"),
        128.0,
    );
    start_fixture(model, token, limits, 1, Duration::ZERO)
}

/// `cbo loadgen` against `fx` with its token in `token_file`, without a baseline.
fn loadgen_args(
    fx: &Fixture,
    token_file: PathBuf,
    clients: usize,
    seconds: f64,
) -> gstcbo::tools::loadgen::LoadgenArgs {
    gstcbo::tools::loadgen::LoadgenArgs {
        token_file: Some(token_file),
        clients,
        seconds,
        ..common::loadgen_args(&fx.addr.to_string(), &fx.fingerprint)
    }
}

/// A QUIC connection from `local` (another loopback address stands for another host), after the
/// handshake only.
async fn connect_from(
    local: &str,
    fx: &Fixture,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let endpoint = quinn::Endpoint::client(format!("{local}:0").parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(
            tls::client_config(&fx.trust()).unwrap(),
            fx.addr,
            "localhost",
        )
        .unwrap()
        .await;
    (endpoint, connection)
}

/// Whether `f` is still pending when first polled (credit a QUIC peer has not given is known
/// at once: nothing to wait for).
async fn pending_on_first_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
    let mut f = Some(f);
    std::future::poll_fn(|cx| {
        let pending = f.take().unwrap().poll(cx).is_pending();
        std::task::Poll::Ready(pending)
    })
    .await
}

/// Before its hello a connection may open one stream (the hello's), and one address may hold at
/// most half of the places for connections awaiting their hello (a quarter once half are taken);
/// others keep connecting. (Before: 64 streams of 2 MB each were buffered per silent connection,
/// and 64 silent connections from one host had every new client refused.)
#[test]
fn connections_awaiting_their_hello_get_one_stream_and_one_address_half_the_places() {
    let limits = Limits {
        // Two places awaiting the hello for one address alone, then one per address.
        max_connections: 4,
        hello_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let fx = small_server(Some(TOKEN), limits);
    fx.block_on(async {
        let (_a_endpoint, silent) = connect_from("127.0.0.2", &fx).await;
        let silent = silent.expect("the first connection from an address is served");
        let (mut send, mut recv) = silent.open_bi().await.unwrap();
        let mut second = std::pin::pin!(silent.open_bi());
        assert!(
            pending_on_first_poll(second.as_mut()).await,
            "a second stream before the hello"
        );
        let (_b_endpoint, also_silent) = connect_from("127.0.0.2", &fx).await;
        let _also_silent = also_silent.expect("half the places for one address");
        // The same address again while both await their hello: refused.
        let (_r_endpoint, refused) = connect_from("127.0.0.2", &fx).await;
        match refused {
            Err(quinn::ConnectionError::ConnectionClosed(c))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        // What a client of the protocol is told: busy, try later.
        let endpoint = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
        let told = quic::connect(
            &endpoint,
            fx.addr,
            "localhost",
            tls::client_config(&fx.trust()).unwrap(),
            TOKEN,
            "third from the address",
            Duration::from_secs(10),
        )
        .await
        .err()
        .expect("refused");
        assert!(matches!(told, ConnectError::Busy(_)), "{told:?}");
        // Another address connects and is served.
        let (_c_endpoint, other) = fx.session().await;
        fx.good_request(&other.connection, 1, 0).await;

        // The hello on the one stream is welcomed; then the client has its streams, and its
        // address its place back.
        send.write_all(&hello_bytes(TOKEN)).await.unwrap();
        send.finish().unwrap();
        let reply =
            protocol::decode_hello_reply(&recv.read_to_end(64 * 1024).await.unwrap()).unwrap();
        assert!(reply.ok, "{reply:?}");
        let mut streams = Vec::new();
        for _ in 0..3 {
            // Held open: each needs credit of its own.
            let s = tokio::time::timeout(Duration::from_secs(10), silent.open_bi())
                .await
                .expect("stream credit after the hello")
                .unwrap();
            streams.push(s);
        }
        let (_d_endpoint, again) = connect_from("127.0.0.2", &fx).await;
        let again = again.expect("the address has its place back");
        assert!(
            hello(&again, &hello_bytes(TOKEN)).await.ok,
            "second connection from the address"
        );
        fx.good_request(&silent, 2, 1).await;
    });
}

/// A client that opens streams and sends slowly holds at most its share of the pending places
/// while another client wants its own (`--max-pending` / active clients); the other is answered. (Before, 5 such connections held
/// all 256 places and every other client got `overloaded`.)
#[test]
fn a_client_holds_at_most_its_share_of_the_pending_places() {
    let limits = Limits {
        max_pending: 4,
        ..Limits::default()
    };
    let fx = small_server(None, limits);
    fx.block_on(async {
        let (_a, slow) = fx.session().await;
        let (_b, good) = fx.session().await;
        // The good client has asked for places (an idle client reserves none); so of the two
        // clients each has a share of two. Four streams that never finish their request.
        fx.good_request(&good.connection, 1, 0).await;
        let request = protocol::encode_request(&fx.header(1, 0), &fx.frames[0].bytes).unwrap();
        let mut open = Vec::new();
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (mut send, mut recv) = slow.connection.open_bi().await.unwrap();
            send.write_all(&request[..50]).await.unwrap();
            open.push(send);
            reads.spawn(async move { recv.read_to_end(64 * 1024).await });
        }
        // Two are refused at once, whichever the server saw last.
        for _ in 0..2 {
            let bytes = reads.join_next().await.unwrap().unwrap().unwrap();
            match protocol::decode_response(&bytes).unwrap() {
                Response::Error(e) => {
                    assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}");
                    assert!(e.message.contains("its share"), "{}", e.message);
                }
                Response::Answer(a) => panic!("a stalled request was answered: {a:?}"),
            }
        }
        fx.good_request(&good.connection, 2, 1).await;
        reads.abort_all();
    });
}

/// A second server: a model with a fixed batch of 1 (probabilities, 1001 classes), no token,
/// two connections and three requests in progress at most.
#[test]
fn connection_and_pending_limits_with_a_fixed_batch_model() {
    let limits = Limits {
        max_connections: 2,
        // Two clients: each may hold two (its share), so the pool fills without either at its
        // share.
        max_pending: 3,
        // Long enough that the two stalled requests still hold their places while the third
        // is sent on a loaded machine.
        request_timeout: Duration::from_millis(5000),
        ..Limits::default()
    };
    let model = model_config(
        common::assets().join("models/mobilenet-v2-1.0-int8-224.onnx"),
        128.0,
    );
    let fx = start_fixture(model, None, limits, 8, Duration::from_millis(20));
    assert_eq!(
        fx.server.model().max_batch,
        1,
        "batching is off for a fixed batch"
    );
    fx.block_on(async {
        let (_e1, good) = fx.session().await;
        for i in 0..fx.frames.len() {
            let a = quic::request(
                &good.connection,
                &fx.header(i as u64, i),
                &fx.frames[i].bytes,
                64 * 1024,
            )
            .await
            .unwrap();
            fx.check(&a, i);
            assert_eq!(a.batch, 1);
        }

        // Connection limit: the third connection is closed with a reason; the others are fine.
        let (_e2, second) = fx.session().await;
        let endpoint = quic::client_endpoint().unwrap();
        let err = quic::connect(
            &endpoint,
            fx.addr,
            "localhost",
            tls::client_config(&fx.trust()).unwrap(),
            "any token: this server takes all",
            "third",
            Duration::from_secs(10),
        )
        .await
        .err()
        .expect("a third connection must be refused");
        match &err {
            ConnectError::Busy(m) => {
                assert!(m.contains("too many connections"), "{m}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        fx.good_request(&good.connection, 50, 0).await;

        // Pending limit: three stalled requests (two of one client, one of the other) occupy
        // the server; a fourth is refused at once.
        let request = protocol::encode_request(&fx.header(60, 0), &fx.frames[0].bytes).unwrap();
        let mut stalled = Vec::new();
        for connection in [&second.connection, &second.connection, &good.connection] {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            send.write_all(&request[..50]).await.unwrap();
            stalled.push((send, recv));
        }
        // Let the server see the three streams (and finish with earlier ones) before the fourth.
        let until = Instant::now() + Duration::from_secs(5);
        while fx.server.stats().requests_in_progress != 3 {
            assert!(Instant::now() < until, "{:?}", fx.server.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match quic::request(
            &good.connection,
            &fx.header(61, 1),
            &fx.frames[1].bytes,
            64 * 1024,
        )
        .await
        {
            Err(RequestError::Server(e)) => {
                assert_eq!(e.code, ErrorCode::Overloaded);
                assert!(e.message.contains("server busy"), "{}", e.message);
            }
            other => panic!("expected overloaded, got {other:?}"),
        }
        // The stalled requests time out; then the server serves again.
        for (_send, mut recv) in stalled {
            let bytes = recv.read_to_end(64 * 1024).await.unwrap();
            assert!(matches!(
                protocol::decode_response(&bytes).unwrap(),
                Response::Error(ErrorReply {
                    code: ErrorCode::Timeout,
                    ..
                })
            ));
        }
        fx.good_request(&good.connection, 62, 2).await;
        fx.good_request(&second.connection, 63, 3).await;
    });
    let Fixture {
        runtime, server, ..
    } = fx;
    runtime.block_on(server.shutdown()).unwrap();
}

/// Reads the binary's stdout until `listening on ADDR`.
fn wait_listening(child: &mut std::process::Child) -> (SocketAddr, Vec<String>) {
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(addr) = line.strip_prefix("listening on ") {
            return (addr.trim().parse().unwrap(), lines);
        }
        lines.push(line);
    }
    panic!("cboserver exited before listening: {lines:?}");
}

fn sigterm(child: &std::process::Child) {
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("cboserver did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_requests_in_progress_and_exits_zero() {
    common::init();
    let frames = frames();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("  {TOKEN}\n")).unwrap();
    let cert_dir = dir.path().join("identity");
    let model = common::assets().join("models/efficientnet-lite0-int8pt-224.onnx");
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cboserver"))
            .args(["--listen", "127.0.0.1:0", "--self-signed"])
            .arg(&cert_dir)
            .arg("--token-file")
            .arg(&token_file)
            .arg("--model")
            .arg(&model)
            // A long batch wait keeps the requests below in progress when SIGTERM arrives; the
            // drain waits for them however slow the machine.
            .args(["--max-batch", "8", "--batch-timeout-ms", "4000"])
            .args(["--drain-timeout-ms", "30000", "--metrics", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    let (addr, printed) = wait_listening(&mut child);
    let metrics: SocketAddr = printed
        .iter()
        .find_map(|l| {
            l.strip_prefix("metrics on http://")?
                .strip_suffix("/metrics")
        })
        .expect("the metrics address is printed")
        .parse()
        .unwrap();
    let pem = cert_dir.join("cert.pem");
    let (certs, _) = tls::load_pem(&pem, &cert_dir.join("key.pem")).unwrap();
    let fingerprint = tls::fingerprint(&certs[0]);
    assert!(
        printed.iter().any(|l| l.contains(&fingerprint)),
        "the fingerprint is printed: {printed:?}"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let closed = runtime.block_on(async {
        let endpoint = quic::client_endpoint().unwrap();
        let session = quic::connect(
            &endpoint,
            addr,
            "localhost",
            tls::client_config(&Trust::Pem(pem.clone())).unwrap(),
            TOKEN,
            "sigterm-test",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let requests: Vec<_> = (0..3)
            .map(|i| {
                let conn = session.connection.clone();
                let f = frames[i].clone();
                tokio::spawn(async move {
                    let header = RequestHeader {
                        frame_id: i as u64,
                        width: f.width,
                        height: f.height,
                        short_side: 224,
                        deadline_ms: 0,
                        jpeg_len: 0,
                        top_k: 3,
                    };
                    quic::request(&conn, &header, &f.bytes, 64 * 1024).await
                })
            })
            .collect();
        // SIGTERM once the server has taken all three (a stream it has not accepted when it
        // stops is not its to answer).
        let until = Instant::now() + Duration::from_secs(30);
        while common::server::metric(metrics, "cboserver_requests_in_flight") < 3.0 {
            assert!(
                Instant::now() < until,
                "the server never took the three requests"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sigterm(&child);
        for (i, r) in requests.into_iter().enumerate() {
            let answer = r.await.unwrap().unwrap_or_else(|e| {
                panic!("request {i} in progress at SIGTERM was not answered: {e}")
            });
            assert_eq!(answer.frame_id, i as u64);
            assert_eq!(answer.class_ids.len(), 3);
        }
        session.connection.closed().await
    });
    assert_eq!(
        close_code(&closed),
        Some(ErrorCode::ShuttingDown),
        "{closed:?}"
    );
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    // The client's connection is logged when it starts and when it ends, with what it did.
    assert!(
        stderr.contains("client \"sigterm-test\" connected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("and 3 request(s): server shut down"),
        "{stderr}"
    );

    // The identity is reused on restart: same fingerprint.
    let mut again = spawn();
    let (_, printed) = wait_listening(&mut again);
    assert!(
        printed.iter().any(|l| l.contains(&fingerprint)),
        "{printed:?}"
    );
    sigterm(&again);
    assert_eq!(
        wait_exit(&mut again, Duration::from_secs(10)).code(),
        Some(0)
    );
}

/// `cbo loadgen` connects its clients at once; a server that refuses them for a moment (too many
/// connections awaiting their hello from this address: `Busy`) is tried again, and the run
/// completes with every client.
#[test]
fn loadgen_clients_refused_for_a_moment_connect_again() {
    let limits = Limits {
        // Four connections awaiting their hello from one address take half the places; the
        // next from it is refused while they last.
        max_connections: 8,
        hello_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let fx = small_server(Some(TOKEN), limits);
    let silent: Vec<_> = fx.block_on(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(fx.raw_connection().await);
        }
        held
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let args = loadgen_args(&fx, token_file, 3, 0.5);
    let run = std::thread::spawn(move || gstcbo::tools::loadgen::run(&args));
    // Once the server has refused loadgen, the silent connections go.
    let until = Instant::now() + Duration::from_secs(30);
    while fx.server.stats().connections_refused == 0 {
        assert!(Instant::now() < until, "{:?}", fx.server.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    for (_endpoint, connection) in &silent {
        connection.close(0u32.into(), b"done");
    }
    let report = run.join().unwrap().unwrap();
    assert!(report.answers > 0, "{report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    drop(silent);
}

#[test]
fn loadgen_completes_with_answers() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let args = gstcbo::tools::loadgen::LoadgenArgs {
        server_pid: Some(std::process::id()),
        baseline_seconds: Some(0.3),
        no_baseline: false,
        ..loadgen_args(fx, token_file, 2, 1.0)
    };
    let report = gstcbo::tools::loadgen::run(&args).unwrap();
    assert!(report.answers > 0, "{report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.server_model, inference::DEFAULT_SERVER_MODEL);
    assert!(report.latency_ms_p50 > 0.0 && report.latency_ms_p99 >= report.latency_ms_p50);
    assert!(report.server_rss.as_ref().is_some_and(|r| r.peak_mib > 0.0));
    assert!(
        report
            .baseline
            .as_ref()
            .is_some_and(|b| b.frames_per_s > 0.0)
    );
    assert!(report.ratio.is_some_and(|r| r > 0.0));
}

/// Runs `cboserver ARGS` with a certificate directory that does not exist yet and a model that
/// does not exist, and asserts that it failed within seconds with status 1 or 2 (never 101).
/// Were a value wrongly accepted, the missing model stops the server before any thread that
/// value sizes is started. Returns the message and whether the certificate was created.
fn cboserver_fails(args: &[&str]) -> (String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("identity");
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cboserver"))
        .args(["--listen", "127.0.0.1:0", "--self-signed"])
        .arg(&identity)
        .args(["--model", "/nonexistent/model.onnx"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let code = status.code();
    assert!(
        code == Some(1) || code == Some(2),
        "cboserver {args:?}: exit {code:?}, {stderr}"
    );
    assert!(!stderr.contains("panicked"), "cboserver {args:?}: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cboserver {args:?} took {:?} to fail",
        started.elapsed()
    );
    (stderr, identity.exists())
}

/// Asserts that `cboserver ARGS` is refused with every one of `expected` in its message, before
/// it has created its certificate (so before anything started).
fn cboserver_refuses(args: &[&str], expected: &[&str]) {
    let (stderr, created) = cboserver_fails(args);
    for e in expected {
        assert!(
            stderr.contains(e),
            "cboserver {args:?}: no '{e}' in {stderr}"
        );
    }
    assert!(
        !created,
        "cboserver {args:?} created its certificate before refusing"
    );
}

#[test]
fn cboserver_refuses_out_of_range_settings_naming_the_option_before_starting() {
    for (args, expected) in [
        // Threads by the hundred thousand exhausted the machine before an error.
        (
            &["--threads", "100000"][..],
            "'--threads <THREADS>': 100000 is not in 0..=256",
        ),
        (
            &["--threads", "257"],
            "'--threads <THREADS>': 257 is not in 0..=256",
        ),
        (
            &["--decode-threads", "100000"],
            "'--decode-threads <DECODE_THREADS>': 100000 is not in 0..=256",
        ),
        // Values under which the server would listen and serve nothing.
        (
            &["--max-batch", "0"],
            "'--max-batch <MAX_BATCH>': 0 is not in 1..=256",
        ),
        (
            &["--max-streams", "0"],
            "'--max-streams <MAX_STREAMS>': 0 is not in 1..=1024",
        ),
        (
            &["--max-connections", "0"],
            "'--max-connections <MAX_CONNECTIONS>': 0 is not in 1..=65536",
        ),
        (
            &["--max-pending", "0"],
            "'--max-pending <MAX_PENDING>': 0 is not in 1..=65536",
        ),
        (
            &["--max-request-bytes", "0"],
            "'--max-request-bytes <MAX_REQUEST_BYTES>': 0 is not in 1024..=268435456",
        ),
        (
            &["--request-timeout-ms", "0"],
            "'--request-timeout-ms <REQUEST_TIMEOUT_MS>': 0 is not in 1..=600000",
        ),
        (
            &["--hello-timeout-ms", "0"],
            "'--hello-timeout-ms <HELLO_TIMEOUT_MS>': 0 is not in 1..=600000",
        ),
        (
            &["--idle-timeout-ms", "0"],
            "'--idle-timeout-ms <IDLE_TIMEOUT_MS>': 0 is not in 10000..=3600000",
        ),
        (
            &["--max-top-k", "0"],
            "'--max-top-k <MAX_TOP_K>': 0 is not in 1..=255",
        ),
        (
            &["--backend-connect-timeout-ms", "0"],
            "'--backend-connect-timeout-ms <BACKEND_CONNECT_TIMEOUT_MS>': 0 is not in 1..=600000",
        ),
        (
            &["--backend-concurrency", "0"],
            "'--backend-concurrency <BACKEND_CONCURRENCY>': 0 is not in 1..=64",
        ),
        // Absurdly large ones.
        (
            &["--batch-timeout-ms", "100000000"],
            "'--batch-timeout-ms <BATCH_TIMEOUT_MS>': 100000000 is not in 0..=60000",
        ),
        (
            &["--drain-timeout-ms", "600001"],
            "'--drain-timeout-ms <DRAIN_TIMEOUT_MS>': 600001 is not in 0..=600000",
        ),
        (
            &["--max-top-k", "256"],
            "'--max-top-k <MAX_TOP_K>': 256 is not in 1..=255",
        ),
        // A batch wait as long as a request's time would answer every lone frame `timeout`.
        (
            &["--batch-timeout-ms", "5000"],
            "--batch-timeout-ms 5000 must be below --request-timeout-ms 5000",
        ),
        (
            &["--batch-timeout-ms", "300", "--request-timeout-ms", "200"],
            "--batch-timeout-ms 300 must be below --request-timeout-ms 200",
        ),
        // --input-size: checked whichever the backend.
        (
            &["--input-size", "0"],
            "bad --input-size '0': expected N or WxH, each from 1 to 4096",
        ),
        (
            &["--input-size", "224x5000"],
            "bad --input-size '224x5000': expected N or WxH, each from 1 to 4096",
        ),
        // With the local backend it is the side of a square image (a model with a dynamic
        // image size runs at it).
        (
            &["--input-size", "224x200"],
            "--input-size 224x200: with --backend local it is the side N of a square image",
        ),
        (
            &["--input-layout", "nhwc"],
            "--input-layout is for --backend grpc://HOST:PORT",
        ),
        (
            &["--backend-concurrency", "2"],
            "--backend-concurrency is for --backend grpc://HOST:PORT",
        ),
        (
            &[
                "--backend",
                "grpc://127.0.0.1:9",
                "--backend-model",
                "m",
                "--input-size",
                "0x260",
            ],
            "bad --input-size '0x260'",
        ),
    ] {
        cboserver_refuses(args, &[expected]);
    }
    // A batch wait at or over the request time is fine when nothing waits for a batch: the
    // values pass the checks, and the missing model is what stops this server.
    let (stderr, created) = cboserver_fails(&["--batch-timeout-ms", "5000", "--max-batch", "1"]);
    assert!(
        created && stderr.contains("/nonexistent/model.onnx"),
        "{stderr}"
    );
}

/// A `--model` whose image size is dynamic (all its input dimensions named, as Optimum exports
/// them) needs `--input-size`, and runs at it.
#[test]
fn cboserver_runs_a_model_with_a_dynamic_image_size_at_input_size() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("dynamic.onnx");
    std::fs::write(&model, common::onnx::dynamic_size_model()).unwrap();
    let spawn = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cboserver"))
            .args(["--listen", "127.0.0.1:0", "--self-signed"])
            .arg(dir.path().join("identity"))
            .arg("--model")
            .arg(&model)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn(&[]);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dynamic") && stderr.contains("--input-size"),
        "{stderr}"
    );
    // At --input-size it loads (its warm-up run included), listens and answers frames (batched:
    // its batch axis is dynamic too).
    let mut child = spawn(&["--input-size", "40"]);
    let (addr, printed) = wait_listening(&mut child);
    let fingerprint = printed
        .iter()
        .find_map(|l| l.strip_prefix("certificate sha256 fingerprint "))
        .expect("the fingerprint is printed")
        .trim()
        .to_string();
    let args = gstcbo::tools::loadgen::LoadgenArgs {
        clients: 2,
        ..common::loadgen_args(&addr.to_string(), &fingerprint)
    };
    let report = gstcbo::tools::loadgen::run(&args);
    let _ = child.kill();
    let _ = child.wait();
    let report = report.unwrap();
    assert!(report.answers > 0, "{report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // The bundled model is fixed at 260x260: another size is refused, with what would do.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cboserver"))
        .args(["--listen", "127.0.0.1:0", "--self-signed"])
        .arg(dir.path().join("identity"))
        .args(["--input-size", "224"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fixed in the model, not 224")
            && stderr.contains("leave input-size")
            && stderr.contains("or give 260"),
        "{stderr}"
    );
}

/// Each bounded option's `--help` states its range, from the bounds the server checks.
#[test]
fn cboserver_help_states_the_range_of_each_bounded_option() {
    use gstcbo::server::bounds;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cboserver"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let paragraph = |flag: &str| -> String {
        let start = help
            .find(&format!("      {flag} <"))
            .unwrap_or_else(|| panic!("no {flag} in {help}"));
        let rest = &help[start..];
        let end = rest[1..].find("\n      -").map_or(rest.len(), |i| i + 1);
        rest[..end].to_string()
    };
    for (flag, range) in [
        ("--threads", bounds::THREADS),
        ("--decode-threads", bounds::DECODE_THREADS),
        ("--max-batch", bounds::MAX_BATCH),
        ("--batch-timeout-ms", bounds::BATCH_TIMEOUT_MS),
        ("--max-request-bytes", bounds::MAX_REQUEST_BYTES),
        ("--max-streams", bounds::MAX_STREAMS),
        ("--max-connections", bounds::MAX_CONNECTIONS),
        ("--max-pending", bounds::MAX_PENDING),
        ("--request-timeout-ms", bounds::TIMEOUT_MS),
        ("--hello-timeout-ms", bounds::TIMEOUT_MS),
        ("--backend-connect-timeout-ms", bounds::TIMEOUT_MS),
        ("--backend-concurrency", bounds::BACKEND_CONCURRENCY),
        ("--idle-timeout-ms", bounds::IDLE_TIMEOUT_MS),
        ("--drain-timeout-ms", bounds::DRAIN_TIMEOUT_MS),
        ("--max-top-k", bounds::MAX_TOP_K),
        ("--input-size", bounds::INPUT_SIDE),
    ] {
        let text = paragraph(flag);
        // "0 to 256", "1 to 1024", or "at most 256" where 0 has a meaning of its own.
        let stated = text.contains(&format!("{} to {}", range.start(), range.end()))
            || (*range.start() == 0 && text.contains(&format!("at most {}", range.end())));
        assert!(stated, "{flag} does not state {range:?}: {text}");
    }
}

/// The library refuses the same settings before it loads anything (the model here does not
/// exist: an error about it would mean the check came too late).
#[test]
fn server_start_refuses_out_of_range_settings_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let identity = tls::load_or_create_self_signed(dir.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    type Spoil = fn(&mut ServerConfig);
    let cases: [(&str, Spoil); 5] = [
        ("--max-pending", |c| c.limits.max_pending = 0),
        ("--max-streams", |c| c.limits.max_streams_per_connection = 0),
        ("--decode-threads", |c| c.decode_threads = 100_000),
        ("--request-timeout-ms", |c| {
            c.limits.request_timeout = Duration::ZERO
        }),
        ("--batch-timeout-ms", |c| {
            c.batch_timeout = c.limits.request_timeout
        }),
    ];
    for (flag, spoil) in cases {
        let model = ModelConfig {
            model: PathBuf::from("/nonexistent/model.onnx"),
            ..ModelConfig::default()
        };
        let identity = (identity.0.clone(), identity.1.clone_key());
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), model, identity);
        spoil(&mut config);
        let Err(e) = runtime.block_on(Server::start(config)) else {
            panic!("{flag}: the server started");
        };
        let message = e.to_string();
        assert!(
            matches!(e, gstcbo::server::ServerError::Config(_)) && message.contains(flag),
            "{flag}: {message}"
        );
    }
    // A sub-millisecond timeout is not zero.
    let model = ModelConfig {
        model: PathBuf::from("/nonexistent/model.onnx"),
        ..ModelConfig::default()
    };
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), model, identity);
    config.limits.request_timeout = Duration::from_micros(500);
    config.batch_timeout = Duration::ZERO;
    assert!(config.check().is_ok(), "{:?}", config.check());
}
