//! Hold mode under the stream's control events, through real pipelines with a real `cboserver`:
//! a flushing seek while frames wait for the server, EOS while frames are held, and a caps
//! change mid-stream.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::server::{Server, props};
use common::{bottle_clip, init};
use gst::prelude::*;
use gstcbo::{CboResult, Decision};

/// What crossed a pad, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Buffer {
        pts: Option<gst::ClockTime>,
        result: Option<CboResult>,
    },
    FlushStop,
    Caps(gst::Caps),
    Eos,
}

fn record(pad: &gst::Pad, into: Arc<Mutex<Vec<Seen>>>) {
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_BOTH | gst::PadProbeType::EVENT_FLUSH,
        move |_, info| {
            let seen = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => Some(Seen::Buffer {
                    pts: b.pts(),
                    result: CboResult::from_buffer(b).map(|r| r.unwrap()),
                }),
                Some(gst::PadProbeData::Event(e)) => match e.view() {
                    gst::EventView::FlushStop(_) => Some(Seen::FlushStop),
                    gst::EventView::Caps(c) => Some(Seen::Caps(c.caps_owned())),
                    gst::EventView::Eos(_) => Some(Seen::Eos),
                    _ => None,
                },
                _ => None,
            };
            if let Some(s) = seen {
                into.lock().unwrap().push(s);
            }
            gst::PadProbeReturn::Ok
        },
    );
}

/// Runs `pipeline` to EOS (panicking on an error), calling `on_frame(n)` on another thread
/// each time the n-th buffer has entered the element named `cbo`.
fn run(pipeline: &gst::Pipeline, mut on_frame: impl FnMut(usize) + Send + 'static) {
    let (tx, rx) = mpsc::channel::<usize>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let probe_tx = tx.clone();
    let entered = std::sync::atomic::AtomicUsize::new(0);
    pipeline
        .by_name("cbo")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let n = entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if let Some(tx) = probe_tx.lock().unwrap().as_ref() {
                let _ = tx.send(n);
            }
            gst::PadProbeReturn::Ok
        });
    let watcher = std::thread::spawn(move || {
        for n in rx {
            on_frame(n);
        }
    });
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    loop {
        let msg = bus
            .timed_pop(gst::ClockTime::from_seconds(120))
            .expect("the pipeline ends within 120 s");
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                panic!("pipeline error: {} ({:?})", e.error(), e.debug())
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    // No more frames: the watcher's channel closes.
    tx.lock().unwrap().take();
    watcher.join().unwrap();
}

/// What went in and came out of `cbofilter policy=all` on the bottle clip, every frame to the
/// server and held for its answer; `before` goes in front of the element.
type Recorded = Arc<Mutex<Vec<Seen>>>;
fn recorded_clip(server: &Server, before: &str) -> (gst::Pipeline, Recorded, Recorded) {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! {before} cbofilter name=cbo {} ! fakesink sync=false",
        bottle_clip().display(),
        props(&server.addr, &server.cert, "policy=all deadline=5000")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let cbo = pipeline.by_name("cbo").unwrap();
    let (into, out) = (Arc::default(), Arc::default());
    record(&cbo.static_pad("sink").unwrap(), Arc::clone(&into));
    record(&cbo.static_pad("src").unwrap(), Arc::clone(&out));
    (pipeline, into, out)
}

fn buffers(seen: &[Seen]) -> Vec<(Option<gst::ClockTime>, Option<&CboResult>)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Buffer { pts, result } => Some((*pts, result.as_ref())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_flushing_seek_while_frames_are_held_continues_from_the_new_position() {
    init();
    let server = Server::start(None);
    // Every frame goes to the server and waits for its answer: frames are held when the seek
    // comes (the file source waits for room in the window of 8).
    let (pipeline, into, out) = recorded_clip(&server, "");
    let target = gst::ClockTime::from_seconds(1);
    let p = pipeline.clone();
    let seeked = Arc::new(Mutex::new(false));
    let did_seek = seeked.clone();
    run(&pipeline, move |n| {
        let mut seeked = did_seek.lock().unwrap();
        if n >= 12 && !*seeked {
            *seeked = true;
            // To 1 s, and on for 1.5 s.
            p.seek(
                1.0,
                gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
                gst::SeekType::Set,
                target,
                gst::SeekType::Set,
                target + gst::ClockTime::from_mseconds(1500),
            )
            .unwrap();
        }
    });
    assert!(*seeked.lock().unwrap());
    let into = into.lock().unwrap().clone();
    let out = out.lock().unwrap().clone();
    let split = |seen: &[Seen]| {
        let at = seen
            .iter()
            .position(|s| *s == Seen::FlushStop)
            .expect("flushed");
        (seen[..at].to_vec(), seen[at..].to_vec())
    };
    let (in_before, in_after) = split(&into);
    let (out_before, out_after) = split(&out);
    // Frames were held at the flush, and were dropped with it.
    assert!(
        buffers(&out_before).len() < buffers(&in_before).len(),
        "{} out of {} before the flush",
        buffers(&out_before).len(),
        buffers(&in_before).len()
    );
    // After it: exactly the frames that entered after it, in order, none from before the seek.
    let in_after = buffers(&in_after);
    let out_after = buffers(&out_after);
    assert!(
        in_after.len() > 30,
        "{} frames after the seek",
        in_after.len()
    );
    assert_eq!(
        in_after.iter().map(|b| b.0).collect::<Vec<_>>(),
        out_after.iter().map(|b| b.0).collect::<Vec<_>>()
    );
    let first_after = out_after[0].1.unwrap().frame;
    for (k, (pts, result)) in out_after.iter().enumerate() {
        assert!(
            pts.unwrap() + gst::ClockTime::from_mseconds(1) >= target,
            "{pts:?}"
        );
        let r = result.expect("every frame has its meta");
        assert_eq!(r.frame, first_after + k as u64, "in order, none lost");
    }
    // Offloading went on: the server's answers label the frames after the seek.
    let answered = out_after
        .iter()
        .filter(|b| b.1.unwrap().decision == Decision::Offload)
        .count();
    assert!(
        answered * 2 > out_after.len(),
        "{answered} of {}",
        out_after.len()
    );
    assert_eq!(out.last(), Some(&Seen::Eos));
}

#[test]
fn eos_waits_for_the_held_frames_then_goes_on() {
    init();
    let server = Server::start(None);
    let (pipeline, into, out) = recorded_clip(&server, "identity eos-after=20 !");
    run(&pipeline, |_| {});
    let into = into.lock().unwrap().clone();
    let out = out.lock().unwrap().clone();
    let n = buffers(&into).len();
    assert!(n >= 20);
    // EOS left last, after every frame; each frame sent before it came left with the server's
    // answer (held until it came, none late). Frames before the connection was up stay on the
    // device (offline).
    assert_eq!(out.last(), Some(&Seen::Eos));
    let out = buffers(&out);
    assert_eq!(out.len(), n);
    let mut answered = 0;
    for (k, (_, r)) in out.iter().enumerate() {
        let r = r.unwrap();
        assert_eq!(r.frame, k as u64);
        assert!(
            [Decision::Offload, Decision::Offline].contains(&r.decision),
            "frame {k}: {}",
            r.decision
        );
        answered += usize::from(r.decision == Decision::Offload);
    }
    assert!(answered >= n / 2, "{answered} of {n} answered");
}

#[test]
fn a_caps_change_mid_stream_reaches_downstream_between_the_right_frames() {
    init();
    let server = Server::start(None);
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time ! cbofilter name=cbo {} ! fakesink sync=false",
        props(&server.addr, &server.cert, "policy=all deadline=5000")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let cbo = pipeline.by_name("cbo").unwrap();
    let out = Arc::default();
    record(&cbo.static_pad("src").unwrap(), Arc::clone(&out));
    let caps = |w: u32, h: u32| {
        gst_video::VideoCapsBuilder::new()
            .format(gst_video::VideoFormat::Rgb)
            .width(w as i32)
            .height(h as i32)
            .framerate(gst::Fraction::new(30, 1))
            .build()
    };
    let (small, large) = (caps(160, 120), caps(320, 240));
    // Frames are fed once the server connection is up (before it, they would stay on the
    // device as offline).
    let (connected_tx, connected) = mpsc::channel();
    let connected_tx = Mutex::new(connected_tx);
    pipeline.bus().unwrap().set_sync_handler(move |_, msg| {
        if let gst::MessageView::Element(e) = msg.view()
            && e.structure().is_some_and(|s| s.name() == "cbo-connection")
        {
            let _ = connected_tx.lock().unwrap().send(());
        }
        gst::BusSyncReply::Pass
    });
    let feed = {
        let (small, large) = (small.clone(), large.clone());
        std::thread::spawn(move || {
            connected.recv().unwrap();
            for (k, (c, w, h)) in [(&small, 160, 120), (&large, 320, 240)]
                .into_iter()
                .flat_map(|(c, w, h)| std::iter::repeat_n((c, w, h), 6))
                .enumerate()
            {
                let mut buf = gst::Buffer::from_mut_slice(vec![(k * 20) as u8; w * h * 3]);
                buf.get_mut()
                    .unwrap()
                    .set_pts(gst::ClockTime::from_mseconds(k as u64 * 33));
                let sample = gst::Sample::builder().buffer(&buf).caps(c).build();
                src.push_sample(&sample).unwrap();
            }
            src.end_of_stream().unwrap();
        })
    };
    run(&pipeline, |_| {});
    feed.join().unwrap();
    let out = out.lock().unwrap().clone();
    // Caps, six frames at 160x120, caps, six at 320x240, each with its answer, then EOS.
    let shape: Vec<String> = out
        .iter()
        .map(|s| match s {
            Seen::Caps(c) if *c == small => "small".into(),
            Seen::Caps(c) if *c == large => "large".into(),
            Seen::Buffer { result, .. } => result.as_ref().unwrap().decision.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    let mut expected = vec!["small".to_string()];
    expected.extend(std::iter::repeat_n("offload".to_string(), 6));
    expected.push("large".into());
    expected.extend(std::iter::repeat_n("offload".to_string(), 6));
    expected.push("Eos".into());
    assert_eq!(shape, expected);
}

#[test]
fn a_property_set_in_ready_applies_at_the_next_start() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=3 ! video/x-raw,width=160,height=120 ! cbofilter name=cbo ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let cbo = pipeline.by_name("cbo").unwrap();
    let out = Arc::default();
    record(&cbo.static_pad("src").unwrap(), Arc::clone(&out));
    pipeline.set_state(gst::State::Ready).unwrap();
    cbo.set_property("top-k", 2u32);
    run(&pipeline, |_| {});
    let out = out.lock().unwrap().clone();
    let out = buffers(&out);
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|(_, r)| r.unwrap().top_classes.len() == 2));
}
