//! `cboserver`: the offloading server. Classifies JPEG frames that cbofilter sends over QUIC
//! (ALPN `cbo/1`, one stream per frame) with a large ONNX model, batching requests from all
//! clients. See `gstcbo::server` for the behaviour and `gstcbo::protocol` for the wire format.
//! With `--backend grpc://HOST:PORT` the model runs in an inference server (Triton, KServe,
//! MLServer) instead; docs/deploy.md shows a deployment.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use gstcbo::inference::{self, ExecutionProvider, ModelConfig};
use gstcbo::postprocess::OutputKind;
use gstcbo::preprocess::{InputType, Layout, Normalization, TensorSpec};
use gstcbo::server::backend::{BackendKind, GrpcConfig};
use gstcbo::server::{Limits, Server, ServerConfig, bounds};

#[derive(clap::Parser)]
#[command(
    name = "cboserver",
    version,
    about = "Offloading server for cbofilter: classifies JPEG frames received over QUIC with a large ONNX model",
    long_about = "Offloading server for cbofilter: classifies JPEG frames received over QUIC \
                  (ALPN cbo/1, one bidirectional stream per frame, bearer-token authentication) \
                  with a large ONNX model, batching requests across all clients.\n\n\
                  Prints `listening on ADDR` on stdout once ready. SIGINT/SIGTERM stop accepting, \
                  answer the requests in progress (up to --drain-timeout-ms) and exit 0 (at once, before \
                  `listening on`, while the model loads).\n\n\
                  With --backend grpc://HOST:PORT the model runs in an inference server speaking \
                  the Open Inference Protocol (Triton, KServe, MLServer); cboserver decodes, \
                  pre-processes and batches, and checks the model's metadata at start. Logs go \
                  to stderr (RUST_LOG sets the level, e.g. RUST_LOG=debug)."
)]
struct Cli {
    /// Address to listen on (UDP)
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: String,

    /// Where the model runs: `local` (this process, --model) or `grpc://HOST:PORT`, an
    /// inference server speaking the Open Inference Protocol (KServe v2) over gRPC
    #[arg(long, default_value = "local")]
    backend: String,
    /// Model name on the gRPC backend (required with --backend grpc://)
    #[arg(long)]
    backend_model: Option<String>,
    /// Model version on the gRPC backend (default: the server's choice)
    #[arg(long, default_value = "")]
    backend_model_version: String,
    /// Time for one connection attempt to the gRPC backend, in ms (1 to 600000)
    #[arg(long, default_value_t = 2000, value_parser = bounds::parser::<u64>(bounds::TIMEOUT_MS))]
    backend_connect_timeout_ms: u64,
    /// Batches a gRPC backend runs at once (1 to 64): while one is in the backend the next is
    /// gathered and sent. Raise it with the backend's model instances (Triton's
    /// `instance_group.count`); each batch still holds at most --max-batch frames
    #[arg(long, default_value_t = 1,
          value_parser = bounds::parser::<usize>(bounds::BACKEND_CONCURRENCY))]
    backend_concurrency: usize,
    /// Input size the frames are pre-processed to for a gRPC backend: N or WxH, each side 1 to
    /// 4096 (the bundled server model's by default); checked against the backend model's
    /// metadata. With --backend local: the side N of the square image a --model whose image size
    /// is dynamic runs at (a model with a fixed size takes only its own)
    #[arg(long, default_value = "260")]
    input_size: String,
    /// Input layout for a gRPC backend: nchw or nhwc; checked against the model's metadata
    #[arg(long, default_value = "nchw")]
    input_layout: String,

    /// Server ONNX model for --backend local (default: the bundled EfficientNet-Lite2)
    #[arg(long)]
    model: Option<PathBuf>,
    /// Class names of the model: one per line, TSV rows of index, wnid and name, or a JSON
    /// id2label map (a Hugging Face config.json) (default: ImageNet for 1000/1001 outputs).
    /// `--model-labels` is accepted too, as in the `cbo` tools.
    #[arg(long, alias = "model-labels")]
    labels: Option<PathBuf>,
    /// Per-channel mean: one value or R,G,B
    #[arg(long, default_value = "127")]
    input_mean: String,
    /// Per-channel std: one value or R,G,B
    #[arg(long, default_value = "128")]
    input_std: String,
    /// auto | logits | probabilities
    #[arg(long, default_value = "auto")]
    output_kind: OutputKind,
    /// auto | cpu | cuda | tensorrt | openvino | qnn | coreml | nnapi | xnnpack
    #[arg(long, default_value = "auto")]
    execution_provider: ExecutionProvider,
    /// Run on CPU when the requested provider is missing
    #[arg(long)]
    ep_fallback: bool,
    /// ONNX Runtime intra-op threads (0 = its default; at most 256)
    #[arg(long, default_value_t = 0, value_parser = bounds::parser::<usize>(bounds::THREADS))]
    threads: usize,

    /// Certificate chain (PEM) to present; needs --key
    #[arg(long, requires = "key", conflicts_with = "self_signed")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Use DIR/cert.pem and DIR/key.pem, creating a self-signed certificate (localhost,
    /// 127.0.0.1, ::1) there on first use
    #[arg(long, value_name = "DIR")]
    self_signed: Option<PathBuf>,
    /// File holding the bearer token clients must present (surrounding whitespace ignored).
    /// Without it any client is served.
    #[arg(long)]
    token_file: Option<PathBuf>,

    /// Largest inference batch, across all clients (1 to 256)
    #[arg(long, default_value_t = 8, value_parser = bounds::parser::<usize>(bounds::MAX_BATCH))]
    max_batch: usize,
    /// How long a batch waits to fill after its first frame, in ms (0 to 60000, and below
    /// --request-timeout-ms; 0 runs what has arrived)
    #[arg(long, default_value_t = 2, value_parser = bounds::parser::<u64>(bounds::BATCH_TIMEOUT_MS))]
    batch_timeout_ms: u64,
    /// JPEG decode threads, at most 256 (0: one per core, up to 4)
    #[arg(long, default_value_t = 0, value_parser = bounds::parser::<usize>(bounds::DECODE_THREADS))]
    decode_threads: usize,

    /// Largest request (header + JPEG) accepted, in bytes (1024 to 268435456)
    #[arg(long, default_value_t = 2 * 1024 * 1024,
          value_parser = bounds::parser::<usize>(bounds::MAX_REQUEST_BYTES))]
    max_request_bytes: usize,
    /// Concurrent request streams per connection (1 to 1024)
    #[arg(long, default_value_t = 64, value_parser = bounds::parser::<u32>(bounds::MAX_STREAMS))]
    max_streams: u32,
    /// Connections served at once (1 to 65536); more are closed with `overloaded`
    #[arg(long, default_value_t = 64, value_parser = bounds::parser::<usize>(bounds::MAX_CONNECTIONS))]
    max_connections: usize,
    /// Requests in progress across all connections (1 to 65536); more are answered
    /// `overloaded`
    #[arg(long, default_value_t = 256, value_parser = bounds::parser::<usize>(bounds::MAX_PENDING))]
    max_pending: usize,
    /// Time to answer a request, from its arrival, in ms (1 to 600000)
    #[arg(long, default_value_t = 5000, value_parser = bounds::parser::<u64>(bounds::TIMEOUT_MS))]
    request_timeout_ms: u64,
    /// Time for a new connection's handshake and hello, in ms (1 to 600000)
    #[arg(long, default_value_t = 5000, value_parser = bounds::parser::<u64>(bounds::TIMEOUT_MS))]
    hello_timeout_ms: u64,
    /// QUIC idle timeout, in ms (10000 to 3600000: above the clients' 5 s keep-alive)
    #[arg(long, default_value_t = 30_000,
          value_parser = bounds::parser::<u64>(bounds::IDLE_TIMEOUT_MS))]
    idle_timeout_ms: u64,
    /// How long a shutdown waits for requests in progress, in ms (0 to 600000)
    #[arg(long, default_value_t = 2000,
          value_parser = bounds::parser::<u64>(bounds::DRAIN_TIMEOUT_MS))]
    drain_timeout_ms: u64,
    /// Largest top-k a client may ask for (1 to 255); larger requests get this many classes
    #[arg(long, default_value_t = 20, value_parser = bounds::parser::<usize>(bounds::MAX_TOP_K))]
    max_top_k: usize,

    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this address, e.g.
    /// 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Log format on stderr: text or json (one object per line)
    #[arg(long, default_value = "text")]
    log_format: String,

    /// Log every request (default: connections and refusals only)
    #[arg(long, short)]
    verbose: bool,

    /// Which of [`GRPC_ONLY`] the command line gave (their defaults cannot tell).
    #[arg(skip)]
    grpc_options_given: Vec<&'static str>,
    /// Whether the command line gave `--input-size` (for the local backend, whose model's own
    /// size is the default).
    #[arg(skip)]
    input_size_given: bool,
}

/// `N` or `WxH`, each side within [`bounds::INPUT_SIDE`].
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (lo, hi) = (bounds::INPUT_SIDE.start(), bounds::INPUT_SIDE.end());
    let bad = || {
        format!(
            "bad --input-size '{text}': expected N or WxH, each from {lo} to {hi}, e.g. 260 or \
             320x240"
        )
    };
    let (w, h) = match text.split_once(['x', 'X']) {
        Some((w, h)) => (w.trim(), h.trim()),
        None => (text.trim(), text.trim()),
    };
    let w: u32 = w.parse().map_err(|_| bad())?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    if ![w, h]
        .iter()
        .all(|&side| bounds::INPUT_SIDE.contains(&u64::from(side)))
    {
        return Err(bad());
    }
    Ok((w, h))
}

/// The options that only a gRPC backend reads; given with `--backend local` they would do
/// nothing, so they are refused instead of being ignored.
const GRPC_ONLY: [(&str, &str); 4] = [
    ("backend_model_version", "--backend-model-version"),
    ("backend_concurrency", "--backend-concurrency"),
    ("backend_connect_timeout_ms", "--backend-connect-timeout-ms"),
    ("input_layout", "--input-layout"),
];

/// `--input-size` for `--backend local`: the side a model with a dynamic image size runs at
/// (0 when not given: the model's own size).
fn local_input_size(cli: &Cli) -> Result<u32, String> {
    if cli.backend != "local" || !cli.input_size_given {
        return Ok(0);
    }
    match parse_size(&cli.input_size)? {
        (w, h) if w == h => Ok(w),
        (w, h) => Err(format!(
            "--input-size {w}x{h}: with --backend local it is the side N of a square image"
        )),
    }
}

fn backend(cli: &Cli) -> Result<BackendKind, String> {
    // The values are checked whichever the backend, so a bad one is never quietly accepted.
    let (width, height) = parse_size(&cli.input_size)?;
    let layout = match cli.input_layout.to_ascii_lowercase().as_str() {
        "nchw" => Layout::Nchw,
        "nhwc" => Layout::Nhwc,
        other => {
            return Err(format!(
                "bad --input-layout '{other}': expected nchw or nhwc"
            ));
        }
    };
    if cli.backend == "local" {
        if cli.backend_model.is_some() {
            return Err("--backend-model needs --backend grpc://HOST:PORT".into());
        }
        if let Some(flag) = cli.grpc_options_given.first() {
            return Err(format!(
                "{flag} is for --backend grpc://HOST:PORT: it does nothing with --backend local"
            ));
        }
        local_input_size(cli)?;
        return Ok(BackendKind::Local);
    }
    let address = GrpcConfig::parse_address(&cli.backend)?;
    let model = cli
        .backend_model
        .clone()
        .ok_or("--backend grpc://... needs --backend-model NAME")?;
    Ok(BackendKind::Grpc(GrpcConfig {
        address,
        model,
        version: cli.backend_model_version.clone(),
        input: TensorSpec {
            layout,
            width,
            height,
            elem: InputType::F32,
        },
        connect_timeout: Duration::from_millis(cli.backend_connect_timeout_ms),
        concurrency: cli.backend_concurrency,
    }))
}

/// Structured logs on stderr; RUST_LOG overrides the level (info by default).
fn init_logs(format: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let done = match format {
        "text" => builder.with_ansi(false).try_init(),
        "json" => builder.json().try_init(),
        other => return Err(format!("bad --log-format '{other}': expected text or json")),
    };
    done.map_err(|e| format!("cannot set up logging: {e}"))
}

/// `flag` names the option in errors.
fn resolve(flag: &str, listen: &str) -> Result<SocketAddr, String> {
    listen
        .to_socket_addrs()
        .map_err(|e| format!("bad {flag} '{listen}': {e}"))?
        .next()
        .ok_or_else(|| format!("{flag} '{listen}' resolves to no address"))
}

fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --token-file '{}': {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("--token-file '{}' is empty", path.display()));
    }
    Ok(token.to_string())
}

fn config(cli: &Cli) -> Result<ServerConfig, String> {
    // Everything is checked before a self-signed identity is created, so a typo leaves no files
    // behind, and before anything starts. Each value is within its range already (clap); what
    // is left are the rules between values.
    let ms = Duration::from_millis;
    let limits = Limits {
        max_request_bytes: cli.max_request_bytes,
        max_streams_per_connection: cli.max_streams,
        max_connections: cli.max_connections,
        max_pending: cli.max_pending,
        request_timeout: ms(cli.request_timeout_ms),
        hello_timeout: ms(cli.hello_timeout_ms),
        idle_timeout: ms(cli.idle_timeout_ms),
        drain_timeout: ms(cli.drain_timeout_ms),
        max_top_k: cli.max_top_k,
    };
    let batch_timeout = ms(cli.batch_timeout_ms);
    gstcbo::server::check_settings(
        &limits,
        cli.max_batch,
        batch_timeout,
        cli.decode_threads,
        cli.threads,
    )?;
    let backend = backend(cli)?;
    let listen = resolve("--listen", &cli.listen)?;
    let metrics_listen = cli
        .metrics
        .as_deref()
        .map(|m| resolve("--metrics", m))
        .transpose()?;
    let token = cli.token_file.as_deref().map(read_token).transpose()?;
    let identity = match (&cli.cert, &cli.key, &cli.self_signed) {
        (Some(cert), Some(key), None) => gstcbo::tls::load_pem(cert, key)?,
        (None, None, Some(dir)) => gstcbo::tls::load_or_create_self_signed(dir)?,
        _ => {
            return Err(
                "give a certificate: --cert FILE --key FILE, or --self-signed DIR".to_string(),
            );
        }
    };
    let model = ModelConfig {
        model: cli
            .model
            .clone()
            .unwrap_or_else(|| inference::models_dir().join(inference::DEFAULT_SERVER_MODEL)),
        labels: cli.labels.clone(),
        normalization: Normalization::parse(&cli.input_mean, &cli.input_std)?,
        output_kind: cli.output_kind,
        top_k: cli.max_top_k,
        execution_provider: cli.execution_provider,
        ep_options: Default::default(),
        ep_fallback: cli.ep_fallback,
        threads: cli.threads,
        input_size: local_input_size(cli)?,
    };
    let mut config = ServerConfig::new(listen, model, identity);
    config.backend = backend;
    config.metrics_listen = metrics_listen;
    config.token = token;
    config.max_batch = cli.max_batch;
    config.batch_timeout = batch_timeout;
    config.decode_threads = cli.decode_threads;
    config.verbose = cli.verbose;
    config.limits = limits;
    Ok(config)
}

/// How [`run`] ended.
enum Ended {
    /// Served, then shut down on a signal.
    Served,
    /// A signal came while the model was still loading.
    BeforeReady,
}

async fn run(cli: Cli) -> Result<Ended, String> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the (slow) model load, so an early SIGTERM is a clean stop too.
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    let config = config(&cli)?;
    let fingerprint = gstcbo::tls::fingerprint(&config.identity.0[0]);
    // A stop asked for while the model loads (seconds, more for a big model or a backend still
    // coming up) ends the start instead of waiting for it.
    let server = tokio::select! {
        server = Server::start(config) => server.map_err(|e| e.to_string())?,
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM before the server was ready: stopping");
            return Ok(Ended::BeforeReady);
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT before the server was ready: stopping");
            return Ok(Ended::BeforeReady);
        }
    };
    let mut out = std::io::stdout().lock();
    // Tests and scripts wait for the last line; print both before anything can connect.
    let _ = writeln!(out, "certificate sha256 fingerprint {fingerprint}");
    if let Some(addr) = server.metrics_addr() {
        let _ = writeln!(out, "metrics on http://{addr}/metrics");
    }
    let _ = writeln!(out, "listening on {}", server.local_addr());
    let _ = out.flush();
    drop(out);
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    server.shutdown().await.map_err(|e| e.to_string())?;
    Ok(Ended::Served)
}

fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.grpc_options_given = GRPC_ONLY
        .iter()
        .filter(|(id, _)| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(|&(_, flag)| flag)
        .collect();
    cli.input_size_given = matches.value_source("input_size") == Some(ValueSource::CommandLine);
    if let Err(e) = init_logs(&cli.log_format) {
        eprintln!("cboserver: error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cboserver-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cboserver: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Ended::Served) => std::process::ExitCode::SUCCESS,
        Ok(Ended::BeforeReady) => {
            // The model load goes on on another thread. `exit` would run ONNX Runtime's static
            // destructors under it (it then prints initialisation errors); nothing is left to
            // save (no connection was accepted, the identity files are written and closed), so
            // end the process without them.
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: `_exit` only ends the process; no Rust state is observed afterwards.
            unsafe { libc::_exit(0) }
        }
        Err(e) => {
            eprintln!("cboserver: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
