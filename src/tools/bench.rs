//! `cbo bench`: cbofilter's throughput on decoded frames against a bare ONNX Runtime loop over the
//! same frames, in one process, as a ratio.
//!
//! The clip is decoded into memory first so neither side pays for decoding. The bare loop gets
//! its input tensors pre-computed (it measures `Session::run` alone, what any integration must
//! pay); cbofilter gets the raw decoded frames through `appsrc` and does its own scaling, colour
//! conversion, inference, post-processing and metadata. Rounds alternate between the two so
//! machine noise hits both alike; the best round of each is compared.

use std::path::PathBuf;
use std::time::Instant;

use gst::prelude::*;

use crate::cli::ModelArgs;
use crate::inference::{ModelConfig, ModelSession, run_session};
use crate::preprocess::{Preprocessor, Tensor};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Clip to decode (default: the bundled bottle clip)
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Frames decoded and classified per round
    #[arg(long, default_value_t = 300)]
    pub frames: usize,
    /// Alternating rounds of each side
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Streams: N copies of the clip through N cbofilter in one pipeline, shared session vs one
    /// session each, against a bare batch-N loop (1: one cbofilter against a batch-1 loop)
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// --streams N: the elements' batch-timeout, in microseconds
    #[arg(long, default_value_t = 2000)]
    pub batch_timeout: u32,
    /// --streams N: each stream's frame rate in the paced rounds, where frames arrive in real
    /// time and each frame's added latency is measured (default: the clip's frame rate; 0: no
    /// paced rounds)
    #[arg(long)]
    pub fps: Option<f64>,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub frames: usize,
    pub rounds: usize,
    pub input: String,
    pub execution_provider: String,
    pub bare_ort_fps: f64,
    pub cbofilter_fps: f64,
    /// cbofilter_fps / bare_ort_fps
    pub ratio: f64,
    /// 1 - ratio, in percent: what the element adds over a bare session run.
    pub overhead_percent: f64,
    pub bare_rounds_fps: Vec<f64>,
    /// Mean cost of applying each kind of calibration to one frame's score row, in ns
    /// (temperature: over the real 1000-wide rows of the benchmark frames).
    pub calibration_apply_ns: Vec<(String, f64)>,
    pub cbofilter_rounds_fps: Vec<f64>,
    /// Client-side cost of offloading one frame: rescale to a 224 px short side + JPEG (quality
    /// 80), in ms, and as a share of one bare device-model run measured in the same process.
    pub offload_encode_ms: f64,
    pub offload_encode_bytes: f64,
    pub offload_encode_vs_inference: f64,
}

pub fn default_video() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/media/bottle-detection.mp4"
    ))
}

fn bare_round(model: &mut ModelSession, tensors: &[Tensor]) -> Result<f64, String> {
    let mut row = Vec::new();
    let t = Instant::now();
    for tensor in tensors {
        run_session(
            &mut model.session,
            &model.input_name,
            &model.spec,
            tensor,
            &mut row,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(tensors.len() as f64 / t.elapsed().as_secs_f64())
}

/// A copy of each frame, time-stamped 33 ms apart, to push into `appsrc` (a copy of its own per
/// branch: the element attaches its meta without copying the buffer again).
pub(super) fn stamped_copies(frames: &[gst::Buffer]) -> Vec<gst::Buffer> {
    frames
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let mut b = frame.copy();
            b.get_mut()
                .expect("fresh copy")
                .set_pts(gst::ClockTime::from_mseconds(33 * i as u64));
            b
        })
        .collect()
}

/// Adds `appsrc ! cbofilter ! fakesink` (unsynchronised) to `pipeline`, the filter with `props`;
/// the source queues without bound, so every frame can be pushed before the clock starts.
pub fn add_filter_branch(
    pipeline: &gst::Pipeline,
    caps: &gst::Caps,
    props: &[(&'static str, String)],
) -> Result<(gst_app::AppSrc, gst::Element), String> {
    let src = gst_app::AppSrc::builder()
        .caps(caps)
        .format(gst::Format::Time)
        .max_bytes(0)
        .build();
    let cbo = gst::ElementFactory::make("cbofilter")
        .build()
        .map_err(|e| e.to_string())?;
    super::set_element_properties(&cbo, props.iter().map(|(n, v)| (*n, v.clone())))?;
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()
        .map_err(|e| e.to_string())?;
    pipeline
        .add_many([src.upcast_ref(), &cbo, &sink])
        .map_err(|e| e.to_string())?;
    gst::Element::link_many([src.upcast_ref(), &cbo, &sink]).map_err(|e| e.to_string())?;
    Ok((src, cbo))
}

fn filter_round(
    frames: &[gst::Buffer],
    caps: &gst::Caps,
    props: &[(&'static str, String)],
) -> Result<f64, String> {
    let pipeline = gst::Pipeline::new();
    let (src, _) = add_filter_branch(&pipeline, caps, props)?;
    // PAUSED loads the model (cbofilter's start, done when set_state returns), outside the
    // timed part. Nothing flows before the clock starts (a frame pushed in PAUSED would be
    // classified while prerolling, ahead of the clock), so the timed part pushes the frames,
    // time-stamped beforehand: each push only queues a buffer in appsrc.
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|e| format!("cannot start cbofilter: {e}"))?;
    let stamped = stamped_copies(frames);
    let t = Instant::now();
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    for b in stamped {
        src.push_buffer(b).map_err(|e| format!("push: {e:?}"))?;
    }
    src.end_of_stream().map_err(|e| format!("eos: {e:?}"))?;
    let bus = pipeline.bus().expect("bus");
    let res = match bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .map(|m| error_text(&m))
    {
        Some(None) => Ok(frames.len() as f64 / t.elapsed().as_secs_f64()),
        Some(Some(e)) => Err(e),
        None => Err("timed out".into()),
    };
    let _ = pipeline.set_state(gst::State::Null);
    res
}

/// The error text of an error message; `None` for anything else (EOS).
fn error_text(msg: &gst::Message) -> Option<String> {
    match msg.view() {
        gst::MessageView::Error(e) => Some(crate::gstelements::describe_error(e)),
        _ => None,
    }
}

/// The bare loop's session (the element's model, provider and its options) and the decoded
/// frames' input tensors, pre-computed so the loop measures `Session::run` alone.
pub(super) fn bare_session(
    config: &ModelConfig,
    frames: &[gst::Buffer],
    caps: &gst::Caps,
) -> Result<(ModelSession, Vec<Tensor>), String> {
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
    let model = ModelSession::load_with_options(
        &config.model,
        config.execution_provider,
        &config.ep_options,
        config.ep_fallback,
        config.threads,
        config.input_size,
    )
    .map_err(|e| e.to_string())?;
    let mut pre = Preprocessor::new(model.spec, config.normalization).map_err(|e| e.to_string())?;
    let mut tensors = Vec::with_capacity(frames.len());
    for f in frames {
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(f, &info)
            .map_err(|e| e.to_string())?;
        tensors.push(pre.process(&frame).map_err(|e| e.to_string())?.clone());
    }
    Ok((model, tensors))
}

pub fn run(args: &BenchArgs) -> Result<BenchReport, String> {
    super::init_gstreamer()?;
    let video = args.video.clone().unwrap_or_else(default_video);
    let config = args.model.to_config()?;
    let (frames, caps) = super::decode_frames(&video, args.frames)?;
    let info = gst_video::VideoInfo::from_caps(&caps).map_err(|e| e.to_string())?;
    let (mut model, tensors) = bare_session(&config, &frames, &caps)?;
    let props = args.model.element_properties(&config);

    let (mut bare, mut filt) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        bare.push(bare_round(&mut model, &tensors)?);
        filt.push(filter_round(&frames, &caps, &props)?);
    }
    let calibration_apply_ns = calibration_cost(&mut model, &tensors)?;
    let (offload_encode_ms, offload_encode_bytes) = encode_cost(&frames, &info)?;
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (b, f) = (best(&bare), best(&filt));
    Ok(BenchReport {
        frames: frames.len(),
        rounds: bare.len(),
        input: format!(
            "{} ({}x{} {:?})",
            video.display(),
            info.width(),
            info.height(),
            info.format()
        ),
        execution_provider: model.active_provider.to_string(),
        bare_ort_fps: b,
        cbofilter_fps: f,
        ratio: f / b,
        overhead_percent: 100.0 * (1.0 - f / b),
        bare_rounds_fps: bare,
        calibration_apply_ns,
        cbofilter_rounds_fps: filt,
        offload_encode_ms,
        offload_encode_bytes,
        offload_encode_vs_inference: offload_encode_ms * b / 1000.0,
    })
}

/// Mean rescale + JPEG encode time (ms) and size (bytes) of an offloaded frame at 224 px, with
/// the encoder `cbofilter` uses; best of three passes over the frames.
fn encode_cost(frames: &[gst::Buffer], info: &gst_video::VideoInfo) -> Result<(f64, f64), String> {
    let mut encoder = crate::jpeg::FrameEncoder::new(80).map_err(|e| e.to_string())?;
    let mut best = f64::MAX;
    let mut bytes = 0usize;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        bytes = 0;
        for f in frames {
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(f, info)
                .map_err(|e| e.to_string())?;
            bytes += encoder
                .encode(&frame, 224)
                .map_err(|e| e.to_string())?
                .bytes
                .len();
        }
        best = best.min(t0.elapsed().as_secs_f64() * 1000.0 / frames.len().max(1) as f64);
    }
    Ok((best, bytes as f64 / frames.len().max(1) as f64))
}

/// Times `Calibrator::apply` for each method over the model's real output rows.
fn calibration_cost(
    model: &mut ModelSession,
    tensors: &[Tensor],
) -> Result<Vec<(String, f64)>, String> {
    use crate::calibration::{Calibrator, top_softmax};
    let mut rows = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let mut row = Vec::new();
        run_session(
            &mut model.session,
            &model.input_name,
            &model.spec,
            tensor,
            &mut row,
        )
        .map_err(|e| e.to_string())?;
        rows.push(row);
    }
    let raws: Vec<f64> = rows.iter().map(|r| top_softmax(r, 1.0).1).collect();
    let knots: Vec<f64> = (0..=15).map(|i| i as f64 / 15.0).collect();
    let calibrators = [
        Calibrator::Temperature { temperature: 0.81 },
        Calibrator::HistogramBinning {
            upper: knots[1..].to_vec(),
            values: knots[1..].to_vec(),
        },
        Calibrator::Isotonic {
            x: knots.clone(),
            y: knots,
        },
        Calibrator::Platt { a: 1.42, b: 0.52 },
    ];
    let mut out = Vec::new();
    for cal in calibrators {
        let reps = 20;
        let t = Instant::now();
        let mut sink = 0.0;
        for _ in 0..reps {
            for (row, &raw) in rows.iter().zip(&raws) {
                sink += cal.apply(std::hint::black_box(raw), std::hint::black_box(row));
            }
        }
        std::hint::black_box(sink);
        let ns = t.elapsed().as_nanos() as f64 / (reps * rows.len()) as f64;
        out.push((cal.method_name().to_string(), ns));
    }
    Ok(out)
}

pub fn print_report(r: &BenchReport) {
    println!(
        "input: {}, {} frames x {} rounds, provider {}",
        r.input, r.frames, r.rounds, r.execution_provider
    );
    println!("bare ort session.run : {:8.1} frames/s", r.bare_ort_fps);
    println!("cbofilter (appsrc)   : {:8.1} frames/s", r.cbofilter_fps);
    println!(
        "ratio cbofilter/bare : {:8.3}  (overhead {:.1} %)",
        r.ratio, r.overhead_percent
    );
    for (method, ns) in &r.calibration_apply_ns {
        println!("calibration apply    : {ns:8.1} ns/frame  ({method})");
    }
    println!(
        "offload encode 224px : {:8.3} ms/frame, {:.0} bytes ({:.2}x one bare device inference)",
        r.offload_encode_ms, r.offload_encode_bytes, r.offload_encode_vs_inference
    );
}
