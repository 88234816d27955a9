//! `cbo bench --streams N`: N copies of a clip through N `cbofilter` in one pipeline, sharing one
//! session (the default) and each with its own (`shared-session=false`), against a bare ONNX
//! Runtime loop that runs the same frames as batches of N, in the same process. Rounds alternate
//! between the three so machine noise hits all alike; the best round of each is compared.
//!
//! Memory per extra stream: the growth of the process's resident set per element after the
//! first, each in its own pipeline, started and having classified a frame; measured before the
//! rounds (shared, then unshared), so that freed memory does not hide the growth.
//!
//! Latency: the throughput rounds queue every frame before the clock starts, so the time a frame
//! spends in the element there is mostly waiting for the cores. The paced rounds (`--fps`, by
//! default the clip's rate) feed each stream in real time instead, as cameras do, the streams'
//! phases spread evenly over one frame interval, and time each frame from its arrival (its push
//! into `appsrc`, so a backlog in front of the element counts) to its leaving `cbofilter`: the
//! latency the element adds to a live stream, shared and unshared, against the bound the shared
//! session's design gives (`batch-timeout` plus one batch inference, the latter measured in the
//! same run's bare loop).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::bench::{BenchArgs, default_video};
use crate::inference::ModelSession;
use crate::meta::CboResult;
use crate::preprocess::Tensor;
use crate::server::batch::{BatchDim, BatchTensor, run_batch};

#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamsReport {
    pub streams: usize,
    pub frames_per_stream: usize,
    pub rounds: usize,
    pub input: String,
    pub execution_provider: String,
    /// Frames/s over all streams, shared session (best round).
    pub aggregate_fps: f64,
    /// The bare loop: the same frames as batches of `streams` (batch 1 for a batch-1 model).
    pub bare_batch_fps: f64,
    /// aggregate_fps / bare_batch_fps
    pub ratio: f64,
    /// Frames/s over all streams with one session per element (best round).
    pub unshared_fps: f64,
    /// aggregate_fps / unshared_fps
    pub shared_vs_unshared: f64,
    pub rss_mib_per_extra_stream: f64,
    pub unshared_rss_mib_per_extra_stream: f64,
    /// Time a frame spends in cbofilter with the shared session (all rounds).
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Frames per batch the shared session ran (all rounds).
    pub mean_batch: f64,
    pub batch_timeout_us: u32,
    /// Paced rounds: each stream's frames/s (0: not run).
    pub paced_fps: f64,
    /// Paced, shared session: each frame's arrival → leaving cbofilter (first frame of each
    /// stream, the warm-up, left out).
    pub paced_latency_p50_ms: f64,
    pub paced_latency_p99_ms: f64,
    pub paced_latency_max_ms: f64,
    /// Paced, shared session: each frame's time in the session (`inference-us`: the tensor handed
    /// over → its scores back, the wait for the batch included), what the bound is about.
    pub paced_session_p50_ms: f64,
    pub paced_session_p99_ms: f64,
    /// Paced, one session per element.
    pub paced_unshared_latency_p50_ms: f64,
    pub paced_unshared_latency_p99_ms: f64,
    /// Paced, one session per element: one frame's inference alone.
    pub paced_unshared_inference_p50_ms: f64,
    /// One bare inference of a batch of `streams` frames (median over the bare rounds).
    pub batch_inference_ms: f64,
    /// What the shared session's design bounds a frame's time in the session by:
    /// batch-timeout + one batch inference (plus a batch already running).
    pub paced_latency_bound_ms: f64,
    pub aggregate_rounds_fps: Vec<f64>,
    pub unshared_rounds_fps: Vec<f64>,
    pub bare_rounds_fps: Vec<f64>,
}

/// N appsrc → cbofilter → fakesink branches in one pipeline, all frames queued before the clock
/// starts; returns frames/s over all branches and each frame's time in its element.
fn streams_round(
    n: usize,
    frames: &[gst::Buffer],
    caps: &gst::Caps,
    props: &[(&'static str, String)],
    latencies_us: &mut Vec<u64>,
    batches: &mut (u64, u64),
) -> Result<f64, String> {
    let pipeline = gst::Pipeline::new();
    let mut first_filter = None;
    let mut sources = Vec::new();
    let times: Arc<Mutex<Vec<u64>>> = Arc::default();
    for _ in 0..n {
        let (src, cbo) = super::bench::add_filter_branch(&pipeline, caps, props)?;
        first_filter.get_or_insert_with(|| cbo.clone());
        let entered: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
        let e = entered.clone();
        cbo.static_pad("sink").expect("sink pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, _| {
                e.lock().unwrap().push_back(Instant::now());
                gst::PadProbeReturn::Ok
            },
        );
        let t = times.clone();
        cbo.static_pad("src").expect("src pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, _| {
                if let Some(at) = entered.lock().unwrap().pop_front() {
                    t.lock().unwrap().push(at.elapsed().as_micros() as u64);
                }
                gst::PadProbeReturn::Ok
            },
        );
        sources.push(src);
    }
    // PAUSED loads the models; nothing flows before the clock starts (a frame pushed in PAUSED
    // would be classified while prerolling, ahead of the clock): the timed part pushes the
    // frames, time-stamped beforehand, each push only queueing a buffer in appsrc.
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|e| format!("cannot start cbofilter: {e}"))?;
    // One copy per branch: the element attaches its meta without copying the buffer again.
    let stamped: Vec<Vec<gst::Buffer>> = (0..n)
        .map(|_| super::bench::stamped_copies(frames))
        .collect();
    let t = Instant::now();
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    for (src, stamped) in sources.iter().zip(stamped) {
        for b in stamped {
            src.push_buffer(b).map_err(|e| format!("push: {e:?}"))?;
        }
        src.end_of_stream().map_err(|e| format!("eos: {e:?}"))?;
    }
    let res =
        wait_for_eos(&pipeline).map(|()| (n * frames.len()) as f64 / t.elapsed().as_secs_f64());
    if let Some(stats) = first_filter.map(|f| f.property::<gst::Structure>("stats")) {
        batches.0 += stats.get::<u64>("shared-batches").unwrap_or(0);
        batches.1 += stats.get::<u64>("shared-batched-frames").unwrap_or(0);
    }
    let _ = pipeline.set_state(gst::State::Null);
    latencies_us.extend(times.lock().unwrap().iter());
    res
}

/// Waits (at most 600 s) for `pipeline` to reach EOS; its error, described, if it posts one.
fn wait_for_eos(pipeline: &gst::Pipeline) -> Result<(), String> {
    let bus = pipeline.bus().expect("bus");
    match bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(600),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(m) => match m.view() {
            gst::MessageView::Error(e) => Err(crate::gstelements::describe_error(e)),
            _ => Ok(()),
        },
        None => Err("timed out".into()),
    }
}

/// The bare loop: frame i of every stream run as one batch of `n` (one by one for a batch-1
/// model). `batches_us`: the time of each (frame i of every stream).
fn bare_round(
    model: &mut ModelSession,
    tensors: &[Tensor],
    n: usize,
    batches_us: &mut Vec<u64>,
) -> Result<f64, String> {
    let dim = BatchDim::of(&model.session);
    let per_run = if dim == BatchDim::One { 1 } else { n };
    let mut batch = BatchTensor::new(model.spec, per_run);
    let mut rows = Vec::new();
    let t = Instant::now();
    for tensor in tensors {
        let one = Instant::now();
        for _ in 0..n / per_run {
            batch.clear();
            for _ in 0..per_run {
                batch.push(tensor).map_err(|e| e.to_string())?;
            }
            run_batch(&mut model.session, &model.input_name, &batch, &mut rows)
                .map_err(|e| e.to_string())?;
        }
        batches_us.push(one.elapsed().as_micros() as u64);
    }
    Ok((tensors.len() * n) as f64 / t.elapsed().as_secs_f64())
}

/// What a paced round measured per frame, in µs, sorted; the first frame of each stream (the
/// pipeline's start and the session's first run) left out.
#[derive(Default)]
struct Paced {
    /// Push into `appsrc` → leaving cbofilter.
    latencies: Vec<u64>,
    /// The meta's `inference-us`: the tensor handed to the session → its scores back (with a
    /// shared session, the wait for the batch and the batch's run).
    inference: Vec<u64>,
}

/// N branches fed in real time at `fps` each (see the module docs).
fn paced_round(
    n: usize,
    frames: &[gst::Buffer],
    caps: &gst::Caps,
    props: &[(&'static str, String)],
    fps: f64,
) -> Result<Paced, String> {
    let interval = Duration::from_secs_f64(1.0 / fps);
    let pipeline = gst::Pipeline::new();
    let measured: Arc<Mutex<Paced>> = Arc::default();
    let mut streams = Vec::new();
    for _ in 0..n {
        let (src, cbo) = super::bench::add_filter_branch(&pipeline, caps, props)?;
        // Frame i is pushed with PTS i·interval; its push time is looked up by that index.
        let pushed: Arc<Mutex<Vec<Option<Instant>>>> =
            Arc::new(Mutex::new(vec![None; frames.len()]));
        let (p, m) = (pushed.clone(), measured.clone());
        let step = interval.as_nanos().max(1) as u64;
        cbo.static_pad("src").expect("src pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                let Some(buffer) = info.buffer() else {
                    return gst::PadProbeReturn::Ok;
                };
                let index = buffer.pts().map(|pts| (pts.nseconds() / step) as usize);
                let pushed_at = index
                    .filter(|&i| i > 0)
                    .and_then(|i| p.lock().unwrap().get(i).copied().flatten());
                if let Some(at) = pushed_at {
                    let latency = at.elapsed().as_micros() as u64;
                    let mut m = m.lock().unwrap();
                    m.latencies.push(latency);
                    if let Some(Ok(r)) = CboResult::from_buffer(buffer) {
                        m.inference.push(r.inference_us);
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        streams.push((src, pushed, step));
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start cbofilter: {e}"))?;
    // Stream s's frame i is due at i·interval + s·interval/n.
    let mut due: Vec<(Duration, usize, usize)> = (0..frames.len())
        .flat_map(|i| {
            (0..n).map(move |s| (interval * i as u32 + interval * s as u32 / n as u32, s, i))
        })
        .collect();
    due.sort();
    let start = Instant::now();
    for (at, s, i) in due {
        if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (src, pushed, step) = &streams[s];
        // A shallow copy: the frame's memory is shared, only the PTS is its own.
        let mut b = frames[i].copy();
        b.get_mut()
            .expect("fresh copy")
            .set_pts(gst::ClockTime::from_nseconds(step * i as u64));
        pushed.lock().unwrap()[i] = Some(Instant::now());
        src.push_buffer(b).map_err(|e| format!("push: {e:?}"))?;
    }
    for (src, _, _) in &streams {
        src.end_of_stream().map_err(|e| format!("eos: {e:?}"))?;
    }
    let res = wait_for_eos(&pipeline);
    let _ = pipeline.set_state(gst::State::Null);
    res?;
    let mut m = std::mem::take(&mut *measured.lock().unwrap());
    m.latencies.sort_unstable();
    m.inference.sort_unstable();
    Ok(m)
}

/// Resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Starts `n` one-element pipelines one after the other, each classifying one frame, and returns
/// the growth of the resident set per pipeline after the first.
fn rss_per_extra_stream(
    n: usize,
    frame: &gst::Buffer,
    caps: &gst::Caps,
    props: &[(&'static str, String)],
) -> Result<f64, String> {
    let mut pipelines = Vec::new();
    let mut first = 0.0;
    for i in 0..n {
        let desc = "appsrc name=src format=time ! cbofilter name=cbo ! fakesink";
        let pipeline = crate::gstelements::launch_pipeline(desc)?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or("no appsrc")?;
        src.set_caps(Some(caps));
        let cbo = pipeline.by_name("cbo").ok_or("no cbofilter")?;
        super::set_element_properties(&cbo, props.iter().map(|(n, v)| (*n, v.clone())))?;
        pipeline
            .set_state(gst::State::Paused)
            .map_err(|e| format!("cannot start cbofilter: {e}"))?;
        src.push_buffer(frame.copy())
            .map_err(|e| format!("push: {e:?}"))?;
        // Prerolled: the frame went through cbofilter.
        let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(60));
        res.map_err(|e| format!("preroll: {e}"))?;
        if i == 0 {
            first = rss_mib();
        }
        pipelines.push(pipeline);
    }
    let last = rss_mib();
    for p in pipelines {
        let _ = p.set_state(gst::State::Null);
    }
    Ok((last - first) / (n - 1).max(1) as f64)
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    sorted_us[i] as f64 / 1000.0
}

pub fn run(args: &BenchArgs) -> Result<StreamsReport, String> {
    super::init_gstreamer()?;
    let n = args.streams.max(1);
    let video = args.video.clone().unwrap_or_else(default_video);
    let config = args.model.to_config()?;
    let (frames, caps) = super::decode_frames(&video, args.frames)?;
    let info = gst_video::VideoInfo::from_caps(&caps).map_err(|e| e.to_string())?;
    let (mut model, tensors) = super::bench::bare_session(&config, &frames, &caps)?;
    let mut shared_props = args.model.element_properties(&config);
    shared_props.push(("shared-session", "true".into()));
    shared_props.push(("batch-timeout", args.batch_timeout.to_string()));
    let mut unshared_props = args.model.element_properties(&config);
    unshared_props.push(("shared-session", "false".into()));

    // Memory first, while the allocator has no freed sessions to hand out again; shared first,
    // so the unshared sessions cannot reuse what shared elements freed.
    let first = frames.first().ok_or("no frames decoded")?;
    let rss_shared = rss_per_extra_stream(n, first, &caps, &shared_props)?;
    let rss_unshared = rss_per_extra_stream(n, first, &caps, &unshared_props)?;
    let (mut bare, mut shared, mut unshared) = (Vec::new(), Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    let mut batches = (0, 0);
    let mut batches_us = Vec::new();
    for _ in 0..args.rounds.max(1) {
        bare.push(bare_round(&mut model, &tensors, n, &mut batches_us)?);
        shared.push(streams_round(
            n,
            &frames,
            &caps,
            &shared_props,
            &mut latencies,
            &mut batches,
        )?);
        unshared.push(streams_round(
            n,
            &frames,
            &caps,
            &unshared_props,
            &mut Vec::new(),
            &mut (0, 0),
        )?);
    }
    latencies.sort_unstable();
    batches_us.sort_unstable();
    let batch_inference_ms = percentile_ms(&batches_us, 0.5);
    // The clip's own rate unless asked otherwise.
    let rate = info.fps();
    let clip_fps = match rate.denom() {
        0 => 0.0,
        d => rate.numer() as f64 / d as f64,
    };
    let fps = args
        .fps
        .unwrap_or(if clip_fps > 0.0 { clip_fps } else { 30.0 });
    let (paced, paced_unshared) = if fps > 0.0 {
        (
            paced_round(n, &frames, &caps, &shared_props, fps)?,
            paced_round(n, &frames, &caps, &unshared_props, fps)?,
        )
    } else {
        (Paced::default(), Paced::default())
    };
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (a, b, u) = (best(&shared), best(&bare), best(&unshared));
    Ok(StreamsReport {
        streams: n,
        frames_per_stream: frames.len(),
        rounds: bare.len(),
        input: format!(
            "{} ({}x{} {:?})",
            video.display(),
            info.width(),
            info.height(),
            info.format()
        ),
        execution_provider: model.active_provider.to_string(),
        aggregate_fps: a,
        bare_batch_fps: b,
        ratio: a / b,
        unshared_fps: u,
        shared_vs_unshared: a / u,
        rss_mib_per_extra_stream: rss_shared,
        unshared_rss_mib_per_extra_stream: rss_unshared,
        latency_p50_ms: percentile_ms(&latencies, 0.5),
        latency_p99_ms: percentile_ms(&latencies, 0.99),
        mean_batch: batches.1 as f64 / batches.0.max(1) as f64,
        batch_timeout_us: args.batch_timeout,
        paced_fps: fps.max(0.0),
        paced_latency_p50_ms: percentile_ms(&paced.latencies, 0.5),
        paced_latency_p99_ms: percentile_ms(&paced.latencies, 0.99),
        paced_latency_max_ms: percentile_ms(&paced.latencies, 1.0),
        paced_session_p50_ms: percentile_ms(&paced.inference, 0.5),
        paced_session_p99_ms: percentile_ms(&paced.inference, 0.99),
        paced_unshared_latency_p50_ms: percentile_ms(&paced_unshared.latencies, 0.5),
        paced_unshared_latency_p99_ms: percentile_ms(&paced_unshared.latencies, 0.99),
        paced_unshared_inference_p50_ms: percentile_ms(&paced_unshared.inference, 0.5),
        batch_inference_ms,
        paced_latency_bound_ms: args.batch_timeout as f64 / 1000.0 + batch_inference_ms,
        aggregate_rounds_fps: shared,
        unshared_rounds_fps: unshared,
        bare_rounds_fps: bare,
    })
}

pub fn print_report(r: &StreamsReport) {
    println!(
        "input: {}, {} streams x {} frames x {} rounds, provider {}",
        r.input, r.streams, r.frames_per_stream, r.rounds, r.execution_provider
    );
    println!(
        "bare ort, batch {:<3}      : {:8.1} frames/s",
        r.streams, r.bare_batch_fps
    );
    println!(
        "cbofilter x{:<3} shared    : {:8.1} frames/s  (ratio to bare {:.3})",
        r.streams, r.aggregate_fps, r.ratio
    );
    println!(
        "cbofilter x{:<3} unshared  : {:8.1} frames/s  (shared/unshared {:.2})",
        r.streams, r.unshared_fps, r.shared_vs_unshared
    );
    println!(
        "memory per extra stream  : {:8.1} MiB shared, {:.1} MiB unshared",
        r.rss_mib_per_extra_stream, r.unshared_rss_mib_per_extra_stream
    );
    println!(
        "time in cbofilter, shared: p50 {:.2} ms, p99 {:.2} ms (batch-timeout {} us, {:.2} frames per batch)",
        r.latency_p50_ms, r.latency_p99_ms, r.batch_timeout_us, r.mean_batch
    );
    if r.paced_fps > 0.0 {
        println!(
            "paced, {:.1} frames/s per stream, arrival -> out: shared p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; unshared p50 {:.2} ms, p99 {:.2} ms",
            r.paced_fps,
            r.paced_latency_p50_ms,
            r.paced_latency_p99_ms,
            r.paced_latency_max_ms,
            r.paced_unshared_latency_p50_ms,
            r.paced_unshared_latency_p99_ms
        );
        println!(
            "paced, time in the session: shared p50 {:.2} ms, p99 {:.2} ms (unshared inference p50 {:.2} ms); bound batch-timeout + one batch-{} inference {:.2} + {:.2} = {:.2} ms: p99 {}",
            r.paced_session_p50_ms,
            r.paced_session_p99_ms,
            r.paced_unshared_inference_p50_ms,
            r.streams,
            r.batch_timeout_us as f64 / 1000.0,
            r.batch_inference_ms,
            r.paced_latency_bound_ms,
            if r.paced_session_p99_ms <= r.paced_latency_bound_ms {
                "within"
            } else {
                "above"
            }
        );
    }
}
