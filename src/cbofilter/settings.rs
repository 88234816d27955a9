//! `cbofilter`'s settings: the property values, their ParamSpecs and defaults.
//!
//! gst-plugins-rs style: the element keeps a `Mutex<Settings>`; `start` (READY→PAUSED) copies
//! it, so a property flagged "changeable in NULL or READY" takes effect at the next start even
//! when it was set in READY; the streaming thread copies the few that may change while
//! playing (`threshold`, `post-messages`) per buffer.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

use super::{ExecutionProviderProp, MergeProp, OutputKindProp, Policy};
use crate::inference;

pub const DEFAULT_INPUT_MEAN: &str = "127";
pub const DEFAULT_INPUT_STD: &str = "128";
pub const DEFAULT_TOP_K: u32 = 5;
pub const DEFAULT_DEADLINE_MS: u32 = 200;
pub const DEFAULT_RESOLUTION: u32 = 224;
pub const DEFAULT_JPEG_QUALITY: u32 = 80;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 8;
/// policy=cbo: how long a server answer may serve the following frames (`cbo eval` measured
/// cbo with and without reuse; see docs/policy.md).
pub const DEFAULT_REUSE_WINDOW_MS: u32 = 1000;
pub const DEFAULT_THRESHOLD: f64 = 0.5;
/// Shared session: how long the oldest frame waits for the batch to fill, in µs.
pub const DEFAULT_BATCH_TIMEOUT_US: u32 = 2000;
pub const DEFAULT_PROFILE: &str = "efficientnet-lite0-to-lite2.profile.json";
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: String,
    pub labels: Option<String>,
    pub input_mean: String,
    pub input_std: String,
    pub output_kind: OutputKindProp,
    pub top_k: u32,
    pub execution_provider: ExecutionProviderProp,
    pub ep_options: String,
    pub ep_fallback: bool,
    pub threads: u32,
    pub input_size: u32,
    pub shared_session: bool,
    pub model_instance_id: Option<String>,
    pub max_batch: u32,
    pub batch_timeout_us: u32,
    pub post_messages: bool,
    pub calibration: Option<String>,
    pub server: String,
    pub server_cert: Option<String>,
    pub server_fingerprint: Option<String>,
    pub token: String,
    pub shared_connection: bool,
    pub deadline_ms: u32,
    pub resolution: u32,
    pub jpeg_quality: u32,
    pub max_in_flight: u32,
    pub reuse_window_ms: u32,
    pub merge: MergeProp,
    pub policy: Policy,
    pub threshold: f64,
    pub profile: String,
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
            ep_options: String::new(),
            ep_fallback: false,
            threads: 0,
            input_size: 0,
            shared_session: true,
            model_instance_id: None,
            max_batch: 0,
            batch_timeout_us: DEFAULT_BATCH_TIMEOUT_US,
            post_messages: false,
            calibration: None,
            server: String::new(),
            server_cert: None,
            server_fingerprint: None,
            token: String::new(),
            shared_connection: true,
            deadline_ms: DEFAULT_DEADLINE_MS,
            resolution: DEFAULT_RESOLUTION,
            jpeg_quality: DEFAULT_JPEG_QUALITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            reuse_window_ms: DEFAULT_REUSE_WINDOW_MS,
            merge: MergeProp::Confidence,
            policy: Policy::Local,
            threshold: DEFAULT_THRESHOLD,
            profile: inference::models_dir()
                .join(DEFAULT_PROFILE)
                .display()
                .to_string(),
        }
    }
}

/// Every property of the element, in the order gst-inspect lists them.
pub fn properties() -> &'static [glib::ParamSpec] {
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
                .blurb("Class names: one per line, TSV index<TAB>wnid<TAB>name, or a JSON object with an id2label map (a Hugging Face config.json). A model with one output more than labels has a background entry at index 0 (a warning unless the model has 1001 outputs: a file one name short reads the same). Unset: ImageNet names for 1000/1001-way models, else 'class N'")
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
                .blurb("How to read the model's output row; set it when auto guesses wrong (it decides once, on the first frame)")
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
            .blurb("ONNX Runtime execution provider for the device model; a provider the loaded ONNX Runtime lacks is an error unless ep-fallback=true. One process loads one ONNX Runtime library, when its first model loads: openvino then loads the onnxruntime-openvino build (make setup-openvino) if installed; CBO_ORT_BUILD=openvino|default or ORT_DYLIB_PATH pick it explicitly")
            .mutable_ready()
            .build(),
            glib::ParamSpecString::builder("ep-options")
                .nick("EP options")
                .blurb("Options for the execution provider, key=value,... passed to it as they are (e.g. OpenVINO: device_type=CPU|GPU|NPU, precision=FP32|FP16|ACCURACY, cache_dir=DIR, num_of_threads=N). Needs an explicit execution-provider; an entry the provider rejects is an error naming it")
                .default_value(Some(""))
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
            glib::ParamSpecUInt::builder("input-size")
                .nick("Input size")
                .blurb("Side of the square image fed to a model whose image size is dynamic (e.g. a Hugging Face Optimum export): the size it was trained at, e.g. 224. 0 = the model's own size, which must then be fixed; a model with a fixed size takes only 0 or that size")
                .maximum(4096)
                .default_value(0)
                .mutable_ready()
                .build(),
            glib::ParamSpecBoolean::builder("shared-session")
                .nick("Shared session")
                .blurb("Share one ONNX Runtime session, and batch frames, with the other cbofilter elements of the process that run the same model file with the same execution-provider, ep-options, ep-fallback, threads and input-size (or the same model-instance-id). Labels, normalisation, calibration and offloading stay per element; pre-processing stays on each streaming thread")
                .default_value(true)
                .mutable_ready()
                .build(),
            glib::ParamSpecString::builder("model-instance-id")
                .nick("Model instance id")
                .blurb("shared-session=true: share the session with exactly the elements of the same id (their session settings must match, else an error); unset: with every element of the same session settings")
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt::builder("max-batch")
                .nick("Max batch")
                .blurb("shared-session=true: frames run together at most; 0 = the number of elements sharing the session (the smallest non-zero value among them wins). A model with a fixed batch of 1 runs them one after the other")
                .maximum(256)
                .default_value(0)
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt::builder("batch-timeout")
                .nick("Batch timeout (µs)")
                .blurb("shared-session=true: the longest, in microseconds, the oldest frame waits for the batch to fill before it runs with fewer (the smallest among the sharing elements wins). Bounds the latency sharing adds, with one batch inference; added to the latency query")
                .maximum(1_000_000)
                .default_value(DEFAULT_BATCH_TIMEOUT_US)
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt64::builder("session-id")
                .nick("Session id")
                .blurb("Id of the ONNX Runtime session the model runs on, unique in the process: elements sharing a session report the same (0 until the element has started)")
                .read_only()
                .build(),
            glib::ParamSpecUInt::builder("shared-streams")
                .nick("Shared streams")
                .blurb("Elements using this element's session now, this one included (0 until started, 1 when not shared)")
                .read_only()
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
                .blurb("Bearer token the server expects (cboserver --token-file); empty = none. Write-only, and never logged: a readable token would be printed by pipeline graph dumps (GST_DEBUG_DUMP_DOT_DIR)")
                .default_value(Some(""))
                .write_only()
                .mutable_ready()
                .build(),
            glib::ParamSpecBoolean::builder("shared-connection")
                .nick("Shared connection")
                .blurb("Offload over one QUIC connection shared with the other cbofilter elements of the process that use the same server, server-cert or server-fingerprint, and token (each request on its own stream); the last element to stop closes it. Planner, uplink estimate, in-flight window and stats stay per element. false: a connection of this element's own")
                .default_value(true)
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
                .blurb("policy=all / threshold / threshold-raw: most offloaded frames awaiting an answer at once. When reached, a live source's frame stays on the device (decision=busy); a non-live source (file) waits for room instead. cbo and fastva pace their sends by their uplink estimate instead")
                .minimum(1)
                .maximum(1024)
                .default_value(DEFAULT_MAX_IN_FLIGHT)
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt::builder("reuse-window")
                .nick("Reuse window (ms)")
                .blurb("policy=cbo: a server answer also labels the following frames that stay on the device, while the device's top-1 is unchanged and for at most this many ms of stream time from the answered frame (either way: reverse playback too; a new segment ends the run), where the profile says the answer is more likely right than the device (decision=reuse); the planner counts on it. 0 disables")
                .maximum(60_000)
                .default_value(DEFAULT_REUSE_WINDOW_MS)
                .mutable_ready()
                .build(),
            glib::ParamSpecEnum::builder_with_default("merge", MergeProp::Confidence)
                .nick("Merge")
                .blurb("policy=cbo / fastva, when the server's answer names another class than the device: confidence = keep the label more likely right, by the profile's merge model of the server's score, the device's calibrated confidence and the resolution (decision=overruled when the device's wins; its answer then labels no later frame; profiles without a merge model take the server's); server = the server's label always. The other policies take the server's label")
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
                .blurb("cbo-stats structure: frames, kept, offloaded, answered, late, failed, busy, offline, reused, overruled (answered frames that kept their device label, `merge`), flushed (frames dropped inside the element by a flushing seek, a stop, or downstream returning EOS), bytes-sent, rtt-ms (quinn's smoothed RTT), min-rtt-ms (its minimum: the path without queueing), cwnd-bytes (its congestion window), uplink-kbps, encode-ms, reconnects, connected, connection-users (elements sharing its QUIC connection, this one included); shared-batches and shared-batched-frames (batches the shared session has run for its whole group, and the frames in them; 0 when not shared); also posted as an element message every second while offloading")
                .read_only()
                .build(),
        ]
    });
    PROPERTIES.as_ref()
}

impl Settings {
    /// Sets property `pspec` (one of [`properties`], not a read-only one).
    pub fn set(&mut self, value: &glib::Value, pspec: &glib::ParamSpec) {
        let s = self;
        let opt_string = |v: &glib::Value| {
            v.get::<Option<String>>()
                .expect("type checked upstream")
                .filter(|s| !s.is_empty())
        };
        match pspec.name() {
            "model" => {
                s.model = opt_string(value).unwrap_or_else(|| Self::default().model);
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
            "ep-options" => s.ep_options = opt_string(value).unwrap_or_default(),
            "ep-fallback" => s.ep_fallback = value.get().expect("type checked upstream"),
            "threads" => s.threads = value.get().expect("type checked upstream"),
            "input-size" => s.input_size = value.get().expect("type checked upstream"),
            "shared-session" => s.shared_session = value.get().expect("type checked upstream"),
            "model-instance-id" => s.model_instance_id = opt_string(value),
            "max-batch" => s.max_batch = value.get().expect("type checked upstream"),
            "batch-timeout" => s.batch_timeout_us = value.get().expect("type checked upstream"),
            "post-messages" => s.post_messages = value.get().expect("type checked upstream"),
            "calibration" => s.calibration = opt_string(value),
            "server" => s.server = opt_string(value).unwrap_or_default(),
            "server-cert" => s.server_cert = opt_string(value),
            "server-fingerprint" => s.server_fingerprint = opt_string(value),
            "token" => s.token = opt_string(value).unwrap_or_default(),
            "shared-connection" => {
                s.shared_connection = value.get().expect("type checked upstream")
            }
            "deadline" => s.deadline_ms = value.get().expect("type checked upstream"),
            "resolution" => s.resolution = value.get().expect("type checked upstream"),
            "jpeg-quality" => s.jpeg_quality = value.get().expect("type checked upstream"),
            "max-in-flight" => s.max_in_flight = value.get().expect("type checked upstream"),
            "reuse-window" => s.reuse_window_ms = value.get().expect("type checked upstream"),
            "policy" => s.policy = value.get().expect("type checked upstream"),
            "merge" => s.merge = value.get().expect("type checked upstream"),
            "profile" => s.profile = opt_string(value).unwrap_or_else(|| Self::default().profile),
            "threshold" => s.threshold = value.get().expect("type checked upstream"),
            other => unreachable!("unknown property {other}"),
        }
    }

    /// The value of property `pspec`, or `None` for the read-only ones the element computes
    /// (and the write-only `token`, which GObject never reads).
    pub fn get(&self, pspec: &glib::ParamSpec) -> Option<glib::Value> {
        let s = self;
        Some(match pspec.name() {
            "model" => s.model.to_value(),
            "labels" => s.labels.to_value(),
            "input-mean" => s.input_mean.to_value(),
            "input-std" => s.input_std.to_value(),
            "output-kind" => s.output_kind.to_value(),
            "top-k" => s.top_k.to_value(),
            "execution-provider" => s.execution_provider.to_value(),
            "ep-options" => s.ep_options.to_value(),
            "ep-fallback" => s.ep_fallback.to_value(),
            "threads" => s.threads.to_value(),
            "input-size" => s.input_size.to_value(),
            "shared-session" => s.shared_session.to_value(),
            "model-instance-id" => s.model_instance_id.to_value(),
            "max-batch" => s.max_batch.to_value(),
            "batch-timeout" => s.batch_timeout_us.to_value(),
            "post-messages" => s.post_messages.to_value(),
            "calibration" => s.calibration.to_value(),
            "server" => s.server.to_value(),
            "server-cert" => s.server_cert.to_value(),
            "server-fingerprint" => s.server_fingerprint.to_value(),
            "shared-connection" => s.shared_connection.to_value(),
            "deadline" => s.deadline_ms.to_value(),
            "resolution" => s.resolution.to_value(),
            "jpeg-quality" => s.jpeg_quality.to_value(),
            "max-in-flight" => s.max_in_flight.to_value(),
            "reuse-window" => s.reuse_window_ms.to_value(),
            "policy" => s.policy.to_value(),
            "merge" => s.merge.to_value(),
            "threshold" => s.threshold.to_value(),
            "profile" => s.profile.to_value(),
            _ => return None,
        })
    }
}
