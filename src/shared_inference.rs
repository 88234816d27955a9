//! Shared inference: elements of one process that run the same model with the same provider
//! settings share one ONNX Runtime session, and their frames run together as batches.
//!
//! Each element pre-processes on its own streaming thread; its inference thread hands the tensor
//! over with [`Member::infer`] and waits for its own row of scores. The session has no thread of
//! its own: the member thread whose frame fills the batch (N = `max-batch`, by default the number
//! of elements sharing the session, capped at the model's batch dimension), or whose wait for the
//! batch reaches `batch-timeout` first, runs the whole batch as one `[N,...]` inference and hands
//! every member its row (a model with a fixed batch of 1 runs the frames one after the other).
//! So a frame waits at most `batch-timeout` plus one batch inference (plus a batch already
//! running), a stream that stops delivering frames (paused, stalled) delays the others by at most
//! `batch-timeout` per batch, an element that stops leaves the group at once (lowering N), and a
//! lone element runs its frame on its own thread with no hand-over at all.
//!
//! When to run ([`next_step`]) and how large a batch may be ([`batch_limit`]) are pure functions;
//! the rest is the adapter: the process-wide registry and the queue.
//!
//! Locks, in order: the registry (only while attaching, which may load a model); a session's
//! queue or its engine (the model: taken only by the thread running a batch, with the queue
//! released), never both; a member's slot (innermost, held briefly). Waiting threads wait on the
//! queue's condition variable.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::inference::{EpOptions, ExecutionProvider, InferenceError, ModelSession, run_tensor};
use crate::preprocess::{Tensor, TensorSpec};
use crate::server::batch::{BatchDim, BatchTensor, run_batch};

/// What a member with a frame queued does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing queued (a running batch has the frame): wait until it has run.
    Sleep,
    /// Frames queued but fewer than the limit: wait this much longer for more.
    Wait(Duration),
    /// Run the queued frames now.
    Run,
}

/// When to run: as soon as `limit` frames are queued, or when the oldest has waited `timeout`.
pub fn next_step(queued: usize, limit: usize, oldest_waited: Duration, timeout: Duration) -> Next {
    if queued == 0 {
        Next::Sleep
    } else if queued >= limit.max(1) || oldest_waited >= timeout {
        Next::Run
    } else {
        Next::Wait(timeout - oldest_waited)
    }
}

/// Frames per run: the smallest `max-batch` any member asked for (0 = no preference), else the
/// number of members; 1 for a model whose batch is fixed at 1.
pub fn batch_limit(
    members: usize,
    requested: impl IntoIterator<Item = u32>,
    dim: BatchDim,
) -> usize {
    if dim == BatchDim::One {
        return 1;
    }
    requested
        .into_iter()
        .filter(|&m| m > 0)
        .min()
        .map(|m| m as usize)
        .unwrap_or(members)
        .max(1)
}

/// The session settings elements must have in common to share a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub model: PathBuf,
    pub execution_provider: ExecutionProvider,
    pub ep_options: EpOptions,
    pub ep_fallback: bool,
    pub threads: usize,
    pub input_size: u32,
}

impl SessionConfig {
    fn describe(&self) -> String {
        format!(
            "model {} on {} (ep-options '{}', ep-fallback={}, threads={}, input-size={})",
            self.model.display(),
            self.execution_provider.as_str(),
            self.ep_options,
            self.ep_fallback,
            self.threads,
            self.input_size
        )
    }
}

/// One element's batching preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most frames per run; 0 = the number of members.
    pub max_batch: u32,
    /// Longest the oldest queued frame waits for the batch to fill.
    pub timeout: Duration,
}

#[derive(Debug)]
enum SlotState {
    Idle,
    Queued,
    Done,
    Failed(String),
}

struct SlotInner {
    input: Tensor,
    output: Vec<f32>,
    state: SlotState,
}

/// A member's frame in flight: its tensor in, its scores out.
struct Slot {
    inner: Mutex<SlotInner>,
}

impl Slot {
    fn finish(&self, result: Result<&[f32], String>) {
        let mut s = self.inner.lock().unwrap();
        match result {
            Ok(row) => {
                s.output.clear();
                s.output.extend_from_slice(row);
                s.state = SlotState::Done;
            }
            Err(e) => s.state = SlotState::Failed(e),
        }
    }

    fn queued(&self) -> bool {
        matches!(self.inner.lock().unwrap().state, SlotState::Queued)
    }
}

struct Queue {
    waiting: VecDeque<(Arc<Slot>, Instant)>,
    /// Attached members: id → batching preferences.
    members: Vec<(u64, Batching)>,
    /// A thread is running a batch (with the queue released).
    running: bool,
}

/// The model and the buffers a batch runs with.
struct Engine {
    model: ModelSession,
    batch: BatchTensor,
    rows: Vec<f32>,
}

/// What the members share.
struct Inner {
    queue: Mutex<Queue>,
    /// Notified when a frame is queued, a batch has run, or a member leaves.
    changed: Condvar,
    engine: Mutex<Engine>,
    dim: BatchDim,
    /// Batches run and the frames in them, since the session was created.
    batches: AtomicU64,
    batched_frames: AtomicU64,
}

impl Inner {
    fn limit_and_timeout(&self, q: &Queue) -> (usize, Duration) {
        let limit = batch_limit(
            q.members.len(),
            q.members.iter().map(|m| m.1.max_batch),
            self.dim,
        );
        let timeout = q
            .members
            .iter()
            .map(|m| m.1.timeout)
            .min()
            .unwrap_or_default();
        (limit, timeout)
    }
}

/// One loaded session shared by a group of elements.
pub struct SharedSession {
    inner: Arc<Inner>,
    config: SessionConfig,
    spec: TensorSpec,
    width: usize,
    active_provider: &'static str,
    fallback_warning: Option<String>,
    session_id: u64,
    next_member: AtomicU64,
}

/// Sessions by sharing key; an entry lives while an element uses it.
static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<SharedSession>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// An element's membership in a shared session; leaving is dropping it.
pub struct Member {
    shared: Arc<SharedSession>,
    slot: Arc<Slot>,
    id: u64,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut q = self.shared.inner.queue.lock().unwrap();
        q.members.retain(|m| m.0 != self.id);
        drop(q);
        // Fewer members: a batch waiting for this one may run now.
        self.shared.inner.changed.notify_all();
    }
}

/// Joins (or creates) the shared session for `config`: the group named `instance_id` when one
/// is given (its settings must match), else the group of everything with the same settings.
pub fn attach(
    config: &SessionConfig,
    instance_id: Option<&str>,
    batching: Batching,
) -> Result<Member, InferenceError> {
    let canonical = std::fs::canonicalize(&config.model).unwrap_or_else(|_| config.model.clone());
    let config = SessionConfig {
        model: canonical,
        ..config.clone()
    };
    let key = match instance_id {
        Some(id) => format!("id:{id}"),
        None => format!("settings:{config:?}"),
    };
    let mut registry = REGISTRY.lock().unwrap();
    registry.retain(|_, w| w.strong_count() > 0);
    let shared = match registry.get(&key).and_then(Weak::upgrade) {
        Some(s) => {
            if s.config != config {
                return Err(InferenceError::SharedMismatch(format!(
                    "model-instance-id '{}' already runs {}; this element asks for {}",
                    instance_id.unwrap_or_default(),
                    s.config.describe(),
                    config.describe()
                )));
            }
            s
        }
        None => {
            let s = Arc::new(start(config)?);
            registry.insert(key, Arc::downgrade(&s));
            s
        }
    };
    drop(registry);
    let id = shared.next_member.fetch_add(1, Ordering::Relaxed);
    shared
        .inner
        .queue
        .lock()
        .unwrap()
        .members
        .push((id, batching));
    shared.inner.changed.notify_all();
    let slot = Arc::new(Slot {
        inner: Mutex::new(SlotInner {
            input: Tensor::zeros(&shared.spec),
            output: Vec::new(),
            state: SlotState::Idle,
        }),
    });
    Ok(Member { shared, slot, id })
}

fn start(config: SessionConfig) -> Result<SharedSession, InferenceError> {
    let model = ModelSession::load_with_options(
        &config.model,
        config.execution_provider,
        &config.ep_options,
        config.ep_fallback,
        config.threads,
        config.input_size,
    )?;
    let dim = BatchDim::of(&model.session);
    let (spec, width, active_provider, session_id) =
        (model.spec, model.width, model.active_provider, model.id);
    let fallback_warning = model.fallback_warning.clone();
    let inner = Arc::new(Inner {
        queue: Mutex::new(Queue {
            waiting: VecDeque::new(),
            members: Vec::new(),
            running: false,
        }),
        changed: Condvar::new(),
        engine: Mutex::new(Engine {
            batch: BatchTensor::new(spec, 1),
            rows: Vec::new(),
            model,
        }),
        dim,
        batches: AtomicU64::new(0),
        batched_frames: AtomicU64::new(0),
    });
    Ok(SharedSession {
        inner,
        config,
        spec,
        width,
        active_provider,
        fallback_warning,
        session_id,
        next_member: AtomicU64::new(1),
    })
}

/// Runs `slots` (one batch, or one by one for a batch-1 model) and finishes each.
fn run(engine: &mut Engine, dim: BatchDim, slots: &[Arc<Slot>]) {
    let Engine { model, batch, rows } = engine;
    if slots.len() == 1 || dim == BatchDim::One {
        let shape = model.spec.shape();
        for slot in slots {
            let result = {
                let s = slot.inner.lock().unwrap();
                run_tensor(&mut model.session, &model.input_name, shape, &s.input, rows)
            };
            slot.finish(
                result
                    .as_ref()
                    .map(|_| rows.as_slice())
                    .map_err(|e| e.to_string()),
            );
        }
        return;
    }
    batch.clear();
    let mut pushed = Ok(());
    for slot in slots {
        pushed = batch.push(&slot.inner.lock().unwrap().input);
        if pushed.is_err() {
            break;
        }
    }
    let result = pushed.and_then(|_| run_batch(&mut model.session, &model.input_name, batch, rows));
    match result {
        Ok(width) => {
            for (slot, row) in slots.iter().zip(rows.chunks(width)) {
                slot.finish(Ok(row));
            }
        }
        Err(e) => {
            for slot in slots {
                slot.finish(Err(e.to_string()));
            }
        }
    }
}

impl Member {
    /// Runs the model on `input` (swapped into this member's slot and back, no copy) and waits
    /// for its scores in `row`; runs the batch itself when its frame fills it or has waited
    /// longest.
    pub fn infer(&self, input: &mut Tensor, row: &mut Vec<f32>) -> Result<(), InferenceError> {
        let inner = &*self.shared.inner;
        {
            let mut s = self.slot.inner.lock().unwrap();
            std::mem::swap(input, &mut s.input);
            s.state = SlotState::Queued;
        }
        let mut q = inner.queue.lock().unwrap();
        q.waiting.push_back((self.slot.clone(), Instant::now()));
        inner.changed.notify_all();
        while self.slot.queued() {
            if q.running {
                q = inner.changed.wait(q).unwrap();
                continue;
            }
            let (limit, timeout) = inner.limit_and_timeout(&q);
            let waited = q
                .waiting
                .front()
                .map(|(_, at)| at.elapsed())
                .unwrap_or_default();
            match next_step(q.waiting.len(), limit, waited, timeout) {
                // Not queued any more but not finished: a running batch has it.
                Next::Sleep => q = inner.changed.wait(q).unwrap(),
                Next::Wait(d) => q = inner.changed.wait_timeout(q, d).unwrap().0,
                Next::Run => {
                    let take = match inner.dim {
                        BatchDim::One => q.waiting.len(),
                        BatchDim::Dynamic => q.waiting.len().min(limit.max(1)),
                    };
                    let slots: Vec<Arc<Slot>> = q.waiting.drain(..take).map(|(s, _)| s).collect();
                    q.running = true;
                    drop(q);
                    inner.batches.fetch_add(1, Ordering::Relaxed);
                    inner
                        .batched_frames
                        .fetch_add(slots.len() as u64, Ordering::Relaxed);
                    // A panic inside ONNX Runtime must not leave the others waiting for ever.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run(&mut inner.engine.lock().unwrap(), inner.dim, &slots)
                    }));
                    if ran.is_err() {
                        for s in &slots {
                            s.finish(Err("inference panicked".into()));
                        }
                    }
                    q = inner.queue.lock().unwrap();
                    q.running = false;
                    inner.changed.notify_all();
                }
            }
        }
        drop(q);
        let mut s = self.slot.inner.lock().unwrap();
        let result = match std::mem::replace(&mut s.state, SlotState::Idle) {
            SlotState::Failed(e) => Err(InferenceError::Run(e)),
            _ => {
                row.clear();
                row.extend_from_slice(&s.output);
                Ok(())
            }
        };
        // The caller gets its tensor back.
        std::mem::swap(input, &mut s.input);
        result
    }

    pub fn spec(&self) -> &TensorSpec {
        &self.shared.spec
    }

    pub fn width(&self) -> usize {
        self.shared.width
    }

    pub fn active_provider(&self) -> &'static str {
        self.shared.active_provider
    }

    pub fn fallback_warning(&self) -> Option<&str> {
        self.shared.fallback_warning.as_deref()
    }

    /// Id of the ONNX Runtime session (the same for every member of a group).
    pub fn session_id(&self) -> u64 {
        self.shared.session_id
    }

    /// Elements sharing the session now, this one included.
    pub fn streams(&self) -> usize {
        self.shared.inner.queue.lock().unwrap().members.len()
    }

    pub fn group(&self) -> Group {
        Group(Arc::downgrade(&self.shared.inner))
    }
}

/// A handle on a shared session that does not keep it alive: counts its members.
#[derive(Clone)]
pub struct Group(Weak<Inner>);

impl Group {
    /// Members now; 0 once the session is gone.
    pub fn streams(&self) -> usize {
        self.0
            .upgrade()
            .map(|i| i.queue.lock().unwrap().members.len())
            .unwrap_or(0)
    }

    /// Batches the session has run and the frames in them (0, 0 once it is gone).
    pub fn batches(&self) -> (u64, u64) {
        self.0
            .upgrade()
            .map(|i| {
                (
                    i.batches.load(Ordering::Relaxed),
                    i.batched_frames.load(Ordering::Relaxed),
                )
            })
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn runs_when_full_or_when_the_oldest_has_waited_the_timeout() {
        let t = 2 * MS;
        assert_eq!(next_step(0, 4, Duration::ZERO, t), Next::Sleep);
        assert_eq!(next_step(1, 4, Duration::ZERO, t), Next::Wait(t));
        assert_eq!(next_step(3, 4, MS / 2, t), Next::Wait(t - MS / 2));
        assert_eq!(next_step(4, 4, Duration::ZERO, t), Next::Run);
        assert_eq!(next_step(5, 4, Duration::ZERO, t), Next::Run);
        assert_eq!(next_step(1, 4, t, t), Next::Run);
        assert_eq!(next_step(1, 4, 3 * MS, t), Next::Run);
        // One member: its frame never waits for company.
        assert_eq!(next_step(1, 1, Duration::ZERO, t), Next::Run);
        // A limit of 0 (no members left while frames are queued) still runs them.
        assert_eq!(next_step(1, 0, Duration::ZERO, t), Next::Run);
    }

    #[test]
    fn batch_limit_is_members_or_the_smallest_request_and_one_for_batch_one_models() {
        assert_eq!(batch_limit(4, [0, 0, 0, 0], BatchDim::Dynamic), 4);
        assert_eq!(batch_limit(4, [0, 3, 0, 6], BatchDim::Dynamic), 3);
        assert_eq!(batch_limit(8, [16], BatchDim::Dynamic), 16);
        assert_eq!(batch_limit(0, [], BatchDim::Dynamic), 1);
        assert_eq!(batch_limit(4, [0, 0, 0, 0], BatchDim::One), 1);
        assert_eq!(batch_limit(4, [4], BatchDim::One), 1);
    }
}
