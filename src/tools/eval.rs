//! `cbo eval`: replays offloading policies over a labelled clip against real uplink traces.
//!
//! The device model runs over every frame and the server model over every frame at every
//! resolution of the profile once (cached in `--cache DIR`), through the element's own code
//! (see `cbo profile`); then each policy is replayed with the element's event model
//! ([`crate::offload::sim`]) for every trace and deadline. The `cbo` policy reads the offload
//! profile (default: the one shipped for the default model pair).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::offload::planner::Planner;
use crate::offload::policy::PolicySpec;
use crate::offload::sim::{
    SimConfig, SimFrame, SimResult, SimReuse, SimServer, clairvoyant, simulate,
};
use crate::profile::{FrameObservation, Profile};
use crate::tools::dataset::InputArgs;
use crate::tools::profile::{ProfileArgs, measure};
use crate::trace::Trace;

/// Policies the element itself implements (`clairvoyant` exists only in the simulator).
pub const E2E_POLICIES: [&str; 7] = [
    "local",
    "all",
    "threshold",
    "threshold-raw",
    "fastva",
    "cbo",
    "cbo+reuse",
];

pub const ALL_POLICIES: &str =
    "local,all,threshold,threshold-raw,fastva,cbo,clairvoyant,cbo+reuse,clairvoyant+reuse";

/// A policy name with this suffix runs with answer reuse ([`crate::offload::reuse`]).
pub const REUSE_SUFFIX: &str = crate::offload::policy::REUSE_SUFFIX;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Labelled clip
    #[arg(long)]
    pub video: PathBuf,
    /// Its per-frame labels (CSV with `frame`, `class_index`)
    #[arg(long)]
    pub labels: PathBuf,
    /// Mahimahi uplink trace(s), comma-separated
    #[arg(long, value_delimiter = ',', required = true)]
    pub trace: Vec<PathBuf>,
    /// Deadline(s) in ms, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "500")]
    pub deadline_ms: Vec<f64>,
    /// Round-trip time added to the trace's uplink (one-way delay = half)
    #[arg(long, default_value_t = 40.0)]
    pub rtt_ms: f64,
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
    /// Directory caching the per-frame model results between runs
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Use at most this many frames (0 = all)
    #[arg(long, default_value_t = 0)]
    pub max_frames: usize,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// Write plots: accuracy vs deadline per policy and trace (this path), and the cbo policy's
    /// uplink use and resolution over time against each trace's capacity (PATH-stem.TRACE.png)
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
    pub trace: String,
    pub trace_mean_mbps: f64,
    pub deadline_ms: f64,
    pub policies: BTreeMap<String, SimResult>,
    /// (cbo − local) / (clairvoyant − local), when all three ran.
    pub cbo_share_of_clairvoyant_gain: Option<f64>,
    /// (cbo+reuse − local) / (clairvoyant+reuse − local), when all three ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cbo_reuse_share_of_clairvoyant_reuse_gain: Option<f64>,
    /// `--e2e`: the same policies run for real (element, relay, server).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub e2e: BTreeMap<String, SimResult>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub frames: usize,
    pub fps: f64,
    pub rtt_ms: f64,
    pub runs: Vec<Run>,
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
                    encode_ms: s.encode_us as f64 / 1000.0,
                    server_ms: (s.decode_us + s.inference_us) as f64 / 1000.0,
                })
                .collect(),
        })
        .collect()
}

/// Per-frame results for the clip at the profile's resolutions, from the cache when possible.
fn frames(args: &EvalArgs, profile: &Profile) -> Result<Vec<SimFrame>, String> {
    let shorts: Vec<u32> = profile.resolutions.iter().map(|r| r.short_side).collect();
    let key = {
        let meta = std::fs::metadata(&args.video)
            .map_err(|e| format!("cannot read '{}': {e}", args.video.display()))?;
        let mut h = sha2::Sha256::new();
        h.update(
            args.video
                .canonicalize()
                .unwrap_or_default()
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(meta.len().to_le_bytes());
        h.update(std::fs::read(&args.labels).unwrap_or_default());
        h.update(profile.device_model.sha256.as_bytes());
        h.update(profile.server_model.sha256.as_bytes());
        if let Some(c) = &profile.calibration {
            h.update(c.sha256.as_bytes());
        }
        h.update(
            format!(
                "v2 {shorts:?} q{} n{}",
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
    let args_p = ProfileArgs {
        device_model: Some(models.join(&profile.device_model.file)),
        device_input_mean: "127".into(),
        device_input_std: "128".into(),
        device_output_kind: crate::postprocess::OutputKind::Auto,
        calibration: profile.calibration.as_ref().map(|c| models.join(&c.file)),
        raw_confidence: profile.calibration.is_none(),
        server_model: Some(models.join(&profile.server_model.file)),
        server_input_mean: "127".into(),
        server_input_std: "128".into(),
        server_output_kind: crate::postprocess::OutputKind::Auto,
        input: InputArgs {
            images: None,
            split: None,
            video: Some(args.video.clone()),
            labels: Some(args.labels.clone()),
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
) -> Result<Option<Box<dyn Planner>>, String> {
    if name == "clairvoyant" || name == format!("clairvoyant{REUSE_SUFFIX}") {
        return Ok(None);
    }
    let spec = PolicySpec::parse(name, args.threshold, args.resolution, args.reuse_window_ms)
        .map_err(|e| format!("{e} (known: {ALL_POLICIES})"))?;
    let bps = args.initial_uplink_mbps * 1e6;
    Ok(spec.planner(Some(profile), bps, args.rtt_ms))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn run(args: &EvalArgs) -> Result<EvalReport, String> {
    let profile_path = args.profile.clone().unwrap_or_else(|| {
        crate::inference::models_dir().join("efficientnet-lite0-to-lite2.profile.json")
    });
    let profile = Profile::load(&profile_path).map_err(|e| e.to_string())?;
    for p in &args.policies {
        planner(p, args, &profile)?;
    }
    let traces = args
        .trace
        .iter()
        .map(|t| Trace::load(t).map(|tr| (t, tr)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let frames = frames(args, &profile)?;
    let shorts: Vec<u32> = profile.resolutions.iter().map(|r| r.short_side).collect();
    let mut runs = Vec::new();
    for (path, trace) in &traces {
        for &deadline in &args.deadline_ms {
            let cfg = SimConfig {
                fps: args.fps,
                deadline_ms: deadline,
                rtt_ms: args.rtt_ms,
                queue_bytes: args.queue_bytes,
                overhead_bytes: 200,
            };
            let mut policies = BTreeMap::new();
            for name in &args.policies {
                let reuse = name.ends_with(REUSE_SUFFIX);
                let result = match planner(name, args, &profile)? {
                    Some(mut p) => simulate(
                        p.as_mut(),
                        &frames,
                        trace,
                        &cfg,
                        reuse.then_some(SimReuse {
                            window_ms: args.reuse_window_ms,
                            profile: &profile,
                        }),
                    ),
                    None => clairvoyant(
                        &frames,
                        &shorts,
                        trace,
                        &cfg,
                        reuse.then_some(args.reuse_window_ms),
                    ),
                };
                policies.insert(name.clone(), result);
            }
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
            if args.e2e {
                for name in args
                    .policies
                    .iter()
                    .filter(|p| E2E_POLICIES.contains(&p.as_str()))
                {
                    eprintln!(
                        "e2e: {name} on {} with a {deadline} ms deadline ({} frames in real time)",
                        file_name(path),
                        frames.len()
                    );
                    let r = super::eval_e2e::run(
                        args,
                        &profile_path,
                        name,
                        trace,
                        deadline,
                        frames.len(),
                    )?;
                    e2e.insert(name.clone(), r);
                }
            }
            runs.push(Run {
                trace: file_name(path),
                trace_mean_mbps: trace.mean_bps() / 1e6,
                deadline_ms: deadline,
                policies,
                cbo_share_of_clairvoyant_gain: share,
                cbo_reuse_share_of_clairvoyant_reuse_gain: reuse_share,
                e2e,
            });
        }
    }
    if let Some(png) = &args.plot {
        let points: Vec<(String, f64, String, f64)> = runs
            .iter()
            .flat_map(|r| {
                r.policies
                    .iter()
                    .map(move |(p, s)| (r.trace.clone(), r.deadline_ms, p.clone(), s.accuracy))
            })
            .collect();
        super::plot::accuracy_vs_deadline(png, &points)?;
        // Over time: cbo (with reuse, as the element runs it by default, when it ran) at the
        // longest deadline on each trace.
        let longest = args.deadline_ms.iter().copied().fold(0.0, f64::max);
        for (path, trace) in &traces {
            let Some(run) = runs
                .iter()
                .find(|r| r.trace == file_name(path) && r.deadline_ms == longest)
            else {
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
                    trace.capacity_bytes(s as u64 * 1000, (s as u64 + 1) * 1000) as f64 * 8.0
                        / 1000.0
                })
                .collect();
            let mean_res: Vec<f64> = res_sum
                .iter()
                .zip(&res_n)
                .map(|(s, n)| if *n > 0.0 { s / n } else { 0.0 })
                .collect();
            let stem = png
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
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
    }
    Ok(EvalReport {
        frames: frames.len(),
        fps: args.fps,
        rtt_ms: args.rtt_ms,
        runs,
    })
}

/// JSON as the issue specifies for one trace and deadline (`{"policies": {...}}`), or every run.
pub fn to_json(r: &EvalReport) -> serde_json::Value {
    if r.runs.len() == 1 {
        serde_json::to_value(&r.runs[0]).expect("serialisable")
    } else {
        serde_json::to_value(r).expect("serialisable")
    }
}

pub fn print_table(r: &EvalReport) {
    println!("{} frames at {} fps, RTT {} ms", r.frames, r.fps, r.rtt_ms);
    for run in &r.runs {
        println!(
            "\n{} ({:.2} Mbit/s), deadline {} ms{}",
            run.trace,
            run.trace_mean_mbps,
            run.deadline_ms,
            run.cbo_share_of_clairvoyant_gain
                .map(|s| format!(": cbo reaches {:.0} % of the clairvoyant gain", s * 100.0))
                .unwrap_or_default()
        );
        println!(
            "  {:<14} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8}",
            "policy", "accuracy", "miss", "offload", "res", "bytes", "p50 ms", "p99 ms"
        );
        for (name, s) in &run.policies {
            println!(
                "  {:<14} {:>8.3} {:>8.3} {:>8.3} {:>8.0} {:>10} {:>8.0} {:>8.0}",
                name,
                s.accuracy,
                s.deadline_miss_rate,
                s.offload_ratio,
                s.mean_resolution,
                s.bytes,
                s.latency_p50_ms,
                s.latency_p99_ms
            );
        }
        for (name, s) in &run.e2e {
            let sim = run.policies.get(name).map_or(f64::NAN, |p| p.accuracy);
            println!(
                "  {:<14} {:>8.3} {:>8.3} {:>8.3} {:>8.0} {:>10} {:>8.0} {:>8.0}  (simulated {:.3})",
                format!("e2e {name}"),
                s.accuracy,
                s.deadline_miss_rate,
                s.offload_ratio,
                s.mean_resolution,
                s.bytes,
                s.latency_p50_ms,
                s.latency_p99_ms,
                sim
            );
        }
    }
}
