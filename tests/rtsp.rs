//! RTSP ingestion: a real gst-rtsp-server on 127.0.0.1 serves live H.264 video, and
//! `rtspsrc ! decodebin ! cbofilter` classifies it.

mod common;

use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_rtsp_server::prelude::*;

const FRAMES: u32 = 90;

/// A running RTSP server.
struct Served {
    url: String,
    port: u16,
    served: Arc<Mutex<u32>>,
    server: gst_rtsp_server::RTSPServer,
    main_loop: gst::glib::MainLoop,
    ctx: gst::glib::MainContext,
    source: Option<gst::glib::SourceId>,
}

impl Served {
    /// Disconnects every client, closes the port and stops the server's loop.
    fn stop(mut self) {
        self.server
            .client_filter(Some(&mut |_, _| gst_rtsp_server::RTSPFilterResult::Remove));
        if let Some(src) = self
            .source
            .take()
            .and_then(|id| self.ctx.find_source_by_id(&id))
        {
            src.destroy();
        }
        self.main_loop.quit();
    }
}

fn serve() -> Served {
    serve_on(0, FRAMES as i32)
}

/// Starts an RTSP server on loopback `port` (0: any) serving `frames` live frames (-1: endless)
/// at 30 fps, counting the frames it encodes.
fn serve_on(port: u16, frames: i32) -> Served {
    common::init();
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port.to_string());
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(&format!(
        "( videotestsrc is-live=true num-buffers={frames} pattern=ball ! \
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
    let source = server.attach(Some(&ctx)).unwrap();
    let port = server.bound_port() as u16;
    let ml = main_loop.clone();
    let c = ctx.clone();
    std::thread::spawn(move || {
        c.with_thread_default(|| ml.run()).unwrap();
    });
    Served {
        url: format!("rtsp://127.0.0.1:{port}/test"),
        port,
        served,
        server,
        main_loop,
        ctx,
        source: Some(source),
    }
}

#[test]
fn rtsp_stream_is_classified_frame_by_frame() {
    let server = serve();
    let run = common::run_pipeline(&format!(
        "rtspsrc location={} latency=100 protocols=tcp ! decodebin ! cbofilter name=cbo ! fakesink sync=true",
        server.url
    ));
    let served = *server.served.lock().unwrap();
    server.stop();
    assert!(run.error.is_none(), "{:?}", run.error);
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

/// The embedding example (examples/embed.rs) keeps classifying across an RTSP server restart.
#[test]
fn embedding_example_recovers_when_the_rtsp_server_restarts() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/embed");
    assert!(
        example.is_file(),
        "{} missing: run with --all-targets",
        example.display()
    );
    let first = serve_on(0, -1);
    let port = first.port;
    let registry = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(&example)
        .arg(&first.url)
        .env("GST_REGISTRY", registry.path().join("registry.bin"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let l = lines.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                l.lock().unwrap().push(v);
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = Arc::new(Mutex::new(String::new()));
    let e = errors.clone();
    let stderr_reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            e.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let wait_for = |what: &str, f: &dyn Fn(&[serde_json::Value]) -> bool| {
        let t0 = Instant::now();
        while !f(&lines.lock().unwrap()) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; stderr: {}",
                errors.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let starts = |v: &[serde_json::Value]| v.iter().filter(|x| x["frame"] == 0).count();
    wait_for("frames from the first server", &|v| v.len() >= 15);
    first.stop();
    std::thread::sleep(Duration::from_millis(1500));
    let second = serve_on(port, -1);
    wait_for("frames after the restart", &|v| {
        starts(v) >= 2 && v.len() >= 30
    });
    let _ = child.kill();
    let _ = child.wait();
    // Its standard error has ended with it: every line it wrote is in `errors`.
    stderr_reader.join().unwrap();
    second.stop();
    assert!(
        errors.lock().unwrap().contains("restarting"),
        "{}",
        errors.lock().unwrap()
    );
}

/// The RTSP recipes in pipelines/ run against a real RTSP server (device only, and offloading to
/// a real cboserver).
#[test]
fn rtsp_recipes_run() {
    let plugins = common::plugin_dir();
    let registry = tempfile::tempdir().unwrap();
    let run = |script: &str, url: &str, extra: &[(&str, String)]| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(common::repo().join("pipelines").join(script))
            .arg(url)
            .env("CBO_PLUGIN_DIR", plugins.path())
            .env("GST_REGISTRY", registry.path().join("registry.bin"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let served = serve();
    let out = run("rtsp-device-only.sh", &served.url, &[]);
    let n = *served.served.lock().unwrap() as usize;
    served.stop();
    assert!(out.matches("cbo-result").count() * 100 >= n * 95, "{out}");

    // A real cboserver in this process, trusted through its self-signed certificate.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let identity = gstcbo::tls::load_or_create_self_signed(certs.path()).unwrap();
    let server = rt
        .block_on(gstcbo::server::Server::start(
            gstcbo::server::ServerConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                gstcbo::inference::ModelConfig {
                    model: common::repo().join("models/efficientnet-lite2-fp32-260.onnx"),
                    ..Default::default()
                },
                identity,
            ),
        ))
        .unwrap();
    let served = serve();
    let out = run(
        "rtsp-offload.sh",
        &served.url,
        &[
            ("SERVER", server.local_addr().to_string()),
            ("CERT", certs.path().join("cert.pem").display().to_string()),
            ("POLICY", "all".into()),
        ],
    );
    let n = *served.served.lock().unwrap() as usize;
    served.stop();
    let _ = rt.block_on(server.shutdown());
    let got = out.matches("cbo-result").count();
    let decisions: Vec<&str> = out
        .split("decision=(string)")
        .skip(1)
        .map(|t| t.split(',').next().unwrap_or(""))
        .collect();
    assert!(got * 100 >= n * 95, "{got} of {n}: {decisions:?}");
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("WARNING") || l.contains("(warning)"))
        .collect();
    assert!(
        out.contains("source=(string)server"),
        "{decisions:?} {warnings:?}"
    );
}
