//! Where the server model runs: in this process ([`local`], ONNX Runtime) or in an inference
//! server speaking the Open Inference Protocol over gRPC ([`grpc`]: Triton, KServe, MLServer).
//! Either way the engine's model thread hands it one pre-processed batch at a time and gets one
//! row of scores per image back.

pub mod grpc;
pub mod local;
pub mod oip;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::batch::{BatchDim, BatchTensor};
use crate::preprocess::TensorSpec;
use crate::protocol::ErrorCode;

pub use grpc::GrpcConfig;

/// Which backend `cboserver --backend` selects.
#[derive(Debug, Clone, Default)]
pub enum BackendKind {
    /// The server model (`--model`) in this process.
    #[default]
    Local,
    Grpc(GrpcConfig),
}

/// Why a batch got no scores.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("backend not ready: {0}")]
    NotReady(String),
    #[error("backend unreachable: {0}")]
    Unavailable(String),
    #[error("backend did not answer before the requests' deadline ({0} ms)")]
    Deadline(u64),
    #[error("backend refused the batch: {0}")]
    Refused(String),
    /// The backend is up but has no room now (gRPC `RESOURCE_EXHAUSTED`: Triton's queue full).
    #[error("backend busy: {0}")]
    Busy(String),
    #[error(transparent)]
    Answer(#[from] oip::AnswerError),
    #[error("inference failed: {0}")]
    Inference(String),
}

impl BackendError {
    /// The code the requests of the batch are answered with. A backend that is down means
    /// `overloaded`: the client keeps its own labels and tries again later.
    pub fn code(&self) -> ErrorCode {
        match self {
            // A busy backend too: the client keeps its own label and backs off.
            BackendError::NotReady(_) | BackendError::Unavailable(_) | BackendError::Busy(_) => {
                ErrorCode::Overloaded
            }
            BackendError::Deadline(_) => ErrorCode::Timeout,
            BackendError::Refused(_) | BackendError::Answer(_) | BackendError::Inference(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// Short name for the `kind` label of the backend error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::NotReady(_) => "not_ready",
            BackendError::Unavailable(_) => "unavailable",
            BackendError::Deadline(_) => "deadline",
            BackendError::Refused(_) => "refused",
            BackendError::Busy(_) => "busy",
            BackendError::Answer(_) => "bad_answer",
            BackendError::Inference(_) => "inference",
        }
    }
}

/// Runs batches for the model thread.
pub trait BatchBackend: Send {
    /// Replaces the contents of `scores` with one row of scores per image of `batch` and returns
    /// the row width.
    /// Work still unanswered at `deadline` is abandoned with [`BackendError::Deadline`].
    fn infer(
        &mut self,
        batch: &BatchTensor,
        deadline: Instant,
        scores: &mut Vec<f32>,
    ) -> Result<usize, BackendError>;

    /// A second handle that runs batches at the same time as this one, for another model
    /// thread; `None` where batches run one at a time (a local model owns its session).
    fn another(&self) -> Option<Box<dyn BatchBackend>> {
        None
    }
}

/// What a started backend is, for the hello, the logs and the engine's batching.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// Model name (file name, or the backend's model name).
    pub name: String,
    /// "cpu", "cuda", ... or the backend's address.
    pub provider: String,
    /// The pre-processing's output: the model input.
    pub spec: TensorSpec,
    /// Scores per image, when known at start.
    pub classes: Option<usize>,
    pub batch_dim: BatchDim,
    pub fallback_warning: Option<String>,
    /// Batches run at once (one model thread each, [`BatchBackend::another`]).
    pub concurrency: usize,
}

/// Whether the backend can take work now, and why not. Shared by the backend (which sets it),
/// the engine (which refuses work at once while it is down) and `/readyz`.
#[derive(Debug)]
pub struct Readiness {
    ready: AtomicBool,
    /// Set for good when no batch can run any more ([`Readiness::stop`]): a reconnecting
    /// backend must not say ready again then.
    stopped: AtomicBool,
    reason: Mutex<String>,
}

impl Readiness {
    pub fn new(reason: &str) -> Self {
        Self {
            ready: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            reason: Mutex::new(reason.to_string()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        // Stored, then undone if stopped: whichever of this and `stop` comes first, a stopped
        // backend ends not ready.
        self.ready.store(true, Ordering::SeqCst);
        if self.stopped.load(Ordering::SeqCst) {
            self.ready.store(false, Ordering::SeqCst);
        }
    }

    /// Marks the backend down for good (the model threads have stopped); the reason stays.
    pub fn stop(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock()
            && !self.stopped.swap(true, Ordering::SeqCst)
        {
            *r = reason.to_string();
        }
        self.stopped.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Whether [`Readiness::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Marks the backend down; returns whether it was up (so a transition is logged once).
    pub fn set_down(&self, reason: &str) -> bool {
        if let Ok(mut r) = self.reason.lock()
            && !self.stopped.load(Ordering::SeqCst)
        {
            *r = reason.to_string();
        }
        self.ready.swap(false, Ordering::AcqRel)
    }

    /// Why the backend is not ready (the last reason given).
    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
}
