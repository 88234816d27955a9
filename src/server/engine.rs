//! The server's compute: JPEG decoding and pre-processing on a pool of worker threads, and the
//! model on one dedicated thread that batches requests from all connections.
//!
//! ```text
//! stream tasks ──try_send──▶ decode queue ──▶ decode workers ──send──▶ batch queue ──▶ model thread
//!      ▲                                  (FrameDecoder + Preprocessor)      (collects ≤ max_batch,
//!      └───────────────── oneshot: Answer or ErrorReply ◀──────────────────  waits ≤ batch_timeout)
//! ```
//!
//! The model thread hands each batch to the [backend](super::backend): ONNX Runtime in this
//! process, or one `ModelInfer` call to an inference server. While a backend is not ready, jobs
//! are refused at once ([`ErrorCode::Overloaded`]). A gRPC backend with `--backend-concurrency
//! N` gets N model threads (`cbo-model`, `cbo-model-1`, ...), each with its own batch and
//! post-processor on a handle of the same backend: they take turns gathering a batch (the batch
//! queue's receiver sits in a mutex, held only while gathering) and run theirs side by side.
//! Locks: that mutex and the decode queue's are each taken alone; no thread holds two.
//!
//! All of it runs on plain std threads so the async runtime that serves QUIC never blocks on
//! libjpeg, ONNX Runtime or a backend call. The decode queue is bounded (a full queue answers
//! [`ErrorCode::Overloaded`]); the batch queue is small, so workers never decode far ahead of the
//! model and memory stays bounded by a few batches of tensors.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::backend::grpc::GrpcBackend;
use super::backend::local::LocalBackend;
use super::backend::{BackendInfo, BackendKind, BatchBackend, Readiness};
use super::batch::{BatchDim, BatchTensor};
use super::metrics::Metrics;
use crate::inference::{IMAGENET_LABELS_TSV, ModelConfig};
use crate::jpeg::FrameDecoder;
use crate::postprocess::{Labels, OutputKind, Postprocessor};
use crate::preprocess::{Normalization, Preprocessor, Tensor, TensorSpec};
use crate::protocol::{Answer, ErrorCode, ErrorReply};

/// What a request gets back.
pub type Outcome = Result<Answer, ErrorReply>;

/// One request handed to the engine.
pub struct Job {
    /// The whole request frame; the JPEG is `bytes[jpeg_offset..]` (kept whole to avoid a copy).
    pub bytes: Vec<u8>,
    pub jpeg_offset: usize,
    pub frame_id: u64,
    /// Classes wanted, already capped to the server's maximum and at least 1.
    pub top_k: usize,
    /// When the server had read the whole request (queue time counts from here).
    pub received: Instant,
    /// Work not started by then is dropped (answered [`ErrorCode::Timeout`]): the client's
    /// deadline hint or the server's per-request time, whichever is first.
    pub deadline: Instant,
    pub reply: oneshot::Sender<Outcome>,
}

/// A decoded and pre-processed job, waiting for the model.
struct Ready {
    tensor: Tensor,
    frame_id: u64,
    top_k: usize,
    received: Instant,
    deadline: Instant,
    decode_us: u64,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Clone)]
pub struct EngineConfig {
    /// The local model, and the pre- and post-processing (normalisation, labels, output kind)
    /// whichever backend runs the model.
    pub model: ModelConfig,
    pub backend: BackendKind,
    /// Set by the backend; the engine refuses work at once while it is down.
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Largest batch the model thread runs.
    pub max_batch: usize,
    /// How long the model thread waits for a batch to fill after its first image arrived.
    pub batch_timeout: Duration,
    /// JPEG decode / pre-processing threads.
    pub decode_threads: usize,
    /// Requests waiting for a decode worker before new ones are refused.
    pub queue_capacity: usize,
    /// Largest `top_k` answered.
    pub max_top_k: usize,
}

/// What the loaded model is, for the hello and the startup log.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Model file name, or the backend's model name.
    pub name: String,
    /// Execution provider ("cpu", ...) or the backend's address (`grpc://HOST:PORT`).
    pub provider: String,
    pub spec: TensorSpec,
    /// Scores per image; `None` until a backend that was down at start is reached.
    pub classes: Option<usize>,
    /// Largest batch actually run: 1 when the model fixes its batch dimension.
    pub max_batch: usize,
    /// Why batching is off, when it is.
    pub batching_off: Option<String>,
    pub fallback_warning: Option<String>,
    /// Batches run at once: one model thread each (`--backend-concurrency`; 1 for a local
    /// model).
    pub concurrency: usize,
}

pub struct Engine {
    queue: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    readiness: Arc<Readiness>,
    pub info: ModelInfo,
}

fn default_labels(width: usize) -> Labels {
    // What `Classifier` does for a model given no labels: ImageNet for 1000/1001-way models.
    if width == 1000 || width == 1001 {
        Labels::parse(IMAGENET_LABELS_TSV).expect("bundled labels parse")
    } else {
        Labels::numeric(width)
    }
}

fn error(frame_id: u64, code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        frame_id,
        code,
        message: message.into(),
    }
}

impl Engine {
    /// Loads the model (on the model thread itself, which then owns the session) and starts the
    /// workers. Blocks until the model is loaded and warmed up.
    pub fn start(config: EngineConfig) -> Result<Engine, String> {
        let max_batch = config.max_batch.max(1);
        // Small on purpose: workers block (back-pressure) instead of decoding far ahead.
        let (batch_tx, batch_rx) = mpsc::sync_channel::<Ready>(2 * max_batch);
        // The model threads take turns gathering a batch; each runs its own.
        let batch_rx = Arc::new(Mutex::new(batch_rx));
        type Loaded = Result<(ModelInfo, Vec<ModelRunner>), String>;
        let (loaded_tx, loaded_rx) = mpsc::channel::<Loaded>();
        let batch_timeout = config.batch_timeout;
        let runner_config = config.clone();
        let rx = batch_rx.clone();
        let model_thread = std::thread::Builder::new()
            .name("cbo-model".into())
            .spawn(move || {
                let mut runner = match ModelRunner::load(&runner_config) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                // Runners for the other model threads, on handles sharing this backend.
                let others = (1..runner.info.concurrency)
                    .map_while(|_| runner.another())
                    .collect();
                let _ = loaded_tx.send(Ok((runner.info.clone(), others)));
                drop(loaded_tx);
                // However this thread ends (a panic included), no more batches run: `/readyz`
                // and the engine must say so instead of answering `internal` to every frame.
                let _down = DownOnExit(runner_config.readiness.clone());
                runner.serve(&rx, batch_timeout);
            })
            .map_err(|e| format!("cannot start the model thread: {e}"))?;
        let (info, others) = match loaded_rx.recv() {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                let _ = model_thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = model_thread.join();
                return Err("the model thread stopped while loading".into());
            }
        };
        let mut threads = vec![model_thread];
        for (i, mut runner) in others.into_iter().enumerate() {
            let rx = batch_rx.clone();
            let readiness = config.readiness.clone();
            let t = std::thread::Builder::new()
                .name(format!("cbo-model-{}", i + 1))
                .spawn(move || {
                    let _down = DownOnExit(readiness);
                    runner.serve(&rx, batch_timeout);
                })
                .map_err(|e| format!("cannot start a model thread: {e}"))?;
            threads.push(t);
        }
        drop(batch_rx);

        let (queue_tx, queue_rx) = mpsc::sync_channel::<Job>(config.queue_capacity.max(1));
        let queue_rx = Arc::new(Mutex::new(queue_rx));
        for i in 0..config.decode_threads.max(1) {
            let rx = queue_rx.clone();
            let tx = batch_tx.clone();
            let spec = info.spec;
            let norm = config.model.normalization;
            let metrics = config.metrics.clone();
            let t = std::thread::Builder::new()
                .name(format!("cbo-decode-{i}"))
                .spawn(move || decode_worker(rx, tx, spec, norm, &metrics))
                .map_err(|e| format!("cannot start a decode thread: {e}"))?;
            threads.push(t);
        }
        // Only the workers hold batch senders now: when they stop, the model thread stops.
        drop(batch_tx);
        Ok(Engine {
            queue: Mutex::new(Some(queue_tx)),
            threads: Mutex::new(threads),
            readiness: config.readiness,
            info,
        })
    }

    /// Queues a job; refuses it at once when the backend is down, the queue is full or the
    /// engine stopped.
    pub fn submit(&self, job: Job) -> Result<(), ErrorReply> {
        if !self.readiness.is_ready() {
            return Err(error(
                job.frame_id,
                ErrorCode::Overloaded,
                format!("backend not ready: {}", self.readiness.reason()),
            ));
        }
        let queue = self.queue.lock().expect("engine queue lock");
        let Some(tx) = queue.as_ref() else {
            return Err(error(
                job.frame_id,
                ErrorCode::ShuttingDown,
                "server shutting down",
            ));
        };
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => Err(error(
                job.frame_id,
                ErrorCode::Overloaded,
                "server busy: decode queue full",
            )),
            Err(TrySendError::Disconnected(job)) => Err(error(
                job.frame_id,
                ErrorCode::Internal,
                "inference workers stopped",
            )),
        }
    }

    /// Stops taking jobs, lets queued ones finish, and joins every thread. Blocking.
    pub fn stop(&self) {
        self.queue.lock().expect("engine queue lock").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("engine threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Marks the backend down when the model thread ends.
struct DownOnExit(Arc<Readiness>);

impl Drop for DownOnExit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("a model thread panicked: no more frames are served");
            self.0.stop("the model thread stopped (panicked)");
        } else {
            self.0.stop("stopping");
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// Decodes and pre-processes jobs until the queue closes. Each worker owns its decoder and
/// pre-processor (their scratch buffers are reused from frame to frame).
fn decode_worker(
    queue: Arc<Mutex<Receiver<Job>>>,
    batch: SyncSender<Ready>,
    spec: TensorSpec,
    norm: Normalization,
    metrics: &Metrics,
) {
    let mut decoder = FrameDecoder::new();
    let mut pre = Preprocessor::new(spec, norm);
    loop {
        // The lock is only held while waiting for the next job.
        let job = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // The stream task gave up (deadline, client gone): skip the work.
        if job.reply.is_closed() {
            metrics.dropped(1);
            continue;
        }
        let t0 = Instant::now();
        let tensor = match (&mut decoder, &mut pre) {
            (Ok(decoder), Ok(pre)) => decoder
                .decode(&job.bytes[job.jpeg_offset..])
                .map_err(|e| {
                    // A JPEG over the side or scan limit is a valid one, too large to serve.
                    let code = match e {
                        crate::jpeg::JpegError::TooLarge { .. }
                        | crate::jpeg::JpegError::TooManyScans => ErrorCode::TooLarge,
                        _ => ErrorCode::NotJpeg,
                    };
                    error(job.frame_id, code, e.to_string())
                })
                .and_then(|decoded| {
                    let frame = decoded
                        .frame()
                        .map_err(|e| error(job.frame_id, ErrorCode::NotJpeg, e.to_string()))?;
                    pre.process(&frame).cloned().map_err(|e| {
                        error(
                            job.frame_id,
                            ErrorCode::Internal,
                            format!("pre-processing: {e}"),
                        )
                    })
                }),
            (Err(e), _) => Err(error(job.frame_id, ErrorCode::Internal, e.to_string())),
            (_, Err(e)) => Err(error(job.frame_id, ErrorCode::Internal, e.to_string())),
        };
        let decode_us = micros(t0.elapsed());
        match tensor {
            Ok(tensor) => {
                let ready = Ready {
                    tensor,
                    frame_id: job.frame_id,
                    top_k: job.top_k,
                    received: job.received,
                    deadline: job.deadline,
                    decode_us,
                    reply: job.reply,
                };
                if batch.send(ready).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
}

/// The model thread's state: the backend, the batch being built and the post-processor.
struct ModelRunner {
    backend: Box<dyn BatchBackend>,
    /// `--labels`; `None`: the defaults for the width the backend answers with.
    labels: Option<Labels>,
    output_kind: OutputKind,
    max_top_k: usize,
    /// Built for the row width of the answers (known at start for a local model, from the first
    /// connection for a gRPC backend).
    post: Option<Postprocessor>,
    batch: BatchTensor,
    rows: Vec<f32>,
    info: ModelInfo,
    metrics: Arc<Metrics>,
}

impl ModelRunner {
    fn load(config: &EngineConfig) -> Result<Self, String> {
        let model = &config.model;
        let labels = match &model.labels {
            Some(path) => Some(Labels::load(path).map_err(|e| e.0)?),
            None => None,
        };
        let (backend, info): (Box<dyn BatchBackend>, BackendInfo) = match &config.backend {
            BackendKind::Local => {
                let (backend, info) = LocalBackend::load(model)?;
                config.readiness.set_ready();
                (Box::new(backend), info)
            }
            BackendKind::Grpc(grpc) => {
                let (backend, info) = GrpcBackend::start(
                    grpc.clone(),
                    labels.as_ref().map(Labels::len),
                    config.readiness.clone(),
                )?;
                (Box::new(backend), info)
            }
        };
        let max_top_k = config.max_top_k.max(1);
        // A local model's labels are checked now, so a wrong --labels fails the start.
        let post = match info.classes {
            Some(width) => Some(
                postprocessor(labels.clone(), width, model.output_kind, max_top_k)
                    .map_err(|e| format!("model '{}': {e}", info.name))?,
            ),
            None => None,
        };
        let (max_batch, batching_off) = match info.batch_dim {
            BatchDim::Dynamic => (config.max_batch.max(1), None),
            BatchDim::One => (
                1,
                Some("the model fixes its batch dimension at 1: batching is off".to_string()),
            ),
        };
        super::batch::check_batch_size(&info.spec, max_batch, info.concurrency)
            .map_err(|e| format!("model '{}': {e}", info.name))?;
        let info = ModelInfo {
            name: info.name,
            provider: info.provider,
            spec: info.spec,
            classes: info.classes,
            max_batch,
            batching_off,
            fallback_warning: info.fallback_warning,
            concurrency: info.concurrency.max(1),
        };
        Ok(Self {
            batch: BatchTensor::new(info.spec, max_batch),
            backend,
            labels,
            output_kind: model.output_kind,
            max_top_k,
            post,
            rows: Vec::new(),
            info,
            metrics: config.metrics.clone(),
        })
    }

    /// A runner for another model thread on a second handle of the same backend; `None` where
    /// the backend runs one batch at a time.
    fn another(&self) -> Option<ModelRunner> {
        Some(ModelRunner {
            backend: self.backend.another()?,
            labels: self.labels.clone(),
            output_kind: self.output_kind,
            max_top_k: self.max_top_k,
            post: self.post.clone(),
            batch: BatchTensor::new(self.info.spec, self.info.max_batch),
            rows: Vec::new(),
            info: self.info.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Collects batches and runs them until every decode worker has stopped. With several
    /// model threads, one at a time gathers a batch (holding `rx`) while the others run theirs.
    fn serve(&mut self, rx: &Mutex<Receiver<Ready>>, batch_timeout: Duration) {
        let max_batch = self.info.max_batch;
        let mut items: Vec<Ready> = Vec::with_capacity(max_batch);
        loop {
            {
                let Ok(rx) = rx.lock() else { return };
                let Ok(first) = rx.recv() else { return };
                items.push(first);
                // Whatever is queued already joins at once; then wait out the batch timeout.
                let until = Instant::now() + batch_timeout;
                while items.len() < max_batch {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.try_recv().or_else(|_| rx.recv_timeout(left)) {
                        Ok(r) => items.push(r),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
            self.run(&mut items);
        }
    }

    fn run(&mut self, items: &mut Vec<Ready>) {
        let start = Instant::now();
        // Drop work whose requester left (a stream task answers `timeout` at the deadline and
        // leaves) or whose deadline passed while queued: it is never sent to the backend.
        let queued = items.len();
        items.retain(|r| !r.reply.is_closed());
        let (late, mut live): (Vec<Ready>, Vec<Ready>) =
            items.drain(..).partition(|r| r.deadline <= start);
        let dropped = queued - live.len();
        if dropped > 0 {
            self.metrics.dropped(dropped);
        }
        for r in late {
            let _ = r.reply.send(Err(error(
                r.frame_id,
                ErrorCode::Timeout,
                "deadline passed while queued",
            )));
        }
        if live.is_empty() {
            return;
        }
        self.batch.clear();
        let mut failed = None;
        for r in &live {
            if let Err(e) = self.batch.push(&r.tensor) {
                failed = Some(ErrorReply {
                    frame_id: 0,
                    code: ErrorCode::Internal,
                    message: e.to_string(),
                });
                break;
            }
        }
        // The backend works for the latest deadline of the batch.
        let deadline = live.iter().map(|r| r.deadline).max().unwrap_or(start);
        let t0 = Instant::now();
        let width = match failed {
            Some(e) => Err(e),
            None => self
                .backend
                .infer(&self.batch, deadline, &mut self.rows)
                .map_err(|e| {
                    self.metrics.backend_error(e.kind());
                    ErrorReply {
                        frame_id: 0,
                        code: e.code(),
                        message: e.to_string(),
                    }
                }),
        };
        let took = t0.elapsed();
        let inference_us = micros(took);
        let n = live.len();
        if width.is_ok() {
            self.metrics.batch(n, took);
        }
        // The rows must be one per request at this width, whatever the backend said: a short
        // answer must fail the batch, not index past the rows.
        let width = width.and_then(|w| {
            if w == 0 || self.rows.len() != n * w {
                return Err(ErrorReply {
                    frame_id: 0,
                    code: ErrorCode::Internal,
                    message: format!(
                        "the backend answered {} scores for {n} images of {w}",
                        self.rows.len()
                    ),
                });
            }
            self.post_for(w).map(|_| w).map_err(|message| ErrorReply {
                frame_id: 0,
                code: ErrorCode::Internal,
                message,
            })
        });
        for (i, r) in live.drain(..).enumerate() {
            let outcome = match (&width, self.post.as_mut()) {
                (Ok(w), Some(post)) => match post.classify(&self.rows[i * w..(i + 1) * w]) {
                    Err(e) => Err(ErrorReply {
                        frame_id: r.frame_id,
                        code: ErrorCode::Internal,
                        message: e.to_string(),
                    }),
                    Ok(c) => {
                        let k = r.top_k.min(c.top_classes.len());
                        let labels = c.top_classes[..k]
                            .iter()
                            .map(|&id| label(post, id))
                            .collect();
                        let waited = t0.saturating_duration_since(r.received);
                        Ok(Answer {
                            frame_id: r.frame_id,
                            class_ids: c.top_classes[..k].to_vec(),
                            scores: c.top_scores[..k].to_vec(),
                            labels,
                            decode_us: r.decode_us,
                            queue_us: micros(waited).saturating_sub(r.decode_us),
                            inference_us,
                            batch: n as u32,
                        })
                    }
                },
                (Ok(_), None) => Err(error(r.frame_id, ErrorCode::Internal, "no post-processor")),
                (Err(e), _) => Err(error(r.frame_id, e.code, e.message.clone())),
            };
            let _ = r.reply.send(outcome);
        }
    }

    /// The post-processor for rows of `width` scores (rebuilt when a backend's model changes).
    fn post_for(&mut self, width: usize) -> Result<(), String> {
        if self.post.as_ref().is_some_and(|p| p.width() == width) {
            return Ok(());
        }
        let post = postprocessor(self.labels.clone(), width, self.output_kind, self.max_top_k)
            .map_err(|e| format!("model '{}': {e}", self.info.name))?;
        self.post = Some(post);
        Ok(())
    }
}

fn postprocessor(
    labels: Option<Labels>,
    width: usize,
    kind: OutputKind,
    max_top_k: usize,
) -> Result<Postprocessor, String> {
    let labels = labels.unwrap_or_else(|| default_labels(width));
    let post = Postprocessor::new(labels, width, kind, max_top_k).map_err(|e| e.0)?;
    if let Some(note) = post.background_note() {
        tracing::warn!("labels: {note}");
    }
    Ok(post)
}

/// The label of a class id as the post-processor numbers them (-1 = background).
fn label(post: &Postprocessor, class_id: i32) -> String {
    if class_id < 0 {
        crate::postprocess::BACKGROUND_LABEL.to_string()
    } else {
        post.labels().name(class_id as usize).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{InputType, Layout};
    use crate::server::backend::BackendError;

    /// A model thread that panics leaves the backend marked down, so `/readyz` and the engine
    /// refuse work as `overloaded` instead of every frame failing `internal` behind a ready flag.
    #[test]
    fn a_model_thread_that_panics_marks_the_backend_down() {
        let readiness = Arc::new(Readiness::new("loading"));
        readiness.set_ready();
        let r = readiness.clone();
        let thread = std::thread::spawn(move || {
            let _down = DownOnExit(r);
            panic!("a backend bug");
        });
        assert!(thread.join().is_err());
        assert!(!readiness.is_ready());
        assert!(
            readiness.reason().contains("panicked"),
            "{}",
            readiness.reason()
        );
    }

    /// A backend whose answer holds fewer scores than its batch's images times the width it
    /// reports (a gRPC backend answered 2000 and then 1000 scores per image).
    struct ShortRows;

    impl BatchBackend for ShortRows {
        fn infer(
            &mut self,
            batch: &BatchTensor,
            _deadline: Instant,
            scores: &mut Vec<f32>,
        ) -> Result<usize, BackendError> {
            scores.clear();
            scores.resize(batch.len() * 10 - 5, 0.1);
            Ok(10)
        }
    }

    /// Rows that do not fill the batch fail it, every request answered `internal`; the model
    /// thread sliced past them and panicked, and the server answered no one after.
    #[test]
    fn an_answer_short_of_the_batch_fails_it_without_a_panic() {
        let spec = TensorSpec {
            layout: Layout::Nchw,
            width: 2,
            height: 2,
            elem: InputType::F32,
        };
        let mut runner = ModelRunner {
            backend: Box::new(ShortRows),
            labels: None,
            output_kind: OutputKind::Auto,
            max_top_k: 5,
            post: None,
            batch: BatchTensor::new(spec, 2),
            rows: Vec::new(),
            info: ModelInfo {
                name: "short".into(),
                provider: "test".into(),
                spec,
                classes: Some(10),
                max_batch: 2,
                batching_off: None,
                fallback_warning: None,
                concurrency: 1,
            },
            metrics: Metrics::new(2),
        };
        let now = Instant::now();
        let (mut items, mut answers) = (Vec::new(), Vec::new());
        for frame_id in 0..2 {
            let (reply, answer) = oneshot::channel();
            items.push(Ready {
                tensor: Tensor::zeros(&spec),
                frame_id,
                top_k: 1,
                received: now,
                deadline: now + Duration::from_secs(10),
                decode_us: 0,
                reply,
            });
            answers.push(answer);
        }
        runner.run(&mut items);
        for mut answer in answers {
            match answer.try_recv() {
                Ok(Err(e)) => {
                    assert_eq!(e.code, ErrorCode::Internal);
                    assert!(
                        e.message.contains("15 scores for 2 images"),
                        "{}",
                        e.message
                    );
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }
}
