//! `cbofilter` implementation: properties, state, and the per-frame hook.

use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::BaseTransformMode;
use gst_base::subclass::prelude::*;
use gst_video::subclass::prelude::*;

use super::{ExecutionProviderProp, OutputKindProp, Policy};
use crate::calibration::{CalibrationFile, Calibrator};
use crate::inference::{self, Classifier, InferenceError, ModelConfig};
use crate::meta::{CboResult, Source};
use crate::postprocess::OutputKind;
use crate::preprocess::Normalization;

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
    deadline_ms: u32,
    policy: Policy,
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
            deadline_ms: DEFAULT_DEADLINE_MS,
            policy: Policy::Local,
        }
    }
}

struct State {
    classifier: Classifier,
    info: Option<gst_video::VideoInfo>,
    frame: u64,
    post_messages: bool,
    calibrator: Option<Calibrator>,
    /// Log-probabilities of a probability-output model, for temperature scaling.
    log_scores: Vec<f32>,
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

#[derive(Default)]
pub struct CboFilter {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// Provider the running model uses; kept outside `state` so reading the property never waits
    /// for a frame to finish.
    active_provider: Mutex<String>,
}

#[glib::object_subclass]
impl ObjectSubclass for CboFilter {
    const NAME: &'static str = "GstCboFilter";
    type Type = super::CboFilter;
    type ParentType = gst_video::VideoFilter;
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
                    .blurb("host:port of a cboserver to offload frames to; empty = device only. Offloading is not yet implemented: frames stay on the device")
                    .default_value(Some(""))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("deadline")
                    .nick("Deadline")
                    .blurb("Per-frame deadline in ms from entering the element to leaving it, for offloaded frames (used once offloading is implemented)")
                    .minimum(1)
                    .maximum(60_000)
                    .default_value(DEFAULT_DEADLINE_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("policy", Policy::Local)
                    .nick("Policy")
                    .blurb("Which frames to offload; only 'local' is implemented so far (others run device-only with a warning)")
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
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
            "deadline" => s.deadline_ms = value.get().expect("type checked upstream"),
            "policy" => s.policy = value.get().expect("type checked upstream"),
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
            "deadline" => s.deadline_ms.to_value(),
            "policy" => s.policy.to_value(),
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
                "Classifies every frame with an ONNX model (ONNX Runtime) and attaches the label and \
                 confidence as CboMeta; video passes through unchanged",
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
}

impl BaseTransformImpl for CboFilter {
    // In place and never passthrough: the video is untouched, but each buffer gets a meta, which
    // needs a writable buffer (its memory is shared, not copied).
    const MODE: BaseTransformMode = BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        if !settings.server.is_empty() || settings.policy != Policy::Local {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "Offloading is not implemented in this version; every frame is classified on the device (server='{}', policy={:?})",
                    settings.server,
                    settings.policy
                )
            );
        }
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
        *self.state.lock().unwrap() = Some(State {
            classifier,
            info: None,
            frame: 0,
            post_messages: settings.post_messages,
            calibrator,
            log_scores: Vec::new(),
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(state) = self.state.lock().unwrap().take() {
            gst::info!(CAT, imp = self, "stopped after {} frames", state.frame);
        }
        Ok(())
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.info.as_ref().ok_or_else(|| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("No caps set"));
            gst::FlowError::NotNegotiated
        })?;
        let (classification, timing) = {
            let frame =
                gst_video::VideoFrameRef::from_buffer_ref_readable(buf, info).map_err(|_| {
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
        let result = CboResult {
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
        };
        state.frame += 1;
        let post = state.post_messages;
        drop(guard);
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
        result.attach(buf).map_err(|e| {
            gst::element_imp_error!(self, gst::CoreError::Failed, ("Cannot attach CboMeta: {e}"));
            gst::FlowError::Error
        })?;
        if post {
            let msg = gst::message::Element::builder(result.to_structure())
                .src(&*self.obj())
                .build();
            let _ = self.obj().post_message(msg);
        }
        Ok(gst::FlowSuccess::Ok)
    }
}

impl VideoFilterImpl for CboFilter {
    fn set_info(
        &self,
        incaps: &gst::Caps,
        in_info: &gst_video::VideoInfo,
        _outcaps: &gst::Caps,
        _out_info: &gst_video::VideoInfo,
    ) -> Result<(), gst::LoggableError> {
        gst::debug!(CAT, imp = self, "negotiated {incaps}");
        let mut guard = self.state.lock().unwrap();
        let state = guard
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "caps set before start"))?;
        state.info = Some(in_info.clone());
        Ok(())
    }
}
