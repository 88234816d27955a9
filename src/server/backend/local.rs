//! The server model in this process: an ONNX Runtime session run once per batch.

use std::path::Path;
use std::time::Instant;

use super::{BackendError, BackendInfo, BatchBackend};
use crate::inference::{ModelConfig, ModelSession};
use crate::server::batch::{BatchDim, BatchTensor, run_batch};

pub struct LocalBackend {
    model: ModelSession,
}

impl LocalBackend {
    /// Loads `--model` on the calling thread (the model thread, which then owns the session).
    pub fn load(config: &ModelConfig) -> Result<(LocalBackend, BackendInfo), String> {
        let model = ModelSession::load(
            &config.model,
            config.execution_provider,
            config.ep_fallback,
            config.threads,
            config.input_size,
        )
        .map_err(|e| e.to_string())?;
        let info = BackendInfo {
            name: file_name(&config.model),
            provider: model.active_provider.to_string(),
            spec: model.spec,
            classes: Some(model.width),
            batch_dim: BatchDim::of(&model.session),
            fallback_warning: model.fallback_warning.clone(),
            // One session, one batch at a time.
            concurrency: 1,
        };
        Ok((LocalBackend { model }, info))
    }
}

impl BatchBackend for LocalBackend {
    /// Runs to completion: a started ONNX Runtime call cannot be abandoned, and expired work was
    /// already taken out of the batch.
    fn infer(
        &mut self,
        batch: &BatchTensor,
        _deadline: Instant,
        scores: &mut Vec<f32>,
    ) -> Result<usize, BackendError> {
        run_batch(
            &mut self.model.session,
            &self.model.input_name,
            batch,
            scores,
        )
        .map_err(|e| BackendError::Inference(e.to_string()))
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
