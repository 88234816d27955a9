//! `cbo overlay`: draws each frame's label, confidence and source (device/server) on the video
//! with `textoverlay` and writes an MP4. The text of each frame is set from that frame's CboMeta
//! by a probe on the overlay's video input, just before the frame is drawn.

use std::path::PathBuf;

use gst::prelude::*;

use crate::cli::ModelArgs;
use crate::meta::CboResult;
use crate::tools::classify::OffloadArgs;

#[derive(Debug, clap::Args)]
pub struct OverlayArgs {
    /// Input video file
    pub input: PathBuf,
    /// MP4 file to write
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration file for the model (the element's `calibration`)
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    #[command(flatten)]
    pub offload: OffloadArgs,
    /// Stop after this many frames (0 = whole clip)
    #[arg(long, default_value_t = 0)]
    pub max_frames: u64,
}

/// The caption of one frame.
pub fn caption(r: &CboResult) -> String {
    let source = match r.source {
        crate::meta::Source::Server => format!("server @{}px", r.resolution),
        crate::meta::Source::Device => "device".into(),
    };
    format!("{}  {:.0}%  [{}]", r.label, r.confidence * 100.0, source)
}

pub fn run(args: &OverlayArgs) -> Result<u64, String> {
    super::init_gstreamer()?;
    if !args.input.is_file() {
        return Err(format!("video '{}' does not exist", args.input.display()));
    }
    let config = args.model.to_config()?;
    let desc = format!(
        "{} ! cbofilter name=cbo ! textoverlay name=overlay valignment=top halignment=left \
         font-desc=\"Sans Bold 18\" shaded-background=true ! videoconvert ! \
         x264enc speed-preset=veryfast ! mp4mux ! filesink location=\"{}\"",
        super::file_source(&args.input),
        args.output.display().to_string().replace('"', "\\\"")
    );
    let pipeline = crate::gstelements::launch_pipeline(&desc)?;
    let cbo = pipeline.by_name("cbo").expect("named");
    super::set_element_properties(&cbo, args.model.element_properties(&config))?;
    if let Some(cal) = &args.calibration {
        cbo.set_property("calibration", cal.display().to_string());
    }
    super::set_element_properties(&cbo, args.offload.element_properties()?)?;
    super::stop_after(
        &cbo.static_pad("sink").expect("cbofilter has a sink pad"),
        args.max_frames,
    );
    let overlay = pipeline.by_name("overlay").expect("named");
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let f = frames.clone();
    let ov = overlay.downgrade();
    overlay
        .static_pad("video_sink")
        .expect("textoverlay has a video_sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let (Some(buf), Some(ov)) = (info.buffer(), ov.upgrade())
                && let Some(Ok(r)) = CboResult::from_buffer(buf)
            {
                ov.set_property("text", caption(&r));
                f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            gst::PadProbeReturn::Ok
        });
    crate::gstelements::play(&pipeline)?;
    let result = crate::gstelements::wait_for_eos(&pipeline);
    let _ = pipeline.set_state(gst::State::Null);
    result.map(|_| frames.load(std::sync::atomic::Ordering::SeqCst))
}
