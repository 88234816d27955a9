//! The `cbo` command-line tools. Each builds on the same element and library code a pipeline
//! uses, so the numbers they print describe what the element does.

pub mod bench;
pub mod bench_streams;
pub mod calibrate;
pub mod classify;
pub mod dataset;
pub mod eval;
pub mod eval_e2e;
pub mod loadgen;
pub mod netem;
pub mod overlay;
pub mod plot;
pub mod profile;
pub mod slideshow;

use std::path::Path;

use gst::prelude::*;

/// Initialises GStreamer and registers the `cbo` plugin linked into this binary.
pub fn init_gstreamer() -> Result<(), String> {
    gst::init().map_err(|e| format!("cannot initialise GStreamer: {e}"))?;
    crate::plugin_register_static().map_err(|e| format!("cannot register the cbo plugin: {e}"))
}

/// A `filesrc ! decodebin` source description for `path`, with the path quoted for parse_launch.
pub fn file_source(path: &Path) -> String {
    format!(
        "filesrc location=\"{}\" ! decodebin",
        path.display().to_string().replace('"', "\\\"")
    )
}

/// Decodes up to `max` frames of a video or image file into memory, in the decoder's own format.
pub fn decode_frames(path: &Path, max: usize) -> Result<(Vec<gst::Buffer>, gst::Caps), String> {
    let mut frames = Vec::new();
    let mut caps = None;
    for_each_frame(path, max, |buf, c| {
        if caps.is_none() {
            caps = Some(c.to_owned());
        }
        frames.push(buf.to_owned());
        Ok(())
    })?;
    let caps = caps.ok_or_else(|| format!("'{}' has no video frames", path.display()))?;
    Ok((frames, caps))
}

/// Decodes `path` with `decodebin` (what `filesrc ! decodebin ! cbofilter` does) and calls `f`
/// with each of the first `max` frames, streaming: the clip is never held in memory.
pub fn for_each_frame(
    path: &Path,
    max: usize,
    mut f: impl FnMut(&gst::Buffer, &gst::CapsRef) -> Result<(), String>,
) -> Result<usize, String> {
    if !path.is_file() {
        return Err(format!("'{}' does not exist", path.display()));
    }
    let desc = format!("{} ! appsink name=sink sync=false", file_source(path));
    let pipeline = crate::gstelements::launch_pipeline(&desc)?;
    let sink = pipeline
        .by_name("sink")
        .expect("sink is in the description")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start decoding '{}': {e}", path.display()))?;
    let mut n = 0;
    let result = loop {
        if n >= max {
            break Ok(());
        }
        match sink.pull_sample() {
            Ok(sample) => {
                let (Some(buf), Some(caps)) = (sample.buffer_owned(), sample.caps()) else {
                    continue;
                };
                if let Err(e) = f(&buf, caps) {
                    break Err(e);
                }
                n += 1;
            }
            Err(_) => {
                // EOS or error: the bus says which.
                let bus = pipeline.bus().expect("pipeline has a bus");
                let err =
                    bus.pop_filtered(&[gst::MessageType::Error])
                        .and_then(|m| match m.view() {
                            gst::MessageView::Error(e) => {
                                Some(crate::gstelements::describe_error(e))
                            }
                            _ => None,
                        });
                break match err {
                    Some(e) => Err(format!("decoding '{}' failed: {e}", path.display())),
                    None => Ok(()),
                };
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result.map(|_| n)
}
