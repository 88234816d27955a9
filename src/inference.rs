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

    /// Whether `ep-options` can be passed to this provider (ONNX Runtime's key/value provider
    /// options; NNAPI takes flags, CPU and `auto` take none).
    pub fn takes_options(self) -> bool {
        !matches!(self, Self::Auto | Self::Cpu | Self::Nnapi)
    }

    /// The provider's registration with `options` (key, value) applied.
    fn dispatch(self, options: &EpOptions) -> Option<ep::ExecutionProviderDispatch> {
        fn with<E: ort::ep::ArbitrarilyConfigurableExecutionProvider>(
            mut e: E,
            options: &EpOptions,
        ) -> E {
            for (k, v) in &options.0 {
                e = e.with_arbitrary_config(k, v);
            }
            e
        }
        Some(match self {
            Self::Auto | Self::Cpu => return None,
            Self::Cuda => with(ep::CUDA::default(), options).build(),
            Self::TensorRt => with(ep::TensorRT::default(), options).build(),
            Self::OpenVino => with(ep::OpenVINO::default(), options).build(),
            Self::Qnn => with(ep::QNN::default(), options).build(),
            Self::CoreMl => with(ep::CoreML::default(), options).build(),
            Self::Nnapi => ep::NNAPI::default().build(),
            Self::Xnnpack => with(ep::XNNPACK::default(), options).build(),
        })
    }

    /// Which ONNX Runtime build has this provider, and how to get it.
    fn install_hint(self) -> &'static str {
        match self {
            Self::OpenVino => ortlib::OPENVINO_INSTALL_HINT,
            Self::Cuda | Self::TensorRt => {
                "install the onnxruntime-gpu build (CUDA 12) and point ORT_DYLIB_PATH at its \
                 libonnxruntime.so"
            }
            Self::Qnn => {
                "install the onnxruntime-qnn build and point ORT_DYLIB_PATH at its \
                 libonnxruntime.so"
            }
            Self::CoreMl => "CoreML is in the default macOS build of ONNX Runtime",
            Self::Nnapi => "NNAPI is in the Android build of ONNX Runtime",
            _ => "see docs/element.md, 'Execution providers'",
        }
    }

    /// The ONNX Runtime build the first session of a process should load for this provider.
    fn preferred_build(self) -> ortlib::OrtBuild {
        match self {
            Self::OpenVino => ortlib::OrtBuild::OpenVino,
            _ => ortlib::OrtBuild::Default,
        }
    }
}

/// Execution provider options (`ep-options`): `key=value` pairs handed to the provider as they
/// are, e.g. `device_type=NPU,precision=FP16,cache_dir=/var/cache/ov` for OpenVINO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpOptions(pub Vec<(String, String)>);

impl EpOptions {
    /// Parses `key=value,key=value`; empty means none. Keys must be unique.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                format!("ep-options: '{item}' is not key=value (expected e.g. device_type=CPU)")
            })?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(format!("ep-options: '{item}' has an empty key"));
            }
            if out.iter().any(|(have, _)| have == k) {
                return Err(format!("ep-options: key '{k}' is given twice"));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for EpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&items.join(","))
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
    /// Options for the execution provider (needs an explicit provider that takes options).
    pub ep_options: EpOptions,
    /// Fall back to CPU (with a warning) when an explicitly requested provider is missing.
    pub ep_fallback: bool,
    /// Intra-op threads; 0 lets ONNX Runtime decide.
    pub threads: usize,
    /// The side of the square image fed to a model whose image size is dynamic (`input-size`);
    /// 0: the model's own size, which must then be fixed.
    pub input_size: u32,
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
            ep_options: EpOptions::default(),
            ep_fallback: false,
            threads: 0,
            input_size: 0,
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
    /// The model's image size and `input-size` do not go together (a settings problem).
    #[error("model '{path}': {reason}")]
    InputSize { path: PathBuf, reason: String },
    #[error("{0}")]
    Labels(String),
    #[error("execution provider '{requested}' is not available: {reason}")]
    ProviderUnavailable {
        requested: &'static str,
        reason: String,
    },
    /// `ep-options` that cannot apply, or that the provider rejected (`option` names which).
    #[error("execution provider '{provider}': {reason}")]
    ProviderOptions {
        provider: &'static str,
        reason: String,
    },
    /// Elements named one `model-instance-id` but asked for different sessions.
    #[error("{0}")]
    SharedMismatch(String),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("inference failed: {0}")]
    Run(String),
    #[error(transparent)]
    Scores(#[from] crate::postprocess::ScoreError),
}

/// Timings of one classified frame, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameTiming {
    pub preprocess_us: u64,
    pub inference_us: u64,
}

/// Sessions loaded by this process so far (each [`ModelSession`] gets the next number as its id).
static SESSIONS_LOADED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many ONNX Runtime sessions this process has loaded (models, any provider).
pub fn sessions_loaded() -> u64 {
    SESSIONS_LOADED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A loaded session plus its input/output description.
pub struct ModelSession {
    /// Unique in the process, from 1.
    pub id: u64,
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

/// Reads the input layout, size and element type from the model's first input. A model may leave
/// its image size dynamic (Hugging Face Optimum exports image classifiers as
/// `[batch, channels, height, width]`, all four dynamic): it then runs at `input_size`, which
/// only the user can know (the size it was trained at). A dynamic channel dimension is read as
/// PyTorch's NCHW, the layout of every exporter that leaves it dynamic, unless the last
/// dimension is the fixed one of 3; the third value returned says whether it was.
fn input_spec(
    session: &Session,
    path: &Path,
    input_size: u32,
) -> Result<(String, TensorSpec, bool), InferenceError> {
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
    let layout = if shape[1] == 3 || (shape[1] < 0 && shape[3] != 3) {
        Layout::Nchw
    } else if shape[3] == 3 || (shape[3] < 0 && shape[1] != 3) {
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
    let size_error = |reason: String| InferenceError::InputSize {
        path: path.to_path_buf(),
        reason: format!(
            "input '{}' has shape {}: {reason}",
            input.name(),
            describe_shape(&shape)
        ),
    };
    // Where to set it: the element's property, the tools' and cboserver's flag (`cbo profile`
    // has one per model).
    const WHERE: &str = "input-size (the element's property; --input-size in the cbo tools \
                         and cboserver, --device-input-size or --server-input-size in cbo \
                         profile)";
    let (h, w) = match (input_size > 0).then_some(i64::from(input_size)) {
        // Dynamic: the size asked for.
        Some(side) if h <= 0 && w <= 0 => (side, side),
        // One side fixed, or both: only what the model has goes.
        Some(side) if (h > 0 && h != side) || (w > 0 && w != side) => {
            let fits = match (h > 0, w > 0) {
                (true, true) if h == w => format!("leave {WHERE} unset (0), or give {h}"),
                (true, true) => format!("leave {WHERE} unset (0): the model is {w}x{h}"),
                _ => format!("give {WHERE} as {}", h.max(w)),
            };
            return Err(size_error(format!(
                "its image size is fixed in the model, not {side}: {fits}"
            )));
        }
        Some(side) => (side, side),
        None if h <= 0 && w <= 0 => {
            return Err(size_error(format!(
                "its image size is dynamic: set {WHERE} to the side of the square image it \
                 was trained at, e.g. 224"
            )));
        }
        None if h <= 0 || w <= 0 => {
            return Err(size_error(format!(
                "one side of its image is dynamic: set {WHERE} to {}",
                h.max(w)
            )));
        }
        None => (h, w),
    };
    // The input tensor (a batch of them in a shared session or cboserver) is allocated at load:
    // a model declaring 20000x20000 made the element abort on a failed 4.8 GB allocation.
    let most = crate::jpeg::MAX_DECODED_SIDE as i64;
    if h > most || w > most {
        return Err(not(format!(
            "input '{}' has shape {}: an image of at most {most} px a side is supported",
            input.name(),
            describe_shape(&shape)
        )));
    }
    let channels_dynamic = match layout {
        Layout::Nchw => shape[1] < 0,
        Layout::Nhwc => shape[3] < 0,
    };
    Ok((
        input.name().to_string(),
        TensorSpec {
            layout,
            width: w as u32,
            height: h as u32,
            elem,
        },
        channels_dynamic,
    ))
}

fn build_session(
    env: &ort::environment::Environment,
    path: &Path,
    provider: ExecutionProvider,
    options: &EpOptions,
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
    if let Some(dispatch) = provider.dispatch(options) {
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

/// The provider works without `options` but not with them: finds the entry it rejects (each
/// tried alone) so the error names it.
fn rejected_option(
    env: &ort::environment::Environment,
    path: &Path,
    provider: ExecutionProvider,
    options: &EpOptions,
    threads: usize,
    reason: &str,
) -> InferenceError {
    for (k, v) in &options.0 {
        let single = EpOptions(vec![(k.clone(), v.clone())]);
        if let Err(why) = build_session(env, path, provider, &single, threads) {
            return InferenceError::ProviderOptions {
                provider: provider.as_str(),
                reason: format!("rejected ep-options entry '{k}={v}': {why}"),
            };
        }
    }
    InferenceError::ProviderOptions {
        provider: provider.as_str(),
        reason: format!("rejected ep-options '{options}' together: {reason}"),
    }
}

impl ModelSession {
    /// Loads `path` on the requested provider (see [`ExecutionProvider`] for `auto`).
    /// `input_size`: see [`ModelConfig::input_size`].
    pub fn load(
        path: &Path,
        provider: ExecutionProvider,
        ep_fallback: bool,
        threads: usize,
        input_size: u32,
    ) -> Result<Self, InferenceError> {
        Self::load_with_options(
            path,
            provider,
            &EpOptions::default(),
            ep_fallback,
            threads,
            input_size,
        )
    }

    /// [`ModelSession::load`] with provider options. Options an explicit provider rejects are an
    /// error naming the entry, also with `ep_fallback` (they are a mistake, not a missing
    /// provider).
    pub fn load_with_options(
        path: &Path,
        provider: ExecutionProvider,
        options: &EpOptions,
        ep_fallback: bool,
        threads: usize,
        input_size: u32,
    ) -> Result<Self, InferenceError> {
        if !path.is_file() {
            return Err(InferenceError::ModelMissing(path.to_path_buf()));
        }
        std::fs::File::open(path).map_err(|e| InferenceError::ModelLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !options.is_empty() && !provider.takes_options() {
            return Err(InferenceError::ProviderOptions {
                provider: provider.as_str(),
                reason: format!(
                    "ep-options '{options}' need an explicit execution-provider that takes \
                     options (cuda, tensorrt, openvino, qnn, coreml, xnnpack)"
                ),
            });
        }
        let env = ortlib::environment_for(provider.preferred_build())?;
        let none = EpOptions::default();
        let load_err = |reason: String| InferenceError::ModelLoad {
            path: path.to_path_buf(),
            reason,
        };
        let (session, active, fallback_warning) = match provider {
            ExecutionProvider::Cpu => (
                build_session(env, path, provider, &none, threads).map_err(load_err)?,
                ExecutionProvider::Cpu,
                None,
            ),
            ExecutionProvider::Auto => {
                let mut chosen = None;
                for candidate in AUTO_ORDER.into_iter().filter(|p| p.is_available()) {
                    if let Ok(s) = build_session(env, path, candidate, &none, threads) {
                        chosen = Some((s, candidate));
                        break;
                    }
                }
                match chosen {
                    Some((s, p)) => (s, p, None),
                    None => (
                        build_session(env, path, ExecutionProvider::Cpu, &none, threads)
                            .map_err(load_err)?,
                        ExecutionProvider::Cpu,
                        None,
                    ),
                }
            }
            requested => {
                let attempt = if requested.is_available() {
                    build_session(env, path, requested, options, threads)
                } else {
                    Err(format!(
                        "the ONNX Runtime at {} was built without {} ({}; one process loads one \
                         ONNX Runtime library, picked before its first model loads: {}=openvino \
                         or {})",
                        ortlib::loaded_path()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        requested.as_str(),
                        requested.install_hint(),
                        ortlib::ORT_BUILD_VAR,
                        ortlib::ORT_DYLIB_PATH,
                    ))
                };
                if let Err(reason) = &attempt
                    && requested.is_available()
                    && !options.is_empty()
                    && build_session(env, path, requested, &none, threads).is_ok()
                {
                    return Err(rejected_option(
                        env, path, requested, options, threads, reason,
                    ));
                }
                match attempt {
                    Ok(s) => (s, requested, None),
                    Err(reason) if ep_fallback => (
                        build_session(env, path, ExecutionProvider::Cpu, &none, threads)
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
        let (input_name, spec, channels_dynamic) = input_spec(&session, path, input_size)?;
        let mut this = Self {
            id: SESSIONS_LOADED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
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
            reason: if channels_dynamic {
                format!(
                    "{e} (its colour-channel axis is dynamic, and it was given 3 channels, \
                     RGB, in {} order: a model that takes another number of channels is not \
                     supported)",
                    match spec.layout {
                        crate::preprocess::Layout::Nchw => "NCHW",
                        crate::preprocess::Layout::Nhwc => "NHWC",
                    }
                )
            } else {
                e.to_string()
            },
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

/// Where a classifier's model runs: its own session, or a session shared with other elements
/// through a batcher ([`crate::shared_inference`]).
enum Engine {
    Own(ModelSession),
    Shared(crate::shared_inference::Member),
}

/// A ready-to-use image classifier: frames in, [`Classification`]s out. [`Classifier::split`]
/// separates the pre-processing from the model, for a pipeline that runs them on two threads.
pub struct Classifier {
    preprocessor: Preprocessor,
    model: ClassifierModel,
}

/// The model half of a [`Classifier`]: pre-processed tensors in, [`Classification`]s out.
pub struct ClassifierModel {
    engine: Engine,
    spec: TensorSpec,
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

/// How a classifier shares its session with others in the process.
#[derive(Debug, Clone)]
pub struct Sharing {
    /// Group name (`model-instance-id`); `None`: every classifier with the same session settings.
    pub instance_id: Option<String>,
    pub batching: crate::shared_inference::Batching,
}

impl Classifier {
    /// A classifier with its own session.
    pub fn load(config: &ModelConfig) -> Result<Self, InferenceError> {
        Self::load_sharing(config, None)
    }

    /// A classifier whose session is shared (`Some`) or its own (`None`). Labels, normalisation,
    /// output kind and top-k stay per classifier; only the session is shared.
    pub fn load_sharing(
        config: &ModelConfig,
        sharing: Option<&Sharing>,
    ) -> Result<Self, InferenceError> {
        let (engine, spec, width) = match sharing {
            None => {
                let model = ModelSession::load_with_options(
                    &config.model,
                    config.execution_provider,
                    &config.ep_options,
                    config.ep_fallback,
                    config.threads,
                    config.input_size,
                )?;
                let (spec, width) = (model.spec, model.width);
                (Engine::Own(model), spec, width)
            }
            Some(sharing) => {
                let member = crate::shared_inference::attach(
                    &crate::shared_inference::SessionConfig {
                        model: config.model.clone(),
                        execution_provider: config.execution_provider,
                        ep_options: config.ep_options.clone(),
                        ep_fallback: config.ep_fallback,
                        threads: config.threads,
                        input_size: config.input_size,
                    },
                    sharing.instance_id.as_deref(),
                    sharing.batching,
                )?;
                let (spec, width) = (*member.spec(), member.width());
                (Engine::Shared(member), spec, width)
            }
        };
        let labels = match &config.labels {
            Some(path) => Labels::load(path).map_err(|e| InferenceError::Labels(e.0))?,
            None => default_labels(width),
        };
        let postprocessor = Postprocessor::new(labels, width, config.output_kind, config.top_k)
            .map_err(|e| {
                InferenceError::Labels(format!("model '{}': {e}", config.model.display()))
            })?;
        let preprocessor = Preprocessor::new(spec, config.normalization)?;
        Ok(Self {
            preprocessor,
            model: ClassifierModel {
                engine,
                spec,
                postprocessor,
                row: Vec::new(),
            },
        })
    }

    /// The pre-processing (frame → tensor) and the model (tensor → classification), to run on
    /// different threads.
    pub fn split(self) -> (Preprocessor, ClassifierModel) {
        (self.preprocessor, self.model)
    }

    pub fn model(&self) -> &ClassifierModel {
        &self.model
    }

    pub fn spec(&self) -> &TensorSpec {
        self.model.spec()
    }

    pub fn active_provider(&self) -> &'static str {
        self.model.active_provider()
    }

    pub fn fallback_warning(&self) -> Option<&str> {
        self.model.fallback_warning()
    }

    /// See [`Postprocessor::background_note`].
    pub fn labels_warning(&self) -> Option<String> {
        self.model.postprocessor.background_note()
    }

    /// Id of the ONNX Runtime session the model runs on (shared classifiers report the same).
    pub fn session_id(&self) -> u64 {
        self.model.session_id()
    }

    /// The shared session's group, to count its members from another thread.
    pub fn sharing_group(&self) -> Option<crate::shared_inference::Group> {
        self.model.sharing_group()
    }

    /// Classifiers using this one's session now, this one included (1 when not shared).
    pub fn sharing_streams(&self) -> usize {
        self.model.sharing_streams()
    }

    pub fn postprocessor(&self) -> &Postprocessor {
        self.model.postprocessor()
    }

    /// The raw output row of the last frame (logits or probabilities, as the model gives them).
    pub fn last_output(&self) -> &[f32] {
        self.model.last_output()
    }

    /// Fills the model input from a frame without running the model.
    pub fn preprocess<T>(
        &mut self,
        frame: &gst_video::VideoFrameRef<T>,
    ) -> Result<&Tensor, InferenceError> {
        Ok(self.preprocessor.process(frame)?)
    }

    /// Classifies one video frame. With a shared session, `inference_us` includes the wait for
    /// the batch.
    pub fn classify_frame<T>(
        &mut self,
        frame: &gst_video::VideoFrameRef<T>,
    ) -> Result<(Classification, FrameTiming), InferenceError> {
        let t0 = Instant::now();
        self.preprocessor.process(frame)?;
        let t1 = Instant::now();
        let result = self.model.classify(self.preprocessor.tensor_mut())?;
        let t2 = Instant::now();
        Ok((
            result,
            FrameTiming {
                preprocess_us: (t1 - t0).as_micros() as u64,
                inference_us: (t2 - t1).as_micros() as u64,
            },
        ))
    }
}

impl ClassifierModel {
    pub fn spec(&self) -> &TensorSpec {
        &self.spec
    }

    pub fn active_provider(&self) -> &'static str {
        match &self.engine {
            Engine::Own(m) => m.active_provider,
            Engine::Shared(m) => m.active_provider(),
        }
    }

    pub fn fallback_warning(&self) -> Option<&str> {
        match &self.engine {
            Engine::Own(m) => m.fallback_warning.as_deref(),
            Engine::Shared(m) => m.fallback_warning(),
        }
    }

    /// Id of the ONNX Runtime session the model runs on (shared classifiers report the same).
    pub fn session_id(&self) -> u64 {
        match &self.engine {
            Engine::Own(m) => m.id,
            Engine::Shared(m) => m.session_id(),
        }
    }

    /// The shared session's group, to count its members from another thread.
    pub fn sharing_group(&self) -> Option<crate::shared_inference::Group> {
        match &self.engine {
            Engine::Own(_) => None,
            Engine::Shared(m) => Some(m.group()),
        }
    }

    /// Classifiers using this one's session now, this one included (1 when not shared).
    pub fn sharing_streams(&self) -> usize {
        match &self.engine {
            Engine::Own(_) => 1,
            Engine::Shared(m) => m.streams(),
        }
    }

    pub fn postprocessor(&self) -> &Postprocessor {
        &self.postprocessor
    }

    /// The raw output row of the last frame (logits or probabilities, as the model gives them).
    pub fn last_output(&self) -> &[f32] {
        &self.row
    }

    /// Runs the model on a pre-processed `input` (of [`ClassifierModel::spec`]; handed back
    /// unchanged) and classifies its scores. With a shared session this includes the wait for
    /// the batch.
    pub fn classify(&mut self, input: &mut Tensor) -> Result<Classification, InferenceError> {
        match &mut self.engine {
            Engine::Own(model) => run_session(
                &mut model.session,
                &model.input_name,
                &model.spec,
                input,
                &mut self.row,
            )?,
            Engine::Shared(member) => member.infer(input, &mut self.row)?,
        }
        Ok(self.postprocessor.classify(&self.row)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ep_options_parse_key_value_lists() {
        assert!(EpOptions::parse("").unwrap().is_empty());
        assert!(EpOptions::parse(" , ").unwrap().is_empty());
        let o = EpOptions::parse("device_type=NPU, precision=FP16,cache_dir=/tmp/a=b").unwrap();
        assert_eq!(
            o.0,
            vec![
                ("device_type".to_string(), "NPU".to_string()),
                ("precision".to_string(), "FP16".to_string()),
                ("cache_dir".to_string(), "/tmp/a=b".to_string()),
            ]
        );
        assert_eq!(
            o.to_string(),
            "device_type=NPU,precision=FP16,cache_dir=/tmp/a=b"
        );
        let e = EpOptions::parse("device_type").unwrap_err();
        assert!(e.contains("'device_type' is not key=value"), "{e}");
        let e = EpOptions::parse("=CPU").unwrap_err();
        assert!(e.contains("empty key"), "{e}");
        let e = EpOptions::parse("a=1,a=2").unwrap_err();
        assert!(e.contains("'a' is given twice"), "{e}");
    }

    #[test]
    fn options_only_go_to_providers_that_take_them() {
        for p in [
            ExecutionProvider::Auto,
            ExecutionProvider::Cpu,
            ExecutionProvider::Nnapi,
        ] {
            assert!(!p.takes_options(), "{}", p.as_str());
        }
        assert!(ExecutionProvider::OpenVino.takes_options());
        // Refused before any library is loaded or model read.
        let model = models_dir().join(DEFAULT_DEVICE_MODEL);
        let opts = EpOptions::parse("device_type=CPU").unwrap();
        let err =
            ModelSession::load_with_options(&model, ExecutionProvider::Auto, &opts, false, 0, 0)
                .err()
                .expect("an error");
        let text = err.to_string();
        assert!(
            text.contains("device_type=CPU") && text.contains("explicit execution-provider"),
            "{text}"
        );
    }
}
