//! Embedding `cbofilter` in a Rust application.
//!
//! Builds `uridecodebin uri=... ! cbofilter ! fakesink` around a file or a URI (`rtsp://` camera,
//! `http://`, `file://`), reads each buffer's `CboMeta` through the typed API
//! (`gstcbo::CboResult::from_buffer`) and prints one JSON line per frame. When the source fails
//! (a camera going away: an error, or no frame for 5 s, since `rtspsrc` sometimes only warns
//! and waits), it tears the pipeline down and builds it again with exponential backoff (0.5 s
//! doubling to 10 s, back to 0.5 s after a run that delivered frames), as a long-running
//! application would. What a restart cannot fix ends it instead: an error from `cbofilter`, a
//! local file that fails, a stream no installed plugin decodes.
//!
//!     cargo run --release --example embed -- FILE-OR-URI [MAX_FRAMES]
//!
//! The plugin is linked into the application (`gstcbo::plugin_register_static`), so no
//! GST_PLUGIN_PATH is needed.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// No frame for this long means the source is stuck: restart.
const STALL: Duration = Duration::from_secs(5);

use gst::prelude::*;
use gstcbo::CboResult;

fn uri_of(input: &str) -> Result<String, String> {
    if input.contains("://") {
        return Ok(input.to_string());
    }
    let path = std::fs::canonicalize(input).map_err(|e| format!("'{input}': {e}"))?;
    gst::glib::filename_to_uri(&path, None)
        .map(|u| u.to_string())
        .map_err(|e| e.to_string())
}

/// Runs the pipeline once: `Ok(true)` at end of stream or after `max_frames`, `Ok(false)` when
/// the source failed and a restart may help, `Err` for what a restart cannot fix.
fn run_once(uri: &str, max_frames: u64, printed: &Arc<AtomicU64>) -> Result<bool, String> {
    let pipeline = gst::parse::launch(&format!(
        "uridecodebin uri=\"{uri}\" ! cbofilter name=cbo ! fakesink sync=false"
    ))
    .map_err(|e| format!("cannot build the pipeline: {e}"))?
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let cbo = pipeline.by_name("cbo").expect("named in the description");
    let count = printed.clone();
    let weak = pipeline.downgrade();
    let last_frame = Arc::new(Mutex::new(Instant::now()));
    let last = last_frame.clone();
    cbo.static_pad("src")
        .expect("src pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(buf) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            if let Some(Ok(r)) = CboResult::from_buffer(buf) {
                let line = serde_json::json!({
                    "frame": r.frame,
                    "pts_s": buf.pts().map(|p| p.nseconds() as f64 / 1e9),
                    "label": r.label,
                    "class_id": r.class_id,
                    "confidence": r.confidence,
                    "source": r.source.as_str(),
                    "decision": r.decision.as_str(),
                });
                println!("{line}");
                *last.lock().unwrap() = Instant::now();
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                if max_frames > 0
                    && n == max_frames
                    && let Some(p) = weak.upgrade()
                {
                    // Ends the run cleanly from the streaming thread.
                    p.post_message(gst::message::Eos::new()).ok();
                }
            }
            gst::PadProbeReturn::Ok
        });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| "cannot start the pipeline".to_string())?;
    let bus = pipeline.bus().expect("pipeline bus");
    let mut outcome = Ok(true);
    loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(500)) else {
            if last_frame.lock().unwrap().elapsed() > STALL {
                eprintln!("embed: no frame for {} s", STALL.as_secs());
                outcome = Ok(false);
                break;
            }
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                eprintln!(
                    "embed: error from {:?}: {}",
                    e.src().map(|s| s.path_string()),
                    e.error()
                );
                // A missing model, a file that is not a video or a missing decoder do not
                // heal; a network source that fails might.
                let err = e.error();
                let permanent = e.src().is_some_and(|s| s.name() == "cbo")
                    || uri.starts_with("file://")
                    || err.matches(gst::StreamError::TypeNotFound)
                    || err.matches(gst::StreamError::CodecNotFound)
                    || err.matches(gst::CoreError::MissingPlugin);
                outcome = if permanent {
                    Err(e.error().to_string())
                } else {
                    Ok(false)
                };
                break;
            }
            gst::MessageView::Warning(w) => eprintln!("embed: warning: {}", w.error()),
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    outcome
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(input) = args.first() else {
        eprintln!("usage: embed FILE-OR-URI [MAX_FRAMES]");
        return std::process::ExitCode::from(2);
    };
    let max_frames: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if let Err(e) = gst::init().and_then(|_| {
        gstcbo::plugin_register_static()
            .map_err(|e| gst::glib::Error::new(gst::CoreError::Failed, &e.to_string()))
    }) {
        eprintln!("embed: cannot initialise GStreamer: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let uri = match uri_of(input) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("embed: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let printed = Arc::new(AtomicU64::new(0));
    let mut backoff = Duration::from_millis(500);
    loop {
        let before = printed.load(Ordering::SeqCst);
        match run_once(&uri, max_frames, &printed) {
            Ok(true) => return std::process::ExitCode::SUCCESS,
            Ok(false) => {
                if printed.load(Ordering::SeqCst) > before {
                    // The source worked for a while: a new outage starts from the short wait.
                    backoff = Duration::from_millis(500);
                }
                eprintln!("embed: restarting in {:.1} s", backoff.as_secs_f64());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                eprintln!("embed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
}
