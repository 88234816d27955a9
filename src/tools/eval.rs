//! `cbo eval`: replays offloading policies over a labelled clip against real uplink traces.
//!
//! The device model runs over every frame and the server model over every frame at every
//! resolution of the profile once (cached in `--cache DIR`), through the element's own code
//! (see `cbo profile`); then each policy is replayed with the element's event model
//! ([`crate::offload::sim`]) for every trace and deadline. The `cbo` policy reads the offload
//! profile (default: the one shipped for the default model pair).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

use crate::offload::crossval::{CvSetting, MAX_MISS_RATE, choose, leave_one_out};
use crate::offload::link_estimate::SAMPLE_AGE_MS;
use crate::offload::merge::MergeModel;
use crate::offload::planner::{CboParams, CboPlanner, DEFAULT_PARAMS, Planner};
use crate::offload::policy::ELEMENT_POLICIES;
use crate::offload::policy::{PolicyKind, PolicySpec};
use crate::offload::sim::{
    SimConfig, SimFrame, SimResult, SimReuse, SimServer, clairvoyant, simulate,
};
use crate::offload::summary::{PolicySummary, best_baseline, summarise};
use crate::profile::{FrameObservation, Profile};
use crate::tools::dataset::InputArgs;
use crate::tools::profile::{ProfileArgs, measure};
use crate::trace::Trace;

pub const ALL_POLICIES: &str = "local,all,threshold,threshold-raw,fastva,cbo,link-oracle,clairvoyant,\
     cbo+reuse,link-oracle+reuse,clairvoyant+reuse";

/// A policy name with this suffix runs with answer reuse ([`crate::offload::reuse`]).
pub const REUSE_SUFFIX: &str = crate::offload::policy::REUSE_SUFFIX;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Labelled clip(s), comma-separated
    #[arg(long, value_delimiter = ',', required = true)]
    pub video: Vec<PathBuf>,
    /// Their per-frame labels (CSV with `frame`, `class_index`), in the same order
    #[arg(long, value_delimiter = ',', required = true)]
    pub labels: Vec<PathBuf>,
    /// Mahimahi uplink trace(s) or directories of them (every `*.up` inside), comma-separated
    #[arg(long, value_delimiter = ',', required = true)]
    pub trace: Vec<PathBuf>,
    /// Deadline(s) in ms, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "500")]
    pub deadline_ms: Vec<f64>,
    /// Round-trip time(s) added to the trace's uplink (one-way delay = half), comma-separated:
    /// like the deadlines, each is a dimension of the grid (and of `--cv`)
    #[arg(long, value_delimiter = ',', default_value = "40")]
    pub rtt_ms: Vec<f64>,
    /// Frame rate of the replay
    #[arg(long, default_value_t = 10.0)]
    pub fps: f64,
    /// Policies to replay; any of them with `+reuse` (e.g. `cbo+reuse`) also reuses a recent
    /// server answer for following frames while the device's top-1 is unchanged
    #[arg(long, value_delimiter = ',', default_value = ALL_POLICIES)]
    pub policies: Vec<String>,
    /// `+reuse` policies: how long after a frame its answer may serve following frames
    #[arg(long, default_value_t = 1000.0)]
    pub reuse_window_ms: f64,
    /// Offload profile for the cbo policy (default: the shipped one for the default pair)
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// threshold / threshold-raw policies: offload below this confidence
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// all / threshold policies: their fixed short side
    #[arg(long, default_value_t = 224)]
    pub resolution: u32,
    /// Uplink estimate the adaptive policies start from, Mbit/s
    #[arg(long, default_value_t = 1.0)]
    pub initial_uplink_mbps: f64,
    /// Drop-tail queue in front of the uplink, bytes
    #[arg(long, default_value_t = 150_000)]
    pub queue_bytes: u64,
    /// The transport's congestion window in the replay, bytes: how much of the requests may be
    /// in the bottleneck at once; a request cancelled at its deadline withdraws what waits
    /// behind it (default: the smallest window measured on the element's QUIC connection)
    #[arg(long, default_value_t = crate::offload::sender::MEASURED_WINDOW_BYTES)]
    pub send_window_bytes: u64,
    /// How an answer that disagrees with the device is merged: `confidence` (the label more
    /// likely right, the element's default) or `server` (the server's, always)
    #[arg(long, default_value = "confidence", value_parser = crate::offload::merge::Merge::parse_arg)]
    pub merge: crate::offload::merge::Merge,
    /// Directory caching the per-frame model results between runs (keyed by the clip's and the
    /// labels' contents, the models, the calibration and the resolutions, not by their paths)
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Use at most this many frames (0 = all)
    #[arg(long, default_value_t = 0)]
    pub max_frames: usize,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// Per-frame encode and server times in the replay: `profile` (the profile's mean per
    /// resolution: the server is another machine, and per-frame times measured while caching on
    /// a loaded development machine describe that machine's load, not the server) or `measured`
    /// (what this machine took for each frame while the cache was made). Default: `profile`;
    /// with `--e2e`, `measured`, since the real run's server is then this machine too (a local
    /// server answers ~3x faster than the profile budgets, and on a slow link the replay on the
    /// profile's times then sends other frames than the element it is compared with)
    #[arg(long, value_parser = ["profile", "measured"])]
    pub timing: Option<String>,
    /// Settings replayed in parallel (0: one per core)
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Choose the cbo planner's constants by cross-validation (leave one trace source and one
    /// clip out) over the candidates below, and report the cross-validated results
    #[arg(long)]
    pub cv: bool,
    /// `--cv`: candidate prices of a deadline miss, in right labels (a transfer arriving in time
    /// with probability P is worth P · gain − price · (1 − P))
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.25,0.35,0.5,0.7,1,1.4,2"
    )]
    pub cv_miss_price: Vec<f64>,
    /// `--cv`: candidate z of the lower confidence bound on the profile's gain
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,1")]
    pub cv_gain_z: Vec<f64>,
    /// `--cv`: candidate numbers of recent delivery records the link estimate keeps
    #[arg(long, value_delimiter = ',', default_value = "10,20,40")]
    pub cv_records: Vec<usize>,
    /// `--cv`: candidate times (ms, at most 10000) a failed request's record lasts
    #[arg(long, value_delimiter = ',', default_value = "1000,2500,10000")]
    pub cv_failure_memory_ms: Vec<f64>,
    /// Write plots: accuracy vs deadline per policy and trace (this path), and the cbo policy's
    /// uplink use and resolution over time against each trace's capacity (PATH-stem.TRACE.png),
    /// both for the first clip at the first RTT; for a grid, every setting's regret
    /// (PATH-stem.regret.png)
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also run the real cbofilter (clip paced in real time) and a real cboserver through
    /// `cbo netem` on each trace and deadline, for every policy but the clairvoyant ones, and
    /// report the same figures
    #[arg(long)]
    pub e2e: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    /// The clip's file name.
    pub clip: String,
    pub trace: String,
    /// Where the trace comes from ([`trace_source`]): the unit of leave-one-out validation.
    pub source: String,
    pub trace_mean_mbps: f64,
    pub deadline_ms: f64,
    pub rtt_ms: f64,
    pub policies: BTreeMap<String, SimResult>,
    /// (cbo − local) / (clairvoyant − local), when all three ran.
    pub cbo_share_of_clairvoyant_gain: Option<f64>,
    /// (cbo+reuse − local) / (clairvoyant+reuse − local), when all three ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cbo_reuse_share_of_clairvoyant_reuse_gain: Option<f64>,
    /// `--e2e`: the same policies run for real (element, relay, server).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub e2e: BTreeMap<String, SimResult>,
    /// `--e2e`: each policy's simulation with the trace as its real run met it (the clip
    /// started `trace_offset_ms` into the relay's trace; the column `simulated` starts at 0).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub e2e_simulated: BTreeMap<String, AlignedSim>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    /// Frames per clip, by clip file name.
    pub frames: BTreeMap<String, usize>,
    pub fps: f64,
    /// The RTTs of the grid (each run has its own).
    pub rtt_ms: Vec<f64>,
    /// Where the replay's encode and server times came from (`--timing`).
    pub timing: String,
    pub runs: Vec<Run>,
    /// Per policy over every run ([`crate::offload::summary`]).
    pub summary: BTreeMap<String, PolicySummary>,
    /// For a grid of several RTTs, [`Self::summary`] over each RTT's settings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub summary_by_rtt: Vec<RttSummary>,
    /// `--cv`: the cross-validated constants and results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cv: Option<CvReport>,
}

/// The summary over the settings of one RTT.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RttSummary {
    pub rtt_ms: f64,
    pub summary: BTreeMap<String, PolicySummary>,
}

/// Per RTT, in increasing order, the summary of `results` (one per run) over that RTT's runs;
/// empty unless the runs have several RTTs.
fn summaries_by_rtt(runs: &[Run], results: &[&BTreeMap<String, SimResult>]) -> Vec<RttSummary> {
    let mut rtts: Vec<f64> = runs.iter().map(|r| r.rtt_ms).collect();
    rtts.sort_by(f64::total_cmp);
    rtts.dedup();
    if rtts.len() < 2 {
        return Vec::new();
    }
    rtts.into_iter()
        .map(|rtt_ms| {
            let of: Vec<&BTreeMap<String, SimResult>> = runs
                .iter()
                .zip(results)
                .filter(|(r, _)| r.rtt_ms == rtt_ms)
                .map(|(_, p)| *p)
                .collect();
            RttSummary {
                rtt_ms,
                summary: summarise(&of),
            }
        })
        .collect()
}

/// `--cv`: the cbo policies' results with constants chosen on other sources and clips only.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CvReport {
    pub candidates: Vec<CboParams>,
    /// The candidate chosen on every setting: what the element should ship.
    pub chosen_on_all: CboParams,
    /// The training miss limit it was chosen under.
    pub miss_limit_on_all: f64,
    /// The candidate each held-out (clip, source) cell was scored with.
    pub folds: Vec<CvFold>,
    /// Like [`EvalReport::summary`], with `cbo`, `cbo+reuse`, `link-oracle` and
    /// `link-oracle+reuse` replaced by their cross-validated results.
    pub summary: BTreeMap<String, PolicySummary>,
    /// For a grid of several RTTs, [`Self::summary`] over each RTT's settings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub summary_by_rtt: Vec<RttSummary>,
    /// Per run, the cross-validated results of those policies.
    pub runs: Vec<BTreeMap<String, SimResult>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CvFold {
    pub clip: String,
    pub source: String,
    pub params: CboParams,
    /// The training miss limit it was chosen under (cross-validated within its training
    /// settings, [`crate::offload::crossval::miss_limit`]).
    pub miss_limit: f64,
    pub trained_on: usize,
}

/// The policies `--cv` replays with every candidate.
const CV_POLICIES: [&str; 4] = ["cbo", "cbo+reuse", "link-oracle", "link-oracle+reuse"];

/// The source of a trace, for leave-one-source-out validation: the leading letters of its file
/// name, lower-cased (`nyc3g-up-subway.up` and `nyc4g-DL-….up` → `nyc`, `ATT-LTE-driving.up` →
/// `att`). Traces from one measurement campaign share a prefix in the corpus's naming.
pub fn trace_source(file_name: &str) -> String {
    file_name
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The trace files `--trace` names: files as given, directories as every `*.up` inside (sorted).
pub fn trace_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in args {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("cannot read '{}': {e}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "up") && f.is_file())
                .collect();
            if found.is_empty() {
                return Err(format!("no *.up trace in '{}'", p.display()));
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn sim_frames(obs: &[FrameObservation]) -> Vec<SimFrame> {
    obs.iter()
        .map(|o| SimFrame {
            confidence: o.device_confidence,
            raw_confidence: o.raw_confidence,
            device_correct: o.device_correct,
            device_class: o.device_class,
            truth: o.truth,
            server: o
                .server
                .iter()
                .map(|s| SimServer {
                    bytes: s.jpeg_bytes,
                    correct: s.server_correct,
                    class: s.server_class,
                    score: s.server_score,
                    encode_ms: s.encode_us as f64 / 1000.0,
                    server_ms: (s.decode_us + s.inference_us) as f64 / 1000.0,
                })
                .collect(),
        })
        .collect()
}

/// The replay runs the files the profile names, and its cache is keyed by the hashes the profile
/// recorded: a file replaced under the same name would be measured (or its old results served
/// from the cache) as if it were the one the profile describes. Checked once per run.
fn check_model_files(profile: &Profile) -> Result<(), String> {
    let models = crate::inference::models_dir();
    let mut files = vec![&profile.device_model, &profile.server_model];
    files.extend(profile.calibration.as_ref());
    for m in files {
        let path = models.join(&m.file);
        let sha = crate::calibration::sha256_file(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if sha != m.sha256 {
            return Err(format!(
                "{} is not the file the profile was measured with (its sha256 is {sha}, the \
                 profile's {}): measure a profile for it with `cbo profile`, or restore it",
                path.display(),
                m.sha256
            ));
        }
    }
    Ok(())
}

/// Per-frame results for the clip at the profile's resolutions, from the cache when possible.
fn frames(
    args: &EvalArgs,
    video: &Path,
    labels: &Path,
    profile: &Profile,
) -> Result<Vec<SimFrame>, String> {
    let shorts: Vec<u32> = profile.resolutions.iter().map(|r| r.short_side).collect();
    // Keyed by what the results depend on: the clip's and labels' contents (not where they
    // are: a moved checkout keeps its cache), the models, the calibration and the resolutions.
    // v5: floats are parsed exactly since (serde_json `float_roundtrip`), the calibration's
    // too, so results cached before may differ from a fresh run's by an ulp.
    let key = {
        let video_sha = crate::calibration::sha256_file(video).map_err(|e| e.to_string())?;
        let mut h = sha2::Sha256::new();
        h.update(video_sha.as_bytes());
        h.update(std::fs::read(labels).unwrap_or_default());
        h.update(profile.device_model.sha256.as_bytes());
        h.update(profile.server_model.sha256.as_bytes());
        if let Some(c) = &profile.calibration {
            h.update(c.sha256.as_bytes());
        }
        // How the models were fed, where not the default (so the default pair's results stay
        // keyed as before).
        for (which, input) in [
            ("device", &profile.device_model.input),
            ("server", &profile.server_model.input),
        ] {
            if let Some(input) = input {
                h.update(which.as_bytes());
                h.update(serde_json::to_string(input).unwrap_or_default().as_bytes());
            }
        }
        h.update(
            format!(
                "v5 {shorts:?} q{} n{}",
                profile.jpeg_quality, args.max_frames
            )
            .as_bytes(),
        );
        format!("{:x}", h.finalize())
    };
    let cache_file = args
        .cache
        .as_ref()
        .map(|d| d.join(format!("eval-{}.json", &key[..16])));
    if let Some(f) = &cache_file
        && let Ok(text) = std::fs::read_to_string(f)
        && let Ok(frames) = serde_json::from_str::<Vec<SimFrame>>(&text)
    {
        eprintln!("using cached model results {}", f.display());
        return Ok(frames);
    }
    let models = crate::inference::models_dir();
    // Each model fed as it was when profiled.
    let fed = |m: &crate::profile::ModelRef| -> Result<_, String> {
        let input = m.input.clone().unwrap_or_default();
        let kind = input
            .output_kind
            .parse()
            .map_err(|e| format!("the profile's output_kind for {}: {e}", m.file))?;
        Ok((input, kind))
    };
    let (device, device_kind) = fed(&profile.device_model)?;
    let (server, server_kind) = fed(&profile.server_model)?;
    let args_p = ProfileArgs {
        device_model: Some(models.join(&profile.device_model.file)),
        device_input_mean: device.input_mean,
        device_input_std: device.input_std,
        device_output_kind: device_kind,
        device_input_size: device.input_size,
        calibration: profile.calibration.as_ref().map(|c| models.join(&c.file)),
        raw_confidence: profile.calibration.is_none(),
        server_model: Some(models.join(&profile.server_model.file)),
        server_input_mean: server.input_mean,
        server_input_std: server.input_std,
        server_output_kind: server_kind,
        server_input_size: server.input_size,
        input: InputArgs {
            images: None,
            split: None,
            video: Some(video.to_path_buf()),
            labels: Some(labels.to_path_buf()),
            max_samples: args.max_frames,
        },
        resolutions: shorts,
        jpeg_quality: profile.jpeg_quality,
        execution_provider: crate::inference::ExecutionProvider::Auto,
        threads: 0,
        out: PathBuf::new(),
        json: false,
    };
    let (_, obs) = measure(&args_p)?;
    let frames = sim_frames(&obs);
    if let Some(f) = &cache_file {
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(f, serde_json::to_string(&frames).expect("serialisable"))
            .map_err(|e| format!("cannot write cache '{}': {e}", f.display()))?;
    }
    Ok(frames)
}

fn planner(
    name: &str,
    args: &EvalArgs,
    profile: &Profile,
    trace: &Arc<Trace>,
) -> Result<Option<Box<dyn Planner>>, String> {
    planner_with(name, args, profile, trace, DEFAULT_PARAMS)
}

/// [`planner`] with the cbo planner's constants given (cross-validation).
fn planner_with(
    name: &str,
    args: &EvalArgs,
    profile: &Profile,
    trace: &Arc<Trace>,
    params: CboParams,
) -> Result<Option<Box<dyn Planner>>, String> {
    if name == "clairvoyant" || name == format!("clairvoyant{REUSE_SUFFIX}") {
        return Ok(None);
    }
    // `link-oracle` is the cbo planner told the trace's future capacity (evaluation only).
    let oracle = name.starts_with("link-oracle");
    let parsed = if oracle {
        name.replacen("link-oracle", "cbo", 1)
    } else {
        name.to_string()
    };
    let spec = PolicySpec::parse(
        &parsed,
        args.threshold,
        args.resolution,
        args.reuse_window_ms,
    )
    .map_err(|e| format!("{e} (known: {ALL_POLICIES})"))?;
    let bps = args.initial_uplink_mbps * 1e6;
    if spec.kind != PolicyKind::Cbo {
        return Ok(spec.planner(Some(profile), bps, args.rtt()));
    }
    let mut p = CboPlanner::new(profile.clone(), bps, args.rtt()).with_params(params);
    if let Some(w) = spec.reuse_window_ms {
        p = p.with_reuse(w);
    }
    if oracle {
        p = p.with_link_oracle(trace.clone());
    } else {
        // For the reliability of its arrival probabilities (`SimResult::arrival`).
        p = p.with_arrival_log();
    }
    Ok(Some(Box::new(p)))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Refuses option values the replay cannot mean: each is what the element would refuse, or what
/// the simulation cannot replay (a deadline of 0, or of 1e9 ms, which the planner's time grid
/// would try to allocate; a frame rate of 0, which never advances the clock).
fn check_values(args: &EvalArgs, profile: &Profile) -> Result<(), String> {
    if let Some(bad) = args
        .deadline_ms
        .iter()
        .find(|d| !(1.0..=60_000.0).contains(*d))
    {
        return Err(format!(
            "--deadline-ms {bad}: a deadline in ms from 1 to 60000 (as the element's `deadline`)"
        ));
    }
    if !(args.fps > 0.0 && args.fps <= 1000.0) {
        return Err(format!(
            "--fps {}: frames per second, above 0 and at most 1000",
            args.fps
        ));
    }
    if !(0.0..=1.0).contains(&args.threshold) {
        return Err(format!(
            "--threshold {}: a confidence from 0 to 1",
            args.threshold
        ));
    }
    if !(args.initial_uplink_mbps > 0.0 && args.initial_uplink_mbps.is_finite()) {
        return Err(format!(
            "--initial-uplink-mbps {}: a rate above 0",
            args.initial_uplink_mbps
        ));
    }
    if !(args.reuse_window_ms >= 0.0 && args.reuse_window_ms.is_finite()) {
        return Err(format!(
            "--reuse-window-ms {}: 0 or more ms",
            args.reuse_window_ms
        ));
    }
    // Less than one packet in flight and nothing is ever sent.
    if args.send_window_bytes < crate::trace::MTU {
        return Err(format!(
            "--send-window-bytes {}: at least one packet ({} bytes)",
            args.send_window_bytes,
            crate::trace::MTU
        ));
    }
    // The fixed-resolution rules are replayed from the model results at the profile's
    // resolutions; another size has none (it used to be moved to the nearest one, silently).
    let fixed = |p: &String| {
        let base = p.strip_suffix(REUSE_SUFFIX).unwrap_or(p);
        matches!(base, "all" | "threshold" | "threshold-raw")
    };
    let shorts: Vec<u32> = profile.resolutions.iter().map(|r| r.short_side).collect();
    if args.policies.iter().any(fixed) && !shorts.contains(&args.resolution) {
        return Err(format!(
            "--resolution {}: the replay has model results at the profile's resolutions only ({})",
            args.resolution,
            shorts
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// Replaces every frame's encode and server time by the profile's mean at that resolution.
fn use_profile_timing(frames: &mut [SimFrame], profile: &Profile) {
    for f in frames {
        for (s, r) in f.server.iter_mut().zip(&profile.resolutions) {
            s.encode_ms = r.encode_ms_mean;
            s.server_ms = r.server_decode_ms_mean + r.server_inference_ms_mean;
        }
    }
}

/// A labelled clip and its per-frame model results.
struct Clip {
    video: PathBuf,
    labels: PathBuf,
    name: String,
    frames: Vec<SimFrame>,
}

/// Per candidate of `--cv`, the cbo policies' results in one setting.
type CandidateResults = Vec<BTreeMap<String, SimResult>>;

/// One (clip, trace, deadline) setting: every policy replayed, and with `--cv` the cbo policies
/// with every candidate.
fn run_setting(
    args: &EvalArgs,
    profile: &Profile,
    clip: &Clip,
    trace: &Arc<Trace>,
    deadline: f64,
    candidates: &[CboParams],
) -> Result<(BTreeMap<String, SimResult>, CandidateResults), String> {
    let cfg = sim_config(args, deadline);
    let mut per_candidate: CandidateResults = Vec::new();
    for (k, &params) in candidates.iter().enumerate() {
        let mut results = BTreeMap::new();
        for name in CV_POLICIES
            .iter()
            .filter(|p| args.policies.iter().any(|q| q == *p))
        {
            // The link oracle knows when a transfer arrives: of the constants only the gain's
            // bound matters to it, so candidates that differ in nothing else share its replay.
            if name.starts_with("link-oracle")
                && let Some(done) = candidates[..k]
                    .iter()
                    .position(|c| c.gain_z == params.gain_z)
                    .and_then(|j| per_candidate[j].get(*name))
            {
                results.insert(name.to_string(), done.clone());
                continue;
            }
            let mut p = planner_with(name, args, profile, trace, params)?
                .expect("cbo policies have planners");
            let reuse = name.ends_with(REUSE_SUFFIX).then_some(SimReuse {
                window_ms: args.reuse_window_ms,
                profile,
                gain_z: params.gain_z,
            });
            let cfg = SimConfig {
                merge: merge_for(name, profile),
                ..cfg
            };
            results.insert(
                name.to_string(),
                simulate(p.as_mut(), &clip.frames, trace, &cfg, reuse),
            );
        }
        per_candidate.push(results);
    }
    Ok((
        run_policies(args, &args.policies, profile, clip, trace, &cfg)?,
        per_candidate,
    ))
}

/// Replays `names` (policies) on one setting.
fn run_policies(
    args: &EvalArgs,
    names: &[String],
    profile: &Profile,
    clip: &Clip,
    trace: &Arc<Trace>,
    cfg: &SimConfig,
) -> Result<BTreeMap<String, SimResult>, String> {
    let cfg = *cfg;
    let shorts: Vec<u32> = profile.resolutions.iter().map(|r| r.short_side).collect();
    let mut policies = BTreeMap::new();
    for name in names {
        let reuse = name.ends_with(REUSE_SUFFIX);
        let cfg = SimConfig {
            merge: merge_for(name, profile),
            ..cfg
        };
        let result = match planner(name, args, profile, trace)? {
            Some(mut p) => simulate(
                p.as_mut(),
                &clip.frames,
                trace,
                &cfg,
                reuse.then_some(SimReuse {
                    window_ms: args.reuse_window_ms,
                    profile,
                    gain_z: DEFAULT_PARAMS.gain_z,
                }),
            ),
            None => clairvoyant(
                &clip.frames,
                &shorts,
                trace,
                &cfg,
                reuse.then_some(args.reuse_window_ms),
            ),
        };
        policies.insert(name.clone(), result);
    }
    Ok(policies)
}

/// A policy's simulation replayed from where its real run met the trace.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlignedSim {
    pub trace_offset_ms: u64,
    #[serde(flatten)]
    pub result: SimResult,
}

impl EvalArgs {
    /// Where the replay's encode and server times come from (`--timing`): the profile's means,
    /// or with `--e2e` what this machine measured, unless the user chose.
    pub fn timing(&self) -> &str {
        self.timing
            .as_deref()
            .unwrap_or(if self.e2e { "measured" } else { "profile" })
    }

    /// The RTT of one setting: `run` narrows `rtt_ms` to a single value per setting before
    /// anything replays it (and refuses an empty list); the first where it has not.
    pub fn rtt(&self) -> f64 {
        self.rtt_ms.first().copied().unwrap_or(40.0)
    }
}

/// The replay's link and timing for one deadline.
pub fn sim_config(args: &EvalArgs, deadline_ms: f64) -> SimConfig {
    SimConfig {
        fps: args.fps,
        deadline_ms,
        rtt_ms: args.rtt(),
        queue_bytes: args.queue_bytes,
        overhead_bytes: 200,
        send_window_bytes: args.send_window_bytes,
        merge: None,
    }
}

/// The merge rule policy `name` replays with: as in the element, the profile's
/// ([`crate::offload::merge`]) for the policies that plan with the profile (`cbo`, `fastva`, and
/// the link oracle, which plans as `cbo` does; `None` when `--merge server` dropped it), the
/// server's label always for the rules.
fn merge_for(name: &str, profile: &Profile) -> Option<MergeModel> {
    ["cbo", "fastva", "link-oracle"]
        .iter()
        .any(|p| name.starts_with(p))
        .then_some(profile.merge)
        .flatten()
}

/// Runs `f` over `items` on `jobs` threads (0: one per core), keeping the order.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let jobs = if jobs == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        jobs
    }
    .min(items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *out[i].lock().expect("result slot") = Some(r);
                }
            });
        }
    });
    out.into_iter()
        .map(|m| {
            m.into_inner()
                .expect("result slot")
                .expect("every item ran")
        })
        .collect()
}

pub fn run(args: &EvalArgs) -> Result<EvalReport, String> {
    let profile_path = args.profile.clone().unwrap_or_else(|| {
        crate::inference::models_dir().join("efficientnet-lite0-to-lite2.profile.json")
    });
    // The cbo planners value an answer by the label it leaves with under `--merge`, as the
    // element does with its `merge` property.
    let profile = Profile::load(&profile_path)
        .map_err(|e| e.to_string())?
        .merged_by(args.merge);
    if args.rtt_ms.is_empty() || args.deadline_ms.is_empty() {
        return Err("--rtt-ms and --deadline-ms: at least one value each".into());
    }
    if let Some(bad) = args.rtt_ms.iter().find(|r| !(**r >= 0.0 && r.is_finite())) {
        return Err(format!(
            "--rtt-ms {bad}: a round-trip time in ms, 0 or more"
        ));
    }
    check_values(args, &profile)?;
    if args.video.len() != args.labels.len() {
        return Err(format!(
            "{} clip(s) but {} label file(s): give --labels in the order of --video",
            args.video.len(),
            args.labels.len()
        ));
    }
    let traces = trace_files(&args.trace)?
        .into_iter()
        .map(|t| Trace::load(&t).map(|tr| (t, Arc::new(tr))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    for p in &args.policies {
        planner(p, args, &profile, &traces[0].1)?;
    }
    check_model_files(&profile)?;
    let clips = args
        .video
        .iter()
        .zip(&args.labels)
        .map(|(v, l)| {
            Ok(Clip {
                video: v.clone(),
                labels: l.clone(),
                name: file_name(v),
                frames: {
                    let mut f = frames(args, v, l, &profile)?;
                    if args.timing() == "profile" {
                        use_profile_timing(&mut f, &profile);
                    }
                    f
                },
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let shorts: Vec<u32> = profile.resolutions.iter().map(|r| r.short_side).collect();
    // One setting per clip, trace, deadline and RTT; each is replayed with `args` narrowed to
    // its RTT ([`EvalArgs::rtt`]).
    let settings: Vec<(usize, usize, f64, EvalArgs)> = (0..clips.len())
        .flat_map(|c| (0..traces.len()).map(move |t| (c, t)))
        .flat_map(|(c, t)| args.deadline_ms.iter().map(move |&d| (c, t, d)))
        .flat_map(|(c, t, d)| {
            args.rtt_ms.iter().map(move |&rtt| {
                let narrowed = EvalArgs {
                    rtt_ms: vec![rtt],
                    ..args.clone()
                };
                (c, t, d, narrowed)
            })
        })
        .collect();
    if let Some(bad) = args
        .cv_gain_z
        .iter()
        .find(|z| !(**z >= 0.0 && z.is_finite()))
    {
        return Err(format!(
            "--cv-gain-z {bad}: standard errors below the gain estimate, 0 or more"
        ));
    }
    if let Some(bad) = args.cv_records.iter().find(|&&n| n == 0) {
        return Err(format!("--cv-records {bad}: at least one record"));
    }
    if let Some(bad) = args
        .cv_failure_memory_ms
        .iter()
        .find(|m| !(**m >= 0.0 && **m <= SAMPLE_AGE_MS))
    {
        return Err(format!(
            "--cv-failure-memory-ms {bad}: from 0 to {SAMPLE_AGE_MS} ms (an answer's record lasts that long)"
        ));
    }
    if let Some(bad) = args
        .cv_miss_price
        .iter()
        .find(|m| !(**m >= 0.0 && m.is_finite()))
    {
        return Err(format!(
            "--cv-miss-price {bad}: right labels one deadline miss costs, 0 or more"
        ));
    }
    let candidates: Vec<CboParams> = if args.cv {
        args.cv_miss_price
            .iter()
            .flat_map(|&miss_price| {
                args.cv_gain_z.iter().flat_map(move |&gain_z| {
                    args.cv_records.iter().flat_map(move |&records| {
                        args.cv_failure_memory_ms
                            .iter()
                            .map(move |&failure_memory_ms| CboParams {
                                miss_price,
                                gain_z,
                                records,
                                failure_memory_ms,
                            })
                    })
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let results = parallel_map(&settings, args.jobs, |(c, t, d, args)| {
        run_setting(args, &profile, &clips[*c], &traces[*t].1, *d, &candidates)
    });
    let mut runs = Vec::new();
    let mut per_candidate = Vec::new();
    for ((c, t, deadline, setting), result) in settings.iter().zip(results) {
        let (c, t, deadline) = (*c, *t, *deadline);
        let (policies, candidate_results) = result?;
        per_candidate.push(candidate_results);
        let (path, trace) = &traces[t];
        let clip = &clips[c];
        let share = |cbo: &str, bound: &str| match (
            policies.get(cbo),
            policies.get("local"),
            policies.get(bound),
        ) {
            (Some(c), Some(l), Some(b)) if b.accuracy > l.accuracy => {
                Some((c.accuracy - l.accuracy) / (b.accuracy - l.accuracy))
            }
            _ => None,
        };
        let reuse_share = share("cbo+reuse", "clairvoyant+reuse");
        let share = share("cbo", "clairvoyant");
        let mut e2e = BTreeMap::new();
        let mut e2e_simulated = BTreeMap::new();
        if args.e2e {
            for name in args
                .policies
                .iter()
                .filter(|p| ELEMENT_POLICIES.contains(&p.as_str()))
            {
                eprintln!(
                    "e2e: {name} on {} / {} with a {deadline} ms deadline ({} frames in real time)",
                    clip.name,
                    file_name(path),
                    clip.frames.len()
                );
                let r = super::eval_e2e::run(
                    setting,
                    (&clip.video, &clip.labels),
                    &profile_path,
                    name,
                    trace,
                    deadline,
                    clip.frames.len(),
                )?;
                let aligned = Arc::new(trace.rotated(r.trace_offset_ms));
                let cfg = sim_config(setting, deadline);
                let only = std::slice::from_ref(name);
                if let Some(sim) =
                    run_policies(setting, only, &profile, clip, &aligned, &cfg)?.remove(name)
                {
                    e2e_simulated.insert(
                        name.clone(),
                        AlignedSim {
                            trace_offset_ms: r.trace_offset_ms,
                            result: sim,
                        },
                    );
                }
                e2e.insert(name.clone(), r.result);
            }
        }
        runs.push(Run {
            clip: clip.name.clone(),
            trace: file_name(path),
            source: trace_source(&file_name(path)),
            trace_mean_mbps: trace.mean_bps() / 1e6,
            deadline_ms: deadline,
            rtt_ms: setting.rtt(),
            policies,
            cbo_share_of_clairvoyant_gain: share,
            cbo_reuse_share_of_clairvoyant_reuse_gain: reuse_share,
            e2e,
            e2e_simulated,
        });
    }
    let results: Vec<&BTreeMap<String, SimResult>> = runs.iter().map(|r| &r.policies).collect();
    let summary = summarise(&results);
    let summary_by_rtt = summaries_by_rtt(&runs, &results);
    let cv = args
        .cv
        .then(|| cross_validate(&runs, &per_candidate, &candidates, &clips));
    if let Some(png) = &args.plot {
        // With --cv the plots show the cbo policies' cross-validated results.
        let plotted: Vec<Run> = match &cv {
            Some(cv) => runs
                .iter()
                .zip(&cv.runs)
                .map(|(r, c)| {
                    let mut r = r.clone();
                    r.policies
                        .extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
                    r
                })
                .collect(),
            None => runs.clone(),
        };
        plots(args, png, &plotted, &clips[0], &traces, &shorts)?;
    }
    Ok(EvalReport {
        frames: clips
            .iter()
            .map(|c| (c.name.clone(), c.frames.len()))
            .collect(),
        fps: args.fps,
        rtt_ms: args.rtt_ms.clone(),
        timing: args.timing().to_string(),
        runs,
        summary,
        summary_by_rtt,
        cv,
    })
}

/// `--cv`: every setting's cbo policies scored with the candidate chosen without its trace
/// source and clip ([`crate::offload::crossval`]); the candidate is chosen on `cbo+reuse` (the
/// element's default) when it ran, else on `cbo`, and the other cbo policies use the same.
fn cross_validate(
    runs: &[Run],
    per_candidate: &[CandidateResults],
    candidates: &[CboParams],
    clips: &[Clip],
) -> CvReport {
    // What keeping every device label scores on each clip (`local`, whether or not it ran).
    let device_accuracy = |clip: &str| {
        clips.iter().find(|c| c.name == clip).map_or(0.0, |c| {
            let right = c.frames.iter().filter(|f| f.device_correct).count();
            right as f64 / c.frames.len().max(1) as f64
        })
    };
    let on = ["cbo+reuse", "cbo"]
        .into_iter()
        .find(|p| {
            per_candidate
                .first()
                .and_then(|c| c.first())
                .is_some_and(|m| m.contains_key(*p))
        })
        .unwrap_or("cbo");
    let settings: Vec<CvSetting> = runs
        .iter()
        .zip(per_candidate)
        .map(|(run, cands)| CvSetting {
            clip: run.clip.clone(),
            source: run.source.clone(),
            best_baseline: best_baseline(&run.policies),
            local: device_accuracy(&run.clip),
            per_candidate: cands
                .iter()
                .map(|m| m.get(on).cloned().unwrap_or_default())
                .collect(),
        })
        .collect();
    let (chosen, folds) = leave_one_out(&settings);
    let (all, miss_limit_on_all) = choose(&settings, |_| true).unwrap_or((0, MAX_MISS_RATE));
    let cv_runs: Vec<BTreeMap<String, SimResult>> = per_candidate
        .iter()
        .zip(&chosen)
        .map(|(cands, &k)| cands.get(k).cloned().unwrap_or_default())
        .collect();
    let merged: Vec<BTreeMap<String, SimResult>> = runs
        .iter()
        .zip(&cv_runs)
        .map(|(run, cv)| {
            let mut m = run.policies.clone();
            m.extend(cv.iter().map(|(k, v)| (k.clone(), v.clone())));
            m
        })
        .collect();
    CvReport {
        candidates: candidates.to_vec(),
        chosen_on_all: candidates.get(all).copied().unwrap_or(DEFAULT_PARAMS),
        miss_limit_on_all,
        folds: folds
            .into_iter()
            .map(|f| CvFold {
                clip: f.clip,
                source: f.source,
                params: candidates.get(f.chosen).copied().unwrap_or(DEFAULT_PARAMS),
                miss_limit: f.miss_limit,
                trained_on: f.trained_on,
            })
            .collect(),
        summary: summarise(&merged.iter().collect::<Vec<_>>()),
        summary_by_rtt: summaries_by_rtt(runs, &merged.iter().collect::<Vec<_>>()),
        runs: cv_runs,
    }
}

/// `--plot`: accuracy vs deadline per policy and trace (first clip), the cbo policy's uplink use
/// over time per trace, and, for a grid, the regret per setting.
fn plots(
    args: &EvalArgs,
    png: &Path,
    runs: &[Run],
    clip: &Clip,
    traces: &[(PathBuf, Arc<Trace>)],
    shorts: &[u32],
) -> Result<(), String> {
    let frames = &clip.frames;
    // Per trace, the first clip at the first RTT; the regret plot has every setting.
    let first_rtt = args.rtt();
    let points: Vec<(String, f64, String, f64)> = runs
        .iter()
        .filter(|r| r.clip == clip.name && r.rtt_ms == first_rtt)
        .flat_map(|r| {
            r.policies
                .iter()
                .map(move |(p, s)| (r.trace.clone(), r.deadline_ms, p.clone(), s.accuracy))
        })
        .collect();
    super::plot::accuracy_vs_deadline(png, &points)?;
    let stem = png
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if runs.len() > 1 {
        let regrets: Vec<(String, Vec<f64>)> =
            ["cbo+reuse", "cbo", "threshold", "threshold-raw", "fastva"]
                .iter()
                .filter(|p| runs.iter().any(|r| r.policies.contains_key(**p)))
                .map(|p| {
                    let mut v: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| {
                            let best = best_baseline(&r.policies);
                            r.policies.get(*p).map(|s| (best - s.accuracy) * 100.0)
                        })
                        .collect();
                    v.sort_by(f64::total_cmp);
                    (p.to_string(), v)
                })
                .collect();
        super::plot::regret_per_setting(
            &png.with_file_name(format!("{stem}.regret.png")),
            &regrets,
        )?;
    }
    // Over time: cbo (with reuse, as the element runs it by default, when it ran) at the
    // longest deadline on each trace.
    let longest = args.deadline_ms.iter().copied().fold(0.0, f64::max);
    for (path, trace) in traces {
        let Some(run) = runs.iter().find(|r| {
            r.clip == clip.name
                && r.trace == file_name(path)
                && r.deadline_ms == longest
                && r.rtt_ms == first_rtt
        }) else {
            continue;
        };
        let Some((cbo_name, cbo)) = ["cbo+reuse", "cbo"]
            .into_iter()
            .find_map(|n| run.policies.get(n).map(|r| (n, r)))
        else {
            continue;
        };
        let secs = (frames.len() as f64 / args.fps).ceil() as usize;
        let mut sent = vec![0.0; secs];
        let mut res_sum = vec![0.0; secs];
        let mut res_n = vec![0.0; secs];
        for (i, &short) in cbo.sent_at.iter().enumerate() {
            if short == 0 {
                continue;
            }
            let sec = ((i as f64 / args.fps) as usize).min(secs - 1);
            let r = shorts.iter().position(|&s| s == short).unwrap_or(0);
            sent[sec] += frames[i].server[r].bytes as f64 * 8.0 / 1000.0;
            res_sum[sec] += short as f64;
            res_n[sec] += 1.0;
        }
        let capacity: Vec<f64> = (0..secs)
            .map(|s| {
                trace.capacity_bytes(s as u64 * 1000, (s as u64 + 1) * 1000) as f64 * 8.0 / 1000.0
            })
            .collect();
        let mean_res: Vec<f64> = res_sum
            .iter()
            .zip(&res_n)
            .map(|(s, n)| if *n > 0.0 { s / n } else { 0.0 })
            .collect();
        let out = png.with_file_name(format!(
            "{stem}.{}.png",
            file_name(path).trim_end_matches(".up")
        ));
        super::plot::offload_over_time(
            &out,
            &format!(
                "{cbo_name} on {} ({longest} ms deadline): uplink use and resolution vs capacity",
                file_name(path)
            ),
            &capacity,
            &sent,
            &mean_res,
        )?;
    }
    Ok(())
}

/// JSON: for one setting the run itself (`{"policies": {...}, ...}`), for a grid every run;
/// both with `"summary"` (per policy over the runs) and `"timing"` (`--timing`).
pub fn to_json(r: &EvalReport) -> serde_json::Value {
    let mut v = if r.runs.len() == 1 {
        serde_json::to_value(&r.runs[0]).expect("serialisable")
    } else {
        serde_json::to_value(r).expect("serialisable")
    };
    v["summary"] = serde_json::to_value(&r.summary).expect("serialisable");
    v["timing"] = serde_json::Value::from(r.timing.as_str());
    v
}

pub fn print_table(r: &EvalReport) {
    let clips: Vec<String> = r.frames.iter().map(|(c, n)| format!("{c} ({n})")).collect();
    println!(
        "{} at {} fps, RTT {} ms, {} setting(s), {} encode and server times",
        clips.join(", "),
        r.fps,
        r.rtt_ms
            .iter()
            .map(f64::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        r.runs.len(),
        r.timing
    );
    if r.runs.len() <= 12 {
        for run in &r.runs {
            print_run(run);
        }
    } else {
        print_grid(r);
    }
    print_summaries(&r.summary, &r.summary_by_rtt);
    if let Some(cv) = &r.cv {
        println!(
            "\ncross-validated (leave one trace source and one clip out; {} candidates): chosen on all \
             settings (training misses at most {:.2} %): miss price {} gain_z {} records {} failure memory {} ms",
            cv.candidates.len(),
            cv.miss_limit_on_all * 100.0,
            cv.chosen_on_all.miss_price,
            cv.chosen_on_all.gain_z,
            cv.chosen_on_all.records,
            cv.chosen_on_all.failure_memory_ms
        );
        for f in &cv.folds {
            println!(
                "  held out {:<24} {:<10} -> miss price {:<4} gain_z {:<4} records {:<3} failure memory {:<5} (trained on {} settings, misses at most {:.2} %)",
                f.clip,
                f.source,
                f.params.miss_price,
                f.params.gain_z,
                f.params.records,
                f.params.failure_memory_ms,
                f.trained_on,
                f.miss_limit * 100.0
            );
        }
        print_summaries(&cv.summary, &cv.summary_by_rtt);
    }
}

fn print_run(run: &Run) {
    println!(
        "\n{} on {} ({:.2} Mbit/s), deadline {} ms, RTT {} ms{}",
        run.clip,
        run.trace,
        run.trace_mean_mbps,
        run.deadline_ms,
        run.rtt_ms,
        run.cbo_share_of_clairvoyant_gain
            .map(|s| format!(": cbo reaches {:.0} % of the clairvoyant gain", s * 100.0))
            .unwrap_or_default()
    );
    println!(
        "  {:<18} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8}",
        "policy", "accuracy", "miss", "offload", "res", "bytes", "p50 ms", "p99 ms"
    );
    // A bound that plans no real transfers (`clairvoyant`) has no latencies: `-`, not `NaN`.
    let ms = |v: f64| {
        if v.is_finite() {
            format!("{v:.0}")
        } else {
            "-".into()
        }
    };
    let row = |name: &str, s: &SimResult| {
        format!(
            "  {:<18} {:>8.3} {:>8.3} {:>8.3} {:>8.0} {:>10} {:>8} {:>8}",
            name,
            s.accuracy,
            s.deadline_miss_rate,
            s.offload_ratio,
            s.mean_resolution,
            s.bytes,
            ms(s.latency_p50_ms),
            ms(s.latency_p99_ms)
        )
    };
    for (name, s) in &run.policies {
        println!("{}", row(name, s));
    }
    for (name, s) in &run.e2e {
        let sim = run.policies.get(name).map_or(f64::NAN, |p| p.accuracy);
        let aligned = run.e2e_simulated.get(name).map_or(String::new(), |a| {
            format!(
                "; {:.3} from {} ms into the trace, where this run started",
                a.result.accuracy, a.trace_offset_ms
            )
        });
        println!(
            "{}  (simulated {sim:.3}{aligned})",
            row(&format!("e2e {name}"), s)
        );
    }
}

/// A grid: one line per setting, accuracy per policy.
fn print_grid(r: &EvalReport) {
    let names: Vec<&String> = r.summary.keys().collect();
    print!("\n{:<22} {:<38} {:>6} {:>5}", "clip", "trace", "ms", "rtt");
    for n in &names {
        print!(" {:>9}", shorten(n));
    }
    println!();
    for run in &r.runs {
        print!(
            "{:<22} {:<38} {:>6} {:>5}",
            run.clip, run.trace, run.deadline_ms, run.rtt_ms
        );
        for n in &names {
            match run.policies.get(*n) {
                Some(s) => print!(" {:>9.3}", s.accuracy),
                None => print!(" {:>9}", "-"),
            }
        }
        println!();
    }
}

fn shorten(name: &str) -> String {
    name.replace("clairvoyant", "clairv")
        .replace("threshold", "thr")
        .replace("link-oracle", "oracle")
}

/// The summary over every setting, then over each RTT's when there are several.
fn print_summaries(summary: &BTreeMap<String, PolicySummary>, by_rtt: &[RttSummary]) {
    print_summary(summary, "");
    for r in by_rtt {
        print_summary(&r.summary, &format!(" at RTT {} ms", r.rtt_ms));
    }
}

fn print_summary(summary: &BTreeMap<String, PolicySummary>, scope: &str) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}%", v * 100.0));
    println!(
        "\nsummary over {} setting(s){scope} (regret: points below the best of local/all/threshold/threshold-raw/fastva)",
        summary.values().map(|s| s.settings).max().unwrap_or(0)
    );
    println!(
        "  {:<18} {:>8} {:>8} {:>8} {:>6} {:>7} {:>9} {:>6} {:>7} {:>7} {:>7}",
        "policy",
        "accuracy",
        "regret",
        "worst",
        "best",
        "<local",
        "worst<loc",
        "miss",
        "offload",
        "clairv",
        "oracle"
    );
    for (name, s) in summary {
        println!(
            "  {:<18} {:>8.3} {:>8.2} {:>8.2} {:>5.0}% {:>6.0}% {:>9.2} {:>5.2}% {:>6.0}% {:>7} {:>7}",
            name,
            s.mean_accuracy,
            s.mean_regret * 100.0,
            s.worst_regret * 100.0,
            s.best_share * 100.0,
            s.below_local_share * 100.0,
            s.worst_below_local * 100.0,
            s.mean_miss_rate * 100.0,
            s.mean_offload_ratio * 100.0,
            pct(s.clairvoyant_gain_share),
            pct(s.link_oracle_gain_share),
        );
    }
    for (name, s) in summary {
        let Some(a) = s.arrival_reliability.as_ref().filter(|a| a.sends() > 0) else {
            continue;
        };
        println!(
            "  {name}: {} sends planned with P(arrives) {:.3} on average, {:.3} arrived in time (calibration error {:.3}); by P:",
            a.sends(),
            a.mean_predicted(),
            a.arrived_share(),
            a.calibration_error()
        );
        for b in a.bins.iter().filter(|b| b.sends > 0) {
            println!(
                "    [{:.2}, {:.2}{} {:>6} sends  predicted {:.3}  arrived {:.3}",
                b.lo,
                b.hi,
                if b.hi >= 1.0 { "]" } else { ")" },
                b.sends,
                b.mean_predicted(),
                b.arrived_share()
            );
        }
    }
}
