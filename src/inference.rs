//! ONNX Runtime adapter: loading a classifier, choosing the execution provider, running frames.
//!
//! [`Classifier`] = model session + [`Preprocessor`] + [`Postprocessor`]. It validates the model at
//! load time (an image classifier: one `[N,3,H,W]` or `[N,H,W,3]` input of a supported element
//! type, one score row per image) and runs one warm-up inference, so a bad model fails when the
//! element starts, not on the first frame.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::ep::{self, ExecutionProvider as _};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef};

use crate::ortlib;
use crate::postprocess::{Classification, Labels, OutputKind, Postprocessor};
use crate::preprocess::{
    InputType, Layout, Normalization, PreprocessError, Preprocessor, Tensor, TensorSpec,
};

/// The ImageNet-1k class names (index, wnid, name), used when a 1000- or 1001-way model is given
/// no labels file.
pub const IMAGENET_LABELS_TSV: &str = include_str!("../models/imagenet1k.tsv");

/// Directory of the bundled models, baked in at compile time (override with `CBO_MODELS_DIR`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("CBO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")))
}

pub const DEFAULT_DEVICE_MODEL: &str = "efficientnet-lite0-int8pt-224.onnx";
pub const DEFAULT_SERVER_MODEL: &str = "efficientnet-lite2-fp32-260.onnx";

/// Which ONNX Runtime execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    /// The first accelerator the loaded ONNX Runtime offers that accepts the model, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
    TensorRt,
    OpenVino,
    Qnn,
    CoreMl,
    Nnapi,
    Xnnpack,
}

/// Order `auto` tries accelerators in. TensorRT is left out: it builds an engine for minutes on
/// first use, which nobody wants by surprise; ask for it explicitly.
const AUTO_ORDER: [ExecutionProvider; 6] = [
    ExecutionProvider::Cuda,
    ExecutionProvider::OpenVino,
    ExecutionProvider::Qnn,
    ExecutionProvider::CoreMl,
    ExecutionProvider::Nnapi,
    ExecutionProvider::Xnnpack,
];

impl ExecutionProvider {
    pub const ALL: [ExecutionProvider; 9] = [
        Self::Auto,
        Self::Cpu,
        Self::Cuda,
        Self::TensorRt,
        Self::OpenVino,
        Self::Qnn,
        Self::CoreMl,
        Self::Nnapi,
        Self::Xnnpack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::TensorRt => "tensorrt",
            Self::OpenVino => "openvino",
            Self::Qnn => "qnn",
            Self::CoreMl => "coreml",
            Self::Nnapi => "nnapi",
            Self::Xnnpack => "xnnpack",
        }
    }

    /// Whether the loaded ONNX Runtime was built with this provider.
    fn is_available(self) -> bool {
        let r = match self {
            Self::Auto | Self::Cpu => Ok(true),
            Self::Cuda => ep::CUDA::is_available(),
            Self::TensorRt => ep::TensorRT::is_available(),
            Self::OpenVino => ep::OpenVINO::is_available(),
            Self::Qnn => ep::QNN::is_available(),
            Self::CoreMl => ep::CoreML::is_available(),
            Self::Nnapi => ep::NNAPI::is_available(),
            Self::Xnnpack => ep::XNNPACK::is_available(),
        };
        r.unwrap_or(false)
    }

    fn dispatch(self) -> Option<ep::ExecutionProviderDispatch> {
        Some(match self {
            Self::Auto | Self::Cpu => return None,
            Self::Cuda => ep::CUDA::default().build(),
            Self::TensorRt => ep::TensorRT::default().build(),
            Self::OpenVino => ep::OpenVINO::default().build(),
            Self::Qnn => ep::QNN::default().build(),
            Self::CoreMl => ep::CoreML::default().build(),
            Self::Nnapi => ep::NNAPI::default().build(),
            Self::Xnnpack => ep::XNNPACK::default().build(),
        })
    }
}

impl std::str::FromStr for ExecutionProvider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown execution provider '{s}'"))
    }
}

/// Everything needed to load a classifier; the element's properties map onto this one to one.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub model: PathBuf,
    /// `None`: the bundled ImageNet names for 1000/1001-way models, "class N" otherwise.
    pub labels: Option<PathBuf>,
    pub normalization: Normalization,
    pub output_kind: OutputKind,
    pub top_k: usize,
    pub execution_provider: ExecutionProvider,
    /// Fall back to CPU (with a warning) when an explicitly requested provider is missing.
    pub ep_fallback: bool,
    /// Intra-op threads; 0 lets ONNX Runtime decide.
    pub threads: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            model: models_dir().join(DEFAULT_DEVICE_MODEL),
            labels: None,
            normalization: Normalization::default(),
            output_kind: OutputKind::Auto,
            top_k: 5,
            execution_provider: ExecutionProvider::Auto,
            ep_fallback: false,
            threads: 0,
        }
    }
}

/// What can go wrong loading or running a classifier. Messages are meant for users.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Runtime(#[from] ortlib::OrtLoadError),
    #[error("model file '{0}' does not exist")]
    ModelMissing(PathBuf),
    #[error("cannot load model '{path}': {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    #[error("model '{path}' is not an image classifier: {reason}")]
    NotAClassifier { path: PathBuf, reason: String },
    #[error("{0}")]
    Labels(String),
    #[error("execution provider '{requested}' is not available: {reason}")]
    ProviderUnavailable {
        requested: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("inference failed: {0}")]
    Run(String),
}

/// Timings of one classified frame, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameTiming {
    pub preprocess_us: u64,
    pub inference_us: u64,
}

/// A loaded session plus its input/output description.
pub struct ModelSession {
    pub session: Session,
    pub input_name: String,
    pub spec: TensorSpec,
    /// Scores per image.
    pub width: usize,
    /// Provider the session runs on ("cpu", "cuda", ...).
    pub active_provider: &'static str,
    /// Set when a requested provider was replaced by CPU because of `ep-fallback`.
    pub fallback_warning: Option<String>,
}

fn describe_shape(shape: &[i64]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|&d| if d < 0 { "?".into() } else { d.to_string() })
        .collect();
    format!("[{}]", dims.join(","))
}

/// Reads the input layout, size and element type from the model's first input.
fn input_spec(session: &Session, path: &Path) -> Result<(String, TensorSpec), InferenceError> {
    let not = |reason: String| InferenceError::NotAClassifier {
        path: path.to_path_buf(),
        reason,
    };
    let input = session
        .inputs()
        .first()
        .ok_or_else(|| not("it has no inputs".into()))?;
    if session.inputs().len() > 1 {
        return Err(not(format!(
            "it has {} inputs; expected one image input",
            session.inputs().len()
        )));
    }
    let shape: Vec<i64> = input
        .dtype()
        .tensor_shape()
        .ok_or_else(|| not(format!("input '{}' is not a tensor", input.name())))?
        .iter()
        .copied()
        .collect();
    let ty = input.dtype().tensor_type().expect("tensor checked above");
    let elem = match ty {
        TensorElementType::Float32 => InputType::F32,
        TensorElementType::Float16 => InputType::F16,
        TensorElementType::Uint8 => InputType::U8,
        TensorElementType::Int8 => InputType::I8,
        other => {
            return Err(not(format!(
                "input '{}' has element type {other:?}; supported: f32, f16, u8, i8",
                input.name()
            )));
        }
    };
    if shape.len() != 4 {
        return Err(not(format!(
            "input '{}' has shape {} (rank {}); expected [N,3,H,W] or [N,H,W,3]",
            input.name(),
            describe_shape(&shape),
            shape.len()
        )));
    }
    let layout = if shape[1] == 3 {
        Layout::Nchw
    } else if shape[3] == 3 {
        Layout::Nhwc
    } else {
        return Err(not(format!(
            "input '{}' has shape {}: no dimension of 3 colour channels at position 1 (NCHW) or 3 (NHWC)",
            input.name(),
            describe_shape(&shape)
        )));
    };
    if shape[0] > 1 {
        return Err(not(format!(
            "input '{}' has a fixed batch of {}; expected 1 or dynamic",
            input.name(),
            shape[0]
        )));
    }
    let (h, w) = match layout {
        Layout::Nchw => (shape[2], shape[3]),
        Layout::Nhwc => (shape[1], shape[2]),
    };
    if h <= 0 || w <= 0 {
        return Err(not(format!(
            "input '{}' has shape {}: the image size must be fixed in the model",
            input.name(),
            describe_shape(&shape)
        )));
    }
    Ok((
        input.name().to_string(),
        TensorSpec {
            layout,
            width: w as u32,
            height: h as u32,
            elem,
        },
    ))
}

fn build_session(
    env: &ort::environment::Environment,
    path: &Path,
    provider: ExecutionProvider,
    threads: usize,
) -> Result<Session, String> {
    let mut builder = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| e.to_string())?;
    if threads > 0 {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| e.to_string())?;
    }
    if let Some(dispatch) = provider.dispatch() {
        builder = builder
            .with_execution_providers([dispatch.error_on_failure()])
            .map_err(|e| e.to_string())?;
    }
    builder.commit_from_file(path).map_err(|e| e.to_string())
}

/// Runs the session on `tensor`, returning the first output's scores as f32 in `row`.
pub fn run_session(
    session: &mut Session,
    input_name: &str,
    spec: &TensorSpec,
    tensor: &Tensor,
    row: &mut Vec<f32>,
) -> Result<(), InferenceError> {
    run_tensor(session, input_name, spec.shape(), tensor, row)
}

/// Runs the session on `tensor` of `shape` (any batch size) and reads the first output's scores
/// into `out`, all images one after the other. `run_session` and the server's batches use it.
pub fn run_tensor(
    session: &mut Session,
    input_name: &str,
    shape: [usize; 4],
    tensor: &Tensor,
    out: &mut Vec<f32>,
) -> Result<(), InferenceError> {
    let run = |e: ort::Error| InferenceError::Run(e.to_string());
    let input = match tensor {
        Tensor::F32(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(run)?
            .into_dyn(),
        Tensor::F16(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(run)?
            .into_dyn(),
        Tensor::U8(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(run)?
            .into_dyn(),
        Tensor::I8(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(run)?
            .into_dyn(),
    };
    let output_name = session.outputs()[0].name().to_string();
    let outputs = session
        .run(ort::inputs![input_name => input])
        .map_err(run)?;
    read_scores(&outputs[0], &output_name, out)
}

/// Reads a score tensor (f32, f16, or u8 quantised probabilities) into `row`, all images of the
/// batch one after the other.
pub fn read_scores(
    value: &ort::value::DynValue,
    name: &str,
    row: &mut Vec<f32>,
) -> Result<(), InferenceError> {
    row.clear();
    if let Ok((_, data)) = value.try_extract_tensor::<f32>() {
        row.extend_from_slice(data);
    } else if let Ok((_, data)) = value.try_extract_tensor::<half::f16>() {
        row.extend(data.iter().map(|v| v.to_f32()));
    } else if let Ok((_, data)) = value.try_extract_tensor::<u8>() {
        // Quantised probabilities (TFLite convention: scale 1/256).
        row.extend(data.iter().map(|&v| v as f32 / 256.0));
    } else {
        return Err(InferenceError::Run(format!(
            "output '{name}' is {:?}; expected a f32/f16/u8 score tensor",
            value.dtype()
        )));
    }
    Ok(())
}

impl ModelSession {
    /// Loads `path` on the requested provider (see [`ExecutionProvider`] for `auto`).
    pub fn load(
        path: &Path,
        provider: ExecutionProvider,
        ep_fallback: bool,
        threads: usize,
    ) -> Result<Self, InferenceError> {
        if !path.is_file() {
            return Err(InferenceError::ModelMissing(path.to_path_buf()));
        }
        std::fs::File::open(path).map_err(|e| InferenceError::ModelLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let env = ortlib::environment()?;
        let load_err = |reason: String| InferenceError::ModelLoad {
            path: path.to_path_buf(),
            reason,
        };
        let (session, active, fallback_warning) = match provider {
            ExecutionProvider::Cpu => (
                build_session(env, path, provider, threads).map_err(load_err)?,
                ExecutionProvider::Cpu,
                None,
            ),
            ExecutionProvider::Auto => {
                let mut chosen = None;
                for candidate in AUTO_ORDER.into_iter().filter(|p| p.is_available()) {
                    if let Ok(s) = build_session(env, path, candidate, threads) {
                        chosen = Some((s, candidate));
                        break;
                    }
                }
                match chosen {
                    Some((s, p)) => (s, p, None),
                    None => (
                        build_session(env, path, ExecutionProvider::Cpu, threads)
                            .map_err(load_err)?,
                        ExecutionProvider::Cpu,
                        None,
                    ),
                }
            }
            requested => {
                let attempt = if requested.is_available() {
                    build_session(env, path, requested, threads)
                } else {
                    Err(format!(
                        "the ONNX Runtime at {} was built without {}",
                        ortlib::loaded_path()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        requested.as_str()
                    ))
                };
                match attempt {
                    Ok(s) => (s, requested, None),
                    Err(reason) if ep_fallback => (
                        build_session(env, path, ExecutionProvider::Cpu, threads)
                            .map_err(load_err)?,
                        ExecutionProvider::Cpu,
                        Some(format!(
                            "execution provider '{}' is not available ({reason}); running on cpu",
                            requested.as_str()
                        )),
                    ),
                    Err(reason) => {
                        return Err(InferenceError::ProviderUnavailable {
                            requested: requested.as_str(),
                            reason: format!(
                                "{reason} (set ep-fallback=true to run on cpu instead)"
                            ),
                        });
                    }
                }
            }
        };
        let (input_name, spec) = input_spec(&session, path)?;
        let mut this = Self {
            session,
            input_name,
            spec,
            width: 0,
            active_provider: active.as_str(),
            fallback_warning,
        };
        // A warm-up run proves the model accepts the tensor we build and tells the score width
        // even when the model leaves it dynamic.
        let mut row = Vec::new();
        run_session(
            &mut this.session,
            &this.input_name,
            &this.spec,
            &Tensor::zeros(&this.spec),
            &mut row,
        )
        .map_err(|e| InferenceError::NotAClassifier {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if row.len() < 2 {
            return Err(InferenceError::NotAClassifier {
                path: path.to_path_buf(),
                reason: format!("its first output has {} value(s) per image", row.len()),
            });
        }
        this.width = row.len();
        Ok(this)
    }
}

/// A ready-to-use image classifier: frames in, [`Classification`]s out.
pub struct Classifier {
    model: ModelSession,
    preprocessor: Preprocessor,
    postprocessor: Postprocessor,
    row: Vec<f32>,
}

/// Labels for a model of `width` outputs when the user gave none.
fn default_labels(width: usize) -> Labels {
    if width == 1000 || width == 1001 {
        Labels::parse(IMAGENET_LABELS_TSV).expect("bundled labels parse")
    } else {
        Labels::numeric(width)
    }
}

impl Classifier {
    pub fn load(config: &ModelConfig) -> Result<Self, InferenceError> {
        let model = ModelSession::load(
            &config.model,
            config.execution_provider,
            config.ep_fallback,
            config.threads,
        )?;
        let labels = match &config.labels {
            Some(path) => Labels::load(path).map_err(|e| InferenceError::Labels(e.0))?,
            None => default_labels(model.width),
        };
        let postprocessor =
            Postprocessor::new(labels, model.width, config.output_kind, config.top_k).map_err(
                |e| InferenceError::Labels(format!("model '{}': {e}", config.model.display())),
            )?;
        let preprocessor = Preprocessor::new(model.spec, config.normalization)?;
        Ok(Self {
            model,
            preprocessor,
            postprocessor,
            row: Vec::new(),
        })
    }

    pub fn spec(&self) -> &TensorSpec {
        &self.model.spec
    }

    pub fn active_provider(&self) -> &'static str {
        self.model.active_provider
    }

    pub fn fallback_warning(&self) -> Option<&str> {
        self.model.fallback_warning.as_deref()
    }

    pub fn postprocessor(&self) -> &Postprocessor {
        &self.postprocessor
    }

    /// The raw output row of the last frame (logits or probabilities, as the model gives them).
    pub fn last_output(&self) -> &[f32] {
        &self.row
    }

    /// Fills the model input from a frame without running the model.
    pub fn preprocess<T>(
        &mut self,
        frame: &gst_video::VideoFrameRef<T>,
    ) -> Result<&Tensor, InferenceError> {
        Ok(self.preprocessor.process(frame)?)
    }

    /// Classifies one video frame.
    pub fn classify_frame<T>(
        &mut self,
        frame: &gst_video::VideoFrameRef<T>,
    ) -> Result<(Classification, FrameTiming), InferenceError> {
        let t0 = Instant::now();
        self.preprocessor.process(frame)?;
        let t1 = Instant::now();
        run_session(
            &mut self.model.session,
            &self.model.input_name,
            &self.model.spec,
            self.preprocessor.tensor(),
            &mut self.row,
        )?;
        let t2 = Instant::now();
        let result = self.postprocessor.classify(&self.row);
        Ok((
            result,
            FrameTiming {
                preprocess_us: (t1 - t0).as_micros() as u64,
                inference_us: (t2 - t1).as_micros() as u64,
            },
        ))
    }
}
