//! Shared inference (`shared-session`, the default): elements of one process with the same model
//! and provider settings run on one ONNX Runtime session through one batcher, and each still gets
//! its own frames' results.

mod common;

use std::sync::{Arc, Mutex};

use common::{assets, bottle_clip, run_with};
use gst::prelude::*;
use gstcbo::CboResult;

/// At least the first `frames` decoded frames of `clip` (identity may pass a few more before
/// its EOS).
fn clip_source(clip: &std::path::Path, frames: u32) -> String {
    format!(
        "filesrc location=\"{}\" ! decodebin ! identity eos-after={frames}",
        clip.display()
    )
}

/// Everything each named cbofilter emitted, plus the `session-id` and `shared-streams` it
/// reported while running.
#[derive(Debug, Default, Clone)]
struct Branch {
    results: Vec<CboResult>,
    session_ids: Vec<u64>,
    streams: Vec<u32>,
    /// `stats`' shared-batches and shared-batched-frames at EOS.
    batches: (u64, u64),
}

/// Runs one pipeline with `n` branches `SOURCE_i ! cbofilter name=c_i PROPS ! fakesink` to EOS.
fn run_branches(sources: &[String], props: &str) -> Vec<Branch> {
    common::init();
    let desc: Vec<String> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{s} ! cbofilter name=c{i} {props} ! fakesink"))
        .collect();
    let pipeline = gst::parse::launch(&desc.join("  "))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let out: Vec<Arc<Mutex<Branch>>> = (0..sources.len()).map(|_| Default::default()).collect();
    for (i, branch) in out.iter().enumerate() {
        let cbo = pipeline.by_name(&format!("c{i}")).unwrap();
        let b = branch.clone();
        common::on_each_output(&cbo, move |cbo, result| {
            let mut b = b.lock().unwrap();
            b.results.extend(result);
            b.session_ids.push(cbo.property("session-id"));
            b.streams.push(cbo.property("shared-streams"));
        });
    }
    common::play_until_eos(&pipeline);
    for (i, branch) in out.iter().enumerate() {
        let stats = pipeline
            .by_name(&format!("c{i}"))
            .unwrap()
            .property::<gst::Structure>("stats");
        branch.lock().unwrap().batches = (
            stats.get("shared-batches").unwrap(),
            stats.get("shared-batched-frames").unwrap(),
        );
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out.iter().map(|b| b.lock().unwrap().clone()).collect()
}

/// Four elements on four different clips in one pipeline: one session (one id, four streams),
/// and per frame the same labels and scores as four elements with their own sessions.
#[test]
fn four_elements_share_one_session_and_match_unshared_runs() {
    let clips = [
        bottle_clip(),
        assets().join("video/dev-slideshow.mp4"),
        assets().join("video/dev-slideshow-fast.mp4"),
        assets().join("video/dev-slideshow-long.mp4"),
    ];
    let sources: Vec<String> = clips.iter().map(|c| clip_source(c, 150)).collect();
    let shared = run_branches(&sources, "threads=1");
    let unshared = run_branches(&sources, "threads=1 shared-session=false");

    let id = shared[0].session_ids[0];
    assert!(id > 0);
    for (i, b) in shared.iter().enumerate() {
        assert!(b.results.len() >= 150, "branch {i}: {}", b.results.len());
        assert!(
            b.session_ids.iter().all(|&s| s == id),
            "branch {i}: {:?}",
            b.session_ids
        );
        assert_eq!(b.streams.iter().max(), Some(&4), "branch {i}");
    }
    let own: Vec<u64> = unshared.iter().map(|b| b.session_ids[0]).collect();
    let mut distinct = own.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "unshared elements share a session: {own:?}"
    );
    assert!(unshared.iter().all(|b| b.streams.iter().all(|&s| s == 1)));
    // The group's counters: every frame of the four streams ran in some batch, and frames did
    // run together (more frames than batches); unshared elements run no shared batches.
    let (batches, frames) = shared[0].batches;
    assert!(shared.iter().all(|b| b.batches == (batches, frames)));
    let total: usize = shared.iter().map(|b| b.results.len()).sum();
    assert_eq!(frames as usize, total);
    assert!(frames > batches, "{frames} frames in {batches} batches");
    eprintln!("{frames} frames in {batches} batches");
    assert!(unshared.iter().all(|b| b.batches == (0, 0)));

    let mut worst = 0.0f64;
    for (i, (s, u)) in shared.iter().zip(&unshared).enumerate() {
        // The first 150 frames are the same frames in both runs (around identity's EOS a few
        // more may pass, not necessarily the same ones).
        for (a, b) in s.results.iter().zip(&u.results).take(150) {
            assert_eq!(a.frame, b.frame);
            assert_eq!(a.class_id, b.class_id, "branch {i} frame {}", a.frame);
            worst = worst.max((a.raw_confidence - b.raw_confidence).abs());
        }
    }
    eprintln!("largest top-1 score difference shared vs unshared: {worst:e}");
    assert!(worst <= 1e-4, "scores differ by {worst}");
}

/// A stream that delivers nothing (its source stalled) does not hold the other back: each batch
/// waits at most batch-timeout for it, so the other runs to its end.
#[test]
fn a_stalled_stream_does_not_stall_the_others() {
    common::init();
    let stalled = gst::parse::launch(
        "appsrc name=src caps=video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         cbofilter name=stalled model-instance-id=stall-test ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    // PAUSED starts the element (it joins the session) and then waits for a frame that never
    // comes.
    let _ = stalled.set_state(gst::State::Playing);
    let streams = Arc::new(Mutex::new(Vec::<u32>::new()));
    let s = streams.clone();
    let run = run_with(
        &format!(
            "{} ! cbofilter name=cbo model-instance-id=stall-test batch-timeout=5000 ! fakesink",
            clip_source(&bottle_clip(), 100)
        ),
        move |pipeline| {
            common::on_each_output(&pipeline.by_name("cbo").unwrap(), move |c, _| {
                s.lock().unwrap().push(c.property("shared-streams"));
            });
        },
    );
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.results.len() >= 100, "{}", run.results.len());
    assert_eq!(run.results.len(), run.frames_in);
    // Every frame ran while the stalled element was a member (so each waited for it, bounded).
    assert!(streams.lock().unwrap().iter().all(|&n| n == 2));
    assert_eq!(
        stalled
            .by_name("stalled")
            .unwrap()
            .property::<u32>("shared-streams"),
        1
    );
    stalled.set_state(gst::State::Null).unwrap();
}

/// An element set to NULL mid-run leaves the session: the others keep running, to their end,
/// and from then on the session counts one stream fewer.
#[test]
fn an_element_set_to_null_mid_run_leaves_the_others_running() {
    common::init();
    let other = gst::parse::launch(&format!(
        "{} ! cbofilter name=other model-instance-id=null-test ! fakesink",
        clip_source(&assets().join("video/dev-slideshow.mp4"), 1500)
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    other.set_state(gst::State::Playing).unwrap();
    let streams = Arc::new(Mutex::new(Vec::<(u64, u32)>::new()));
    let s = streams.clone();
    let other_in_probe = other.clone();
    let run = run_with(
        &format!(
            "{} ! cbofilter name=cbo model-instance-id=null-test ! fakesink",
            clip_source(&bottle_clip(), 120)
        ),
        move |pipeline| {
            common::on_each_output(&pipeline.by_name("cbo").unwrap(), move |c, result| {
                let frame = result.map(|r| r.frame).unwrap_or_default();
                s.lock()
                    .unwrap()
                    .push((frame, c.property("shared-streams")));
                if frame == 30 {
                    // The other element leaves while this stream is running.
                    other_in_probe.set_state(gst::State::Null).unwrap();
                }
            });
        },
    );
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.results.len() >= 120, "{}", run.results.len());
    assert_eq!(run.results.len(), run.frames_in);
    let streams = streams.lock().unwrap();
    assert!(
        streams.iter().any(|&(f, n)| f < 30 && n == 2),
        "{streams:?}"
    );
    assert!(
        streams
            .iter()
            .filter(|(f, _)| *f > 30)
            .all(|&(_, n)| n == 1),
        "{streams:?}"
    );
    assert_eq!(other.current_state(), gst::State::Null);
}

/// Elements naming one `model-instance-id` must ask for the same session: another model is an
/// error naming both.
#[test]
fn one_model_instance_id_with_two_models_is_an_error() {
    common::init();
    let first = gst::parse::launch(
        "appsrc caps=video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         cbofilter model-instance-id=mismatch-test ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let _ = first.set_state(gst::State::Paused);
    let other = assets().join("models/mobilenet-v2-1.0-int8-224.onnx");
    let run = common::run_pipeline(&format!(
        "videotestsrc num-buffers=2 ! cbofilter name=cbo model-instance-id=mismatch-test model=\"{}\" ! fakesink",
        other.display()
    ));
    let (err, _) = run.error.expect("an error");
    let text = err.message().to_string();
    assert!(text.contains("model-instance-id 'mismatch-test'"), "{text}");
    assert!(
        text.contains("mobilenet-v2-1.0-int8-224.onnx")
            && text.contains("efficientnet-lite0-int8pt-224.onnx"),
        "{text}"
    );
    assert!(err.matches(gst::LibraryError::Settings), "{err}");
    first.set_state(gst::State::Null).unwrap();
}

/// `cbo bench --streams N --json` runs shared, unshared and the bare batch loop and reports every
/// field the documentation quotes (the numbers themselves are for docs/evaluation.md).
#[test]
fn bench_streams_reports_shared_unshared_and_bare() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cbo"))
        .args([
            "bench",
            "--streams",
            "2",
            "--frames",
            "12",
            "--rounds",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["streams"], 2);
    for field in [
        "aggregate_fps",
        "bare_batch_fps",
        "ratio",
        "unshared_fps",
        "rss_mib_per_extra_stream",
        "latency_p50_ms",
        "latency_p99_ms",
        "paced_fps",
        "paced_latency_p99_ms",
        "paced_session_p99_ms",
        "paced_unshared_latency_p99_ms",
        "batch_inference_ms",
        "paced_latency_bound_ms",
    ] {
        assert!(r[field].is_number(), "{field} missing in {r}");
    }
    for field in [
        "aggregate_fps",
        "bare_batch_fps",
        "unshared_fps",
        "latency_p50_ms",
        "paced_latency_p50_ms",
        "paced_session_p50_ms",
        "paced_unshared_latency_p50_ms",
        "batch_inference_ms",
    ] {
        assert!(r[field].as_f64().unwrap() > 0.0, "{field} in {r}");
    }
    let f = |k: &str| r[k].as_f64().unwrap();
    // Paced at the clip's own rate (29.8 frames/s).
    assert!((f("paced_fps") - 29.8).abs() < 0.1, "{r}");
    // A frame's time in the session is part of its time in the element, frame by frame, so
    // also in every percentile.
    assert!(
        f("paced_session_p50_ms") <= f("paced_latency_p50_ms"),
        "{r}"
    );
    assert!(
        f("paced_session_p99_ms") <= f("paced_latency_p99_ms"),
        "{r}"
    );
    assert!(
        (f("paced_latency_bound_ms") - f("batch_inference_ms") - 2.0).abs() < 1e-9,
        "bound = batch-timeout (2000 us) + one batch inference: {r}"
    );
}
