//! `cboserver`: the offloading server. Classifies JPEG frames that cbofilter sends over QUIC
//! (ALPN `cbo/1`, one stream per frame) with a large ONNX model, batching requests from all
//! clients. See `gstcbo::server` for the behaviour and `gstcbo::protocol` for the wire format.
//! With `--backend grpc://HOST:PORT` the model runs in an inference server (Triton, KServe,
//! MLServer) instead; docs/deploy.md shows a deployment.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use gstcbo::inference::{self, ExecutionProvider, ModelConfig};
use gstcbo::postprocess::OutputKind;
use gstcbo::preprocess::{InputType, Layout, Normalization, TensorSpec};
use gstcbo::server::backend::{BackendKind, GrpcConfig};
use gstcbo::server::{Limits, Server, ServerConfig};

#[derive(Parser)]
#[command(
    name = "cboserver",
    version,
    about = "Offloading server for cbofilter: classifies JPEG frames received over QUIC with a large ONNX model",
    long_about = "Offloading server for cbofilter: classifies JPEG frames received over QUIC \
                  (ALPN cbo/1, one bidirectional stream per frame, bearer-token authentication) \
                  with a large ONNX model, batching requests across all clients.\n\n\
                  Prints `listening on ADDR` on stdout once ready. SIGINT/SIGTERM stop accepting, \
                  answer the requests in progress (up to --drain-timeout-ms) and exit 0.\n\n\
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
    /// Time for one connection attempt to the gRPC backend, in ms
    #[arg(long, default_value_t = 2000)]
    backend_connect_timeout_ms: u64,
    /// Input size the frames are pre-processed to for a gRPC backend: N or WxH (the bundled
    /// server model's by default); checked against the backend model's metadata
    #[arg(long, default_value = "260")]
    input_size: String,
    /// Input layout for a gRPC backend: nchw or nhwc; checked against the model's metadata
    #[arg(long, default_value = "nchw")]
    input_layout: String,

    /// Server ONNX model for --backend local (default: the bundled EfficientNet-Lite2)
    #[arg(long)]
    model: Option<PathBuf>,
    /// Class names of the model: one per line, or TSV rows of index, wnid and name (default:
    /// ImageNet for 1000/1001 outputs). `--model-labels` is accepted too, as in the `cbo` tools.
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
    /// ONNX Runtime intra-op threads (0 = its default)
    #[arg(long, default_value_t = 0)]
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

    /// Largest inference batch (across all clients)
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// How long a batch waits to fill after its first frame, in ms
    #[arg(long, default_value_t = 2)]
    batch_timeout_ms: u64,
    /// JPEG decode threads (0: one per core, at most 4)
    #[arg(long, default_value_t = 0)]
    decode_threads: usize,

    /// Largest request (header + JPEG) accepted, in bytes
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    max_request_bytes: usize,
    /// Concurrent request streams per connection
    #[arg(long, default_value_t = 64)]
    max_streams: u32,
    /// Connections served at once; more are closed with `overloaded`
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Requests in progress across all connections; more are answered `overloaded`
    #[arg(long, default_value_t = 256)]
    max_pending: usize,
    /// Time to answer a request, from its arrival, in ms
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Time for a new connection's handshake and hello, in ms
    #[arg(long, default_value_t = 5000)]
    hello_timeout_ms: u64,
    /// QUIC idle timeout, in ms
    #[arg(long, default_value_t = 30_000)]
    idle_timeout_ms: u64,
    /// How long a shutdown waits for requests in progress, in ms
    #[arg(long, default_value_t = 2000)]
    drain_timeout_ms: u64,
    /// Largest top-k a client may ask for
    #[arg(long, default_value_t = 20)]
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
}

/// `N` or `WxH`.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("bad --input-size '{text}': expected N or WxH, e.g. 260 or 320x240");
    let (w, h) = match text.split_once(['x', 'X']) {
        Some((w, h)) => (w.trim(), h.trim()),
        None => (text.trim(), text.trim()),
    };
    let w: u32 = w.parse().map_err(|_| bad())?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

fn backend(cli: &Cli) -> Result<BackendKind, String> {
    if cli.backend == "local" {
        if cli.backend_model.is_some() {
            return Err("--backend-model needs --backend grpc://HOST:PORT".into());
        }
        return Ok(BackendKind::Local);
    }
    let address = GrpcConfig::parse_address(&cli.backend)?;
    let model = cli
        .backend_model
        .clone()
        .ok_or("--backend grpc://... needs --backend-model NAME")?;
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
        connect_timeout: Duration::from_millis(cli.backend_connect_timeout_ms.max(1)),
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
    // Checked before a self-signed identity is created, so a typo leaves no files behind.
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
        top_k: cli.max_top_k.max(1),
        execution_provider: cli.execution_provider,
        ep_options: Default::default(),
        ep_fallback: cli.ep_fallback,
        threads: cli.threads,
    };
    let ms = Duration::from_millis;
    let mut config = ServerConfig::new(resolve("--listen", &cli.listen)?, model, identity);
    config.backend = backend(cli)?;
    config.metrics_listen = cli
        .metrics
        .as_deref()
        .map(|m| resolve("--metrics", m))
        .transpose()?;
    config.token = token;
    config.max_batch = cli.max_batch.max(1);
    config.batch_timeout = ms(cli.batch_timeout_ms);
    config.decode_threads = cli.decode_threads;
    config.verbose = cli.verbose;
    config.limits = Limits {
        max_request_bytes: cli.max_request_bytes,
        max_streams_per_connection: cli.max_streams.max(1),
        max_connections: cli.max_connections.max(1),
        max_pending: cli.max_pending.max(1),
        request_timeout: ms(cli.request_timeout_ms.max(1)),
        hello_timeout: ms(cli.hello_timeout_ms.max(1)),
        idle_timeout: ms(cli.idle_timeout_ms.max(1)),
        drain_timeout: ms(cli.drain_timeout_ms),
        max_top_k: cli.max_top_k.max(1),
    };
    Ok(config)
}

async fn run(cli: Cli) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the (slow) model load, so an early SIGTERM is a clean stop too.
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    let config = config(&cli)?;
    let fingerprint = gstcbo::tls::fingerprint(&config.identity.0[0]);
    let server = Server::start(config).await.map_err(|e| e.to_string())?;
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
    server.shutdown().await.map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cboserver: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
