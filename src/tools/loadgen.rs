//! `cbo loadgen`: drives a running `cboserver` with real offload requests and compares its
//! throughput with a bare ONNX Runtime batch loop on the same model.
//!
//! Frames of a clip are decoded and encoded up front exactly as the element's offload path does
//! ([`FrameEncoder`] at the requested short side), so the timed part is only the network, the
//! server's decoding, batching and inference. `--clients` connections (each with its own QUIC
//! endpoint, like separate devices) send one request at a time for `--seconds`. The baseline runs
//! afterwards, in this process, on an idle server machine (the tool is meant to run beside the
//! server): the same model, batches of `--batch` pre-processed images through one
//! `Session::run` each, i.e. what the server's model thread would do with no network, decoding or
//! queueing at all. Their ratio is the server's efficiency.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::inference::{self, ExecutionProvider, ModelSession};
use crate::jpeg::{EncodedFrame, FrameDecoder, FrameEncoder};
use crate::preprocess::{Normalization, Preprocessor};
use crate::protocol::{ErrorCode, RequestHeader};
use crate::quic::{self, RequestError};
use crate::server::batch::{BatchDim, BatchTensor, run_batch};
use crate::server::bounds as server_bounds;
use crate::tls::Trust;

// Ranges of the options, checked by clap on the command line and by `LoadgenArgs::check` for
// callers of `run`: a value outside them is an error naming the option, never quietly replaced
// by another (0 clients running as 1) or ignored (a 0 px resolution sending full-size frames).
const CLIENTS: RangeInclusive<u64> = 1..=1024;
/// A day: longer is a typo (and a run of `inf` seconds would overflow the clock).
const MAX_SECONDS: f64 = 86_400.0;
/// The element's `resolution` and `jpeg-quality`.
const RESOLUTION: RangeInclusive<u64> = 16..=4096;
const JPEG_QUALITY: RangeInclusive<u64> = 1..=100;
/// A request's top-k is one byte (the element caps its own 1..1000 the same way).
const TOP_K: RangeInclusive<u64> = 1..=255;
/// The server's `--max-batch` and `--threads`.
const BATCH: RangeInclusive<u64> = server_bounds::MAX_BATCH;
const THREADS: RangeInclusive<u64> = server_bounds::THREADS;

/// A number of frames: at least 1, no upper bound (the clip is one).
fn parse_frames(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number of at least 1".into()),
    }
}

/// A length of run in seconds: finite, more than 0, at most [`MAX_SECONDS`].
fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if seconds > 0.0 && seconds <= MAX_SECONDS {
        Ok(seconds)
    } else {
        Err(format!("must be more than 0 and at most {MAX_SECONDS}"))
    }
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("trust").required(true).args(["server_cert", "server_fingerprint"])
))]
pub struct LoadgenArgs {
    /// Server address (host:port)
    #[arg(long)]
    pub server: String,
    /// TLS name of the server (checked with --server-cert)
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Trust the certificates in this PEM file (e.g. the server's self-signed cert.pem); or
    /// give --server-fingerprint
    #[arg(long)]
    pub server_cert: Option<PathBuf>,
    /// Trust only the server certificate with this SHA-256 (hex; `:` allowed)
    #[arg(long, conflicts_with = "server_cert")]
    pub server_fingerprint: Option<String>,
    /// File holding the bearer token
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Concurrent clients, one connection each (1 to 1024)
    #[arg(long, default_value_t = 8, value_parser = server_bounds::parser::<usize>(CLIENTS))]
    pub clients: usize,
    /// Length of the timed run, in seconds (more than 0, at most 86400)
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Short side of the offloaded JPEGs, in pixels (16 to 4096, as the element's
    /// `resolution`; frames are never upscaled)
    #[arg(long, default_value_t = 224, value_parser = server_bounds::parser::<u32>(RESOLUTION))]
    pub resolution: u32,
    /// Clip whose frames are sent (default: the bundled bottle clip)
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Frames of the clip encoded and sent round-robin (at least 1; fewer when the clip is
    /// shorter)
    #[arg(long, default_value_t = 120, value_parser = parse_frames)]
    pub frames: usize,
    /// JPEG quality (1 to 100, as the element's `jpeg-quality`)
    #[arg(long, default_value_t = 80, value_parser = server_bounds::parser::<u32>(JPEG_QUALITY))]
    pub jpeg_quality: u32,
    /// Classes asked for per frame (1 to 255: one byte on the wire); the server answers at most
    /// its --max-top-k (20 by default), and loadgen warns when it answers fewer
    #[arg(long, default_value_t = 5, value_parser = server_bounds::parser::<u8>(TOP_K))]
    pub top_k: u8,
    /// Server process id, to sample its resident memory (VmRSS) during the run
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Model of the bare baseline: the server's model (default: the bundled server model)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Baseline pre-processing mean (one value or R,G,B), as the server's
    #[arg(long, default_value = "127")]
    pub input_mean: String,
    /// Baseline pre-processing std
    #[arg(long, default_value = "128")]
    pub input_std: String,
    /// Baseline model's image side when its image size is dynamic: the server's --input-size
    /// (0 = the model's own)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub input_size: u32,
    /// Baseline batch size: the server's --max-batch (1 to 256)
    #[arg(long, default_value_t = 8, value_parser = server_bounds::parser::<usize>(BATCH))]
    pub batch: usize,
    /// Baseline execution provider, as the server's
    #[arg(long, default_value = "auto")]
    pub execution_provider: ExecutionProvider,
    /// Baseline ONNX Runtime intra-op threads, as the server's (0 = its default; at most 256)
    #[arg(long, default_value_t = 0, value_parser = server_bounds::parser::<usize>(THREADS))]
    pub threads: usize,
    /// Length of the baseline run, in seconds (default: --seconds; more than 0, at most 86400)
    #[arg(long, value_parser = parse_seconds)]
    pub baseline_seconds: Option<f64>,
    /// Skip the baseline
    #[arg(long)]
    pub no_baseline: bool,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

impl LoadgenArgs {
    /// The ranges clap checks on the command line, for callers that build the arguments
    /// themselves; an error names the option.
    pub fn check(&self) -> Result<(), String> {
        use server_bounds::check;
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        check("--clients", n(self.clients), &CLIENTS)?;
        for (flag, seconds) in [
            ("--seconds", Some(self.seconds)),
            ("--baseline-seconds", self.baseline_seconds),
        ] {
            if let Some(s) = seconds {
                parse_seconds(&s.to_string())
                    .map_err(|e| format!("invalid value '{s}' for '{flag}': {e}"))?;
            }
        }
        check("--resolution", self.resolution.into(), &RESOLUTION)?;
        parse_frames(&self.frames.to_string())
            .map_err(|e| format!("invalid value '{}' for '--frames': {e}", self.frames))?;
        check("--jpeg-quality", self.jpeg_quality.into(), &JPEG_QUALITY)?;
        check("--top-k", self.top_k.into(), &TOP_K)?;
        check("--batch", n(self.batch), &BATCH)?;
        check("--threads", n(self.threads), &THREADS)?;
        check("--input-size", self.input_size.into(), &(0..=4096))?;
        self.trust().map(|_| ())
    }

    fn trust(&self) -> Result<Trust, String> {
        match (&self.server_cert, &self.server_fingerprint) {
            (Some(pem), None) => Ok(Trust::Pem(pem.clone())),
            (None, Some(fp)) => Ok(Trust::Fingerprint(fp.clone())),
            (None, None) => Err(
                "give --server-cert FILE or --server-fingerprint HEX: which server to trust".into(),
            ),
            (Some(_), Some(_)) => {
                Err("give --server-cert or --server-fingerprint, not both".into())
            }
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Rss {
    pub start_mib: f64,
    pub peak_mib: f64,
    pub end_mib: f64,
    pub samples: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Baseline {
    pub model: String,
    pub execution_provider: String,
    pub batch: usize,
    pub frames_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadgenReport {
    pub server: String,
    pub server_model: String,
    pub clients: usize,
    pub seconds: f64,
    /// Short side of the JPEGs sent: `--resolution`, or less when the clip is smaller (frames
    /// are never upscaled).
    pub resolution: u32,
    pub jpeg_bytes_mean: f64,
    pub answers: u64,
    /// Failed requests by error ("timeout", "overloaded", "connection", ...).
    pub errors: BTreeMap<String, u64>,
    pub frames_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    /// Means over answers of what the server reported.
    pub server_batch_mean: f64,
    pub server_batch_max: u32,
    pub server_decode_us_mean: f64,
    pub server_queue_us_mean: f64,
    pub server_inference_us_mean: f64,
    pub server_rss: Option<Rss>,
    pub baseline: Option<Baseline>,
    /// frames_per_s / baseline frames_per_s.
    pub ratio: Option<f64>,
}

/// Decodes up to `max` frames of `clip` and encodes each as the offload path does.
pub fn encode_clip(
    clip: &Path,
    max: usize,
    resolution: u32,
    quality: u32,
) -> Result<Vec<EncodedFrame>, String> {
    super::init_gstreamer()?;
    let mut encoder = FrameEncoder::new(quality).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    super::for_each_frame(clip, max, |buf, caps| {
        let frame = super::dataset::map_frame(buf, caps)?;
        out.push(
            encoder
                .encode(&frame, resolution)
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    })?;
    if out.is_empty() {
        return Err(format!("'{}' has no video frames", clip.display()));
    }
    Ok(out)
}

fn resolve(server: &str) -> Result<SocketAddr, String> {
    server
        .to_socket_addrs()
        .map_err(|e| format!("bad --server '{server}': {e}"))?
        .next()
        .ok_or_else(|| format!("--server '{server}' resolves to no address"))
}

fn read_token(path: Option<&Path>) -> Result<String, String> {
    match path {
        None => Ok(String::new()),
        Some(p) => std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read --token-file '{}': {e}", p.display())),
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS every 100 ms until `stop` is set.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = rss_kib(pid) {
                samples.push(kib);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        samples.extend(rss_kib(pid));
        samples
    })
}

/// What one client saw.
#[derive(Default)]
struct ClientRecord {
    latencies_us: Vec<u64>,
    batches: Vec<u32>,
    decode_us: u64,
    queue_us: u64,
    inference_us: u64,
    errors: BTreeMap<String, u64>,
}

fn error_kind(e: &RequestError) -> String {
    match e {
        RequestError::Connection(_) => "connection".into(),
        RequestError::Server(r) => quic::code_name(r.code),
        RequestError::Protocol(_) => "protocol".into(),
        RequestError::Timeout => "timeout".into(),
    }
}

struct Target {
    addr: SocketAddr,
    name: String,
    config: quinn::ClientConfig,
    token: String,
}

/// Largest answer read.
const MAX_RESPONSE: usize = 64 * 1024;

fn request_header(frame_id: u64, f: &EncodedFrame, top_k: u8) -> RequestHeader {
    RequestHeader {
        frame_id,
        width: f.width,
        height: f.height,
        short_side: f.width.min(f.height),
        deadline_ms: 0,
        jpeg_len: f.bytes.len() as u32,
        top_k,
    }
}

/// Connects and says hello. All clients connect at once, and a server refuses part of a burst
/// from one address for a moment (`Busy`: too many connections awaiting their hello); like the
/// element, a client then tries again, for up to 10 s.
async fn connect(
    endpoint: &quinn::Endpoint,
    target: &Target,
    name: &str,
) -> Result<quic::Session, quic::ConnectError> {
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(20);
    loop {
        match quic::connect(
            endpoint,
            target.addr,
            &target.name,
            target.config.clone(),
            &target.token,
            name,
            Duration::from_secs(10),
        )
        .await
        {
            Err(quic::ConnectError::Busy(_)) if Instant::now() + pause < give_up => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// One client: connect, one request at a time (round-robin over the frames, from its own
/// offset) until `end`; requests completing after `start` are recorded.
async fn client(
    index: usize,
    target: Arc<Target>,
    frames: Arc<Vec<EncodedFrame>>,
    top_k: u8,
    start: Instant,
    end: Instant,
) -> Result<ClientRecord, String> {
    let endpoint = quic::client_endpoint()?;
    let session = connect(&endpoint, &target, &format!("cbo-loadgen/{index}"))
        .await
        .map_err(|e| format!("client {index}: {e}"))?;
    let mut rec = ClientRecord::default();
    let mut n = 0u64;
    let mut i = index * frames.len() / 8;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let f = &frames[i % frames.len()];
        i += 1;
        let header = request_header(((index as u64) << 40) | n, f, top_k);
        n += 1;
        let t = Instant::now();
        let result = quic::request(&session.connection, &header, &f.bytes, MAX_RESPONSE).await;
        let done = Instant::now();
        if done < start {
            continue; // warm-up
        }
        match result {
            Ok(a) => {
                rec.latencies_us
                    .push((done - t).as_micros().min(u64::MAX as u128) as u64);
                rec.batches.push(a.batch);
                rec.decode_us += a.decode_us;
                rec.queue_us += a.queue_us;
                rec.inference_us += a.inference_us;
            }
            Err(e) => {
                *rec.errors.entry(error_kind(&e)).or_default() += 1;
                if matches!(e, RequestError::Connection(_)) {
                    eprintln!("cbo loadgen: client {index}: {e}");
                    break;
                }
            }
        }
    }
    session.connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(rec)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

/// The bare loop: batches of pre-processed images through `Session::run`, for `seconds`.
fn baseline(args: &LoadgenArgs, frames: &[EncodedFrame], seconds: f64) -> Result<Baseline, String> {
    let path = args
        .model
        .clone()
        .unwrap_or_else(|| inference::models_dir().join(inference::DEFAULT_SERVER_MODEL));
    let mut model = ModelSession::load(
        &path,
        args.execution_provider,
        false,
        args.threads,
        args.input_size,
    )
    .map_err(|e| e.to_string())?;
    let norm = Normalization::parse(&args.input_mean, &args.input_std)?;
    let mut pre = Preprocessor::new(model.spec, norm).map_err(|e| e.to_string())?;
    let mut decoder = FrameDecoder::new().map_err(|e| e.to_string())?;
    let batch = match BatchDim::of(&model.session) {
        BatchDim::Dynamic => args.batch,
        BatchDim::One => 1,
    };
    let mut tensor = BatchTensor::new(model.spec, batch);
    for f in frames.iter().cycle().take(batch) {
        let decoded = decoder.decode(&f.bytes).map_err(|e| e.to_string())?;
        let frame = decoded.frame().map_err(|e| e.to_string())?;
        tensor
            .push(pre.process(&frame).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut rows = Vec::new();
    let mut run = |rows: &mut Vec<f32>| {
        run_batch(&mut model.session, &model.input_name, &tensor, rows).map_err(|e| e.to_string())
    };
    run(&mut rows)?; // warm-up
    let t = Instant::now();
    let mut images = 0usize;
    while images == 0 || t.elapsed().as_secs_f64() < seconds {
        run(&mut rows)?;
        images += batch;
    }
    Ok(Baseline {
        model: path.display().to_string(),
        execution_provider: model.active_provider.to_string(),
        batch,
        frames_per_s: images as f64 / t.elapsed().as_secs_f64(),
    })
}

pub fn run(args: &LoadgenArgs) -> Result<LoadgenReport, String> {
    // The quick checks first, before the clip is decoded.
    args.check()?;
    let target = Arc::new(Target {
        addr: resolve(&args.server)?,
        name: args.server_name.clone(),
        config: crate::tls::client_config(&args.trust()?)?,
        token: read_token(args.token_file.as_deref())?,
    });
    let clip = args
        .clip
        .clone()
        .unwrap_or_else(super::bench::default_video);
    let frames = Arc::new(encode_clip(
        &clip,
        args.frames,
        args.resolution,
        args.jpeg_quality,
    )?);
    let resolution = frames
        .iter()
        .map(|f| f.width.min(f.height))
        .max()
        .unwrap_or(0);
    if resolution < args.resolution {
        eprintln!(
            "cbo loadgen: note: the clip's frames are {resolution} px on their short side, and \
             are sent at that size (never upscaled to --resolution {})",
            args.resolution
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let clients = args.clients;
    let seconds = args.seconds;

    // The server's model, from a hello, and one request: both prove the settings before the
    // clock starts.
    let (server_model, probe) = runtime.block_on(async {
        let endpoint = quic::client_endpoint()?;
        let s = connect(&endpoint, &target, "cbo-loadgen")
            .await
            .map_err(|e| e.to_string())?;
        let f = &frames[0];
        let header = request_header(0, f, args.top_k);
        let probe = quic::request(&s.connection, &header, &f.bytes, MAX_RESPONSE).await;
        s.connection.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok::<_, String>((s.hello.model, probe))
    })?;
    match probe {
        // The server answers at most its --max-top-k classes and does not announce it: say so
        // rather than report a run of shorter answers as if they were what was asked.
        Ok(a) if a.class_ids.len() < usize::from(args.top_k) => eprintln!(
            "cbo loadgen: warning: the server answers {} classes per frame, not --top-k {}: \
             its --max-top-k (or its model's class count) is lower",
            a.class_ids.len(),
            args.top_k
        ),
        Ok(_) => {}
        // Every request would be refused the same way: a run of nothing but errors.
        Err(RequestError::Server(e))
            if matches!(
                e.code,
                ErrorCode::BadRequest
                    | ErrorCode::UnsupportedVersion
                    | ErrorCode::TooLarge
                    | ErrorCode::NotJpeg
                    | ErrorCode::Unauthorized
            ) =>
        {
            return Err(format!(
                "the server refused the first request ({}): {}",
                quic::code_name(e.code),
                e.message
            ));
        }
        // Overloaded, timed out, ...: the run counts these among its errors.
        Err(e) => eprintln!("cbo loadgen: warning: the first request failed: {e}"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = args.server_pid.map(|pid| sample_rss(pid, stop.clone()));
    // One second of warm-up (connections, server arenas), then the timed window.
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(seconds);
    let records = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                tokio::spawn(client(
                    i,
                    target.clone(),
                    frames.clone(),
                    args.top_k,
                    start,
                    end,
                ))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(|e| format!("client task failed: {e}"))??);
        }
        Ok::<_, String>(out)
    });
    stop.store(true, Ordering::Relaxed);
    let rss = sampler.and_then(|s| s.join().ok()).and_then(|samples| {
        let kib_to_mib = |k: u64| k as f64 / 1024.0;
        Some(Rss {
            start_mib: kib_to_mib(*samples.first()?),
            peak_mib: kib_to_mib(*samples.iter().max()?),
            end_mib: kib_to_mib(*samples.last()?),
            samples: samples.len(),
        })
    });
    let records = records?;
    drop(runtime);

    let mut latencies: Vec<u64> = records
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let answers = latencies.len() as u64;
    let mut errors = BTreeMap::new();
    for r in &records {
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    if answers == 0 {
        // A report of zeros would read as a measurement; a run without one answer is a failure.
        let counted: Vec<String> = errors.iter().map(|(k, v)| format!("{v} {k}")).collect();
        return Err(format!(
            "no answer in {seconds} s from {} client(s): {}",
            clients,
            if counted.is_empty() {
                "no request completed".to_string()
            } else {
                format!("every request failed ({})", counted.join(", "))
            }
        ));
    }
    let batches: Vec<u32> = records.iter().flat_map(|r| r.batches.clone()).collect();
    let mean = |sum: u64| sum as f64 / answers.max(1) as f64;
    let frames_per_s = answers as f64 / seconds;
    let base = if args.no_baseline {
        None
    } else {
        Some(baseline(
            args,
            &frames,
            args.baseline_seconds.unwrap_or(seconds),
        )?)
    };
    Ok(LoadgenReport {
        server: args.server.clone(),
        server_model,
        clients,
        seconds,
        resolution,
        jpeg_bytes_mean: frames.iter().map(|f| f.bytes.len()).sum::<usize>() as f64
            / frames.len() as f64,
        answers,
        errors,
        frames_per_s,
        latency_ms_p50: percentile(&latencies, 50.0),
        latency_ms_p90: percentile(&latencies, 90.0),
        latency_ms_p99: percentile(&latencies, 99.0),
        latency_ms_max: latencies.last().map_or(0.0, |&v| v as f64 / 1000.0),
        server_batch_mean: batches.iter().map(|&b| b as u64).sum::<u64>() as f64
            / batches.len().max(1) as f64,
        server_batch_max: batches.iter().copied().max().unwrap_or(0),
        server_decode_us_mean: mean(records.iter().map(|r| r.decode_us).sum()),
        server_queue_us_mean: mean(records.iter().map(|r| r.queue_us).sum()),
        server_inference_us_mean: mean(records.iter().map(|r| r.inference_us).sum()),
        server_rss: rss,
        ratio: base.as_ref().map(|b| frames_per_s / b.frames_per_s),
        baseline: base,
    })
}

pub fn print_report(r: &LoadgenReport) {
    println!(
        "server {} ({}), {} clients for {:.1} s, JPEGs at {} px ({:.0} bytes mean)",
        r.server, r.server_model, r.clients, r.seconds, r.resolution, r.jpeg_bytes_mean
    );
    println!(
        "answers        : {} ({:.1} frames/s)",
        r.answers, r.frames_per_s
    );
    if !r.errors.is_empty() {
        let e: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("errors         : {}", e.join(", "));
    }
    println!(
        "latency ms     : p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
        r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99, r.latency_ms_max
    );
    println!(
        "server batch   : mean {:.2}, max {}; decode {:.0} us, queue {:.0} us, inference {:.0} us (means)",
        r.server_batch_mean,
        r.server_batch_max,
        r.server_decode_us_mean,
        r.server_queue_us_mean,
        r.server_inference_us_mean
    );
    if let Some(rss) = &r.server_rss {
        println!(
            "server RSS MiB : start {:.1}, peak {:.1}, end {:.1} ({} samples)",
            rss.start_mib, rss.peak_mib, rss.end_mib, rss.samples
        );
    }
    if let (Some(b), Some(ratio)) = (&r.baseline, r.ratio) {
        println!(
            "bare ort batch : {:.1} frames/s (batch {}, {})",
            b.frames_per_s, b.batch, b.execution_provider
        );
        println!("ratio server/bare: {ratio:.3} (target >= 0.8)");
    }
}
