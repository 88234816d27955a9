//! The `cbo` command-line tools. Each builds on the same element and library code a pipeline
//! uses, so the numbers they print describe what the element does.

pub mod bench;
pub mod classify;

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

/// Decodes up to `max` frames of a video file into memory, in the decoder's own raw format.
pub fn decode_frames(path: &Path, max: usize) -> Result<(Vec<gst::Buffer>, gst::Caps), String> {
    if !path.is_file() {
        return Err(format!("video '{}' does not exist", path.display()));
    }
    let desc = format!("{} ! appsink name=sink sync=false", file_source(path));
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("cannot build decoder pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .expect("parse_launch of several elements gives a pipeline");
    let sink = pipeline
        .by_name("sink")
        .expect("sink is in the description")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start decoding '{}': {e}", path.display()))?;
    let mut frames = Vec::new();
    let mut caps = None;
    let result = loop {
        if frames.len() >= max {
            break Ok(());
        }
        match sink.pull_sample() {
            Ok(sample) => {
                if caps.is_none() {
                    caps = sample.caps().map(|c| c.to_owned());
                }
                if let Some(buf) = sample.buffer_owned() {
                    frames.push(buf);
                }
            }
            Err(_) => {
                // EOS or error: the bus says which.
                let bus = pipeline.bus().expect("pipeline has a bus");
                let err =
                    bus.pop_filtered(&[gst::MessageType::Error])
                        .and_then(|m| match m.view() {
                            gst::MessageView::Error(e) => Some(e.error().to_string()),
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
    result?;
    let caps = caps.ok_or_else(|| format!("'{}' has no video frames", path.display()))?;
    Ok((frames, caps))
}
