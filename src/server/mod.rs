//! `cboserver` as a library: a QUIC endpoint speaking [`crate::protocol`] in front of the
//! [`engine`] that decodes and classifies offloaded frames.
//!
//! ```no_run
//! # async fn demo(config: gstcbo::server::ServerConfig) -> Result<(), gstcbo::server::ServerError> {
//! let server = gstcbo::server::Server::start(config).await?;
//! println!("listening on {}", server.local_addr());
//! tokio::signal::ctrl_c().await.ok();
//! server.shutdown().await
//! # }
//! ```
//!
//! The model runs in this process or in an inference server reached over gRPC ([`backend`]).
//! `--metrics ADDR` serves Prometheus metrics and health checks ([`ops`]); logs go through
//! `tracing`.
//!
//! The network side (`connection`) is a thin adapter: it authenticates, enforces the limits
//! ([`Limits`]), turns request frames into engine jobs and engine outcomes into response frames.
//! Every misbehaving request is answered (or its stream/connection closed) with an
//! [`ErrorCode`] and logged, and never affects other clients.

mod admission;
pub mod backend;
pub mod batch;
mod connection;
pub mod engine;
pub mod metrics;
pub mod ops;
mod places;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::inference::ModelConfig;
use crate::protocol::ErrorCode;
use crate::tls::CertAndKey;
use backend::{BackendKind, Readiness};
use engine::{Engine, EngineConfig, ModelInfo};
use metrics::Metrics;

/// Resource limits; each is a `cboserver` flag.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request frame (header + JPEG) read; larger ones are answered `too-large`.
    pub max_request_bytes: usize,
    /// Concurrent request streams per connection (QUIC stream credit: a client cannot exceed it,
    /// it waits).
    pub max_streams_per_connection: u32,
    /// Connections served at once; further ones are closed with `overloaded`.
    pub max_connections: usize,
    /// Requests in progress across all connections (reading, queued, running); further ones are
    /// answered `overloaded`. Bounds memory: at most this many request buffers exist.
    pub max_pending: usize,
    /// Time from a request stream's arrival to its answer; later ones get `timeout`.
    pub request_timeout: Duration,
    /// Time for a new connection's handshake and hello.
    pub hello_timeout: Duration,
    /// QUIC idle timeout (clients send keep-alives).
    pub idle_timeout: Duration,
    /// How long a shutdown waits for requests in progress.
    pub drain_timeout: Duration,
    /// Largest `top_k` answered.
    pub max_top_k: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 2 * 1024 * 1024,
            max_streams_per_connection: 64,
            max_connections: 64,
            max_pending: 256,
            request_timeout: Duration::from_millis(5000),
            hello_timeout: Duration::from_millis(5000),
            idle_timeout: Duration::from_millis(30_000),
            drain_timeout: Duration::from_millis(2000),
            max_top_k: 20,
        }
    }
}

/// Allowed values of the settings, each a `cboserver` flag whose `--help` states its range.
/// [`Server::start`] refuses a config outside them before anything starts
/// ([`ServerConfig::check`]): a minimum keeps a value under which nothing could be served (no
/// stream, no pending request, a zero timeout) from starting a server that only refuses; a
/// maximum keeps a typo from spawning threads or allocating queues by the hundred thousand
/// before the first request, or from overflowing a deadline.
pub mod bounds {
    use std::ops::RangeInclusive;

    /// `--threads`: ONNX Runtime intra-op threads (0: its default), as `cbo --threads` and the
    /// element's `threads`.
    pub const THREADS: RangeInclusive<u64> = 0..=256;
    /// `--decode-threads` (0: one per core, at most 4): one OS thread each.
    pub const DECODE_THREADS: RangeInclusive<u64> = 0..=256;
    /// `--max-batch`, as the element's `max-batch`; the batch tensor is allocated at start.
    pub const MAX_BATCH: RangeInclusive<u64> = 1..=256;
    /// `--backend-concurrency`.
    pub const BACKEND_CONCURRENCY: RangeInclusive<u64> = 1..=64;
    /// `--batch-timeout-ms` (0: run what has arrived), at most the element's longest
    /// `deadline`: no client waits longer for an answer. It must also be below
    /// `--request-timeout-ms`, or a frame that arrives alone would wait out its own time.
    pub const BATCH_TIMEOUT_MS: RangeInclusive<u64> = 0..=60_000;
    /// `--max-request-bytes`: 1 KiB is about the smallest request (a header and a tiny JPEG);
    /// 256 MiB is well over the largest JPEG the server decodes (4096 px a side).
    pub const MAX_REQUEST_BYTES: RangeInclusive<u64> = 1024..=256 * 1024 * 1024;
    /// `--max-streams`, as the element's `max-in-flight`: no client has more frames in flight.
    pub const MAX_STREAMS: RangeInclusive<u64> = 1..=1024;
    /// `--max-connections`.
    pub const MAX_CONNECTIONS: RangeInclusive<u64> = 1..=65_536;
    /// `--max-pending`: also the decode queue's capacity, allocated at start.
    pub const MAX_PENDING: RangeInclusive<u64> = 1..=65_536;
    /// `--request-timeout-ms`, `--hello-timeout-ms` and `--backend-connect-timeout-ms`: up to
    /// 10 minutes.
    pub const TIMEOUT_MS: RangeInclusive<u64> = 1..=600_000;
    /// `--drain-timeout-ms` (0: close at once).
    pub const DRAIN_TIMEOUT_MS: RangeInclusive<u64> = 0..=600_000;
    /// `--idle-timeout-ms`: above the clients' 5 s keep-alive interval (twice it, so one lost
    /// keep-alive does not close an idle connection), at most an hour.
    pub const IDLE_TIMEOUT_MS: RangeInclusive<u64> = 10_000..=3_600_000;
    /// `--max-top-k`: a request's top-k is one byte on the wire.
    pub const MAX_TOP_K: RangeInclusive<u64> = 1..=255;
    /// Each side of `--input-size`, as the largest JPEG side the server decodes.
    pub const INPUT_SIDE: RangeInclusive<u64> = 1..=4096;

    /// clap's parser for an integer option within `range` (its error names the option and the
    /// range), for the integer type of the field.
    pub fn parser<T>(range: RangeInclusive<u64>) -> clap::builder::RangedU64ValueParser<T>
    where
        T: TryFrom<u64> + Clone + Send + Sync + 'static,
        <T as TryFrom<u64>>::Error: std::error::Error + Send + Sync + 'static,
    {
        clap::builder::RangedU64ValueParser::<T>::new().range(range)
    }

    /// An error naming `flag` and `range` (clap's wording) when `value` is outside `range`.
    pub fn check(flag: &str, value: u64, range: &RangeInclusive<u64>) -> Result<(), String> {
        if range.contains(&value) {
            Ok(())
        } else {
            Err(format!(
                "invalid value '{value}' for '{flag}': {value} is not in {}..={}",
                range.start(),
                range.end()
            ))
        }
    }
}

/// Everything a server needs.
#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The local model (`--model`) and the pre- and post-processing for either backend.
    pub model: ModelConfig,
    /// Where the model runs (default: here).
    pub backend: BackendKind,
    /// Address of the operations endpoint (`/metrics`, `/healthz`, `/readyz`); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Certificate chain and key presented to clients.
    pub identity: CertAndKey,
    /// Bearer token clients must present; `None` accepts any.
    pub token: Option<String>,
    pub limits: Limits,
    pub max_batch: usize,
    pub batch_timeout: Duration,
    /// JPEG decode threads (0: one per core, at most 4).
    pub decode_threads: usize,
    /// Log every request, not only refusals and connection events.
    pub verbose: bool,
}

impl ServerConfig {
    /// A config with default limits and batching.
    pub fn new(listen: SocketAddr, model: ModelConfig, identity: CertAndKey) -> Self {
        Self {
            listen,
            model,
            backend: BackendKind::Local,
            metrics_listen: None,
            identity,
            token: None,
            limits: Limits::default(),
            max_batch: 8,
            batch_timeout: Duration::from_millis(2),
            decode_threads: 0,
            verbose: false,
        }
    }

    /// Refuses settings outside [`bounds`], naming the `cboserver` flag of each.
    pub fn check(&self) -> Result<(), String> {
        check_settings(
            &self.limits,
            self.max_batch,
            self.batch_timeout,
            self.decode_threads,
            self.model.threads,
        )
    }
}

/// [`ServerConfig::check`] on its parts, so `cboserver` can check its flags before it creates a
/// certificate or reads a token.
pub fn check_settings(
    limits: &Limits,
    max_batch: usize,
    batch_timeout: Duration,
    decode_threads: usize,
    threads: usize,
) -> Result<(), String> {
    use bounds::check;
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    // Rounded up, so that only a zero duration is below a minimum of 1 ms (a library caller may
    // give a sub-millisecond one).
    let ms = |d: Duration| {
        let whole = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        whole.saturating_add(u64::from(!d.subsec_nanos().is_multiple_of(1_000_000)))
    };
    check("--threads", n(threads), &bounds::THREADS)?;
    check(
        "--decode-threads",
        n(decode_threads),
        &bounds::DECODE_THREADS,
    )?;
    check("--max-batch", n(max_batch), &bounds::MAX_BATCH)?;
    check(
        "--batch-timeout-ms",
        ms(batch_timeout),
        &bounds::BATCH_TIMEOUT_MS,
    )?;
    check(
        "--max-request-bytes",
        n(limits.max_request_bytes),
        &bounds::MAX_REQUEST_BYTES,
    )?;
    check(
        "--max-streams",
        limits.max_streams_per_connection.into(),
        &bounds::MAX_STREAMS,
    )?;
    check(
        "--max-connections",
        n(limits.max_connections),
        &bounds::MAX_CONNECTIONS,
    )?;
    check("--max-pending", n(limits.max_pending), &bounds::MAX_PENDING)?;
    check(
        "--request-timeout-ms",
        ms(limits.request_timeout),
        &bounds::TIMEOUT_MS,
    )?;
    check(
        "--hello-timeout-ms",
        ms(limits.hello_timeout),
        &bounds::TIMEOUT_MS,
    )?;
    check(
        "--idle-timeout-ms",
        ms(limits.idle_timeout),
        &bounds::IDLE_TIMEOUT_MS,
    )?;
    check(
        "--drain-timeout-ms",
        ms(limits.drain_timeout),
        &bounds::DRAIN_TIMEOUT_MS,
    )?;
    check("--max-top-k", n(limits.max_top_k), &bounds::MAX_TOP_K)?;
    // With batches of one nothing waits to fill a batch.
    if max_batch > 1 && batch_timeout >= limits.request_timeout {
        return Err(format!(
            "--batch-timeout-ms {} must be below --request-timeout-ms {} (or --max-batch 1): a \
             frame that arrives alone waits the whole batch timeout, and would always be \
             answered `timeout`",
            ms(batch_timeout),
            ms(limits.request_timeout)
        ));
    }
    Ok(())
}

/// Counts what is in progress and wakes a waiter when it reaches zero.
struct Gauge {
    tx: watch::Sender<usize>,
}

struct GaugeGuard(Arc<Gauge>);

impl Gauge {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            tx: watch::channel(0).0,
        })
    }

    fn enter(self: &Arc<Self>) -> GaugeGuard {
        self.tx.send_modify(|n| *n += 1);
        GaugeGuard(self.clone())
    }

    fn get(&self) -> usize {
        *self.tx.borrow()
    }

    async fn zero(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.tx.send_modify(|n| *n -= 1);
    }
}

/// State shared by every connection and stream task.
struct Shared {
    engine: Engine,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    token: Option<String>,
    limits: Limits,
    verbose: bool,
    /// The `--max-pending` places, shared among the connections.
    places: Arc<places::Places>,
    /// Authenticated connections (after their hello), against `--max-connections`.
    connections: Arc<Gauge>,
    /// Connections in their handshake or awaiting their hello.
    admission: Arc<admission::Admission>,
    /// Lines about connections before their hello (failed handshakes, refusals, timeouts): one
    /// per attempt otherwise, which a client without the token could repeat at will.
    admission_log: connection::LogBudget,
    /// Request streams in progress (for the shutdown drain).
    requests: Arc<Gauge>,
    /// Flips to true when the server stops accepting.
    stopping: watch::Receiver<bool>,
    next_connection: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn log(&self, msg: std::fmt::Arguments) {
        tracing::info!("{msg}");
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        tracing::warn!("{msg}");
    }

    /// Logs like [`Shared::log`] within [`connection::LogBudget`]'s rate: for what a client can
    /// make happen as often as it likes.
    fn log_limited(&self, msg: std::fmt::Arguments) {
        if let connection::LogTurn::Log { left_out } =
            self.admission_log.admit(std::time::Instant::now())
        {
            if left_out > 0 {
                self.log(format_args!(
                    "{left_out} more line(s) about connections before their hello in the last second not logged"
                ));
            }
            self.log(msg);
        }
    }
}

/// Counters a running server exposes (tests, logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub requests_in_progress: usize,
    pub answered: u64,
    /// Requests answered with an error.
    pub refused: u64,
    /// Connection attempts refused before their hello (`cboserver_connections_refused`).
    pub connections_refused: u64,
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    ops: Option<tokio::task::JoinHandle<()>>,
}

fn varint(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.as_u32())
}

/// Why the server could not start, or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting outside its range ([`ServerConfig::check`]).
    #[error("{0}")]
    Config(String),
    #[error("cannot initialise GStreamer: {0}")]
    Gst(String),
    /// Loading the model or starting the engine's threads.
    #[error("{0}")]
    Engine(String),
    #[error("model loading panicked: {0}")]
    LoadPanicked(String),
    /// The certificate and key.
    #[error("{0}")]
    Tls(String),
    #[error("idle timeout: {0}")]
    IdleTimeout(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the bound address: {0}")]
    LocalAddr(std::io::Error),
    #[error("server task failed: {0}")]
    Task(String),
    #[error("stopping the engine failed: {0}")]
    Stop(String),
    /// The `--metrics` endpoint.
    #[error("{0}")]
    Metrics(String),
}

impl Server {
    /// Loads the model, binds the endpoint and starts serving. Call inside a tokio runtime.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        // Before anything starts: a bad value is an error, not threads or queues by the
        // hundred thousand, nor a server that can only refuse.
        config.check().map_err(ServerError::Config)?;
        gst::init().map_err(|e| ServerError::Gst(e.to_string()))?;
        let limits = config.limits.clone();
        let decode_threads = match config.decode_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(2),
            n => n,
        };
        let max_batch = config.max_batch.max(1);
        let metrics = Metrics::new(max_batch);
        let readiness = Arc::new(Readiness::new("loading the model"));
        // Bound before the (slow) model load, so a busy port fails at once.
        let ops_listener = match config.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                ServerError::Metrics(format!("cannot listen on --metrics {addr}: {e}"))
            })?),
            None => None,
        };
        let engine_config = EngineConfig {
            model: config.model.clone(),
            backend: config.backend.clone(),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            max_batch,
            batch_timeout: config.batch_timeout,
            decode_threads,
            queue_capacity: limits.max_pending.max(1),
            max_top_k: limits.max_top_k.max(1),
        };
        let engine = tokio::task::spawn_blocking(move || Engine::start(engine_config))
            .await
            .map_err(|e| ServerError::LoadPanicked(e.to_string()))?
            .map_err(ServerError::Engine)?;

        let (certs, key) = config.identity;
        let endpoint_config = crate::tls::endpoint_config(&key);
        let mut server_config = crate::tls::server_config(certs, key).map_err(ServerError::Tls)?;
        let mut transport = quinn::TransportConfig::default();
        transport
            // The hello's stream only, until the hello is accepted (`connection::hello` then
            // raises it to `max_streams_per_connection`).
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(limits.idle_timeout)
                    .map_err(|e| ServerError::IdleTimeout(e.to_string()))?,
            ))
            // A request never needs more than its own size in flight per stream.
            .stream_receive_window(
                quinn::VarInt::from_u64(limits.max_request_bytes as u64 + 64 * 1024)
                    .unwrap_or(quinn::VarInt::MAX),
            );
        server_config.transport_config(Arc::new(transport));
        let listen_error = |source| ServerError::Listen {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(listen_error)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("no async runtime"))
            .map_err(listen_error)?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
            .map_err(listen_error)?;
        let local_addr = endpoint.local_addr().map_err(ServerError::LocalAddr)?;

        let (stop, stopping) = watch::channel(false);
        let shared = Arc::new(Shared {
            engine,
            metrics,
            readiness,
            token: config.token,
            places: places::Places::new(limits.max_pending, limits.request_timeout),
            admission: admission::Admission::new(limits.max_connections),
            limits,
            verbose: config.verbose,
            connections: Gauge::new(),
            admission_log: connection::LogBudget::default(),
            requests: Gauge::new(),
            stopping,
            next_connection: AtomicU64::new(1),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let info = &shared.engine.info;
        shared.log(format_args!(
            "model {} ({}x{}, {}) on {}; {}",
            info.name,
            info.spec.width,
            info.spec.height,
            match info.classes {
                Some(n) => format!("{n} classes"),
                None => "classes read when the backend is reached".to_string(),
            },
            info.provider,
            match &info.batching_off {
                Some(why) => why.clone(),
                None => format!(
                    "batches of up to {} within {} ms",
                    info.max_batch,
                    config.batch_timeout.as_secs_f64() * 1000.0
                ),
            }
        ));
        if info.concurrency > 1 {
            shared.log(format_args!(
                "{} batches in the backend at once",
                info.concurrency
            ));
        }
        if let Some(w) = &info.fallback_warning {
            shared.warn(format_args!("{w}"));
        }
        if shared.token.is_none() {
            shared.warn(format_args!(
                "no --token-file: any client that trusts the certificate is served"
            ));
        }
        let metrics_addr = match &ops_listener {
            Some(l) => Some(l.local_addr().map_err(|e| {
                ServerError::Metrics(format!("cannot read the --metrics address: {e}"))
            })?),
            None => None,
        };
        let ops = ops_listener.map(|listener| {
            tokio::spawn(ops::serve(
                listener,
                shared.metrics.clone(),
                shared.readiness.clone(),
            ))
        });
        let task = tokio::spawn(accept_loop(endpoint, shared.clone()));
        Ok(Server {
            local_addr,
            metrics_addr,
            shared,
            stop,
            task,
            ops,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, with `--metrics`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Whether the model or backend takes work now (what `/readyz` says).
    pub fn is_ready(&self) -> bool {
        self.shared.readiness.is_ready()
    }

    pub fn model(&self) -> &ModelInfo {
        &self.shared.engine.info
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.shared.connections.get(),
            requests_in_progress: self.shared.requests.get(),
            answered: self.shared.answered.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            connections_refused: self.shared.metrics.connections_refused(),
        }
    }

    /// Stops accepting, waits (at most the drain timeout) for requests in progress, closes every
    /// connection with [`ErrorCode::ShuttingDown`] and stops the engine.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?;
        if let Some(ops) = self.ops {
            ops.abort();
        }
        let shared = self.shared;
        tokio::task::spawn_blocking(move || shared.engine.stop())
            .await
            .map_err(|e| ServerError::Stop(e.to_string()))
    }
}

/// Runs a server until `shutdown` completes, then shuts it down gracefully.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let server = Server::start(config).await?;
    shutdown.await;
    server.shutdown().await
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut stopping = shared.stopping.clone();
    loop {
        tokio::select! {
            _ = connection::stopped(&mut stopping) => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    tokio::spawn(connection::handle(incoming, shared.clone()));
                }
                None => break,
            },
        }
    }
    // No new connections; connection tasks stop taking streams (they watch `stopping`).
    endpoint.set_server_config(None);
    let drained = tokio::time::timeout(shared.limits.drain_timeout, shared.requests.zero()).await;
    let left = shared.requests.get();
    if drained.is_err() {
        shared.warn(format_args!(
            "shutdown: {left} request(s) still in progress after {} ms; closing anyway",
            shared.limits.drain_timeout.as_millis()
        ));
    }
    endpoint.close(varint(ErrorCode::ShuttingDown), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    shared.log(format_args!(
        "stopped ({} answered, {} refused)",
        shared.answered.load(Ordering::Relaxed),
        shared.refused.load(Ordering::Relaxed)
    ));
}
