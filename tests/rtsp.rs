//! RTSP ingestion: a real gst-rtsp-server on 127.0.0.1 serves live H.264 video, and
//! `rtspsrc ! decodebin ! cbofilter` classifies it.

mod common;

use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_rtsp_server::prelude::*;

const FRAMES: u32 = 90;

/// Starts an RTSP server on a free loopback port serving `FRAMES` live frames at 30 fps,
/// counting the frames it encodes; returns the URL, the count, and what keeps it alive.
fn serve() -> (
    String,
    Arc<Mutex<u32>>,
    gst_rtsp_server::RTSPServer,
    gst::glib::MainLoop,
) {
    common::init();
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service("0");
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(&format!(
        "( videotestsrc is-live=true num-buffers={FRAMES} pattern=ball ! \
         video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 name=enc ! \
         rtph264pay name=pay0 pt=96 config-interval=1 )"
    ));
    factory.set_shared(true);
    let served = Arc::new(Mutex::new(0u32));
    let s = served.clone();
    factory.connect_media_configure(move |_, media| {
        let bin = media.element().downcast::<gst::Bin>().unwrap();
        let enc = bin.by_name("enc").unwrap();
        let s = s.clone();
        enc.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                *s.lock().unwrap() += 1;
                gst::PadProbeReturn::Ok
            });
    });
    server.mount_points().unwrap().add_factory("/test", factory);
    let ctx = gst::glib::MainContext::new();
    let main_loop = gst::glib::MainLoop::new(Some(&ctx), false);
    let _id = server.attach(Some(&ctx)).unwrap();
    let port = server.bound_port();
    let ml = main_loop.clone();
    std::thread::spawn(move || {
        ctx.with_thread_default(|| ml.run()).unwrap();
    });
    (
        format!("rtsp://127.0.0.1:{port}/test"),
        served,
        server,
        main_loop,
    )
}

#[test]
fn rtsp_stream_is_classified_frame_by_frame() {
    let (url, served, _server, main_loop) = serve();
    let run = common::run_pipeline(&format!(
        "rtspsrc location={url} latency=100 protocols=tcp ! decodebin ! cbofilter name=cbo ! fakesink sync=true"
    ));
    main_loop.quit();
    assert!(run.error.is_none(), "{:?}", run.error);
    let served = *served.lock().unwrap();
    assert_eq!(served, FRAMES);
    assert_eq!(run.missing_meta, 0);
    assert!(
        run.results.len() * 100 >= served as usize * 95,
        "{} of {served} served frames came out with results",
        run.results.len()
    );
    assert!(run.results.iter().all(|r| !r.label.is_empty()));
    // Live with sync=true sinks: no late-buffer warnings from the sink.
    assert!(
        !run.warnings
            .iter()
            .any(|w| w.contains("late") || w.contains("too slow")),
        "{:?}",
        run.warnings
    );
}
