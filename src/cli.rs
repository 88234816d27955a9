//! Command-line arguments shared by the `cbo` tools and `cboserver`, mirroring the element's
//! properties so a model is described the same way everywhere.

use std::path::PathBuf;

use crate::inference::{self, ExecutionProvider, ModelConfig};
use crate::postprocess::OutputKind;
use crate::preprocess::Normalization;

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// ONNX image classifier (default: the bundled device model)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Class names of the model (the element's `labels`): one per line, TSV rows of index, wnid
    /// and name, or a JSON id2label map (a Hugging Face config.json) (default: ImageNet for
    /// 1000/1001 outputs). Named apart from `--labels`,
    /// which the evaluation tools use for ground truth.
    #[arg(long)]
    pub model_labels: Option<PathBuf>,
    /// Per-channel mean: one value or R,G,B
    #[arg(long, default_value = "127")]
    pub input_mean: String,
    /// Per-channel std: one value or R,G,B
    #[arg(long, default_value = "128")]
    pub input_std: String,
    /// auto | logits | probabilities
    #[arg(long, default_value = "auto")]
    pub output_kind: OutputKind,
    /// Classes kept per frame (1 to 1000)
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// auto | cpu | cuda | tensorrt | openvino | qnn | coreml | nnapi | xnnpack
    #[arg(long, default_value = "auto")]
    pub execution_provider: ExecutionProvider,
    /// Execution provider options, key=value,... (the element's `ep-options`), e.g.
    /// device_type=CPU for openvino
    #[arg(long, default_value = "")]
    pub ep_options: String,
    /// Run on CPU when the requested provider is missing
    #[arg(long)]
    pub ep_fallback: bool,
    /// ONNX Runtime intra-op threads (0 = its default; at most 256)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Side of the square image fed to a model whose image size is dynamic (the size it was
    /// trained at, e.g. 224); 0 = the model's own size, which must then be fixed
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub input_size: u32,
}

impl ModelArgs {
    pub fn to_config(&self) -> Result<ModelConfig, String> {
        Ok(ModelConfig {
            model: self
                .model
                .clone()
                .unwrap_or_else(|| inference::models_dir().join(inference::DEFAULT_DEVICE_MODEL)),
            labels: self.model_labels.clone(),
            normalization: Normalization::parse(&self.input_mean, &self.input_std)?,
            output_kind: self.output_kind,
            top_k: self.top_k,
            execution_provider: self.execution_provider,
            ep_options: inference::EpOptions::parse(&self.ep_options)?,
            ep_fallback: self.ep_fallback,
            threads: self.threads,
            input_size: self.input_size,
        })
    }

    /// The same settings as `cbofilter` properties, for building pipelines.
    pub fn element_properties(&self, config: &ModelConfig) -> Vec<(&'static str, String)> {
        let mut props = vec![
            ("model", config.model.display().to_string()),
            ("input-mean", self.input_mean.clone()),
            ("input-std", self.input_std.clone()),
            ("output-kind", self.output_kind.as_str().to_string()),
            ("top-k", self.top_k.to_string()),
            (
                "execution-provider",
                self.execution_provider.as_str().to_string(),
            ),
            ("ep-options", self.ep_options.clone()),
            ("ep-fallback", self.ep_fallback.to_string()),
            ("threads", self.threads.to_string()),
            ("input-size", self.input_size.to_string()),
        ];
        if let Some(l) = &self.model_labels {
            props.push(("labels", l.display().to_string()));
        }
        props
    }
}
