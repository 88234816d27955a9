//! The server model in an inference server speaking the Open Inference Protocol over gRPC
//! (Triton, KServe, MLServer): one `ModelInfer` per batch.
//!
//! A supervisor task keeps the link: it connects, checks `ServerReady`, `ModelReady` and the
//! model's metadata against the pre-processing ([`oip::check_metadata`]), and marks the backend
//! ready. When a call fails because the server went away, or three batches fail since the last
//! good answer, the link is dropped, the backend is marked not ready (the engine answers
//! `overloaded` at once) and the supervisor reconnects, after a pause that grows with the failed
//! calls since the last answer (`reconnect_pause`): a model that fails every call would otherwise
//! be reconnected to after every batch (740 times in 10 s, `/readyz` up throughout). While the
//! link is up the supervisor asks `ServerReady` and `ModelReady` every 5 s (`HEALTH_INTERVAL`),
//! so `/readyz` follows a backend that went away while no frame came. The backend owns a small
//! tokio runtime: the engine's model threads (one per batch in flight, `--backend-concurrency`)
//! are plain threads, each blocking on its call, bounded by the batch's deadline; they share
//! the connection, and each connection has a generation so that a late failure on a replaced
//! one is ignored.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

use super::oip::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use super::oip::proto::{ModelMetadataRequest, ModelReadyRequest, ServerReadyRequest};
use super::oip::{self, Checked, Expected, MetadataMismatch};
use super::{BackendError, BackendInfo, BatchBackend, Readiness};
use crate::preprocess::{InputType, TensorSpec};
use crate::server::batch::{BatchDim, BatchTensor};

type Client = GrpcInferenceServiceClient<Channel>;

/// First and largest wait between connection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the supervisor asks a connected backend whether it and the model are still ready.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Failed batches in a row (answers that are neither late nor `RESOURCE_EXHAUSTED`) after which
/// the backend counts as down even though it still answers: a model that fails every batch is
/// not ready, whatever its `ModelReady` says.
const FAILED_IN_A_ROW: u32 = 3;
/// Largest answer accepted (scores are small; this only bounds a misbehaving server).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// `--backend grpc://HOST:PORT --backend-model NAME [--backend-model-version V]`.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// `HOST:PORT` of the inference server's gRPC endpoint.
    pub address: String,
    pub model: String,
    /// Empty: the server's choice.
    pub version: String,
    /// What cboserver pre-processes frames to (FP32): checked against the model's input.
    pub input: TensorSpec,
    /// Time for one connection attempt and each of its start-up calls.
    pub connect_timeout: Duration,
    /// Batches in the backend at once (`--backend-concurrency`): one model thread each.
    pub concurrency: usize,
}

impl GrpcConfig {
    /// Reads `grpc://HOST:PORT` (the scheme is required: it says which protocol is spoken).
    pub fn parse_address(backend: &str) -> Result<String, String> {
        let rest = backend.strip_prefix("grpc://").ok_or_else(|| {
            format!("--backend '{backend}': expected 'local' or 'grpc://HOST:PORT'")
        })?;
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(rest.to_string())
            }
            _ => Err(format!(
                "--backend '{backend}': expected grpc://HOST:PORT (e.g. grpc://127.0.0.1:8001)"
            )),
        }
    }

    fn uri(&self) -> String {
        format!("grpc://{}", self.address)
    }
}

/// Where Linux keeps the range of ports it hands out as the local ends of outgoing connections.
const EPHEMERAL_PORTS: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `"32768\t60999\n"` (the format of [`EPHEMERAL_PORTS`]) as `(32768, 60999)`.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    match (ports.next()??, ports.next()??) {
        (lo, hi) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// Whether `address` (`HOST:PORT`) is a port of this host (a loopback address or `localhost`)
/// inside `range`. Such a port can be taken by any outgoing connection before the backend binds
/// it, and one of our own retries can even connect to itself on it (TCP simultaneous open),
/// which happened once to this project's Triton test.
fn local_port_in_range(address: &str, (lo, hi): (u16, u16)) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    local && port.parse::<u16>().is_ok_and(|p| (lo..=hi).contains(&p))
}

/// Why a connection attempt did not give a usable backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("{0}")]
    NotReady(String),
    #[error(transparent)]
    Mismatch(#[from] MetadataMismatch),
}

#[derive(Clone)]
struct Connected {
    client: Client,
    checked: Checked,
    /// Which connection this is (set by [`Link::up`]): a call that failed on an older one must
    /// not take down, nor count against, the one made since.
    generation: u64,
}

/// The connection, shared by the model threads and the supervisor.
struct Link {
    config: GrpcConfig,
    expected: Expected,
    /// The connection in use; readiness changes with it, under this lock, so the two agree.
    current: Mutex<Option<Connected>>,
    generations: AtomicU64,
    readiness: Arc<Readiness>,
    /// Wakes the supervisor when a call lost the connection.
    lost: Notify,
    /// Calls that failed since the last one answered (late and busy ones, and failures on an
    /// older connection, not counted): sets the pause before the next reconnection.
    failed_calls: AtomicU32,
}

impl Link {
    fn current(&self) -> Option<Connected> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    fn up(&self, mut connected: Connected) {
        connected.generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut c) = self.current.lock() {
            *c = Some(connected);
            self.readiness.set_ready();
        }
        tracing::info!(backend = %self.config.uri(), model = %self.config.model, "backend ready");
    }

    /// A call was answered: the backend works.
    fn answered(&self) {
        self.failed_calls.store(0, Ordering::Relaxed);
    }

    /// A call on connection `generation` failed; returns the failures in a row, or `None` when
    /// that connection is no longer the one in use (its failure says nothing of the new one).
    fn call_failed(&self, generation: u64) -> Option<u32> {
        let c = self.current.lock().ok()?;
        (c.as_ref()?.generation == generation)
            .then(|| self.failed_calls.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Drops connection `generation` (if it is still the one in use) and wakes the supervisor.
    fn down(&self, generation: u64, reason: &str) {
        let Ok(mut c) = self.current.lock() else {
            return;
        };
        if c.as_ref().is_none_or(|c| c.generation != generation) {
            return;
        }
        c.take();
        let was_up = self.readiness.set_down(reason);
        drop(c);
        if was_up {
            tracing::warn!(backend = %self.config.uri(), reason, "backend lost; reconnecting");
        }
        self.lost.notify_one();
    }

    async fn connect(&self) -> Result<Connected, ConnectError> {
        let config = &self.config;
        let t = config.connect_timeout;
        let unreachable =
            |e: &dyn std::fmt::Display| ConnectError::Unreachable(format!("{}: {e}", config.uri()));
        let channel = Endpoint::from_shared(format!("http://{}", config.address))
            .map_err(|e| unreachable(&e))?
            .connect_timeout(t)
            .tcp_nodelay(true)
            // A backend that went away without a word (a half-open connection) is found by
            // HTTP/2 pings, not by calls running out of time: a call past its deadline is a slow
            // backend, which keeps its connection (`failed`).
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| unreachable(&describe_transport(&e)))?;
        let mut client = Client::new(channel)
            .max_decoding_message_size(MAX_ANSWER_BYTES)
            .max_encoding_message_size(usize::MAX);
        // The same questions as the health check while up.
        self.check(client.clone()).await.map_err(|f| match f {
            CheckFailure::Slow(m) => ConnectError::Unreachable(m),
            CheckFailure::Down(m) => ConnectError::NotReady(m),
        })?;
        let meta = tokio::time::timeout(
            t,
            client.model_metadata(ModelMetadataRequest {
                name: config.model.clone(),
                version: config.version.clone(),
            }),
        )
        .await
        .map_err(|_| {
            ConnectError::Unreachable(format!(
                "{}: no ModelMetadata answer in {t:?}",
                config.uri()
            ))
        })?
        .map_err(|s| {
            ConnectError::NotReady(format!(
                "no metadata for model '{}' on {}: {}",
                config.model,
                config.uri(),
                s.message()
            ))
        })?
        .into_inner();
        let checked = oip::check_metadata(&meta, &self.expected)?;
        tracing::info!(
            backend = %config.uri(),
            model = %meta.name,
            versions = ?meta.versions,
            platform = %meta.platform,
            tensors = %oip::describe(&meta),
            "backend model metadata matches the pre-processing"
        );
        Ok(Connected {
            client,
            checked,
            generation: 0,
        })
    }

    /// Whether the backend and its model say they are ready: on connecting, and as the health
    /// check while the link is up.
    async fn check(&self, mut client: Client) -> Result<(), CheckFailure> {
        let config = &self.config;
        let t = config.connect_timeout;
        let slow =
            |what: &str| CheckFailure::Slow(format!("{}: no {what} answer in {t:?}", config.uri()));
        match tokio::time::timeout(t, client.server_ready(ServerReadyRequest {})).await {
            Err(_) => return Err(slow("ServerReady")),
            Ok(Err(s)) => {
                return Err(CheckFailure::Down(format!(
                    "{}: {}",
                    config.uri(),
                    s.message()
                )));
            }
            Ok(Ok(r)) if !r.get_ref().ready => {
                return Err(CheckFailure::Down(format!(
                    "{} answers but is not ready",
                    config.uri()
                )));
            }
            Ok(Ok(_)) => {}
        }
        let request = ModelReadyRequest {
            name: config.model.clone(),
            version: config.version.clone(),
        };
        let answer = tokio::time::timeout(t, client.model_ready(request))
            .await
            .map_err(|_| slow("ModelReady"))?;
        model_state(&config.model, &config.uri(), answer)
            .map_err(|e| CheckFailure::Down(e.to_string()))
    }

    /// Reconnects whenever the link is lost, with exponential backoff between attempts; checks
    /// the backend's health while it is up.
    async fn supervise(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        let mut last_error = String::new();
        // Health checks in a row that got no answer in time: a busy backend may be slow to
        // answer one, so it takes two to count it down.
        let mut slow_checks = 0;
        loop {
            // The model threads have stopped: nothing will use a connection again.
            if self.readiness.is_stopped() {
                return;
            }
            if self.readiness.is_ready() {
                tokio::select! {
                    _ = self.lost.notified() => {}
                    _ = tokio::time::sleep(HEALTH_INTERVAL) => {
                        let Some(connected) = self.current() else { continue };
                        match self.check(connected.client).await {
                            Ok(()) => slow_checks = 0,
                            Err(CheckFailure::Slow(reason)) => {
                                slow_checks += 1;
                                if slow_checks >= 2 {
                                    self.down(connected.generation, &reason);
                                }
                            }
                            Err(CheckFailure::Down(reason)) => {
                                self.down(connected.generation, &reason)
                            }
                        }
                    }
                }
                continue;
            }
            slow_checks = 0;
            // After failed calls, wait before connecting again: the server answered them, so it
            // will most likely take the connection and fail the next batch the same way.
            let pause = reconnect_pause(self.failed_calls.load(Ordering::Relaxed));
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            match self.connect().await {
                Ok(connected) => {
                    self.up(connected);
                    backoff = MIN_BACKOFF;
                    last_error.clear();
                }
                Err(e) => {
                    let text = e.to_string();
                    if text != last_error {
                        match &e {
                            ConnectError::Mismatch(_) => tracing::error!(
                                backend = %self.config.uri(), error = %text,
                                "backend model does not match the pre-processing"
                            ),
                            _ => tracing::warn!(
                                backend = %self.config.uri(), error = %text,
                                "backend not ready; retrying"
                            ),
                        }
                        last_error = text.clone();
                    }
                    self.readiness.set_down(&text);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Why a health check failed.
enum CheckFailure {
    /// No answer in time: a busy backend, or a gone one.
    Slow(String),
    /// The backend or its model says it is not ready, or the call failed.
    Down(String),
}

/// tonic's transport errors say "transport error"; the cause below says what happened.
fn describe_transport(e: &tonic::transport::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

pub struct GrpcBackend {
    link: Arc<Link>,
    /// Drives the supervisor and each call the model threads block on (shared by the handles
    /// [`BatchBackend::another`] makes).
    runtime: Arc<tokio::runtime::Runtime>,
    /// One image's shape without the batch dimension.
    image_shape: Vec<usize>,
}

impl GrpcBackend {
    /// Makes one connection attempt. A reachable backend whose model does not match the
    /// pre-processing is an error; an unreachable or not-ready one is not: the server starts
    /// not ready and the supervisor connects when the backend appears.
    pub fn start(
        config: GrpcConfig,
        labels: Option<usize>,
        readiness: Arc<Readiness>,
    ) -> Result<(GrpcBackend, BackendInfo), String> {
        if config.input.elem != InputType::F32 {
            return Err(format!(
                "backend {}: the input is sent as FP32, not {:?}",
                config.uri(),
                config.input.elem
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.concurrency.clamp(1, 4))
            .thread_name("cbo-backend")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the backend runtime: {e}"))?;
        let expected = Expected {
            spec: config.input,
            labels,
        };
        let link = Arc::new(Link {
            config: config.clone(),
            expected,
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            readiness,
            lost: Notify::new(),
            failed_calls: AtomicU32::new(0),
        });
        let mut classes = None;
        match runtime.block_on(link.connect()) {
            Ok(connected) => {
                classes = connected.checked.classes;
                link.up(connected);
            }
            Err(ConnectError::Mismatch(e)) => {
                return Err(format!("backend {}: {e}", config.uri()));
            }
            Err(e) => {
                let text = e.to_string();
                tracing::warn!(
                    backend = %config.uri(), error = %text,
                    "backend not ready at start; answering `overloaded` until it is"
                );
                if let Some(range) = std::fs::read_to_string(EPHEMERAL_PORTS)
                    .ok()
                    .and_then(|t| parse_port_range(&t))
                    && local_port_in_range(&config.address, range)
                {
                    tracing::warn!(
                        backend = %config.uri(),
                        "the backend's port is on this host and inside the kernel's ephemeral \
                         range ({}-{}): until the backend listens, an outgoing connection (ours \
                         included, retrying) may take that port and the backend then fails to \
                         start with 'address already in use'; give it a port below {}",
                        range.0, range.1, range.0
                    );
                }
                link.readiness.set_down(&text);
            }
        }
        runtime.spawn(link.clone().supervise());
        let image_shape = config.input.shape()[1..].to_vec();
        let info = BackendInfo {
            name: config.model.clone(),
            provider: config.uri(),
            spec: config.input,
            classes,
            // The engine batches; a model that takes one image at a time gets them one by one.
            batch_dim: BatchDim::Dynamic,
            fallback_warning: None,
            concurrency: config.concurrency.max(1),
        };
        Ok((
            GrpcBackend {
                link,
                runtime: Arc::new(runtime),
                image_shape,
            },
            info,
        ))
    }

    /// Maps a failed call ([`call_failure`]): a server that went away drops the link, and so
    /// do [`FAILED_IN_A_ROW`] refused batches in a row.
    fn failed(
        &self,
        generation: u64,
        status: tonic::Status,
        budget: Duration,
        deadline: Instant,
    ) -> BackendError {
        let message = format!("{}: {}", self.link.config.uri(), status.message());
        match call_failure(status.code(), Instant::now() >= deadline) {
            CallFailure::Deadline => BackendError::Deadline(budget.as_millis() as u64),
            CallFailure::Lost => {
                if self.link.call_failed(generation).is_some() {
                    self.link.down(generation, &message);
                }
                BackendError::Unavailable(message)
            }
            CallFailure::Busy => BackendError::Busy(message),
            CallFailure::Refused => {
                let text = format!("{:?}: {}", status.code(), status.message());
                self.refused(generation, &text);
                BackendError::Refused(text)
            }
        }
    }

    /// Counts a batch the backend answered with an error (or a wrong answer); the
    /// [`FAILED_IN_A_ROW`]th failure since the last good answer takes the backend down.
    fn refused(&self, generation: u64, reason: &str) {
        if let Some(in_a_row) = self.link.call_failed(generation)
            && in_a_row >= FAILED_IN_A_ROW
        {
            self.link.down(
                generation,
                &format!(
                    "{}: {in_a_row} batches in a row failed, the last: {reason}",
                    self.link.config.uri()
                ),
            );
        }
    }
}

/// What a failed call says of the backend.
#[derive(Debug, PartialEq, Eq)]
enum CallFailure {
    /// It ran out of time: a slow backend, which keeps its connection.
    Deadline,
    /// The server went away: reconnect (and read its metadata again).
    Lost,
    /// No room now: the frames are answered `overloaded`, the connection kept.
    Busy,
    /// It refused this batch.
    Refused,
}

/// A call that ran out of time is a slow backend, not a lost one: tonic reports its own timeout
/// (the request's `grpc-timeout`) as `Cancelled`, and mapped as a lost server a slow backend had
/// its connection torn down and rebuilt after every late batch, the frames answered `overloaded`
/// rather than `timeout`. `RESOURCE_EXHAUSTED` (a full queue) is `overloaded` for the client,
/// which then keeps its label and backs off, where it was `internal`.
fn call_failure(code: tonic::Code, deadline_passed: bool) -> CallFailure {
    use tonic::Code;
    match code {
        Code::DeadlineExceeded => CallFailure::Deadline,
        Code::Cancelled if deadline_passed => CallFailure::Deadline,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::NotFound => CallFailure::Lost,
        Code::ResourceExhausted => CallFailure::Busy,
        _ => CallFailure::Refused,
    }
}

/// The pause before reconnecting after `failed_calls` failed calls in a row: none after the
/// first (a backend restarted: reconnect at once), then 100 ms doubling up to 2 s. A backend
/// that fails every call is then tried about every 2 s, not after every batch.
fn reconnect_pause(failed_calls: u32) -> Duration {
    match failed_calls {
        0 | 1 => Duration::ZERO,
        n => MIN_BACKOFF
            .saturating_mul(1 << (n - 2).min(16))
            .min(MAX_BACKOFF),
    }
}

/// Reads a `ModelReady` answer: `Err` says why the model cannot be used, with the server's own
/// words when it refused the question (`NOT_FOUND`: no such model).
fn model_state(
    model: &str,
    uri: &str,
    answer: Result<tonic::Response<oip::proto::ModelReadyResponse>, tonic::Status>,
) -> Result<(), ConnectError> {
    match answer {
        Ok(r) if r.get_ref().ready => Ok(()),
        Ok(_) => Err(ConnectError::NotReady(format!(
            "model '{model}' is not ready on {uri}"
        ))),
        Err(s) => Err(ConnectError::NotReady(format!(
            "model '{model}' is not available on {uri}: {:?}: {}",
            s.code(),
            s.message()
        ))),
    }
}

impl BatchBackend for GrpcBackend {
    /// Another handle on the same connection (HTTP/2 carries the calls side by side).
    fn another(&self) -> Option<Box<dyn BatchBackend>> {
        Some(Box::new(GrpcBackend {
            link: self.link.clone(),
            runtime: self.runtime.clone(),
            image_shape: self.image_shape.clone(),
        }))
    }

    fn infer(
        &mut self,
        batch: &BatchTensor,
        deadline: Instant,
        scores: &mut Vec<f32>,
    ) -> Result<usize, BackendError> {
        scores.clear();
        let Some(connected) = self.link.current() else {
            return Err(BackendError::NotReady(self.link.readiness.reason()));
        };
        let images = batch
            .as_f32()
            .ok_or_else(|| BackendError::Inference("the batch is not FP32".into()))?;
        let per_image = batch.spec().len();
        let per_request = connected
            .checked
            .batch
            .max_images()
            .unwrap_or(batch.len())
            .max(1);
        let config = &self.link.config;
        let budget = deadline.saturating_duration_since(Instant::now());
        let mut width = 0;
        for part in images.chunks(per_image * per_request) {
            let n = part.len() / per_image;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BackendError::Deadline(budget.as_millis() as u64));
            }
            let message = oip::infer_request(
                &config.model,
                &config.version,
                &connected.checked,
                &self.image_shape,
                n,
                part,
            );
            let mut request = tonic::Request::new(message);
            // The server may drop it too once the deadline has passed (grpc-timeout).
            request.set_timeout(left);
            let mut client = connected.client.clone();
            // The timer is made inside the runtime: this thread is not one of its own.
            let answer = self.runtime.block_on(async move {
                tokio::time::timeout(left, client.model_infer(request)).await
            });
            let got = match answer {
                Err(_) => return Err(BackendError::Deadline(budget.as_millis() as u64)),
                Ok(Err(status)) => {
                    return Err(self.failed(connected.generation, status, budget, deadline));
                }
                Ok(Ok(answer)) => {
                    match oip::read_scores(answer.get_ref(), &connected.checked.output, n, scores) {
                        Ok(got) => got,
                        Err(e) => {
                            self.refused(connected.generation, &e.to_string());
                            return Err(e.into());
                        }
                    }
                }
            };
            // Every row of the batch must have the width the model's metadata promised (and
            // the first part's): a backend that answered 2000 and then 1000 scores per image
            // made the engine slice past its rows and panic, and one whose width changed
            // (a model reloaded in place) had every label read against the wrong classes.
            let expected =
                connected
                    .checked
                    .classes
                    .unwrap_or(if width == 0 { got } else { width });
            if got != expected || (width != 0 && got != width) {
                let reason = format!(
                    "{}: answered {got} scores per image where the model's metadata says {expected}",
                    config.uri()
                );
                // The metadata is read again on reconnecting: the model may have changed.
                if self.link.call_failed(connected.generation).is_some() {
                    self.link.down(connected.generation, &reason);
                }
                return Err(BackendError::Answer(oip::AnswerError(reason)));
            }
            width = got;
        }
        self.link.answered();
        Ok(width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_out_of_time_is_a_slow_backend_and_a_full_queue_a_busy_one() {
        use tonic::Code;
        assert_eq!(call_failure(Code::Cancelled, true), CallFailure::Deadline);
        assert_eq!(
            call_failure(Code::DeadlineExceeded, false),
            CallFailure::Deadline
        );
        // Cancelled before the deadline: the connection went (a server shutting down).
        assert_eq!(call_failure(Code::Cancelled, false), CallFailure::Lost);
        assert_eq!(call_failure(Code::Unavailable, false), CallFailure::Lost);
        assert_eq!(
            call_failure(Code::ResourceExhausted, false),
            CallFailure::Busy
        );
        assert_eq!(
            call_failure(Code::InvalidArgument, false),
            CallFailure::Refused
        );
        assert_eq!(
            BackendError::Busy("queue full".into()).code(),
            crate::protocol::ErrorCode::Overloaded
        );
    }

    /// The first failed call reconnects at once (a restarted backend); each further one in a
    /// row doubles the pause up to 2 s, so a model that fails every batch is not reconnected to
    /// after every batch.
    #[test]
    fn reconnections_after_failed_calls_back_off() {
        let pauses: Vec<u64> = (0..12)
            .map(|n| reconnect_pause(n).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [0, 0, 100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000]
        );
        assert_eq!(reconnect_pause(u32::MAX), MAX_BACKOFF);
    }

    /// A link to nowhere (no connection is attempted) and a connection for it.
    fn test_link(runtime: &tokio::runtime::Runtime) -> (Link, Connected) {
        let _entered = runtime.enter();
        let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let spec = TensorSpec {
            layout: crate::preprocess::Layout::Nchw,
            width: 2,
            height: 2,
            elem: InputType::F32,
        };
        let link = Link {
            config: GrpcConfig {
                address: "127.0.0.1:9".into(),
                model: "m".into(),
                version: String::new(),
                input: spec,
                connect_timeout: Duration::from_secs(1),
                concurrency: 2,
            },
            expected: Expected { spec, labels: None },
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            readiness: Arc::new(Readiness::new("starting")),
            lost: Notify::new(),
            failed_calls: AtomicU32::new(0),
        };
        let connected = Connected {
            client: Client::new(channel),
            checked: Checked {
                input: "input".into(),
                output: "logits".into(),
                batch: oip::BatchMode::Dynamic,
                classes: Some(10),
            },
            generation: 0,
        };
        (link, connected)
    }

    /// Two model threads' calls fail on one connection; the first takes it down, the supervisor
    /// reconnects; the second failure, on the old connection, must neither take the new one
    /// down nor count against it.
    #[test]
    fn a_failure_on_an_older_connection_leaves_the_new_one_alone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (link, connected) = test_link(&runtime);
        link.up(connected.clone());
        let old = link.current().unwrap().generation;
        assert_eq!(link.call_failed(old), Some(1));
        link.down(old, "lost");
        assert!(!link.readiness.is_ready());
        link.up(connected);
        let new = link.current().unwrap().generation;
        assert_ne!(new, old);
        assert_eq!(link.call_failed(old), None);
        link.down(old, "lost again, late");
        assert!(link.readiness.is_ready());
        assert_eq!(link.current().map(|c| c.generation), Some(new));
        // Three failures on the connection in use, counted since the last answer.
        assert_eq!(link.call_failed(new), Some(2));
        link.answered();
        assert_eq!(link.call_failed(new), Some(1));
        // Stopped (the model threads ended): a reconnection no longer makes it ready, and the
        // reason stays the stop's.
        link.readiness.stop("the model thread stopped (panicked)");
        link.down(new, "lost");
        link.up(test_link(&runtime).1);
        assert!(!link.readiness.is_ready());
        assert!(link.readiness.is_stopped());
        assert_eq!(
            link.readiness.reason(),
            "the model thread stopped (panicked)"
        );
    }

    #[test]
    fn a_model_the_backend_lacks_is_reported_in_its_words() {
        let uri = "grpc://127.0.0.1:8001";
        let lacking = Err(tonic::Status::not_found(
            "Request for unknown model: 'x' is not found",
        ));
        let text = model_state("x", uri, lacking).unwrap_err().to_string();
        assert!(
            text.contains("NotFound") && text.contains("unknown model"),
            "{text}"
        );
        let not_ready = Ok(tonic::Response::new(oip::proto::ModelReadyResponse {
            ready: false,
        }));
        let text = model_state("x", uri, not_ready).unwrap_err().to_string();
        assert_eq!(text, "model 'x' is not ready on grpc://127.0.0.1:8001");
        let ready = Ok(tonic::Response::new(oip::proto::ModelReadyResponse {
            ready: true,
        }));
        assert!(model_state("x", uri, ready).is_ok());
    }

    #[test]
    fn a_local_backend_port_in_the_ephemeral_range_is_recognised() {
        let range = parse_port_range("32768\t60999\n").unwrap();
        assert_eq!(range, (32768, 60999));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range(""), None);
        assert!(local_port_in_range("127.0.0.1:44843", range));
        assert!(local_port_in_range("localhost:32768", range));
        assert!(local_port_in_range("[::1]:60999", range));
        // Triton's default port, another host, the range's edges.
        assert!(!local_port_in_range("127.0.0.1:8001", range));
        assert!(!local_port_in_range("10.0.0.7:44843", range));
        assert!(!local_port_in_range("triton.svc:44843", range));
        assert!(!local_port_in_range("127.0.0.1:32767", range));
        assert!(!local_port_in_range("127.0.0.1:61000", range));
    }

    #[test]
    fn backend_addresses_need_the_grpc_scheme_and_a_port() {
        assert_eq!(
            GrpcConfig::parse_address("grpc://127.0.0.1:8001"),
            Ok("127.0.0.1:8001".into())
        );
        assert_eq!(
            GrpcConfig::parse_address("grpc://triton.svc:8001/"),
            Ok("triton.svc:8001".into())
        );
        for bad in [
            "127.0.0.1:8001",
            "http://h:1",
            "grpc://h",
            "grpc://:8001",
            "grpc://h:x",
        ] {
            assert!(GrpcConfig::parse_address(bad).is_err(), "{bad}");
        }
    }
}
