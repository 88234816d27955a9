//! `cbo eval --e2e`: one policy for real. The clip is paced in real time at `--fps` into the real
//! `cbofilter`, whose QUIC traffic crosses `cbo netem` (the trace, RTT/2 each way) to a real
//! `cboserver` with the profile's server model, all in this process on 127.0.0.1. The figures
//! come from the CboMeta of every frame, so they compare directly with the simulation's.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::eval::EvalArgs;
use crate::inference::{self, ModelConfig};
use crate::meta::CboResult;
use crate::netem::NetemConfig;
use crate::offload::sim::SimResult;
use crate::profile::Profile;
use crate::server::{Server, ServerConfig};
use crate::trace::Trace;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// What one real run measured, and where in the trace its clip started.
pub struct E2eRun {
    pub result: SimResult,
    /// How far into the relay's trace the clip started (the relay's clock starts before the
    /// element connects): the simulation of the same run replays the trace from here.
    pub trace_offset_ms: u64,
}

/// Runs `policy` for real on the first `frames` frames of `clip` (video, labels CSV).
pub fn run(
    args: &EvalArgs,
    (video, labels): (&Path, &Path),
    profile_path: &Path,
    policy: &str,
    trace: &Trace,
    deadline_ms: f64,
    frames: usize,
) -> Result<E2eRun, String> {
    super::init_gstreamer()?;
    let profile = Profile::load(profile_path).map_err(|e| e.to_string())?;
    let models = inference::models_dir();
    let labels = crate::tools::dataset::read_clip_labels(labels)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let certs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let identity = crate::tls::load_or_create_self_signed(certs.path())?;
    let server_config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("literal address"),
        ModelConfig {
            model: models.join(&profile.server_model.file),
            ..ModelConfig::default()
        },
        identity,
    );
    let server = rt
        .block_on(Server::start(server_config))
        .map_err(|e| e.to_string())?;
    let mut netem_config = NetemConfig::new(
        "127.0.0.1:0".parse().expect("literal address"),
        server.local_addr(),
        trace.clone(),
    );
    netem_config.delay = Duration::from_secs_f64(args.rtt() / 2000.0);
    netem_config.queue_bytes = args.queue_bytes;
    let netem = rt.block_on(crate::netem::start(netem_config))?;

    // Real-time pacing (identity sync=true) makes the file behave like a camera at --fps: every
    // decoded frame, in order, re-timestamped at i / fps (as the simulation replays them; a
    // `videorate` here duplicated ~4 % of the frames of a 10 fps clip, whose MP4 timestamps are
    // not exact tenths, and shifted every later frame against its label). The in-flight window
    // is opened wide, as the simulation has none.
    // `cbo+reuse` is the element's policy=cbo with answer reuse; plain `cbo` turns it off.
    let (policy, reuse) = match policy.strip_suffix(super::eval::REUSE_SUFFIX) {
        Some(p) => (p, args.reuse_window_ms.round() as u64),
        None => (policy, 0),
    };
    // Two frames more than are scored: the last frame before the EOS came out of the decoder as
    // the frame after it (frame 599 of `dev-slideshow.mp4` carried frame 600's picture), which
    // put the real `local` one frame below its simulation on every trace.
    let eos_after = frames + 2;
    // `local` never offloads: without a server, as a user would run it (with one the element
    // warns that it connects and never sends).
    let server_props = if policy == "local" {
        String::new()
    } else {
        format!(
            "server={} server-cert=\"{}\"",
            netem.local_addr(),
            certs.path().join("cert.pem").display()
        )
    };
    let desc = format!(
        "filesrc location=\"{}\" ! decodebin ! identity name=pace sync=true eos-after={eos_after} ! \
         cbofilter name=cbo {server_props} \
         policy={policy} reuse-window={reuse} merge={} deadline={} threshold={} \
         resolution={} max-in-flight=1000 profile=\"{}\" {} ! fakesink sync=false",
        video.display(),
        args.merge.as_str(),
        deadline_ms.round() as u64,
        args.threshold,
        args.resolution,
        profile_path.display(),
        profile
            .calibration
            .as_ref()
            .map(|c| format!("calibration=\"{}\"", models.join(&c.file).display()))
            .unwrap_or_default()
    );
    let pipeline = crate::gstelements::launch_pipeline(&desc)?;
    let cbo = pipeline.by_name("cbo").expect("named");
    let frame_ns = (1e9 / args.fps).round() as u64;
    let index = std::sync::atomic::AtomicU64::new(0);
    pipeline
        .by_name("pace")
        .expect("named")
        .static_pad("sink")
        .expect("sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer_mut() {
                let buf = buf.make_mut();
                let i = index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                buf.set_pts(gst::ClockTime::from_nseconds(i * frame_ns));
                buf.set_dts(gst::ClockTime::NONE);
                buf.set_duration(gst::ClockTime::from_nseconds(frame_ns));
            }
            gst::PadProbeReturn::Ok
        });
    let entered = Arc::new(Mutex::new(std::collections::VecDeque::<Instant>::new()));
    let results = Arc::new(Mutex::new(Vec::<(CboResult, f64)>::new()));
    let e = entered.clone();
    cbo.static_pad("sink")
        .expect("sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            e.lock().unwrap().push_back(Instant::now());
            gst::PadProbeReturn::Ok
        });
    let (e, r) = (entered.clone(), results.clone());
    cbo.static_pad("src")
        .expect("src pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer()
                && let Some(Ok(res)) = CboResult::from_buffer(buf)
            {
                let t0 = e.lock().unwrap().pop_front();
                let ms = t0.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                r.lock().unwrap().push((res, ms));
            }
            gst::PadProbeReturn::Ok
        });
    // The connection must be up before the clip starts, as in the simulation (`local` never
    // connects: waiting for it only delayed each of its runs by the 10 s limit).
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|_| "cannot start the e2e pipeline".to_string())?;
    let t_connect = Instant::now();
    while policy != "local"
        && !cbo
            .property::<gst::Structure>("stats")
            .get::<bool>("connected")
            .unwrap_or(false)
        && t_connect.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| "cannot start the e2e pipeline".to_string())?;
    let trace_offset_ms = netem.started_at().elapsed().as_millis() as u64;
    let error = crate::gstelements::wait_for_eos(&pipeline).err();
    let bytes = cbo
        .property::<gst::Structure>("stats")
        .get::<u64>("bytes-sent")
        .unwrap_or(0);
    let _ = pipeline.set_state(gst::State::Null);
    rt.block_on(netem.shutdown());
    let _ = rt.block_on(server.shutdown());
    if let Some(e) = error {
        return Err(format!("e2e pipeline failed: {e}"));
    }
    // The first `frames` frames, as the simulation replays them (identity's `eos-after=N` lets
    // N or N + 1 through, depending on when the EOS overtakes the stream, and the last of them
    // may not be the picture its index says: see `eos_after`).
    let mut results = results.lock().unwrap();
    results.truncate(frames);
    let n = results.len().max(1) as f64;
    let right = results
        .iter()
        .filter(|(r, _)| labels.get(r.frame as usize).map(|&c| c as i32) == Some(r.class_id))
        .count();
    let sent: Vec<u32> = results
        .iter()
        .filter(|(r, _)| r.resolution > 0)
        .map(|(r, _)| r.resolution as u32)
        .collect();
    let missed = results
        .iter()
        .filter(|(r, _)| r.resolution > 0 && r.decision != "offload" && r.decision != "overruled")
        .count();
    let reused = results
        .iter()
        .filter(|(r, _)| r.decision == "reuse")
        .count();
    let mut lat: Vec<f64> = results.iter().map(|(_, ms)| *ms).collect();
    lat.sort_by(f64::total_cmp);
    let result = SimResult {
        accuracy: right as f64 / n,
        deadline_miss_rate: missed as f64 / n,
        offload_ratio: sent.len() as f64 / n,
        mean_resolution: if sent.is_empty() {
            0.0
        } else {
            sent.iter().map(|&s| s as f64).sum::<f64>() / sent.len() as f64
        },
        bytes,
        // Not observed from outside the element: the client does not report what a reset
        // withdrew.
        withdrawn_bytes: 0,
        latency_p50_ms: percentile(&lat, 0.5),
        latency_p99_ms: percentile(&lat, 0.99),
        reuse_ratio: reused as f64 / n,
        sent_at: Vec::new(),
        answered: Vec::new(),
        // The element does not report the probability it sent each frame with.
        arrival: None,
    };
    Ok(E2eRun {
        result,
        trace_offset_ms,
    })
}
