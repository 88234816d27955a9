//! `cbo classify`: run a clip (file or URI) through `cbofilter`, show progress, summarise.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use crate::cli::ModelArgs;
use crate::meta::{CboResult, Decision};

#[derive(Debug, clap::Args)]
pub struct ClassifyArgs {
    /// Video file, or a URI (file://, rtsp://, ...)
    pub input: String,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration file for the model (the element's `calibration`)
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Print every frame's result as a JSON line instead of progress
    #[arg(long)]
    pub json: bool,
    /// Stop after this many frames (0 = whole clip)
    #[arg(long, default_value_t = 0)]
    pub max_frames: u64,
    #[command(flatten)]
    pub offload: OffloadArgs,
    /// Ground truth for every frame (class indices, comma-separated if several are right):
    /// prints accuracy and the frames the server corrected
    #[arg(long, value_delimiter = ',')]
    pub expect_class: Vec<i32>,
}

/// The element's offloading properties. Each but `--server` takes effect only with `--server`,
/// so giving one without it is an error rather than silently nothing. Values are checked against
/// the element's own ranges when the pipeline is built.
#[derive(Debug, Clone, clap::Args)]
pub struct OffloadArgs {
    /// cboserver host:port (the element's `server`); unset = device only, and the options below
    /// are refused. Needs --server-cert or --server-fingerprint to trust it
    #[arg(long)]
    pub server: Option<String>,
    /// PEM file with the certificate(s) to trust for the server (e.g. the cert.pem
    /// `cboserver --self-signed DIR` wrote)
    #[arg(long, requires = "server")]
    pub server_cert: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's certificate to pin (hex, as cboserver prints it),
    /// instead of --server-cert
    #[arg(long, requires = "server")]
    pub server_fingerprint: Option<String>,
    /// File holding the server's bearer token (cboserver --token-file)
    #[arg(long, requires = "server")]
    pub token_file: Option<PathBuf>,
    /// Which frames to offload: local (none) | all | threshold (calibrated confidence below
    /// --threshold) | threshold-raw (raw softmax confidence below --threshold) | cbo (frames and
    /// resolutions chosen for expected accuracy under --deadline and the measured uplink, using
    /// the bundled profile of the default model pair) | fastva (whenever the answer would arrive
    /// in time, at the largest resolution that would)
    #[arg(long, default_value = "threshold", requires = "server")]
    pub policy: String,
    /// policy=threshold / threshold-raw: offload frames whose confidence is below this, 0 to 1
    #[arg(long, default_value_t = 0.5, requires = "server")]
    pub threshold: f64,
    /// Per-frame deadline in ms (1 to 60000) from entering the element to leaving it: a frame
    /// whose answer has not come by then leaves with its device label (decision late)
    #[arg(long, default_value_t = 200, requires = "server")]
    pub deadline: u32,
    /// policy=all / threshold / threshold-raw: short side in pixels (16 to 4096) of offloaded
    /// frames, aspect ratio kept, never upscaled; cbo and fastva pick among the profile's
    #[arg(long, default_value_t = 224, requires = "server")]
    pub resolution: u32,
    /// JPEG quality (1 to 100) of offloaded frames
    #[arg(long, default_value_t = 80, requires = "server")]
    pub jpeg_quality: u32,
    /// policy=all / threshold / threshold-raw: most offloaded frames awaiting an answer at once
    /// (1 to 1024); a file waits for room, a live source keeps the frame on the device (decision
    /// busy). cbo and fastva pace their sends by their uplink estimate instead
    #[arg(long, default_value_t = 8, requires = "server")]
    pub max_in_flight: u32,
}

impl OffloadArgs {
    pub fn element_properties(&self) -> Result<Vec<(&'static str, String)>, String> {
        let Some(server) = &self.server else {
            return Ok(Vec::new());
        };
        let mut props = vec![
            ("server", server.clone()),
            ("policy", self.policy.clone()),
            ("threshold", self.threshold.to_string()),
            ("deadline", self.deadline.to_string()),
            ("resolution", self.resolution.to_string()),
            ("jpeg-quality", self.jpeg_quality.to_string()),
            ("max-in-flight", self.max_in_flight.to_string()),
        ];
        if let Some(c) = &self.server_cert {
            props.push(("server-cert", c.display().to_string()));
        }
        if let Some(f) = &self.server_fingerprint {
            props.push(("server-fingerprint", f.clone()));
        }
        if let Some(t) = &self.token_file {
            let token = std::fs::read_to_string(t)
                .map_err(|e| format!("cannot read token file '{}': {e}", t.display()))?;
            props.push(("token", token.trim().to_string()));
        }
        Ok(props)
    }
}

#[derive(Default)]
struct Tally {
    frames: u64,
    labels: HashMap<String, u64>,
    confidence_sum: f64,
    raw_confidence_sum: f64,
    inference_us_sum: u64,
    preprocess_us_sum: u64,
    last: Option<(String, f64)>,
    offloaded: u64,
    from_server: u64,
    decisions: HashMap<Decision, u64>,
    right: u64,
    device_right: u64,
    corrected: u64,
    /// Time each frame spent in the element, in arrival order.
    latencies_us: Vec<u64>,
}

/// Summary of a classified clip.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassifySummary {
    pub frames: u64,
    pub seconds: f64,
    pub fps: f64,
    /// Mean of `confidence` (calibrated when a calibration is loaded).
    pub mean_confidence: f64,
    pub mean_raw_confidence: f64,
    pub calibrated: bool,
    pub mean_inference_ms: f64,
    pub mean_preprocess_ms: f64,
    pub execution_provider: String,
    /// (label, frames), most frequent first.
    pub labels: Vec<(String, u64)>,
    pub offloading: bool,
    /// Frames sent to the server, whatever became of the request (answered in time, overruled,
    /// late, failed; late or failed and then labelled with a recent answer: `reuse`).
    pub offloaded: u64,
    /// Frames whose label came from the server: answered in time (`offload`) or labelled with an
    /// earlier frame's answer (`reuse`).
    pub from_server: u64,
    /// Frames whose deadline passed first (sent, or still undecided): `decisions["late"]`.
    pub late: u64,
    /// Frames by their `decision` (every kind, zeros included; they add up to `frames`).
    pub decisions: BTreeMap<&'static str, u64>,
    /// With --expect-class: accuracy of the labels leaving the element, of the device alone, and
    /// frames the device got wrong and the server right.
    pub accuracy: Option<f64>,
    pub device_accuracy: Option<f64>,
    pub corrected: Option<u64>,
    /// Time from entering cbofilter to leaving it.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

fn source_description(input: &str) -> String {
    if input.contains("://") {
        format!("uridecodebin uri=\"{}\"", input.replace('"', "\\\""))
    } else {
        super::file_source(&PathBuf::from(input))
    }
}

pub fn run(args: &ClassifyArgs) -> Result<ClassifySummary, String> {
    super::init_gstreamer()?;
    let config = args.model.to_config()?;
    if !args.input.contains("://") && !std::path::Path::new(&args.input).is_file() {
        return Err(format!("video '{}' does not exist", args.input));
    }
    let desc = format!(
        "{} ! cbofilter name=cbo ! fakesink sync=false",
        source_description(&args.input)
    );
    let pipeline = crate::gstelements::launch_pipeline(&desc)?;
    let cbo = pipeline.by_name("cbo").expect("named in the description");
    super::set_element_properties(&cbo, args.model.element_properties(&config))?;
    if let Some(cal) = &args.calibration {
        cbo.set_property("calibration", cal.display().to_string());
    }
    let offload_props = args.offload.element_properties()?;
    let offloading = !offload_props.is_empty();
    super::set_element_properties(&cbo, offload_props)?;
    super::stop_after(&cbo.static_pad("sink").expect("sink pad"), args.max_frames);
    let entered = Arc::new(Mutex::new(std::collections::VecDeque::<Instant>::new()));
    let e = entered.clone();
    cbo.static_pad("sink")
        .expect("sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            e.lock().unwrap().push_back(Instant::now());
            gst::PadProbeReturn::Ok
        });
    let expect = args.expect_class.clone();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let json = args.json;
    let probe_tally = tally.clone();
    cbo.static_pad("src")
        .expect("src pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer()
                && let Some(Ok(r)) = CboResult::from_buffer(buf)
            {
                if json {
                    println!("{}", result_json(&r, buf.pts()));
                }
                let mut t = probe_tally.lock().unwrap();
                // Frames leave in arrival order, so the oldest entry time is this frame's.
                if let Some(t0) = entered.lock().unwrap().pop_front() {
                    t.latencies_us.push(t0.elapsed().as_micros() as u64);
                }
                t.frames += 1;
                // A frame keeps the resolution it was sent at whatever became of the request.
                t.offloaded += u64::from(r.resolution > 0);
                t.from_server += u64::from(r.source == crate::meta::Source::Server);
                *t.decisions.entry(r.decision).or_default() += 1;
                if !expect.is_empty() {
                    let right = expect.contains(&r.class_id);
                    let device_right = expect.contains(&r.device_class_id);
                    t.right += u64::from(right);
                    t.device_right += u64::from(device_right);
                    t.corrected += u64::from(right && !device_right);
                }
                *t.labels.entry(r.label.clone()).or_default() += 1;
                t.confidence_sum += r.confidence;
                t.raw_confidence_sum += r.raw_confidence;
                t.inference_us_sum += r.inference_us;
                t.preprocess_us_sum += r.preprocess_us;
                t.last = Some((r.label, r.confidence));
            }
            gst::PadProbeReturn::Ok
        });

    let started = Instant::now();
    crate::gstelements::play(&pipeline)?;
    let bus = pipeline.bus().expect("pipeline bus");
    let mut last_report = Instant::now();
    let mut total: Option<u64> = None;
    let outcome = loop {
        if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) {
            match msg.view() {
                gst::MessageView::Eos(_) => break Ok(()),
                gst::MessageView::Error(e) => {
                    break Err(format!(
                        "{}{}",
                        crate::gstelements::describe_error(e),
                        e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
                    ));
                }
                gst::MessageView::Warning(w) => eprintln!("warning: {}", w.error()),
                _ => {}
            }
        }
        if total.is_none() {
            total = estimated_frames(&pipeline, &cbo);
        }
        if !json && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let t = tally.lock().unwrap();
            let secs = started.elapsed().as_secs_f64();
            let of = total.map(|n| format!("/{n}")).unwrap_or_default();
            let (label, p) = t.last.clone().unwrap_or_default();
            eprint!(
                "\r[{secs:6.1}s] frame {}{of}  {:6.1} fps  last: {label} ({p:.2})        ",
                t.frames,
                t.frames as f64 / secs
            );
            let _ = std::io::stderr().flush();
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let provider = cbo.property::<String>("active-execution-provider");
    let _ = pipeline.set_state(gst::State::Null);
    if !json {
        eprintln!();
    }
    outcome?;
    let t = tally.lock().unwrap();
    let n = t.frames.max(1) as f64;
    let mut labels: Vec<(String, u64)> = t.labels.iter().map(|(k, v)| (k.clone(), *v)).collect();
    labels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    let pct = |q: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1] as f64 / 1000.0
        }
    };
    let known = !args.expect_class.is_empty();
    Ok(ClassifySummary {
        offloading,
        offloaded: t.offloaded,
        from_server: t.from_server,
        late: t.decisions.get(&Decision::Late).copied().unwrap_or(0),
        decisions: Decision::ALL
            .iter()
            .map(|d| (d.as_str(), t.decisions.get(d).copied().unwrap_or(0)))
            .collect(),
        accuracy: known.then(|| t.right as f64 / n),
        device_accuracy: known.then(|| t.device_right as f64 / n),
        corrected: known.then_some(t.corrected),
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        frames: t.frames,
        seconds,
        fps: t.frames as f64 / seconds,
        mean_confidence: t.confidence_sum / n,
        mean_raw_confidence: t.raw_confidence_sum / n,
        calibrated: args.calibration.is_some(),
        mean_inference_ms: t.inference_us_sum as f64 / n / 1000.0,
        mean_preprocess_ms: t.preprocess_us_sum as f64 / n / 1000.0,
        execution_provider: provider,
        labels,
    })
}

/// Clip length in frames from the duration and the negotiated frame rate, when both are known.
fn estimated_frames(pipeline: &gst::Pipeline, cbo: &gst::Element) -> Option<u64> {
    let duration = pipeline.query_duration::<gst::ClockTime>()?;
    let caps = cbo.static_pad("sink")?.current_caps()?;
    let info = gst_video::VideoInfo::from_caps(&caps).ok()?;
    let fps = info.fps();
    if fps.numer() <= 0 {
        return None;
    }
    Some(
        (duration.nseconds() as u128 * fps.numer() as u128 / fps.denom() as u128 / 1_000_000_000)
            as u64,
    )
}

fn result_json(r: &CboResult, pts: Option<gst::ClockTime>) -> String {
    serde_json::json!({
        "frame": r.frame,
        "pts_s": pts.map(|p| p.nseconds() as f64 / 1e9),
        "class_id": r.class_id,
        "label": r.label,
        "confidence": r.confidence,
        "raw_confidence": r.raw_confidence,
        "source": r.source.as_str(),
        "decision": r.decision.as_str(),
        "resolution": r.resolution,
        "inference_us": r.inference_us,
        "top_classes": r.top_classes,
        "top_scores": r.top_scores,
        "device_class_id": r.device_class_id,
        "device_confidence": r.device_confidence,
        "server_latency_us": r.server_latency_us,
    })
    .to_string()
}

/// What a frame with decision `d` went through, for the summary.
fn decision_meaning(d: Decision) -> &'static str {
    match d {
        Decision::Device => "kept on the device by the policy",
        Decision::Offload => "sent; the server's answer came in time and labels it",
        Decision::Reuse => "kept on the device; labelled with an earlier frame's server answer",
        Decision::Overruled => "answered, but the device's label was the likelier right (merge)",
        Decision::Late => "no answer by the deadline (sent or still undecided); device label",
        Decision::Failed => "sent; the request failed; device label",
        Decision::Busy => "to offload, but max-in-flight requests were out; device label",
        Decision::Offline => "to offload, but no server connection; device label",
    }
}

/// Human-readable summary, as `make demo` prints it.
pub fn print_summary(s: &ClassifySummary) {
    println!(
        "frames: {}   time: {:.1} s   throughput: {:.1} frames/s   execution provider: {}",
        s.frames, s.seconds, s.fps, s.execution_provider
    );
    println!(
        "mean confidence: {:.3}{}   mean inference: {:.2} ms   mean pre-processing: {:.2} ms",
        s.mean_confidence,
        if s.calibrated {
            format!(" calibrated ({:.3} raw)", s.mean_raw_confidence)
        } else {
            String::new()
        },
        s.mean_inference_ms,
        s.mean_preprocess_ms
    );
    let n = s.frames.max(1) as f64;
    if s.offloading {
        println!(
            "sent to the server: {} ({:.1}%)   labelled by the server: {} ({:.1}%)",
            s.offloaded,
            100.0 * s.offloaded as f64 / n,
            s.from_server,
            100.0 * s.from_server as f64 / n,
        );
        println!("decisions:");
        for d in Decision::ALL {
            let count = s.decisions.get(d.as_str()).copied().unwrap_or(0);
            if count > 0 {
                println!(
                    "  {:<10} {count:>6}  {:5.1}%  {}",
                    d.as_str(),
                    100.0 * count as f64 / n,
                    decision_meaning(d)
                );
            }
        }
    }
    if let (Some(acc), Some(dev)) = (s.accuracy, s.device_accuracy) {
        println!(
            "accuracy vs the known label: {:.3} (device alone {:.3}); frames the server corrected: {}",
            acc,
            dev,
            s.corrected.unwrap_or(0)
        );
    }
    println!(
        "frame latency through cbofilter: p50 {:.1} ms   p99 {:.1} ms",
        s.latency_p50_ms, s.latency_p99_ms
    );
    println!("labels:");
    for (label, count) in s.labels.iter().take(10) {
        let bar = "#".repeat((40.0 * *count as f64 / n).round() as usize);
        println!(
            "  {label:<24} {count:>6}  {:5.1}%  {bar}",
            100.0 * *count as f64 / n
        );
    }
    if s.labels.len() > 10 {
        let rest: u64 = s.labels[10..].iter().map(|(_, c)| c).sum();
        println!(
            "  ({} other labels)       {rest:>6}  {:5.1}%",
            s.labels.len() - 10,
            100.0 * rest as f64 / n
        );
    }
}
