//! The element's queue under the stream's control events, through real pipelines: offloading
//! with a real `cboserver` (a flushing seek while frames wait for the server, EOS while frames
//! are held, a caps change mid-stream), and device only, where the streaming thread pre-processes
//! the next frame while the inference thread classifies this one (results identical to
//! classifying frame by frame on one thread, a flushing seek, EOS, caps, NULL with frames in
//! flight, and a model failing mid-stream).

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{Server, props};
use common::{assets, bottle_clip, init};
use gst::prelude::*;
use gstcbo::inference::{Classifier, ModelConfig};
use gstcbo::postprocess::Classification;
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

/// What went in and came out of `cbofilter` (with `element_props`) on the bottle clip; `before`
/// goes in front of the element.
type Recorded = Arc<Mutex<Vec<Seen>>>;
fn recorded(before: &str, element_props: &str) -> (gst::Pipeline, Recorded, Recorded) {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! {before} cbofilter name=cbo {element_props} ! fakesink sync=false",
        bottle_clip().display(),
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

/// [`recorded`] with `policy=all`: every frame to the server and held for its answer.
fn recorded_clip(server: &Server, before: &str) -> (gst::Pipeline, Recorded, Recorded) {
    recorded(
        before,
        &props(&server.addr, &server.cert, "policy=all deadline=5000"),
    )
}

/// What crossed the element's pads before and after a flushing seek to 1 s (and on for 1.5 s)
/// made once the 12th frame has entered: (in before, in after, out before, out after).
type SeekSplit = (Vec<Seen>, Vec<Seen>, Vec<Seen>, Vec<Seen>);
fn seek_mid_stream(pipeline: &gst::Pipeline, into: &Recorded, out: &Recorded) -> SeekSplit {
    let p = pipeline.clone();
    let mut seeked = false;
    run(pipeline, move |n| {
        if n >= 12 && !seeked {
            seeked = true;
            p.seek(
                1.0,
                gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
                gst::SeekType::Set,
                SEEK_TARGET,
                gst::SeekType::Set,
                SEEK_TARGET + gst::ClockTime::from_mseconds(1500),
            )
            .unwrap();
        }
    });
    let split = |seen: &[Seen]| {
        let at = seen
            .iter()
            .position(|s| *s == Seen::FlushStop)
            .expect("flushed");
        (seen[..at].to_vec(), seen[at..].to_vec())
    };
    let (in_before, in_after) = split(&into.lock().unwrap());
    let (out_before, out_after) = split(&out.lock().unwrap());
    (in_before, in_after, out_before, out_after)
}

const SEEK_TARGET: gst::ClockTime = gst::ClockTime::from_seconds(1);

/// After a flushing seek: exactly the frames that entered after it leave, in order, none from
/// before the seek, each with its result; returns the results.
fn assert_after_seek(in_after: &[Seen], out_after: &[Seen]) -> Vec<CboResult> {
    let (in_after, out_after) = (buffers(in_after), buffers(out_after));
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
    out_after
        .iter()
        .enumerate()
        .map(|(k, (pts, r))| {
            assert!(
                pts.unwrap() + gst::ClockTime::from_mseconds(1) >= SEEK_TARGET,
                "{pts:?}"
            );
            let r = r.expect("every frame has its meta");
            assert_eq!(r.frame, first_after + k as u64, "in order, none lost");
            r.clone()
        })
        .collect()
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
    let (in_before, in_after, out_before, out_after) = seek_mid_stream(&pipeline, &into, &out);
    // Frames were held at the flush, and were dropped with it.
    assert!(
        buffers(&out_before).len() < buffers(&in_before).len(),
        "{} out of {} before the flush",
        buffers(&out_before).len(),
        buffers(&in_before).len()
    );
    // `stats` counts them: every frame that entered before the flush and never left.
    let stats = pipeline
        .by_name("cbo")
        .unwrap()
        .property::<gst::Structure>("stats");
    assert_eq!(
        stats.get::<u64>("flushed").unwrap(),
        (buffers(&in_before).len() - buffers(&out_before).len()) as u64,
        "{stats}"
    );
    let after = assert_after_seek(&in_after, &out_after);
    // Offloading went on: the server's answers label the frames after the seek.
    let answered = after
        .iter()
        .filter(|r| r.decision == Decision::Offload)
        .count();
    assert!(answered * 2 > after.len(), "{answered} of {}", after.len());
    assert_eq!(out_after.last(), Some(&Seen::Eos));
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

/// `src ! cbofilter name=cbo PROPS ! identity eos-after=5 ! fakesink`: identity returns EOS to
/// the element from the 5th frame on, as a sink that has all it wants does. The stream ends as it
/// does with `queue` in the element's place: upstream is told EOS, its EOS event reaches the sink
/// (it used to stay queued behind the stopped output: a hang), and every frame that entered the
/// element left it or is counted `flushed` (those it held when downstream refused: never pushed).
fn downstream_eos_ends_the_stream(src: &str, element_props: &str) {
    init();
    let pipeline = gst::parse::launch(&format!(
        "{src} ! cbofilter name=cbo {element_props} ! identity eos-after=5 ! fakesink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let cbo = pipeline.by_name("cbo").unwrap();
    let (into, out): (Recorded, Recorded) = (Arc::default(), Arc::default());
    record(&cbo.static_pad("sink").unwrap(), Arc::clone(&into));
    record(&cbo.static_pad("src").unwrap(), Arc::clone(&out));
    let stats = Arc::new(Mutex::new(None));
    let at_eos = Arc::clone(&stats);
    common::stats_at_eos(&cbo, "src", move |st| *at_eos.lock().unwrap() = Some(st));
    // Ends within run's bound (120 s) or fails.
    run(&pipeline, |_| {});
    let (into, out) = (into.lock().unwrap().clone(), out.lock().unwrap().clone());
    assert_eq!(out.last(), Some(&Seen::Eos), "EOS reached downstream");
    let (n_in, out) = (buffers(&into).len(), buffers(&out));
    // identity refused the 5th; upstream stopped once the element passed that on.
    assert!(
        out.len() >= 5 && out.len() <= n_in,
        "{} of {n_in}",
        out.len()
    );
    assert!(
        n_in < 60,
        "upstream went on after downstream's EOS: {n_in} frames"
    );
    for (k, (_, r)) in out.iter().enumerate() {
        assert_eq!(r.expect("every frame has its meta").frame, k as u64);
    }
    let stats = stats.lock().unwrap().take().expect("stats read at EOS");
    let count = |f: &str| stats.get::<u64>(f).unwrap();
    assert_eq!(
        count("frames"),
        out.len() as u64 + count("flushed"),
        "{stats}"
    );
    assert!(count("frames") <= n_in as u64, "{stats}");
}

#[test]
fn device_only_downstream_eos_ends_the_stream() {
    downstream_eos_ends_the_stream(
        "videotestsrc num-buffers=100 ! video/x-raw,width=64,height=48",
        "",
    );
}

#[test]
fn downstream_eos_while_frames_wait_for_the_server_ends_the_stream() {
    let server = Server::start(None);
    // Every frame is sent and waits for its answer (up to 5 s): downstream refuses while frames
    // are held, which are dropped at once rather than held up to their deadline before EOS.
    downstream_eos_ends_the_stream(
        &format!(
            "filesrc location=\"{}\" ! decodebin ! videoconvert",
            bottle_clip().display()
        ),
        &props(&server.addr, &server.cert, "policy=all deadline=5000"),
    );
}

/// What the test sink of [`device_only_a_new_segment_after_downstream_eos_resumes`] got.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    /// A frame it took (its PTS in ms), or refused with EOS.
    Taken(u64),
    Refused(u64),
    Segment,
    Eos,
}

/// A source pad linked into `cbo` and `sink` linked out of it, both active and `cbo` playing:
/// the test pushes buffers and events by hand. Returns the source pad and the 64x48 I420 frames'
/// video info.
fn drive_by_pads(cbo: &gst::Element, sink: &gst::Pad) -> (gst::Pad, gst_video::VideoInfo) {
    let src = gst::Pad::builder(gst::PadDirection::Src).build();
    src.link(&cbo.static_pad("sink").unwrap()).unwrap();
    cbo.static_pad("src").unwrap().link(sink).unwrap();
    sink.set_active(true).unwrap();
    src.set_active(true).unwrap();
    cbo.set_state(gst::State::Playing).unwrap();
    let caps = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 64, 48)
        .build()
        .unwrap();
    (src, caps)
}

/// Downstream returns EOS, then upstream starts a new segment without a flush (as a
/// concatenating or looping source does): the element returns EOS upstream, drops the frames it
/// held, and takes frames again from the new segment on, none from before it; upstream's EOS
/// after downstream refused again reaches downstream. Driven pad by pad from this thread, each
/// step waiting on the last one's result.
#[test]
fn device_only_a_new_segment_after_downstream_eos_resumes() {
    init();
    let cbo = gst::ElementFactory::make("cbofilter").build().unwrap();
    let (tx, got) = mpsc::channel::<Got>();
    let tx = Arc::new(Mutex::new(tx));
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx2, taken2) = (Arc::clone(&tx), Arc::clone(&taken));
    // Takes two frames per segment, then returns EOS until the next segment.
    let sink = gst::Pad::builder(gst::PadDirection::Sink)
        .chain_function(move |_, _, buffer| {
            let pts = buffer.pts().unwrap().mseconds();
            assert!(CboResult::from_buffer(&buffer).is_some(), "no meta");
            if taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                tx.lock().unwrap().send(Got::Taken(pts)).unwrap();
                Ok(gst::FlowSuccess::Ok)
            } else {
                tx.lock().unwrap().send(Got::Refused(pts)).unwrap();
                Err(gst::FlowError::Eos)
            }
        })
        .event_function(move |_, _, event| {
            match event.type_() {
                gst::EventType::Segment => {
                    taken2.store(0, std::sync::atomic::Ordering::SeqCst);
                    tx2.lock().unwrap().send(Got::Segment).unwrap();
                }
                gst::EventType::Eos => tx2.lock().unwrap().send(Got::Eos).unwrap(),
                _ => {}
            }
            true
        })
        .build();
    let (src, caps) = drive_by_pads(&cbo, &sink);
    let segment = || gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new());
    assert!(src.push_event(gst::event::StreamStart::new("downstream-eos")));
    assert!(src.push_event(gst::event::Caps::new(&caps.to_caps().unwrap())));
    assert!(src.push_event(segment()));
    let mut pts = 0;
    // Pushes frames until the element returns EOS (within the few frames it holds).
    let push_until_eos = |pts: &mut u64| {
        for _ in 0..20 {
            let mut buffer = gst::Buffer::from_mut_slice(vec![128u8; caps.size()]);
            buffer
                .get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(*pts));
            *pts += 33;
            match src.push(buffer) {
                Ok(_) => {}
                Err(gst::FlowError::Eos) => return,
                Err(e) => panic!("{e:?}"),
            }
        }
        panic!("the element never returned downstream's EOS");
    };
    push_until_eos(&mut pts);
    let resumed_at = pts;
    assert!(src.push_event(segment()));
    push_until_eos(&mut pts);
    assert!(src.push_event(gst::event::Eos::new()));
    let mut seen = Vec::new();
    loop {
        let g = got
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("EOS never reached downstream: {seen:?}"));
        seen.push(g.clone());
        if g == Got::Eos {
            break;
        }
    }
    // Segment, two frames taken, one refused; the same in the new segment, with frames pushed
    // after it only; EOS.
    let pattern: Vec<_> = seen
        .iter()
        .map(|g| match g {
            Got::Taken(_) => "taken",
            Got::Refused(_) => "refused",
            Got::Segment => "segment",
            Got::Eos => "eos",
        })
        .collect();
    assert_eq!(
        pattern,
        [
            "segment", "taken", "taken", "refused", "segment", "taken", "taken", "refused", "eos"
        ],
        "{seen:?}"
    );
    let first_frame_pts = |from: usize| match seen[from] {
        Got::Taken(p) => p,
        _ => unreachable!(),
    };
    assert_eq!(first_frame_pts(1), 0);
    assert!(first_frame_pts(5) >= resumed_at, "{seen:?}");
    let stats = cbo.property::<gst::Structure>("stats");
    let count = |f: &str| stats.get::<u64>(f).unwrap();
    assert_eq!(count("frames"), 6 + count("flushed"), "{stats}");
    cbo.set_state(gst::State::Null).unwrap();
}

/// Downstream returns EOS for a frame while a SEGMENT (a non-flushing seek, a loop) is already
/// queued behind more frames: as `queue` does, the element drops the frames before the segment
/// only, pushes the segment and the frames after it, and does not return EOS upstream for the
/// new segment. Driven pad by pad: the sink holds the first frame until the frames and the
/// segment behind it are queued, then refuses it.
#[test]
fn device_only_a_segment_queued_behind_frames_survives_downstream_eos() {
    init();
    let cbo = gst::ElementFactory::make("cbofilter").build().unwrap();
    let (tx, got) = mpsc::channel::<Got>();
    let tx = Arc::new(Mutex::new(tx));
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let tx2 = Arc::clone(&tx);
    // The first frame: reported (as refused) on arrival, held until the test releases it, then
    // refused. Every other: taken.
    let sink = gst::Pad::builder(gst::PadDirection::Sink)
        .chain_function(move |_, _, buffer| {
            let pts = buffer.pts().unwrap().mseconds();
            assert!(CboResult::from_buffer(&buffer).is_some(), "no meta");
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                tx.lock().unwrap().send(Got::Refused(pts)).unwrap();
                gate.lock().unwrap().recv().unwrap();
                Err(gst::FlowError::Eos)
            } else {
                tx.lock().unwrap().send(Got::Taken(pts)).unwrap();
                Ok(gst::FlowSuccess::Ok)
            }
        })
        .event_function(move |_, _, event| {
            match event.type_() {
                gst::EventType::Segment => tx2.lock().unwrap().send(Got::Segment).unwrap(),
                gst::EventType::Eos => tx2.lock().unwrap().send(Got::Eos).unwrap(),
                _ => {}
            }
            true
        })
        .build();
    let (src, caps) = drive_by_pads(&cbo, &sink);
    let segment = || gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new());
    let next = |what: &str| {
        got.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("downstream never got {what}"))
    };
    // Each push returns once the frame is queued in the element (device only, at most two
    // frames queued, which this test never exceeds).
    let push = |pts: u64| {
        let mut buffer = gst::Buffer::from_mut_slice(vec![128u8; caps.size()]);
        buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(pts));
        src.push(buffer)
    };
    assert!(src.push_event(gst::event::StreamStart::new("segment-queued")));
    assert!(src.push_event(gst::event::Caps::new(&caps.to_caps().unwrap())));
    assert!(src.push_event(segment()));
    assert_eq!(next("the first segment"), Got::Segment);
    assert_eq!(push(0), Ok(gst::FlowSuccess::Ok));
    // The sink holds frame 0: frame 33 and a new segment with frame 66 queue behind it.
    assert_eq!(next("frame 0"), Got::Refused(0));
    assert_eq!(push(33), Ok(gst::FlowSuccess::Ok));
    assert!(src.push_event(segment()));
    assert_eq!(push(66), Ok(gst::FlowSuccess::Ok));
    release.send(()).unwrap();
    // Frame 33 is dropped; the segment goes on, and the element does not return EOS upstream
    // for the new segment's frames.
    assert_eq!(next("the second segment"), Got::Segment);
    for pts in [99, 132] {
        assert_eq!(push(pts), Ok(gst::FlowSuccess::Ok), "frame {pts}");
    }
    // Frame 66, queued behind the segment, leaves first.
    for pts in [66, 99, 132] {
        assert_eq!(next("a frame of the new segment"), Got::Taken(pts));
    }
    assert!(src.push_event(gst::event::Eos::new()));
    assert_eq!(next("EOS"), Got::Eos);
    let stats = cbo.property::<gst::Structure>("stats");
    let count = |f: &str| stats.get::<u64>(f).unwrap();
    // Five frames in: four pushed (one refused), one dropped.
    assert_eq!(count("frames"), 5, "{stats}");
    assert_eq!(count("flushed"), 1, "{stats}");
    cbo.set_state(gst::State::Null).unwrap();
}

/// `seen` is: the `small` caps, six frames with `decision`, the `large` caps, six more, EOS.
fn assert_caps_then_six_frames_each(
    seen: &[Seen],
    small: &gst::Caps,
    large: &gst::Caps,
    decision: &str,
) {
    let shape: Vec<String> = seen
        .iter()
        .map(|s| match s {
            Seen::Caps(c) if c == small => "small".into(),
            Seen::Caps(c) if c == large => "large".into(),
            Seen::Buffer { result, .. } => result.as_ref().unwrap().decision.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    let mut want = vec!["small".to_string()];
    want.extend(std::iter::repeat_n(decision.to_string(), 6));
    want.push("large".into());
    want.extend(std::iter::repeat_n(decision.to_string(), 6));
    want.push("Eos".into());
    assert_eq!(shape, want);
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
    assert_caps_then_six_frames_each(&out, &small, &large, "offload");
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

/// The first `n` decoded frames of a clip and their caps.
fn decoded(clip: &std::path::Path, n: usize) -> (Vec<gst::Buffer>, gst::Caps) {
    init();
    gstcbo::tools::decode_frames(clip, n).unwrap()
}

/// Each frame classified in turn on this thread, pre-processing then the model, with the
/// element's default model and settings: what the element computed before it overlapped the two.
fn classified_in_turn(frames: &[(gst::Buffer, gst::Caps)]) -> Vec<Classification> {
    let mut classifier = Classifier::load(&ModelConfig::default()).unwrap();
    frames
        .iter()
        .map(|(buffer, caps)| {
            let info = gst_video::VideoInfo::from_caps(caps).unwrap();
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).unwrap();
            classifier.classify_frame(&frame).unwrap().0
        })
        .collect()
}

/// `appsrc ! cbofilter name=cbo PROPS ! fakesink`: the pipeline, its source, and what will
/// leave the element.
fn fed_element(element_props: &str) -> (gst::Pipeline, gst_app::AppSrc, Recorded) {
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time max-bytes=0 ! cbofilter name=cbo {element_props} ! fakesink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let out = Arc::default();
    record(
        &pipeline.by_name("cbo").unwrap().static_pad("src").unwrap(),
        Arc::clone(&out),
    );
    (pipeline, src, out)
}

/// `appsrc ! cbofilter name=cbo PROPS ! fakesink` fed `frames` (each with its caps) then EOS,
/// run to EOS: what left the element, in order.
fn through_element(frames: &[(gst::Buffer, gst::Caps)], element_props: &str) -> Vec<Seen> {
    init();
    let (pipeline, src, out) = fed_element(element_props);
    pipeline.set_state(gst::State::Paused).unwrap();
    for (k, (buffer, caps)) in frames.iter().enumerate() {
        let mut b = buffer.copy();
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(k as u64 * 33));
        let sample = gst::Sample::builder().buffer(&b).caps(caps).build();
        src.push_sample(&sample).unwrap();
    }
    src.end_of_stream().unwrap();
    run(&pipeline, |_| {});
    out.lock().unwrap().clone()
}

/// The result of every buffer in `seen`, checking that they are the frames pushed, in order,
/// each once (frame index and timestamp), with EOS after the last.
fn in_order(seen: &[Seen], n: usize) -> Vec<CboResult> {
    assert_eq!(seen.last(), Some(&Seen::Eos), "EOS leaves last");
    let out = buffers(seen);
    assert_eq!(out.len(), n, "every frame out, none twice");
    out.iter()
        .enumerate()
        .map(|(k, (pts, r))| {
            let r = r.expect("every frame has its meta").clone();
            assert_eq!(r.frame, k as u64, "in order");
            assert_eq!(*pts, Some(gst::ClockTime::from_mseconds(k as u64 * 33)));
            r
        })
        .collect()
}

fn assert_same(r: &CboResult, c: &Classification) {
    assert_eq!(r.class_id, c.class_id, "frame {}", r.frame);
    assert_eq!(r.confidence, c.confidence, "frame {}", r.frame);
    assert_eq!(r.raw_confidence, c.confidence, "frame {}", r.frame);
    assert_eq!(r.top_classes, c.top_classes, "frame {}", r.frame);
    let scores: Vec<f64> = c.top_scores.iter().map(|&v| v as f64).collect();
    assert_eq!(r.top_scores, scores, "frame {}", r.frame);
    assert_eq!(r.decision, Decision::Device);
}

#[test]
fn device_only_results_match_classifying_each_frame_in_turn() {
    let (frames, caps) = decoded(&assets().join("video/dev-slideshow-fast.mp4"), 300);
    let frames: Vec<_> = frames.into_iter().map(|b| (b, caps.clone())).collect();
    let expected = classified_in_turn(&frames);
    let classes: std::collections::HashSet<i32> = expected.iter().map(|c| c.class_id).collect();
    assert!(
        classes.len() >= 5,
        "a varied clip: {} classes",
        classes.len()
    );
    // Shared session (the default, one member: it runs its frames itself) and a session of its
    // own; every frame queued before the clock runs, so the streaming thread is always ahead.
    for element_props in ["", "shared-session=false"] {
        let out = in_order(&through_element(&frames, element_props), frames.len());
        for (r, c) in out.iter().zip(&expected) {
            assert_same(r, c);
        }
    }
}

#[test]
fn device_only_a_caps_change_applies_to_the_frames_after_it() {
    let caps = |w: i32, h: i32| {
        gst_video::VideoCapsBuilder::new()
            .format(gst_video::VideoFormat::Rgb)
            .width(w)
            .height(h)
            .framerate(gst::Fraction::new(30, 1))
            .build()
    };
    let (small, large) = (caps(160, 120), caps(320, 240));
    // Different content per frame, so a frame read with the other caps would give another
    // result (or not map at all).
    let frames: Vec<(gst::Buffer, gst::Caps)> = [(&small, 160, 120), (&large, 320, 240)]
        .into_iter()
        .flat_map(|(c, w, h)| std::iter::repeat_n((c, w, h), 6))
        .enumerate()
        .map(|(k, (c, w, h))| {
            let data: Vec<u8> = (0..w * h * 3)
                .map(|i| ((i * (k + 1)) % 251) as u8)
                .collect();
            (gst::Buffer::from_mut_slice(data), c.clone())
        })
        .collect();
    let expected = classified_in_turn(&frames);
    let seen = through_element(&frames, "");
    assert_caps_then_six_frames_each(&seen, &small, &large, "device");
    for (r, c) in in_order(&seen, frames.len()).iter().zip(&expected) {
        assert_same(r, c);
    }
}

#[test]
fn device_only_a_flushing_seek_mid_stream_leaves_nothing_stale() {
    init();
    let (pipeline, into, out) = recorded("", "");
    let (in_before, in_after, out_before, out_after) = seek_mid_stream(&pipeline, &into, &out);
    // Before the flush: what left did so in order, and nothing that had not entered.
    let (in_before, out_before) = (buffers(&in_before), buffers(&out_before));
    assert!(out_before.len() <= in_before.len());
    for (k, (pts, r)) in out_before.iter().enumerate() {
        assert_eq!(*pts, in_before[k].0);
        assert_eq!(r.unwrap().frame, k as u64);
    }
    // After it: exactly the frames that entered after it, each classified on the device.
    for r in assert_after_seek(&in_after, &out_after) {
        assert_eq!(r.decision, Decision::Device);
    }
    assert_eq!(out_after.last(), Some(&Seen::Eos));
}

#[test]
fn device_only_eos_from_upstream_drains_every_frame_first() {
    init();
    // identity sends EOS right behind the 40th frame, while the last frames are still in the
    // element.
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! identity eos-after=40 ! cbofilter name=cbo ! fakesink sync=false",
        bottle_clip().display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let cbo = pipeline.by_name("cbo").unwrap();
    let (into, out): (Recorded, Recorded) = (Arc::default(), Arc::default());
    record(&cbo.static_pad("sink").unwrap(), Arc::clone(&into));
    record(&cbo.static_pad("src").unwrap(), Arc::clone(&out));
    run(&pipeline, |_| {});
    let into = into.lock().unwrap().clone();
    let out = out.lock().unwrap().clone();
    let n = buffers(&into).len();
    assert!(n >= 40);
    assert_eq!(out.last(), Some(&Seen::Eos));
    let out = buffers(&out);
    assert_eq!(out.len(), n);
    for (k, ((pts, r), (pts_in, _))) in out.iter().zip(buffers(&into)).enumerate() {
        assert_eq!(*pts, pts_in);
        assert_eq!(r.unwrap().frame, k as u64);
    }
}

/// Sets `pipeline` to `state` on another thread; panics if that does not return within 60 s
/// (a hang, not a slow machine: it takes milliseconds).
fn set_state_or_hang(pipeline: &gst::Pipeline, state: gst::State) -> gst::StateChangeSuccess {
    let (tx, rx) = mpsc::channel();
    let p = pipeline.clone();
    std::thread::spawn(move || {
        let _ = tx.send(p.set_state(state));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("set_state({state:?}) hangs"))
        .unwrap()
}

#[test]
fn device_only_null_mid_stream_with_frames_in_flight_then_a_clean_restart() {
    init();
    for element_props in ["", "shared-session=false"] {
        // Static pads, so that the same pipeline plays again after NULL.
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,width=640,height=360 ! cbofilter name=cbo {element_props} ! fakesink sync=false"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let cbo = pipeline.by_name("cbo").unwrap();
        // Stop once the 30th frame has entered: the frames before it are in the model, queued
        // or leaving.
        let (entered_tx, entered) = mpsc::channel();
        let entered_tx = Mutex::new(Some(entered_tx));
        let count = std::sync::atomic::AtomicUsize::new(0);
        let probe = cbo
            .static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 30
                    && let Some(tx) = entered_tx.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
                gst::PadProbeReturn::Ok
            })
            .unwrap();
        set_state_or_hang(&pipeline, gst::State::Playing);
        entered
            .recv_timeout(Duration::from_secs(120))
            .expect("30 frames entered");
        set_state_or_hang(&pipeline, gst::State::Null);
        cbo.static_pad("sink").unwrap().remove_probe(probe);
        // Started again: from frame 0, every frame once, in order, nothing left from before.
        let out = Arc::default();
        record(&cbo.static_pad("src").unwrap(), Arc::clone(&out));
        run(&pipeline, |_| {});
        let out = out.lock().unwrap().clone();
        assert_eq!(out.last(), Some(&Seen::Eos));
        let out = buffers(&out);
        assert_eq!(out.len(), 60, "{element_props}");
        for (k, (_, r)) in out.iter().enumerate() {
            assert_eq!(r.unwrap().frame, k as u64, "{element_props}");
        }
    }
}

#[test]
fn a_model_failing_mid_stream_is_an_element_error_and_a_flow_error_upstream() {
    fails_on_bright_frames(
        common::onnx::fails_unless_black_model(32),
        "inference failed",
    );
}

/// NaN scores are no label: the frame is not passed on with a NaN confidence (which no policy
/// reads right) but stops the stream like a model that fails.
#[test]
fn a_model_scoring_nan_mid_stream_is_an_element_error_not_a_nan_confidence() {
    fails_on_bright_frames(common::onnx::nan_unless_black_model(32), "non-finite score");
}

/// Ten black frames, which `model` classifies as class 0, then ten white ones, on which it fails
/// with an element error containing `message`.
fn fails_on_bright_frames(model_bytes: Vec<u8>, message: &str) {
    init();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("fails-unless-black.onnx");
    std::fs::write(&model, model_bytes).unwrap();
    let (pipeline, src, out) = fed_element(&format!(
        "model=\"{}\" input-mean=0 input-std=1",
        model.display()
    ));
    let caps = gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Rgb)
        .width(32)
        .height(32)
        .framerate(gst::Fraction::new(30, 1))
        .build();
    src.set_caps(Some(&caps));
    set_state_or_hang(&pipeline, gst::State::Playing);
    // Ten black frames the model classifies, then white ones it fails on.
    for k in 0..20u64 {
        let v = if k < 10 { 0 } else { 255 };
        let mut b = gst::Buffer::from_mut_slice(vec![v; 32 * 32 * 3]);
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(k * 33));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    // The element's error, then the source's: its push returned the flow error, on which it
    // stops and sends EOS, which leaves the element behind the frames classified before.
    let bus = pipeline.bus().unwrap();
    let mut errors = Vec::new();
    loop {
        let msg = bus
            .timed_pop(gst::ClockTime::from_seconds(120))
            .expect("the pipeline ends within 120 s");
        match msg.view() {
            gst::MessageView::Error(e) => errors.push((
                msg.src().map(|s| s.name().to_string()).unwrap_or_default(),
                e.error().to_string(),
                e.debug().map(|d| d.to_string()).unwrap_or_default(),
            )),
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    set_state_or_hang(&pipeline, gst::State::Null);
    assert!(errors.len() >= 2, "{errors:?}");
    assert_eq!(errors[0].0, "cbo", "{errors:?}");
    assert!(errors[0].1.contains(message), "{errors:?}");
    assert_eq!(errors[1].0, "src", "{errors:?}");
    assert!(errors[1].2.contains("reason error"), "{errors:?}");
    // Exactly the black frames, each classified, in order; no white frame passed unlabelled.
    let out = out.lock().unwrap().clone();
    assert_eq!(out.last(), Some(&Seen::Eos));
    let out = buffers(&out);
    assert_eq!(out.len(), 10);
    for (k, (_, r)) in out.iter().enumerate() {
        let r = r.expect("classified");
        assert_eq!(r.frame, k as u64);
        assert_eq!(r.class_id, 0);
    }
}
