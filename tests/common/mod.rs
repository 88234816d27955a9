//! Helpers shared by the integration tests: GStreamer set-up with a private registry, running
//! pipelines to completion while collecting every frame's CboMeta, and paths to real assets.
#![allow(dead_code)]

pub mod onnx;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstcbo::{CboResult, Source};

static INIT: Once = Once::new();

/// Initialises GStreamer once per test binary, with a private registry so tests neither read
/// nor write the user's, and registers the plugin linked into the test. The registry lives in
/// cargo's scratch directory under `target/`, one per test binary (reused from run to run, not
/// one more file in /tmp per run).
pub fn init() {
    INIT.call_once(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        let name = exe
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let registry =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gst-registry-{name}.bin"));
        // SAFETY: runs once, before GStreamer or any test thread reads the environment.
        unsafe { std::env::set_var("GST_REGISTRY", registry) };
        gst::init().unwrap();
        gstcbo::plugin_register_static().unwrap();
    });
}

/// The shared, read-only assets (models, labelled clips, traces): `CBO_ASSETS` or
/// `../shared/assets` beside the checkout.
pub fn assets() -> PathBuf {
    std::env::var_os("CBO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bottle_clip() -> PathBuf {
    repo().join("examples/media/bottle-detection.mp4")
}

/// Runs `cmd` (a `cbo` subcommand) and returns its output, failing the test with its stderr
/// unless it succeeded.
pub fn succeed(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What a pipeline run produced.
#[derive(Debug, Default)]
pub struct Run {
    /// CboMeta of every buffer leaving cbofilter, in order.
    pub results: Vec<CboResult>,
    /// Buffers that left cbofilter without a CboMeta.
    pub missing_meta: usize,
    /// Buffers that entered cbofilter.
    pub frames_in: usize,
    pub error: Option<(gst::glib::Error, String)>,
    pub warnings: Vec<String>,
    pub element_messages: Vec<gst::Structure>,
    /// `active-execution-provider` read while the pipeline ran.
    pub provider: String,
}

/// Parses `desc` (which must contain an element named `cbo`), runs it to EOS or error, and
/// collects what cbofilter emitted.
pub fn run_pipeline(desc: &str) -> Run {
    run_with(desc, |_| {})
}

/// Like [`run_pipeline`], and also tells whether the buffers leaving the element named `after`
/// have exactly the bytes of those leaving `before`.
pub fn run_pipeline_comparing(desc: &str, before: &str, after: &str) -> (Run, bool) {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let hashes: [Arc<Mutex<Vec<u64>>>; 2] = Default::default();
    let h = hashes.clone();
    let (before, after) = (before.to_string(), after.to_string());
    let run = run_with(desc, move |pipeline| {
        for (name, store) in [(before, h[0].clone()), (after, h[1].clone())] {
            let el = pipeline.by_name(&name).expect("named element");
            el.static_pad("src")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    if let Some(buf) = info.buffer() {
                        let map = buf.map_readable().unwrap();
                        let mut hasher = DefaultHasher::new();
                        map.as_slice().hash(&mut hasher);
                        store.lock().unwrap().push(hasher.finish());
                    }
                    gst::PadProbeReturn::Ok
                });
        }
    });
    let a = hashes[0].lock().unwrap().clone();
    let b = hashes[1].lock().unwrap().clone();
    (run, !a.is_empty() && a == b)
}

/// Plays `pipeline` until EOS (at most 600 s), panicking on an error message; leaves it in
/// PLAYING for the caller to read and stop.
pub fn play_until_eos(pipeline: &gst::Pipeline) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(600)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{}: {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
}

/// Calls `f` with `cbo` and the buffer's result (`None` without a meta) for every buffer that
/// leaves it, while the element exists: for reading its properties frame by frame.
pub fn on_each_output(
    cbo: &gst::Element,
    f: impl Fn(&gst::Element, Option<CboResult>) + Send + Sync + 'static,
) {
    let weak = cbo.downgrade();
    cbo.static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(c) = weak.upgrade() {
                let result = info
                    .buffer()
                    .and_then(|b| CboResult::from_buffer(b))
                    .map(|r| r.unwrap());
                f(&c, result);
            }
            gst::PadProbeReturn::Ok
        });
}

/// Calls `f` with `element`'s `stats` structure when EOS passes `pad` of it (its counts then are
/// final for the stream).
pub fn stats_at_eos(
    element: &gst::Element,
    pad: &str,
    f: impl Fn(gst::Structure) + Send + Sync + 'static,
) {
    element.static_pad(pad).unwrap().add_probe(
        gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            if let Some(gst::PadProbeData::Event(e)) = &info.data
                && e.type_() == gst::EventType::Eos
            {
                f(pad.parent_element().unwrap().property("stats"));
            }
            gst::PadProbeReturn::Ok
        },
    );
}

pub fn run_with(desc: &str, setup: impl FnOnce(&gst::Pipeline)) -> Run {
    init();
    let pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("bad pipeline '{desc}': {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    setup(&pipeline);
    let cbo = pipeline
        .by_name("cbo")
        .expect("pipeline needs an element named cbo");
    let out = Arc::new(Mutex::new(Run::default()));
    let o = out.clone();
    cbo.static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                let mut o = o.lock().unwrap();
                match CboResult::from_buffer(buf) {
                    Some(Ok(r)) => o.results.push(r),
                    Some(Err(e)) => panic!("unreadable CboMeta: {e}"),
                    None => o.missing_meta += 1,
                }
            }
            gst::PadProbeReturn::Ok
        });
    let o = out.clone();
    cbo.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            o.lock().unwrap().frames_in += 1;
            gst::PadProbeReturn::Ok
        });
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_seconds(300)) else {
            panic!("pipeline '{desc}' neither finished nor failed within 300 s");
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                out.lock().unwrap().error = Some((
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default(),
                ));
                break;
            }
            gst::MessageView::Warning(w) => {
                out.lock().unwrap().warnings.push(w.error().to_string())
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "cbo-result"
                {
                    out.lock().unwrap().element_messages.push(s.to_owned());
                }
            }
            gst::MessageView::StateChanged(_) => {
                let p = cbo.property::<String>("active-execution-provider");
                if !p.is_empty() {
                    out.lock().unwrap().provider = p;
                }
            }
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    // The pad probes still hold clones of `out`; take the contents instead of the Arc.
    std::mem::take(&mut *out.lock().unwrap())
}

/// Frame index → ImageNet class index, from a clip's labels CSV (the tools' own reader).
pub fn clip_labels(csv: &Path) -> Vec<i32> {
    gstcbo::tools::dataset::read_clip_labels(csv)
        .unwrap()
        .into_iter()
        .map(|c| c as i32)
        .collect()
}

/// Top-1 accuracy of `results` against per-frame labels.
pub fn accuracy(results: &[CboResult], labels: &[i32]) -> f64 {
    let right = results
        .iter()
        .filter(|r| labels.get(r.frame as usize) == Some(&r.class_id))
        .count();
    right as f64 / results.len().max(1) as f64
}

/// The cdylib built by cargo for this test run (cargo leaves it in target/<profile>/deps).
pub fn plugin_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        let p = dir.join("libgstcbo.so");
        if p.is_file() {
            return p;
        }
    }
    panic!("libgstcbo.so not found beside {}", exe.display());
}

/// A directory holding only the plugin, for GST_PLUGIN_PATH in child processes (pointing at
/// target/*/deps would make GStreamer scan every proc-macro library there).
pub fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugin_library(), dir.path().join("libgstcbo.so")).unwrap();
    dir
}

/// Polls `done` every 20 ms until it holds, for at most `limit`; whether it came to hold. For
/// state another thread or process owns (a server's metrics, a child's output): the test waits
/// for that state, however long a loaded machine takes, up to a limit that only catches a hang
/// (a safety net, never a speed check).
pub fn settles(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while !done() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Results' sources as they leave the element named `cbo`, for a controller thread.
pub fn result_feed(pipeline: &gst::Pipeline) -> mpsc::Receiver<Source> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cbo = pipeline.by_name("cbo").unwrap();
    cbo.static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer()
                && let Some(Ok(r)) = CboResult::from_buffer(buf)
            {
                let _ = tx.lock().unwrap().send(r.source);
            }
            gst::PadProbeReturn::Ok
        });
    rx
}

/// Receives results until `n` of them satisfy `pred`; returns how many results that took. Fails
/// when `within` results pass without that (the stream goes on whatever happens).
pub fn until(
    rx: &mpsc::Receiver<Source>,
    n: usize,
    within: usize,
    pred: impl Fn(Source) -> bool,
) -> usize {
    let (mut seen, mut hits) = (0, 0);
    while hits < n {
        let Ok(s) = rx.recv_timeout(Duration::from_secs(120)) else {
            panic!("the stream stopped after {seen} results with {hits} of the {n} awaited");
        };
        seen += 1;
        assert!(seen <= within, "{hits} of {n} awaited results in {within}");
        if pred(s) {
            hits += 1;
        }
    }
    seen
}

/// Ends the stream when dropped, also when the controller thread holding it panics.
pub struct EosOnDrop(pub gst::Pipeline);

impl Drop for EosOnDrop {
    fn drop(&mut self) {
        self.0.send_event(gst::event::Eos::new());
    }
}

/// `cbo loadgen` for one second of `clients` clients against `server`, trusting `fingerprint`,
/// without a baseline: the fields a test changes are set after.
pub fn loadgen_args(server: &str, fingerprint: &str) -> gstcbo::tools::loadgen::LoadgenArgs {
    gstcbo::tools::loadgen::LoadgenArgs {
        server: server.to_string(),
        server_name: "localhost".into(),
        server_cert: None,
        server_fingerprint: Some(fingerprint.to_string()),
        token_file: None,
        clients: 1,
        seconds: 1.0,
        resolution: 224,
        clip: None,
        frames: 8,
        jpeg_quality: 80,
        top_k: 5,
        server_pid: None,
        model: None,
        input_mean: "127".into(),
        input_std: "128".into(),
        input_size: 0,
        batch: 8,
        execution_provider: gstcbo::inference::ExecutionProvider::Auto,
        threads: 0,
        baseline_seconds: None,
        no_baseline: true,
        json: true,
    }
}
