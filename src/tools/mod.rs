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

/// The command-line option of the tools that sets `cbofilter`'s `property`: `--` and its name, but
/// for `labels` (`--model-labels`, apart from the evaluation tools' ground-truth `--labels`) and
/// `token` (read from `--token-file`).
fn option_for_property(property: &str) -> String {
    match property {
        "labels" => "--model-labels".into(),
        "token" => "--token-file".into(),
        other => format!("--{other}"),
    }
}

/// Sets `cbofilter` properties from the tools' options, each checked against the element's own
/// type and range (see [`crate::gstelements::set_property_from_str`]); an error names the option.
pub fn set_element_properties<'a>(
    cbo: &gst::Element,
    properties: impl IntoIterator<Item = (&'a str, String)>,
) -> Result<(), String> {
    for (name, value) in properties {
        crate::gstelements::set_property_from_str(cbo, name, &value)
            .map_err(|e| format!("{}: {e}", option_for_property(name)))?;
    }
    Ok(())
}

/// Lets exactly `max_frames` buffers into `sink_pad` (0 = no limit), then ends the stream there:
/// end-of-stream into the pad, so the element drains what it holds and everything downstream
/// finishes as at the end of the clip (an MP4 gets its index), while upstream is refused
/// (`GST_FLOW_EOS`) and stops. Counting where the frames enter makes the count exact: stopping
/// from the application once enough results have come out lets the frames already on their way
/// through, and `identity eos-after=30` let 33 through on GStreamer 1.22.
pub fn stop_after(sink_pad: &gst::Pad, max_frames: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    if max_frames == 0 {
        return;
    }
    // Buffers reach a pad one at a time, on its streaming thread; the atomic is for `Sync`.
    let arrived = AtomicU64::new(0);
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
        let n = arrived.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= max_frames {
            return gst::PadProbeReturn::Ok;
        }
        if n == max_frames + 1 {
            // Once. Later buffers meet a pad that is EOS and are refused before probes run;
            // should the pad not have taken the EOS, they are dropped here.
            pad.send_event(gst::event::Eos::new());
        }
        // gstreamer-rs has taken the buffer out of the probe's info and frees it. `Handled` says
        // so; with `Drop`, GStreamer 1.22 would also unref the info's now empty pointer and log
        // a critical.
        gst::PadProbeReturn::Handled
    });
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
    crate::gstelements::play(&pipeline)
        .map_err(|e| format!("decoding '{}' failed: {e}", path.display()))?;
    let bus = pipeline.bus().expect("pipeline has a bus");
    let failed = |bus: &gst::Bus| {
        bus.pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(crate::gstelements::describe_error(e)),
                _ => None,
            })
            .map(|e| format!("decoding '{}' failed: {e}", path.display()))
    };
    let mut n = 0;
    let result = loop {
        if n >= max {
            break Ok(());
        }
        // Not a blocking pull: a file that fails before any frame reaches the sink (not a
        // video, or cut short) posts an error but never gets the sink an EOS, and a blocking
        // pull waited for ever. Between tries the bus says whether decoding failed.
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            Some(sample) => {
                let (Some(buf), Some(caps)) = (sample.buffer_owned(), sample.caps()) else {
                    continue;
                };
                if let Err(e) = f(&buf, caps) {
                    break Err(e);
                }
                n += 1;
            }
            None => {
                if let Some(e) = failed(&bus) {
                    break Err(e);
                }
                if sink.is_eos() {
                    break failed(&bus).map_or(Ok(()), Err);
                }
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result.map(|_| n)
}
