//! `cbofilter` implementation: properties, state, pads, and the hold-mode output task.
//!
//! Device only (`policy=local`, or no server): each buffer is classified on the streaming thread
//! and pushed on at once, like an in-place filter.
//!
//! Offloading: classification and the policy's decision still happen on the streaming thread;
//! buffers and serialized events then go through the [`HoldQueue`], and a task on the source
//! pad pushes them downstream in order, each as soon as it is ready: a frame sent to the server
//! waits for its answer or its deadline (`deadline` ms after it entered the element), and the
//! frames behind it wait with it. The latency query adds the deadline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::{ExecutionProviderProp, OutputKindProp, Policy};
use crate::calibration::{CalibrationFile, Calibrator};
use crate::inference::{self, Classifier, InferenceError, ModelConfig};
use crate::jpeg::FrameEncoder;
use crate::meta::{CboResult, Source};
use crate::offload::client::{ClientConfig, ClientEvent, OffloadClient, OffloadJob, ServerResult};
use crate::offload::hold::{HoldQueue, Outcome};
use crate::offload::planner::{Action, AnswerIn, CboPlanner, FrameIn, Planner, Rule, RulePlanner};
use crate::offload::policy::{self, Decision, PolicyConfig, PolicyKind};
use crate::offload::reuse::{AnswerReuse, Answered, Leaving};
use crate::postprocess::OutputKind;
use crate::preprocess::Normalization;
use crate::profile::Profile;
use crate::tls::Trust;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cbofilter",
        gst::DebugColorFlags::empty(),
        Some("Confidence-based offloading classifier"),
    )
});

/// Raw formats accepted on both pads; all are read directly, no `videoconvert` needed.
const FORMATS: [gst_video::VideoFormat; 12] = [
    gst_video::VideoFormat::I420,
    gst_video::VideoFormat::Yv12,
    gst_video::VideoFormat::Nv12,
    gst_video::VideoFormat::Nv21,
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Xrgb,
    gst_video::VideoFormat::Xbgr,
];

const DEFAULT_INPUT_MEAN: &str = "127";
const DEFAULT_INPUT_STD: &str = "128";
const DEFAULT_TOP_K: u32 = 5;
const DEFAULT_DEADLINE_MS: u32 = 200;
const DEFAULT_RESOLUTION: u32 = 224;
const DEFAULT_JPEG_QUALITY: u32 = 80;
const DEFAULT_MAX_IN_FLIGHT: u32 = 8;
/// policy=cbo: how long a server answer may serve the following frames (`cbo eval` measured
/// cbo with and without reuse; see the README).
const DEFAULT_REUSE_WINDOW_MS: u32 = 1000;
const DEFAULT_THRESHOLD: f64 = 0.5;
const DEFAULT_PROFILE: &str = "efficientnet-lite0-to-lite2.profile.json";
/// Uplink estimate policy=cbo / fastva start from before any answer has measured it.
const INITIAL_UPLINK_BPS: f64 = 1e6;
const INITIAL_RTT_MS: f64 = 40.0;
/// Items the hold queue may contain before the streaming thread waits (downstream is slower
/// than the source): bounds memory without ever dropping a frame.
const MAX_HELD_ITEMS: usize = 512;
/// How often the `cbo-stats` message is posted while offloading.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Settings {
    model: String,
    labels: Option<String>,
    input_mean: String,
    input_std: String,
    output_kind: OutputKindProp,
    top_k: u32,
    execution_provider: ExecutionProviderProp,
    ep_fallback: bool,
    threads: u32,
    post_messages: bool,
    calibration: Option<String>,
    server: String,
    server_cert: Option<String>,
    server_fingerprint: Option<String>,
    token: String,
    deadline_ms: u32,
    resolution: u32,
    jpeg_quality: u32,
    max_in_flight: u32,
    reuse_window_ms: u32,
    policy: Policy,
    threshold: f64,
    profile: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: inference::models_dir()
                .join(inference::DEFAULT_DEVICE_MODEL)
                .display()
                .to_string(),
            labels: None,
            input_mean: DEFAULT_INPUT_MEAN.into(),
            input_std: DEFAULT_INPUT_STD.into(),
            output_kind: OutputKindProp::Auto,
            top_k: DEFAULT_TOP_K,
            execution_provider: ExecutionProviderProp::Auto,
            ep_fallback: false,
            threads: 0,
            post_messages: false,
            calibration: None,
            server: String::new(),
            server_cert: None,
            server_fingerprint: None,
            token: String::new(),
            deadline_ms: DEFAULT_DEADLINE_MS,
            resolution: DEFAULT_RESOLUTION,
            jpeg_quality: DEFAULT_JPEG_QUALITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            reuse_window_ms: DEFAULT_REUSE_WINDOW_MS,
            policy: Policy::Local,
            threshold: DEFAULT_THRESHOLD,
            profile: inference::models_dir()
                .join(DEFAULT_PROFILE)
                .display()
                .to_string(),
        }
    }
}

/// Streaming-thread state, created at NULL→READY.
struct State {
    classifier: Classifier,
    info: Option<gst_video::VideoInfo>,
    frame: u64,
    post_messages: bool,
    calibrator: Option<Calibrator>,
    /// Log-probabilities of a probability-output model, for temperature scaling.
    log_scores: Vec<f32>,
    /// Set when offloading: the policy's configuration (its `live` is filled in per stream).
    policy: Option<PolicyConfig>,
    /// Upstream liveness, queried at the first buffer of a stream.
    live: Option<bool>,
    deadline: Duration,
    last_stats: Instant,
}

impl State {
    /// Calibrated confidence of the frame just classified (raw when no calibration is loaded).
    fn calibrated(&mut self, raw: f64) -> f64 {
        match &self.calibrator {
            None => raw,
            Some(cal) => cal.apply_to_output(
                raw,
                self.classifier.last_output(),
                self.classifier.postprocessor().kind() == OutputKind::Probabilities,
                &mut self.log_scores,
            ),
        }
    }
}

/// What the hold queue carries.
enum Item {
    Frame {
        buffer: gst::Buffer,
        result: CboResult,
    },
    Event(gst::Event),
}

/// Counts of what happened to frames, for the `stats` property.
#[derive(Debug, Clone, Default)]
struct FrameCounts {
    frames: u64,
    kept: u64,
    offloaded: u64,
    answered: u64,
    late: u64,
    failed: u64,
    busy: u64,
    offline: u64,
    /// Frames that left with a reused earlier answer (policy=cbo, `reuse-window`).
    reused: u64,
}

/// A server answer as answer reuse carries it to the following frames.
#[derive(Debug, Clone)]
struct ServerLabel {
    class_id: i32,
    label: String,
    score: f64,
    top_classes: Vec<i32>,
    top_scores: Vec<f64>,
}

/// The hold queue and what the output task reports back, shared with the task and with the
/// offload completions (which run on the client's threads).
#[derive(Default)]
struct Hold {
    inner: Mutex<HoldInner>,
    cond: Condvar,
}

impl Hold {
    /// Records how offloaded frame `id` ended (from the client's threads) and wakes the output
    /// task.
    fn complete(&self, id: u64, result: Result<ServerResult, String>) {
        let mut inner = self.inner.lock().unwrap();
        match result {
            Ok(answer) => {
                inner.queue.answer(id, answer);
            }
            Err(reason) => {
                inner.queue.fail(id, reason);
            }
        }
        self.cond.notify_all();
    }
}

#[derive(Default)]
struct HoldInner {
    queue: HoldQueue<Item, ServerResult>,
    flushing: bool,
    /// Last flow return of a downstream push, returned by the next chain call.
    flow: Option<gst::FlowError>,
    /// The task is pushing an item it popped (so the queue looks empty but is not done).
    pushing: bool,
    counts: FrameCounts,
}

pub struct CboFilter {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    hold: Arc<Hold>,
    client: Mutex<Option<OffloadClient>>,
    /// policy=cbo / fastva: the planner and what it needs, shared with completions and its timer thread.
    driver: Mutex<Option<Arc<CboDriver>>>,
    active_provider: Mutex<String>,
}

/// Drives the sans-IO CBO planner for the element: feeds it frames and answers with the element's
/// clock, and carries out its actions on the hold queue and the offload client.
struct CboDriver {
    planner: Mutex<Box<dyn Planner>>,
    /// The planner's profile: what a reused answer is worth.
    profile: Profile,
    /// Answer reuse at the output (`reuse-window` > 0), in stream order.
    reuse: Option<Mutex<AnswerReuse<ServerLabel>>>,
    /// Encodes each undecided frame at the profile's smallest resolution: its size tells the
    /// planner how large the frame will be at the others.
    size_probe: Option<Mutex<(FrameEncoder, u32)>>,
    epoch: Instant,
    /// Frames the planner has not decided yet: what sending them needs.
    pending: Mutex<HashMap<u64, (gst::Buffer, gst_video::VideoInfo, Instant)>>,
    stop: std::sync::atomic::AtomicBool,
    /// Set (and `wake` notified) when something happened that the planner should see now.
    woken: Mutex<bool>,
    wake: Condvar,
    timer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl CboDriver {
    fn ms(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_secs_f64() * 1000.0
    }

    fn wake(&self) {
        *self.woken.lock().unwrap() = true;
        self.wake.notify_all();
    }

    /// Sleeps until the planner's next wake-up (at most 20 ms) or until woken.
    fn sleep(&self) {
        let wait = {
            let p = self.planner.lock().unwrap();
            let now = self.ms(Instant::now());
            p.next_wakeup().map_or(20.0, |w| w - now).clamp(0.5, 20.0)
        };
        let mut woken = self.woken.lock().unwrap();
        if !*woken {
            woken = self
                .wake
                .wait_timeout(woken, Duration::from_secs_f64(wait / 1000.0))
                .unwrap()
                .0;
        }
        *woken = false;
    }
}

#[glib::object_subclass]
impl ObjectSubclass for CboFilter {
    const NAME: &'static str = "GstCboFilter";
    type Type = super::CboFilter;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink").expect("sink template");
        let sinkpad = gst::Pad::builder_from_template(&templ)
            .chain_function(|pad, parent, buffer| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |this| this.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.sink_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.sink_query(pad, query),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let templ = klass.pad_template("src").expect("src template");
        let srcpad = gst::Pad::builder_from_template(&templ)
            .query_function(|pad, parent, query| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.src_query(pad, query),
                )
            })
            .activatemode_function(|pad, parent, mode, active| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || {
                        Err(gst::loggable_error!(
                            CAT,
                            "panic while (de)activating the source pad"
                        ))
                    },
                    |this| this.src_activatemode(pad, mode, active),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(None),
            hold: Arc::new(Hold::default()),
            client: Mutex::new(None),
            driver: Mutex::new(None),
            active_provider: Mutex::new(String::new()),
        }
    }
}

impl ObjectImpl for CboFilter {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let defaults = Settings::default();
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model")
                    .blurb("Path of the device ONNX image classifier (input [N,3,H,W] or [N,H,W,3], output one score row per image); default: the bundled EfficientNet-Lite0 int8")
                    .default_value(Some(defaults.model.as_str()))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("labels")
                    .nick("Labels")
                    .blurb("Class names: one per line, or TSV index<TAB>wnid<TAB>name. A model with one output more than labels has a background entry at index 0. Unset: ImageNet names for 1000/1001-way models, else 'class N'")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("input-mean")
                    .nick("Input mean")
                    .blurb("Subtracted from 0..255 pixel values before dividing by input-std: one value, or three comma-separated (R,G,B). Not applied to u8/i8 model inputs")
                    .default_value(Some(DEFAULT_INPUT_MEAN))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("input-std")
                    .nick("Input std")
                    .blurb("Divisor after subtracting input-mean: one value, or three comma-separated (R,G,B)")
                    .default_value(Some(DEFAULT_INPUT_STD))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("output-kind", OutputKindProp::Auto)
                    .nick("Output kind")
                    .blurb("How to read the model's output row")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("top-k")
                    .nick("Top K")
                    .blurb("Number of best classes stored in top-classes/top-scores")
                    .minimum(1)
                    .maximum(1000)
                    .default_value(DEFAULT_TOP_K)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(
                    "execution-provider",
                    ExecutionProviderProp::Auto,
                )
                .nick("Execution provider")
                .blurb("ONNX Runtime execution provider for the device model; a provider the loaded ONNX Runtime lacks is an error unless ep-fallback=true")
                .mutable_ready()
                .build(),
                glib::ParamSpecBoolean::builder("ep-fallback")
                    .nick("EP fallback")
                    .blurb("Run on CPU with a warning instead of failing when the requested execution provider is unavailable")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("active-execution-provider")
                    .nick("Active execution provider")
                    .blurb("Execution provider the model runs on (empty until the element has started)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("ONNX Runtime intra-op threads for the device model (0 = ONNX Runtime's default, one per core)")
                    .maximum(256)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("post-messages")
                    .nick("Post messages")
                    .blurb("Also post every frame's result as an element message named 'cbo-result' (shown by gst-launch-1.0 -m)")
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("calibration")
                    .nick("Calibration")
                    .blurb("Calibration file (JSON, see `cbo calibrate`) fitted for this exact model file; makes 'confidence' calibrated while 'raw-confidence' stays raw. A file for another model, a corrupt or unknown-version file, or a non-monotone mapping is an error at start")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("server")
                    .nick("Server")
                    .blurb("host:port of a cboserver to offload frames to (QUIC); empty = device only. Needs server-cert or server-fingerprint to trust it")
                    .default_value(Some(""))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("server-cert")
                    .nick("Server certificate")
                    .blurb("PEM file with the certificate(s) to trust for the server (e.g. the cert.pem `cboserver --self-signed DIR` wrote)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("server-fingerprint")
                    .nick("Server fingerprint")
                    .blurb("Pin the server's certificate by its SHA-256 fingerprint (hex, as cboserver prints it) instead of server-cert")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("token")
                    .nick("Token")
                    .blurb("Bearer token the server expects (cboserver --token-file); empty = none")
                    .default_value(Some(""))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("deadline")
                    .nick("Deadline")
                    .blurb("Per-frame deadline in ms from entering the element to leaving it while offloading: an offloaded frame (and every frame behind it) waits at most this long for the server's answer, then leaves with its device label (decision=late). Added to the latency query")
                    .minimum(1)
                    .maximum(60_000)
                    .default_value(DEFAULT_DEADLINE_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("resolution")
                    .nick("Resolution")
                    .blurb("policy=all / threshold / threshold-raw: short side in pixels of offloaded frames (aspect ratio kept, never upscaled), before JPEG encoding; cbo and fastva pick among the profile's resolutions")
                    .minimum(16)
                    .maximum(4096)
                    .default_value(DEFAULT_RESOLUTION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("jpeg-quality")
                    .nick("JPEG quality")
                    .blurb("JPEG quality (1-100) of offloaded frames")
                    .minimum(1)
                    .maximum(100)
                    .default_value(DEFAULT_JPEG_QUALITY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-in-flight")
                    .nick("Max in flight")
                    .blurb("Most offloaded frames awaiting an answer at once. When reached, a live source's frame stays on the device (decision=busy); a non-live source (file) waits for room instead")
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_MAX_IN_FLIGHT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("reuse-window")
                    .nick("Reuse window (ms)")
                    .blurb("policy=cbo: a server answer also labels the following frames that stay on the device, while the device's top-1 is unchanged and for at most this many ms after the answered frame, where the profile says the answer is more likely right than the device (decision=reuse); the planner counts on it. 0 disables")
                    .maximum(60_000)
                    .default_value(DEFAULT_REUSE_WINDOW_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("policy", Policy::Local)
                    .nick("Policy")
                    .blurb("Which frames to offload when a server is set")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("threshold")
                    .nick("Threshold")
                    .blurb("policy=threshold: offload frames whose confidence (calibrated when a calibration is set) is below this; policy=threshold-raw: whose raw softmax confidence is")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("profile")
                    .nick("Profile")
                    .blurb("policy=cbo (and fastva, for its sizes and server times): offload profile (`cbo profile`) of this device model and the server's: JPEG bytes and server accuracy per resolution and confidence bin; default: the bundled profile of the default model pair")
                    .default_value(Some(defaults.profile.as_str()))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("cbo-stats structure: frames, kept, offloaded, answered, late, failed, busy, offline, reused, bytes-sent, rtt-ms, uplink-kbps, encode-ms, reconnects, connected; also posted as an element message every second while offloading")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).expect("new pad");
        obj.add_pad(&self.srcpad).expect("new pad");
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        let opt_string = |v: &glib::Value| {
            v.get::<Option<String>>()
                .expect("type checked upstream")
                .filter(|s| !s.is_empty())
        };
        match pspec.name() {
            "model" => {
                s.model = opt_string(value).unwrap_or_else(|| Settings::default().model);
            }
            "labels" => s.labels = opt_string(value),
            "input-mean" => {
                s.input_mean = opt_string(value).unwrap_or_else(|| DEFAULT_INPUT_MEAN.into())
            }
            "input-std" => {
                s.input_std = opt_string(value).unwrap_or_else(|| DEFAULT_INPUT_STD.into())
            }
            "output-kind" => s.output_kind = value.get().expect("type checked upstream"),
            "top-k" => s.top_k = value.get().expect("type checked upstream"),
            "execution-provider" => {
                s.execution_provider = value.get().expect("type checked upstream")
            }
            "ep-fallback" => s.ep_fallback = value.get().expect("type checked upstream"),
            "threads" => s.threads = value.get().expect("type checked upstream"),
            "post-messages" => {
                s.post_messages = value.get().expect("type checked upstream");
                if let Some(state) = self.state.lock().unwrap().as_mut() {
                    state.post_messages = s.post_messages;
                }
            }
            "calibration" => s.calibration = opt_string(value),
            "server" => s.server = opt_string(value).unwrap_or_default(),
            "server-cert" => s.server_cert = opt_string(value),
            "server-fingerprint" => s.server_fingerprint = opt_string(value),
            "token" => s.token = opt_string(value).unwrap_or_default(),
            "deadline" => s.deadline_ms = value.get().expect("type checked upstream"),
            "resolution" => s.resolution = value.get().expect("type checked upstream"),
            "jpeg-quality" => s.jpeg_quality = value.get().expect("type checked upstream"),
            "max-in-flight" => s.max_in_flight = value.get().expect("type checked upstream"),
            "reuse-window" => s.reuse_window_ms = value.get().expect("type checked upstream"),
            "policy" => s.policy = value.get().expect("type checked upstream"),
            "profile" => {
                s.profile = opt_string(value).unwrap_or_else(|| Settings::default().profile)
            }
            "threshold" => {
                s.threshold = value.get().expect("type checked upstream");
                if let Some(p) = self
                    .state
                    .lock()
                    .unwrap()
                    .as_mut()
                    .and_then(|st| st.policy.as_mut())
                {
                    p.threshold = s.threshold;
                }
            }
            other => unreachable!("unknown property {other}"),
        }
        gst::debug!(CAT, imp = self, "set {} = {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => s.model.to_value(),
            "labels" => s.labels.to_value(),
            "input-mean" => s.input_mean.to_value(),
            "input-std" => s.input_std.to_value(),
            "output-kind" => s.output_kind.to_value(),
            "top-k" => s.top_k.to_value(),
            "execution-provider" => s.execution_provider.to_value(),
            "ep-fallback" => s.ep_fallback.to_value(),
            "active-execution-provider" => self.active_provider.lock().unwrap().to_value(),
            "threads" => s.threads.to_value(),
            "post-messages" => s.post_messages.to_value(),
            "calibration" => s.calibration.to_value(),
            "server" => s.server.to_value(),
            "server-cert" => s.server_cert.to_value(),
            "server-fingerprint" => s.server_fingerprint.to_value(),
            "token" => s.token.to_value(),
            "deadline" => s.deadline_ms.to_value(),
            "resolution" => s.resolution.to_value(),
            "jpeg-quality" => s.jpeg_quality.to_value(),
            "max-in-flight" => s.max_in_flight.to_value(),
            "reuse-window" => s.reuse_window_ms.to_value(),
            "policy" => s.policy.to_value(),
            "threshold" => s.threshold.to_value(),
            "profile" => s.profile.to_value(),
            "stats" => {
                drop(s);
                self.stats().to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for CboFilter {}

impl ElementImpl for CboFilter {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "CBO classifier",
                "Filter/Analyzer/Video",
                "Classifies every frame with an ONNX model (ONNX Runtime), offloads low-confidence \
                 frames to a cboserver over QUIC, and attaches the label and confidence as CboMeta; \
                 video passes through unchanged",
                "cbo developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(FORMATS)
                .build();
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady
            && let Err(e) = self.start()
        {
            self.post_error_message(e);
            return Err(gst::StateChangeError);
        }
        let ret = self.parent_change_state(transition)?;
        if transition == gst::StateChange::ReadyToNull {
            self.stop();
        }
        Ok(ret)
    }
}

/// Maps a load failure onto the GStreamer error domain a user would look in.
fn load_error(e: InferenceError) -> gst::ErrorMessage {
    match &e {
        InferenceError::Runtime(_) => gst::error_msg!(gst::LibraryError::Init, ("{e}")),
        InferenceError::ModelMissing(_) => gst::error_msg!(gst::ResourceError::NotFound, ("{e}")),
        InferenceError::ModelLoad { .. } => {
            gst::error_msg!(gst::ResourceError::OpenRead, ("{e}"))
        }
        InferenceError::ProviderUnavailable { .. } => {
            gst::error_msg!(gst::LibraryError::Init, ("{e}"))
        }
        _ => gst::error_msg!(gst::LibraryError::Settings, ("{e}")),
    }
}

impl CboFilter {
    fn model_config(&self, s: &Settings) -> Result<ModelConfig, gst::ErrorMessage> {
        let normalization = Normalization::parse(&s.input_mean, &s.input_std)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?;
        Ok(ModelConfig {
            model: PathBuf::from(&s.model),
            labels: s.labels.as_ref().map(PathBuf::from),
            normalization,
            output_kind: s.output_kind.into(),
            top_k: s.top_k as usize,
            execution_provider: s.execution_provider.into(),
            ep_fallback: s.ep_fallback,
            threads: s.threads as usize,
        })
    }

    /// The offload policy for these settings, or `None` (device only, with a warning saying why
    /// when the user asked for offloading but it cannot happen).
    fn offload_policy(&self, s: &Settings) -> Option<PolicyConfig> {
        let kind = match s.policy {
            Policy::Local => return None,
            Policy::All => PolicyKind::All,
            Policy::Threshold => PolicyKind::Threshold,
            Policy::Cbo => PolicyKind::Cbo,
            Policy::ThresholdRaw => PolicyKind::ThresholdRaw,
            Policy::FastVa => PolicyKind::FastVa,
        };
        if s.server.is_empty() {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "policy={:?} needs a server; every frame is classified on the device",
                    s.policy
                )
            );
            return None;
        }
        Some(PolicyConfig {
            kind,
            threshold: s.threshold,
            resolution: s.resolution,
            max_in_flight: s.max_in_flight as usize,
            live: true,
        })
    }

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let config = self.model_config(&settings)?;
        // The calibration is checked before the (slower) model load, and must have been fitted
        // for exactly this model file.
        let calibrator = match &settings.calibration {
            None => None,
            Some(path) => {
                let file = CalibrationFile::load(std::path::Path::new(path))
                    .and_then(|f| f.check_model(&config.model).map(|_| f))
                    .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?;
                gst::info!(
                    CAT,
                    imp = self,
                    "calibration {}: {:?}",
                    path,
                    file.calibrator
                );
                Some(file.calibrator)
            }
        };
        let mut policy = self.offload_policy(&settings);
        let profile = match policy {
            Some(p) if p.kind.planned() => Some(
                Profile::load(std::path::Path::new(&settings.profile))
                    .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?,
            ),
            _ => None,
        };
        let trust = match (&settings.server_cert, &settings.server_fingerprint) {
            (Some(_), Some(_)) => {
                return Err(gst::error_msg!(
                    gst::LibraryError::Settings,
                    ("Set server-cert or server-fingerprint, not both")
                ));
            }
            (Some(pem), None) => Some(Trust::Pem(PathBuf::from(pem))),
            (None, Some(fp)) => Some(Trust::Fingerprint(fp.clone())),
            (None, None) => None,
        };
        gst::info!(CAT, imp = self, "loading model {}", config.model.display());
        let classifier = Classifier::load(&config).map_err(load_error)?;
        if let Some(w) = classifier.fallback_warning() {
            gst::element_imp_warning!(self, gst::LibraryError::Init, ("{w}"));
        }
        let spec = *classifier.spec();
        gst::info!(
            CAT,
            imp = self,
            "model input {}x{} {:?} {:?}, {} scores, output {:?}, on {}",
            spec.width,
            spec.height,
            spec.layout,
            spec.elem,
            classifier.postprocessor().width(),
            classifier.postprocessor().kind(),
            classifier.active_provider()
        );
        *self.active_provider.lock().unwrap() = classifier.active_provider().to_string();
        if policy.is_some() {
            match trust {
                None => {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Settings,
                        (
                            "server={} is set but neither server-cert nor server-fingerprint: refusing to send frames to an unauthenticated server; classifying on the device",
                            settings.server
                        )
                    );
                    policy = None;
                }
                Some(trust) => {
                    let client = self.start_client(&settings, trust, settings.top_k as usize);
                    match client {
                        Ok(c) => *self.client.lock().unwrap() = Some(c),
                        Err(e) => {
                            gst::element_imp_warning!(
                                self,
                                gst::ResourceError::Settings,
                                (
                                    "Cannot offload to {}: {e}; classifying on the device",
                                    settings.server
                                )
                            );
                            policy = None;
                        }
                    }
                }
            }
        }
        if let (Some(profile), Some(p)) = (profile, policy) {
            self.check_profile(&profile, &config.model, &settings);
            self.start_driver(profile, &settings, p.kind);
        }
        *self.hold.inner.lock().unwrap() = HoldInner::default();
        *self.state.lock().unwrap() = Some(State {
            classifier,
            info: None,
            frame: 0,
            post_messages: settings.post_messages,
            calibrator,
            log_scores: Vec::new(),
            policy,
            live: None,
            deadline: Duration::from_millis(settings.deadline_ms as u64),
            last_stats: Instant::now(),
        });
        Ok(())
    }

    fn start_client(
        &self,
        settings: &Settings,
        trust: Trust,
        top_k: usize,
    ) -> Result<OffloadClient, String> {
        let weak = self.obj().downgrade();
        let events = Arc::new(move |event: ClientEvent| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().on_client_event(event);
            }
        });
        OffloadClient::start(
            ClientConfig {
                server: settings.server.clone(),
                trust,
                token: settings.token.clone(),
                jpeg_quality: settings.jpeg_quality,
                top_k: top_k.min(u8::MAX as usize) as u8,
            },
            events,
        )
    }

    /// Connection changes from the client's threads: logged, and warnings for the user when the
    /// element falls back to the device.
    fn on_client_event(&self, event: ClientEvent) {
        match event {
            ClientEvent::Connected { model } => {
                gst::info!(CAT, imp = self, "connected to the server (model {model})");
                let s = gst::Structure::builder("cbo-connection")
                    .field("connected", true)
                    .field("server-model", model)
                    .build();
                let _ = self
                    .obj()
                    .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
            }
            ClientEvent::Disconnected { reason } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Read,
                    ("Lost the server connection ({reason}); classifying on the device while reconnecting")
                );
            }
            ClientEvent::ConnectFailed { reason } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::OpenReadWrite,
                    ("Cannot use the server: {reason}; classifying on the device and retrying")
                );
            }
        }
    }

    /// Warns when the profile was measured for another device model or another kind of
    /// confidence than this element produces: its accuracies would not describe these frames.
    fn check_profile(&self, profile: &Profile, model: &std::path::Path, s: &Settings) {
        let model_sha = crate::calibration::sha256_file(model).unwrap_or_default();
        if profile.device_model.sha256 != model_sha {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "profile {} was measured for device model {}, not {}: policy=cbo will misjudge what offloading gains (run `cbo profile` for this model)",
                    s.profile,
                    profile.device_model.file,
                    model.display()
                )
            );
        }
        if profile.calibration.is_some() && s.calibration.is_none() {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "profile {} bins frames by calibrated confidence ({}) but no calibration is set",
                    s.profile,
                    profile
                        .calibration
                        .as_ref()
                        .map(|c| c.file.as_str())
                        .unwrap_or("")
                )
            );
        }
    }

    fn start_driver(&self, profile: Profile, settings: &Settings, kind: PolicyKind) {
        let mut reuse = None;
        let mut size_probe = None;
        let planner: Box<dyn Planner> = if kind == PolicyKind::Cbo {
            let mut planner = CboPlanner::new(profile.clone(), INITIAL_UPLINK_BPS, INITIAL_RTT_MS);
            if settings.reuse_window_ms > 0 {
                let window = settings.reuse_window_ms as f64;
                planner = planner.with_reuse(window);
                reuse = Some(Mutex::new(AnswerReuse::new(window)));
            }
            size_probe = match (
                FrameEncoder::new(settings.jpeg_quality),
                profile.resolutions.first(),
            ) {
                (Ok(e), Some(r)) => Some(Mutex::new((e, r.short_side))),
                (Err(e), _) => {
                    gst::warning!(CAT, imp = self, "no JPEG size probe: {e}");
                    None
                }
                _ => None,
            };
            Box::new(planner)
        } else {
            Box::new(RulePlanner::new(
                Rule::FastVa,
                &profile,
                settings.resolution,
                INITIAL_UPLINK_BPS,
                INITIAL_RTT_MS,
            ))
        };
        let driver = Arc::new(CboDriver {
            planner: Mutex::new(planner),
            profile,
            reuse,
            size_probe,
            epoch: Instant::now(),
            pending: Mutex::new(HashMap::new()),
            stop: std::sync::atomic::AtomicBool::new(false),
            woken: Mutex::new(false),
            wake: Condvar::new(),
            timer: Mutex::new(None),
        });
        let weak = self.obj().downgrade();
        let d = driver.clone();
        let timer = std::thread::Builder::new()
            .name("cbo-planner".into())
            .spawn(move || {
                while !d.stop.load(std::sync::atomic::Ordering::SeqCst) {
                    d.sleep();
                    match weak.upgrade() {
                        Some(obj) => obj.imp().drive_cbo(),
                        None => break,
                    }
                }
            });
        match timer {
            Ok(t) => *driver.timer.lock().unwrap() = Some(t),
            Err(e) => gst::error!(CAT, imp = self, "cannot start the planner thread: {e}"),
        }
        *self.driver.lock().unwrap() = Some(driver);
    }

    /// Runs the planner now and carries out its decisions.
    fn drive_cbo(&self) {
        let Some(driver) = self.driver.lock().unwrap().clone() else {
            return;
        };
        let client_guard = self.client.lock().unwrap();
        let Some(client) = client_guard.as_ref() else {
            return;
        };
        let rtt_us = client.stats().rtt_us;
        let (actions, shorts) = {
            let mut p = driver.planner.lock().unwrap();
            let now = driver.ms(Instant::now());
            if rtt_us > 0 {
                p.on_rtt(now, rtt_us as f64 / 1000.0);
            }
            let shorts = p.resolutions().to_vec();
            (p.poll(now), shorts)
        };
        for (id, action) in actions {
            let pending = driver.pending.lock().unwrap().remove(&id);
            match action {
                Action::Keep => {
                    let mut inner = self.hold.inner.lock().unwrap();
                    if inner.queue.release(id, |item| {
                        if let Item::Frame { result, .. } = item {
                            result.decision = "device".into();
                        }
                    }) {
                        inner.counts.kept += 1;
                    }
                    self.hold.cond.notify_all();
                }
                Action::Send { resolution } => {
                    let Some((buffer, info, deadline)) = pending else {
                        continue;
                    };
                    let short = shorts[resolution];
                    {
                        let mut inner = self.hold.inner.lock().unwrap();
                        let waiting = inner.queue.update(id, |item| {
                            if let Item::Frame { result, .. } = item {
                                result.decision = "offload".into();
                                result.resolution = short as i32;
                            }
                        });
                        if !waiting {
                            continue;
                        }
                        inner.counts.offloaded += 1;
                    }
                    let hold = self.hold.clone();
                    let d = driver.clone();
                    client.submit(
                        OffloadJob {
                            frame_id: id,
                            buffer,
                            info,
                            short_side: short,
                            deadline,
                        },
                        Box::new(move |r| {
                            let now = d.ms(Instant::now());
                            {
                                let mut p = d.planner.lock().unwrap();
                                match &r {
                                    Ok(sr) => p.on_answer(AnswerIn {
                                        id,
                                        now_ms: now,
                                        bytes: sr.jpeg_bytes as f64,
                                        server_ms: (sr.answer.decode_us
                                            + sr.answer.queue_us
                                            + sr.answer.inference_us)
                                            as f64
                                            / 1000.0,
                                        rtt_ms: None,
                                    }),
                                    Err(_) => p.on_failure(id, now),
                                }
                            }
                            hold.complete(id, r);
                            // The planner thread re-plans now: the link may be free.
                            d.wake();
                        }),
                    );
                }
            }
        }
    }

    /// policy=cbo / fastva: queues the frame undecided and lets the planner decide.
    fn hold_frame_cbo(
        &self,
        driver: &CboDriver,
        buffer: gst::Buffer,
        info: gst_video::VideoInfo,
        entered: Instant,
        deadline: Instant,
        mut result: CboResult,
    ) -> Result<(), gst::FlowError> {
        let connected = self
            .client
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|c| c.connected());
        // The frame's JPEG size at the smallest resolution (~0.3 ms): the planner scales the
        // profile's sizes by it. Not while offline: the frame stays on the device anyway.
        let probe = driver.size_probe.as_ref().filter(|_| connected);
        let small_jpeg_bytes = probe.and_then(|probe| {
            let frame =
                gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).ok()?;
            let mut probe = probe.lock().unwrap();
            let short = probe.1;
            probe
                .0
                .encode(&frame, short)
                .ok()
                .map(|j| j.bytes.len() as f64)
        });
        let mut inner = self.hold.inner.lock().unwrap();
        while inner.queue.len() >= MAX_HELD_ITEMS && !inner.flushing {
            inner = self
                .hold
                .cond
                .wait_timeout(inner, Duration::from_millis(20))
                .unwrap()
                .0;
        }
        if inner.flushing {
            return Err(gst::FlowError::Flushing);
        }
        inner.counts.frames += 1;
        let id = result.frame;
        if !connected {
            inner.counts.offline += 1;
            result.decision = "offline".into();
            inner.queue.push_ready(Item::Frame { buffer, result });
            self.hold.cond.notify_all();
            return Ok(());
        }
        // Undecided: if the planner never sends it, it leaves kept, or late at its deadline.
        result.decision = "late".into();
        let frame = FrameIn {
            id,
            arrival_ms: driver.ms(entered),
            deadline_ms: driver.ms(deadline),
            confidence: result.device_confidence,
            raw_confidence: result.raw_confidence,
            class: result.class_id,
            small_jpeg_bytes,
        };
        inner.queue.push_waiting(
            Item::Frame {
                buffer: buffer.clone(),
                result,
            },
            id,
            deadline,
        );
        drop(inner);
        driver
            .pending
            .lock()
            .unwrap()
            .insert(id, (buffer, info, deadline));
        driver.planner.lock().unwrap().on_frame(frame);
        self.drive_cbo();
        Ok(())
    }

    fn stop(&self) {
        let driver = self.driver.lock().unwrap().take();
        if let Some(driver) = driver {
            driver.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            driver.wake();
            if let Some(t) = driver.timer.lock().unwrap().take() {
                let _ = t.join();
            }
            driver.pending.lock().unwrap().clear();
        }
        // Dropping the client closes the connection; completions still running find the queue
        // empty and are ignored.
        self.client.lock().unwrap().take();
        if let Some(state) = self.state.lock().unwrap().take() {
            gst::info!(CAT, imp = self, "stopped after {} frames", state.frame);
        }
        let mut inner = self.hold.inner.lock().unwrap();
        inner.queue.drain();
    }

    fn offloading(&self) -> bool {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|s| s.policy.is_some())
    }

    /// Classifies a buffer and decides what happens to it (streaming thread).
    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let entered = Instant::now();
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.info.clone().ok_or_else(|| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("No caps set"));
            gst::FlowError::NotNegotiated
        })?;
        let (classification, timing) = {
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info)
                .map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("Cannot map the input frame")
                    );
                    gst::FlowError::Error
                })?;
            state.classifier.classify_frame(&frame).map_err(|e| {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("{e}"));
                gst::FlowError::Error
            })?
        };
        let confidence = state.calibrated(classification.confidence);
        let mut result = CboResult {
            frame: state.frame,
            class_id: classification.class_id,
            label: classification.label,
            confidence,
            raw_confidence: classification.confidence,
            source: Source::Device,
            decision: "device".into(),
            resolution: 0,
            inference_us: timing.inference_us,
            preprocess_us: timing.preprocess_us,
            top_classes: classification.top_classes,
            top_scores: classification
                .top_scores
                .iter()
                .map(|&v| v as f64)
                .collect(),
            device_class_id: classification.class_id,
            device_confidence: confidence,
            server_latency_us: 0,
        };
        state.frame += 1;
        gst::trace!(
            CAT,
            imp = self,
            "frame {}: {} ({}) p={:.3} pre={}us inf={}us",
            result.frame,
            result.label,
            result.class_id,
            result.confidence,
            result.preprocess_us,
            result.inference_us
        );
        let Some(mut policy) = state.policy else {
            let post = state.post_messages;
            drop(guard);
            return self.push_result(buffer, result, post);
        };
        if state.live.is_none() {
            let mut q = gst::query::Latency::new();
            let live = self.sinkpad.peer_query(&mut q) && q.result().0;
            gst::debug!(CAT, imp = self, "upstream is live: {live}");
            state.live = Some(live);
        }
        policy.live = state.live.unwrap_or(true);
        let deadline = entered + state.deadline;
        let post_stats = entered.duration_since(state.last_stats) >= STATS_INTERVAL;
        if post_stats {
            state.last_stats = entered;
        }
        drop(guard);
        let driver = self.driver.lock().unwrap().clone();
        match driver {
            Some(d) if policy.kind.planned() => {
                self.hold_frame_cbo(&d, buffer, info, entered, deadline, result)?
            }
            _ => self.hold_frame(buffer, info, result.clone(), &policy, deadline, &mut result)?,
        }
        if post_stats {
            let msg = gst::message::Element::builder(self.stats())
                .src(&*self.obj())
                .build();
            let _ = self.obj().post_message(msg);
        }
        let inner = self.hold.inner.lock().unwrap();
        match inner.flow {
            Some(e) => Err(e),
            None => Ok(gst::FlowSuccess::Ok),
        }
    }

    /// Offload mode: decides for the frame, sends it when the policy says so, and queues it.
    fn hold_frame(
        &self,
        buffer: gst::Buffer,
        info: gst_video::VideoInfo,
        device: CboResult,
        policy: &PolicyConfig,
        deadline: Instant,
        result: &mut CboResult,
    ) -> Result<(), gst::FlowError> {
        let client_guard = self.client.lock().unwrap();
        let client = client_guard.as_ref();
        let mut inner = self.hold.inner.lock().unwrap();
        let decision = loop {
            if inner.flushing {
                return Err(gst::FlowError::Flushing);
            }
            let (in_flight, connected) =
                client.map_or((0, false), |c| (c.in_flight(), c.connected()));
            let d = policy::decide(
                policy,
                device.confidence,
                device.raw_confidence,
                in_flight,
                connected,
            );
            // Non-live: wait for an answer to free a slot (answers notify the condvar).
            if d != Decision::WaitForRoom && inner.queue.len() < MAX_HELD_ITEMS {
                break d;
            }
            inner = self
                .hold
                .cond
                .wait_timeout(inner, Duration::from_millis(20))
                .unwrap()
                .0;
        };
        inner.counts.frames += 1;
        match (decision, client) {
            (Decision::Offload { short_side }, Some(client)) => {
                inner.counts.offloaded += 1;
                result.decision = "offload".into();
                result.resolution = short_side as i32;
                let id = result.frame;
                inner.queue.push_waiting(
                    Item::Frame {
                        buffer: buffer.clone(),
                        result: result.clone(),
                    },
                    id,
                    deadline,
                );
                self.hold.cond.notify_all();
                drop(inner);
                let hold = self.hold.clone();
                client.submit(
                    OffloadJob {
                        frame_id: id,
                        buffer,
                        info,
                        short_side,
                        deadline,
                    },
                    Box::new(move |r| hold.complete(id, r)),
                );
            }
            (d, _) => {
                match d {
                    Decision::Busy => inner.counts.busy += 1,
                    Decision::Offline => inner.counts.offline += 1,
                    _ => inner.counts.kept += 1,
                }
                result.decision = d.as_str().into();
                inner.queue.push_ready(Item::Frame {
                    buffer,
                    result: result.clone(),
                });
                self.hold.cond.notify_all();
            }
        }
        Ok(())
    }

    /// Attaches the result and pushes the buffer downstream.
    fn push_result(
        &self,
        mut buffer: gst::Buffer,
        result: CboResult,
        post: bool,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        result.attach(buffer.make_mut()).map_err(|e| {
            gst::element_imp_error!(self, gst::CoreError::Failed, ("Cannot attach CboMeta: {e}"));
            gst::FlowError::Error
        })?;
        if post {
            let msg = gst::message::Element::builder(result.to_structure())
                .src(&*self.obj())
                .build();
            let _ = self.obj().post_message(msg);
        }
        self.srcpad.push(buffer)
    }

    /// Applies how an offloaded frame ended to its result.
    fn finish_result(&self, mut result: CboResult, outcome: Outcome<ServerResult>) -> CboResult {
        let mut inner = self.hold.inner.lock().unwrap();
        match outcome {
            Outcome::Ready => {}
            Outcome::Answered(sr) => {
                inner.counts.answered += 1;
                let a = &sr.answer;
                if let (Some(&class_id), Some(&score)) = (a.class_ids.first(), a.scores.first()) {
                    result.class_id = class_id;
                    result.label = a.labels.first().cloned().unwrap_or_default();
                    result.confidence = score as f64;
                    result.raw_confidence = score as f64;
                    result.top_classes = a.class_ids.clone();
                    result.top_scores = a.scores.iter().map(|&s| s as f64).collect();
                    result.source = Source::Server;
                    result.decision = "offload".into();
                } else {
                    result.decision = "failed".into();
                }
                result.resolution = sr.short_side as i32;
                result.server_latency_us = sr.latency.as_micros() as u64;
            }
            Outcome::Late => {
                inner.counts.late += 1;
                result.decision = "late".into();
            }
            Outcome::Failed(reason) => {
                inner.counts.failed += 1;
                gst::debug!(
                    CAT,
                    imp = self,
                    "frame {} not offloaded: {reason}",
                    result.frame
                );
                result.decision = "failed".into();
            }
        }
        result
    }

    /// policy=cbo with `reuse-window`: remembers server answers and gives one to a frame that
    /// stays on the device when [`AnswerReuse`] says it applies. Runs on the output task, so
    /// frames come in stream order.
    fn apply_reuse(&self, buffer: &gst::Buffer, mut result: CboResult) -> CboResult {
        let Some(driver) = self.driver.lock().unwrap().clone() else {
            return result;
        };
        let Some(reuse) = &driver.reuse else {
            return result;
        };
        // Stream time, so that a file decoded faster than real time keeps the window's meaning.
        let arrival_ms = match buffer.pts() {
            Some(pts) => pts.nseconds() as f64 / 1e6,
            None => driver.ms(Instant::now()),
        };
        let answer = (result.source == Source::Server).then(|| {
            let r = driver
                .profile
                .resolutions
                .iter()
                .position(|p| p.short_side as i32 == result.resolution)
                .unwrap_or(0);
            Answered {
                label: ServerLabel {
                    class_id: result.class_id,
                    label: result.label.clone(),
                    score: result.raw_confidence,
                    top_classes: result.top_classes.clone(),
                    top_scores: result.top_scores.clone(),
                },
                expected_accuracy: driver.profile.server_accuracy(result.device_confidence, r),
            }
        });
        let reused = reuse.lock().unwrap().next(Leaving {
            arrival_ms,
            device_class: result.device_class_id,
            device_confidence: result.device_confidence,
            answer,
        });
        if let Some(u) = reused {
            gst::trace!(
                CAT,
                imp = self,
                "frame {}: reusing the answer of {:.0} ms earlier ({})",
                result.frame,
                u.age_ms,
                u.label.label
            );
            result.class_id = u.label.class_id;
            result.label = u.label.label;
            result.confidence = u.expected_accuracy;
            result.raw_confidence = u.label.score;
            result.top_classes = u.label.top_classes;
            result.top_scores = u.label.top_scores;
            result.source = Source::Server;
            result.decision = "reuse".into();
            self.hold.inner.lock().unwrap().counts.reused += 1;
        }
        result
    }

    /// One iteration of the source pad task: waits until the head of the hold queue may leave,
    /// then pushes it.
    fn output_loop(&self) {
        let mut inner = self.hold.inner.lock().unwrap();
        let (item, outcome) = loop {
            if inner.flushing {
                drop(inner);
                let _ = self.srcpad.pause_task();
                return;
            }
            if let Some(popped) = inner.queue.pop(Instant::now()) {
                break popped;
            }
            inner = match inner.queue.next_deadline() {
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    self.hold.cond.wait_timeout(inner, wait).unwrap().0
                }
                None => self.hold.cond.wait(inner).unwrap(),
            };
        };
        inner.pushing = true;
        // Room in the queue: a waiting streaming thread may go on.
        self.hold.cond.notify_all();
        drop(inner);
        let flow = match item {
            Item::Event(event) => {
                let eos = event.type_() == gst::EventType::Eos;
                if !self.srcpad.push_event(event) && !eos {
                    gst::debug!(CAT, imp = self, "downstream refused a serialized event");
                }
                Ok(gst::FlowSuccess::Ok)
            }
            Item::Frame { buffer, result } => {
                let result = self.finish_result(result, outcome);
                let result = self.apply_reuse(&buffer, result);
                let post = self
                    .state
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|s| s.post_messages);
                self.push_result(buffer, result, post)
            }
        };
        let mut inner = self.hold.inner.lock().unwrap();
        inner.pushing = false;
        if let Err(e) = flow {
            gst::debug!(CAT, imp = self, "downstream returned {e:?}; pausing output");
            inner.flow = Some(e);
            if e != gst::FlowError::Flushing && e != gst::FlowError::Eos {
                // As queue does: a fatal flow error downstream becomes an element error.
                if matches!(
                    e,
                    gst::FlowError::NotLinked
                        | gst::FlowError::NotNegotiated
                        | gst::FlowError::Error
                        | gst::FlowError::NotSupported
                ) {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ("Internal data stream error."),
                        ["streaming stopped, reason {e:?}"]
                    );
                }
            }
            self.hold.cond.notify_all();
            drop(inner);
            let _ = self.srcpad.pause_task();
        } else {
            self.hold.cond.notify_all();
        }
    }

    fn start_task(&self) -> Result<(), gst::LoggableError> {
        {
            let mut inner = self.hold.inner.lock().unwrap();
            inner.flushing = false;
            inner.flow = None;
        }
        let weak = self.obj().downgrade();
        self.srcpad
            .start_task(move || {
                if let Some(obj) = weak.upgrade() {
                    obj.imp().output_loop();
                }
            })
            .map_err(|e| gst::loggable_error!(CAT, "cannot start the output task: {e}"))
    }

    fn set_flushing(&self) {
        let mut inner = self.hold.inner.lock().unwrap();
        inner.flushing = true;
        self.hold.cond.notify_all();
    }

    fn src_activatemode(
        &self,
        _pad: &gst::Pad,
        mode: gst::PadMode,
        active: bool,
    ) -> Result<(), gst::LoggableError> {
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(CAT, "only push mode is supported"));
        }
        if active {
            if self.offloading() {
                self.start_task()?;
            }
        } else {
            self.set_flushing();
            self.srcpad
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the output task: {e}"))?;
            self.hold.inner.lock().unwrap().queue.drain();
            if let Some(s) = self.state.lock().unwrap().as_mut() {
                s.live = None;
            }
        }
        Ok(())
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {:?}", event.type_());
        if let EventView::Caps(c) = event.view() {
            let caps = c.caps();
            let info = match gst_video::VideoInfo::from_caps(caps) {
                Ok(info) => info,
                Err(_) => {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ("Unsupported caps {caps}")
                    );
                    return false;
                }
            };
            gst::debug!(CAT, imp = self, "negotiated {caps}");
            match self.state.lock().unwrap().as_mut() {
                Some(state) => state.info = Some(info),
                None => return false,
            }
        }
        if !self.offloading() {
            return gst::Pad::event_default(pad, Some(&*self.obj()), event);
        }
        match event.view() {
            EventView::FlushStart(_) => {
                let ret = self.srcpad.push_event(event);
                self.set_flushing();
                let _ = self.srcpad.pause_task();
                ret
            }
            EventView::FlushStop(_) => {
                self.hold.inner.lock().unwrap().queue.drain();
                if let Some(s) = self.state.lock().unwrap().as_mut() {
                    s.live = None;
                }
                // After a seek the next frames need not look like the last ones.
                if let Some(d) = self.driver.lock().unwrap().as_ref()
                    && let Some(r) = &d.reuse
                {
                    r.lock().unwrap().reset();
                }
                let ret = self.srcpad.push_event(event);
                ret && self.start_task().is_ok()
            }
            _ if event.is_serialized() => {
                let mut inner = self.hold.inner.lock().unwrap();
                if inner.flushing {
                    return false;
                }
                inner.queue.push_ready(Item::Event(event));
                self.hold.cond.notify_all();
                true
            }
            _ => self.srcpad.push_event(event),
        }
    }

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if query.is_serialized() && self.offloading() {
            // A serialized query (drain, allocation) must see every frame before it pass:
            // wait until the output task has pushed everything held.
            let mut inner = self.hold.inner.lock().unwrap();
            while (!inner.queue.is_empty() || inner.pushing) && !inner.flushing {
                inner = self
                    .hold
                    .cond
                    .wait_timeout(inner, Duration::from_millis(20))
                    .unwrap()
                    .0;
            }
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let mut upstream = gst::query::Latency::new();
            if !self.sinkpad.peer_query(&mut upstream) {
                return false;
            }
            let (live, min, max) = upstream.result();
            let extra = if self.offloading() {
                gst::ClockTime::from_mseconds(self.settings.lock().unwrap().deadline_ms as u64)
            } else {
                gst::ClockTime::ZERO
            };
            gst::debug!(
                CAT,
                imp = self,
                "latency: upstream live={live} min={min} max={max:?}, adding {extra}"
            );
            q.set(live, min + extra, max.map(|m| m + extra));
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    /// The `stats` structure.
    fn stats(&self) -> gst::Structure {
        let counts = self.hold.inner.lock().unwrap().counts.clone();
        let client = self.client.lock().unwrap().as_ref().map(|c| c.stats());
        let c = client.unwrap_or_default();
        gst::Structure::builder("cbo-stats")
            .field("frames", counts.frames)
            .field("kept", counts.kept)
            .field("offloaded", counts.offloaded)
            .field("answered", counts.answered)
            .field("late", counts.late)
            .field("failed", counts.failed)
            .field("busy", counts.busy)
            .field("offline", counts.offline)
            .field("reused", counts.reused)
            .field("bytes-sent", c.bytes_sent)
            .field("rtt-ms", c.rtt_us as f64 / 1000.0)
            .field("uplink-kbps", c.uplink_bps / 1000.0)
            .field("encode-ms", c.encode_us / 1000.0)
            .field("reconnects", c.reconnects)
            .field("connected", c.connected)
            .build()
    }
}
