//! The element's one output path: the queue frames and serialized events wait in between the
//! sink pad and the source pad, and the source pad task that pushes them downstream in order.
//!
//! Every frame enters the [`Hold`] queue on the streaming thread as soon as it is pre-processed,
//! still to be classified, with its tensor handed to the inference thread
//! ([`super::classify`]), which takes the frames in order ([`Hold::next_job`]) and puts each
//! result back ([`Hold::classified`]): device only the frame is then ready to leave; offloading
//! it waits, undecided, until its deadline, for the planner thread to decide it
//! ([`Hold::decide`], [`Hold::mark_sent`]) and the client's threads to complete it
//! ([`Hold::complete`]). The output task ([`CboFilter::output_loop`]) pushes the head whenever it
//! may leave: classified and ready, answered, kept, failed or due. Everyone waits on a condition
//! variable of the queue's own mutex (the inference thread on one of its own, notified when there
//! is a frame to classify, a flush or a stop; the others on one each change to the queue
//! notifies); no wait has a polling timeout (the output task's only timeout is the head frame's
//! deadline). How many frames may be in the element before the streaming thread waits is
//! [`crate::offload::hold::Admission`]'s.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::classify::ToClassify;
use super::imp::CboFilter;
use super::{CAT, OFFLOAD_CAT};
use crate::meta::{CboResult, Decision, Source};
use crate::offload::client::{ClientError, ServerResult};
use crate::offload::hold::{Admission, HoldQueue, Outcome};
use crate::offload::merge::{MergeModel, server_label_wins};
use crate::offload::reuse::{AnswerReuse, FrameAnswer};
use crate::preprocess::Tensor;
use crate::profile::Profile;

/// Items the hold queue may contain while offloading before the streaming thread waits
/// (downstream is slower than the source): bounds memory without ever dropping a frame.
pub const MAX_HELD_ITEMS: usize = 512;

/// What the hold queue carries.
pub enum Item {
    Frame {
        buffer: gst::Buffer,
        result: CboResult,
    },
    Event(gst::Event),
}

/// Counts of what happened to frames, for the `stats` property.
#[derive(Debug, Clone, Default)]
pub struct FrameCounts {
    pub frames: u64,
    pub kept: u64,
    pub offloaded: u64,
    pub answered: u64,
    pub late: u64,
    pub failed: u64,
    pub busy: u64,
    pub offline: u64,
    /// Frames that left with a reused earlier answer (policy=cbo, `reuse-window`).
    pub reused: u64,
    /// Answered frames that left with their device label (`merge=confidence`).
    pub overruled: u64,
    /// Frames dropped inside the element by a flush (a flushing seek), a stop, or downstream
    /// returning EOS (which takes no more), never pushed.
    pub flushed: u64,
}

#[derive(Default)]
pub struct HoldInner {
    queue: HoldQueue<Item, ServerResult>,
    /// Kinds of offload failure already told to the user (a warning each, once per run: a
    /// setting the server refuses, `too-large` say, fails every frame the same way).
    warned_failures: std::collections::HashSet<String>,
    /// Frames pre-processed and queued (as classifying), in order, for the inference thread.
    to_classify: VecDeque<ToClassify>,
    /// Tensors the model is done with, for the streaming thread's next frames.
    spare: Vec<Tensor>,
    flushing: bool,
    /// The inference thread is to exit (stop).
    stopping: bool,
    /// Last flow return of a downstream push that failed, or `Error` after a failed
    /// classification: returned by the next chain call. `Eos` (downstream takes no more
    /// frames) until a new stream or segment starts ([`Hold::push_event`]) or a flush.
    flow: Option<gst::FlowError>,
    /// The task is pushing an item it popped (so the queue looks empty but is not done).
    pushing: bool,
    counts: FrameCounts,
}

/// The hold queue, shared by the streaming thread, the inference thread, the output task, the
/// planner thread and the client's completions.
#[derive(Default)]
pub struct Hold {
    inner: Mutex<HoldInner>,
    /// Every change to the queue: the streaming thread waits on it for room, the output task
    /// for the head, serialized queries for the queue to drain.
    cond: Condvar,
    /// A frame to classify, a flush or stop: the inference thread waits on it alone, so that the
    /// queue's other changes (two per frame pushed) do not wake it.
    model_cond: Condvar,
}

impl Hold {
    fn lock(&self) -> MutexGuard<'_, HoldInner> {
        self.inner.lock().unwrap()
    }

    /// Back to a fresh queue (start).
    pub fn reset(&self) {
        *self.lock() = HoldInner::default();
        self.notify_all();
    }

    fn notify_all(&self) {
        self.cond.notify_all();
        self.model_cond.notify_all();
    }

    pub fn counts(&self) -> FrameCounts {
        self.lock().counts.clone()
    }

    /// The flow return of the last push downstream that failed, if any.
    pub fn flow(&self) -> Option<gst::FlowError> {
        self.lock().flow
    }

    /// Streaming thread, before it pre-processes a frame: waits until `admission` lets one more
    /// frame in, and returns a tensor the model is done with (if any) for it. Gives up when
    /// flushing, or when the output or the model has failed.
    pub fn admit(&self, admission: Admission) -> Result<Option<Tensor>, gst::FlowError> {
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                // The frame entered the element and is dropped by the flush, as those in it.
                inner.counts.frames += 1;
                inner.counts.flushed += 1;
                return Err(gst::FlowError::Flushing);
            }
            if let Some(e) = inner.flow {
                return Err(e);
            }
            if admission.may_enter(&inner.queue.occupancy(inner.to_classify.len())) {
                return Ok(inner.spare.pop());
            }
            inner = self.cond.wait(inner).unwrap();
        }
    }

    /// Streaming thread: queues pre-processed frame `buffer` (`job.id`) behind everything before
    /// it, still to be classified, and hands `job` to the inference thread.
    pub fn push_to_classify(
        &self,
        buffer: gst::Buffer,
        job: ToClassify,
    ) -> Result<(), gst::FlowError> {
        let mut inner = self.lock();
        inner.counts.frames += 1;
        if inner.flushing {
            // It entered the element (pre-processed while the flush began) and goes no further.
            inner.counts.flushed += 1;
            return Err(gst::FlowError::Flushing);
        }
        if inner.flow == Some(gst::FlowError::Eos) {
            // Admitted just before downstream returned EOS: dropped like the frames held then.
            inner.counts.flushed += 1;
            return Err(gst::FlowError::Eos);
        }
        let result = CboResult {
            frame: job.id,
            ..CboResult::default()
        };
        inner
            .queue
            .push_classifying(Item::Frame { buffer, result }, job.id);
        inner.to_classify.push_back(job);
        // Only the inference thread has anything to do: a frame being classified cannot leave.
        self.model_cond.notify_all();
        Ok(())
    }

    /// Inference thread: the next frame to classify, in order; waits while there is none or
    /// while flushing. `None`: the thread is to exit.
    pub fn next_job(&self) -> Option<ToClassify> {
        let mut inner = self.lock();
        loop {
            if inner.stopping {
                return None;
            }
            if !inner.flushing
                && let Some(job) = inner.to_classify.pop_front()
            {
                // Room for the streaming thread's next frame.
                self.cond.notify_all();
                return Some(job);
            }
            inner = self.model_cond.wait(inner).unwrap();
        }
    }

    /// Inference thread: frame `id` is classified (`tensor`, done with, goes back to the
    /// streaming thread). Device only (`deadline` `None`) it may leave now; offloading it waits
    /// for the planner until `deadline`, and `then` (which tells the planner) runs before anyone
    /// else sees the queue, so that the planner learns of frames in order with flushes. False
    /// when the frame is gone (a flush dropped it).
    pub fn classified(
        &self,
        id: u64,
        result: CboResult,
        deadline: Option<Instant>,
        tensor: Tensor,
        then: impl FnOnce(),
    ) -> bool {
        let mut inner = self.lock();
        inner.spare.push(tensor);
        let queued = inner.queue.classified(id, deadline, |item| {
            if let Item::Frame { result: r, .. } = item {
                *r = result;
            }
        });
        if queued {
            then();
            self.cond.notify_all();
        }
        queued
    }

    /// Inference thread: the model failed on a frame. It and the frames behind it still to be
    /// classified are dropped (events stay and go on), and the streaming thread's next chain
    /// call returns an error: the element has posted one.
    pub fn classification_failed(&self, tensor: Tensor) {
        let mut inner = self.lock();
        inner.spare.push(tensor);
        let dropped = inner.queue.remove_classifying().len();
        let jobs: Vec<ToClassify> = inner.to_classify.drain(..).collect();
        inner.spare.extend(jobs.into_iter().map(|j| j.tensor));
        gst::debug!(CAT, "classification failed: {dropped} frame(s) dropped");
        inner.flow = Some(gst::FlowError::Error);
        self.cond.notify_all();
    }

    /// Stop: the inference thread exits once its current frame (if any) is done.
    pub fn stop_inference(&self) {
        self.lock().stopping = true;
        self.notify_all();
    }

    /// Planner thread: frame `id` leaves with its device label (`decision`: device, busy or
    /// offline). False when it already left (deadline, flush).
    pub fn decide(&self, id: u64, decision: Decision) -> bool {
        let mut inner = self.lock();
        let released = inner.queue.release(id, |item| {
            if let Item::Frame { result, .. } = item {
                result.decision = decision;
            }
        });
        if released {
            match decision {
                Decision::Busy => inner.counts.busy += 1,
                Decision::Offline => inner.counts.offline += 1,
                _ => inner.counts.kept += 1,
            }
            self.cond.notify_all();
        }
        released
    }

    /// Planner thread: frame `id` is being sent at `short_side`; it keeps waiting for the
    /// answer. False when it already left.
    pub fn mark_sent(&self, id: u64, short_side: u32) -> bool {
        let mut inner = self.lock();
        let waiting = inner.queue.update(id, |item| {
            if let Item::Frame { result, .. } = item {
                result.decision = Decision::Offload;
                result.resolution = short_side as i32;
            }
        });
        if waiting {
            inner.counts.offloaded += 1;
        }
        waiting
    }

    /// Client threads: how offloaded frame `id` ended. An answer for a frame that left (late,
    /// or dropped by a flush) is ignored.
    pub fn complete(&self, id: u64, result: Result<ServerResult, ClientError>) {
        let mut inner = self.lock();
        let waiting = match result {
            Ok(answer) => inner.queue.answer(id, answer),
            // No answer by the deadline: the frame leaves `late` when the output task reaches
            // it (its deadline is this one). Marked failed, it left `failed` whenever the
            // client's timer fired first, and "failed" means refused before the deadline.
            Err(ClientError::Timeout) => false,
            Err(reason) => inner.queue.fail(id, reason.to_string()),
        };
        if waiting {
            self.cond.notify_all();
        }
    }

    /// Streaming thread: queues a serialized event behind the frames before it. After
    /// downstream returned EOS the output goes on with the events (EOS must still reach it), and
    /// STREAM_START or SEGMENT lets frames in again: downstream takes a new stream or segment,
    /// as `queue` does.
    pub fn push_event(&self, event: gst::Event) -> bool {
        let mut inner = self.lock();
        if inner.flushing {
            return false;
        }
        if inner.flow == Some(gst::FlowError::Eos)
            && matches!(
                event.type_(),
                gst::EventType::StreamStart | gst::EventType::Segment
            )
        {
            gst::debug!(
                CAT,
                "{:?} after downstream's EOS: taking frames again",
                event.type_()
            );
            inner.flow = None;
        }
        inner.queue.push_ready(Item::Event(event));
        self.cond.notify_all();
        true
    }

    /// Output task: downstream returned EOS, so it takes no more frames of this segment. As
    /// `queue` does, the frames in the element up to the first EOS, SEGMENT or STREAM_START
    /// queued are dropped (counted as `flushed`: they never leave; those still in the model or
    /// waiting for an answer too, so that what follows is not held behind them) and the events
    /// queued go on. Only when no such event is queued does the streaming thread's next chain
    /// call return EOS upstream: otherwise downstream takes the new segment (or stream) queued,
    /// whose frames, already in the element, follow it. Returns the ids of the frames dropped.
    fn downstream_eos(&self, inner: &mut HoldInner) -> Vec<u64> {
        let (gone, boundary) = inner.queue.remove_frames_before(|item| {
            matches!(item, Item::Event(e) if matches!(
                e.type_(),
                gst::EventType::Eos | gst::EventType::Segment | gst::EventType::StreamStart
            ))
        });
        let ids: Vec<u64> = gone
            .iter()
            .filter_map(|item| match item {
                Item::Frame { result, .. } => Some(result.frame),
                Item::Event(_) => None,
            })
            .collect();
        // Those of the dropped frames the model has not taken; the frames behind the boundary
        // stay to be classified.
        let (jobs, kept): (Vec<ToClassify>, Vec<ToClassify>) = inner
            .to_classify
            .drain(..)
            .partition(|j| ids.contains(&j.id));
        inner.to_classify = kept.into();
        inner.spare.extend(jobs.into_iter().map(|j| j.tensor));
        inner.counts.flushed += ids.len() as u64;
        if !boundary {
            inner.flow = Some(gst::FlowError::Eos);
        }
        self.notify_all();
        ids
    }

    /// FLUSH_START / deactivation: wakes every waiter, which gives up (the inference thread
    /// finishes the frame it is running, whose result then finds it dropped).
    pub fn set_flushing(&self) {
        self.lock().flushing = true;
        self.notify_all();
    }

    /// FLUSH_STOP / deactivation: drops what is held and what waits for the model (returning the
    /// events among it) and accepts items again.
    pub fn flush(&self) -> Vec<gst::Event> {
        let mut inner = self.lock();
        inner.flushing = false;
        inner.flow = None;
        let dropped = inner.queue.drain();
        let jobs: Vec<ToClassify> = inner.to_classify.drain(..).collect();
        // Every frame in the element is in the queue, those still to classify too.
        let frames = dropped
            .iter()
            .filter(|item| matches!(item, Item::Frame { .. }))
            .count();
        inner.counts.flushed += frames as u64;
        inner.spare.extend(jobs.into_iter().map(|j| j.tensor));
        self.notify_all();
        dropped
            .into_iter()
            .filter_map(|item| match item {
                Item::Event(e) => Some(e),
                Item::Frame { .. } => None,
            })
            .collect()
    }

    /// Accepts items again after [`Hold::set_flushing`] (the task starts).
    pub fn resume(&self) {
        let mut inner = self.lock();
        inner.flushing = false;
        inner.flow = None;
        self.notify_all();
    }

    /// Serialized queries: waits until everything queued before has been pushed (or the output
    /// stopped on an error). Not after downstream's EOS: the output goes on with the events
    /// queued, which a query must not overtake.
    pub fn wait_drained(&self) {
        let mut inner = self.lock();
        while (!inner.queue.is_empty() || inner.pushing)
            && !inner.flushing
            && inner.flow.is_none_or(|f| f == gst::FlowError::Eos)
        {
            inner = self.cond.wait(inner).unwrap();
        }
    }
}

/// A server answer as answer reuse carries it to the following frames.
#[derive(Debug, Clone)]
pub struct ServerLabel {
    class_id: i32,
    label: String,
    score: f64,
    top_classes: Vec<i32>,
    top_scores: Vec<f64>,
}

/// Answer reuse at the output (policy=cbo with `reuse-window`): owned by the output task, which
/// sees frames in stream order; a new one each time the task starts (after a flush the next
/// frames need not look like the last ones).
pub struct OutputReuse {
    pub reuse: AnswerReuse<ServerLabel>,
    pub profile: Profile,
    /// Arrival time of frames without a timestamp.
    pub epoch: Instant,
    /// Whether the last frame's time was its PTS (else the wall clock since `epoch`).
    pub timed_by_pts: Option<bool>,
}

impl OutputReuse {
    /// A new segment: its times need not follow the last one's (a non-flushing seek, a loop, a
    /// new stream), so the run ends.
    fn new_segment(&mut self) {
        self.reuse.reset();
    }
}

impl CboFilter {
    /// One iteration of the source pad task: waits until the head of the hold queue may leave,
    /// then pushes it.
    pub(super) fn output_loop(&self, reuse: &mut Option<OutputReuse>, merge: Option<&MergeModel>) {
        let hold = &self.hold;
        let mut inner = hold.lock();
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
                    hold.cond.wait_timeout(inner, wait).unwrap().0
                }
                None => hold.cond.wait(inner).unwrap(),
            };
        };
        inner.pushing = true;
        // Room in the queue: a waiting streaming thread may go on.
        hold.cond.notify_all();
        let flow = match item {
            Item::Event(event) => {
                drop(inner);
                if event.type_() == gst::EventType::Segment
                    && let Some(r) = reuse.as_mut()
                {
                    r.new_segment();
                }
                let eos = event.type_() == gst::EventType::Eos;
                if eos {
                    self.warn_if_never_connected();
                }
                if !self.srcpad.push_event(event) && !eos {
                    gst::debug!(CAT, imp = self, "downstream refused a serialized event");
                }
                Ok(gst::FlowSuccess::Ok)
            }
            Item::Frame { buffer, result } => {
                let failure = match &outcome {
                    Outcome::Failed(reason) => {
                        let kind = failure_kind(reason);
                        (kind != STOPPED && inner.warned_failures.insert(kind.to_string()))
                            .then(|| reason.clone())
                    }
                    _ => None,
                };
                let result = finish_result(&mut inner.counts, result, outcome, merge, self);
                drop(inner);
                // Outside the queue's lock: a bus sync handler may read `stats`.
                if let Some(reason) = failure {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Write,
                        (
                            "Frame {} not offloaded: {reason}; it keeps its device label \
                             (decision=failed). Said once for each kind of failure; \
                             GST_DEBUG=cbo-offload:5 logs every frame",
                            result.frame
                        )
                    );
                }
                let (result, reused) = apply_reuse(reuse.as_mut(), &buffer, result);
                if reused {
                    gst::trace!(CAT, imp = self, "frame {}: reused an answer", result.frame);
                    hold.lock().counts.reused += 1;
                }
                let post = self.settings.lock().unwrap().post_messages;
                let flow = self.push_result(buffer, result, post);
                if flow == Err(gst::FlowError::Flushing) {
                    // Popped just as a flush began: dropped like the frames the flush finds.
                    hold.lock().counts.flushed += 1;
                }
                flow
            }
        };
        // Taken before the queue's lock, as everywhere else.
        let offload = if flow == Err(gst::FlowError::Eos) {
            self.offload()
        } else {
            None
        };
        let mut inner = hold.lock();
        inner.pushing = false;
        hold.cond.notify_all();
        if flow == Err(gst::FlowError::Eos) {
            // The task goes on: EOS from upstream, or a new segment, must still go downstream.
            let dropped = hold.downstream_eos(&mut inner);
            gst::debug!(
                CAT,
                imp = self,
                "downstream returned EOS; {} frame(s) in the element dropped",
                dropped.len()
            );
            // The planner forgets the dropped frames, and those only (under the queue's lock, as
            // the frames are told to it: it learns of them and of this in order). Not a flush,
            // which forgets every undecided frame: those of a new segment queued behind the
            // dropped ones would then never be decided, and would leave only at their deadline,
            // `late`. Telling it nothing would be safe (a frame it then decided to send finds
            // itself gone: not sent, a failure for the planner), but a send waiting for room in
            // the window would hold its buffer until then.
            if let Some(o) = offload
                && !dropped.is_empty()
            {
                let now_ms = o.now_ms();
                o.driver.send(
                    now_ms,
                    vec![crate::offload::driver::Event::Forget {
                        ids: dropped,
                        now_ms,
                    }],
                );
            }
            return;
        }
        if let Err(e) = flow {
            gst::debug!(CAT, imp = self, "downstream returned {e:?}; pausing output");
            inner.flow = Some(e);
            drop(inner);
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
            let _ = self.srcpad.pause_task();
        }
    }

    /// Starts the output task with a fresh answer-reuse state.
    pub(super) fn start_task(&self) -> Result<(), gst::LoggableError> {
        self.hold.resume();
        let offload = self.offload();
        let merge = offload.as_ref().and_then(|o| o.merge);
        let mut reuse = offload.and_then(|o| {
            // The reuse profile's merge model is `merge` (lifecycle: `Profile::merged_by`).
            o.reuse.as_ref().map(|(window_ms, profile)| OutputReuse {
                reuse: AnswerReuse::new(*window_ms).with_merge(profile.merge),
                profile: profile.clone(),
                epoch: Instant::now(),
                timed_by_pts: None,
            })
        });
        let weak = self.obj().downgrade();
        self.srcpad
            .start_task(move || {
                if let Some(obj) = weak.upgrade() {
                    obj.imp().output_loop(&mut reuse, merge.as_ref());
                }
            })
            .map_err(|e| gst::loggable_error!(CAT, "cannot start the output task: {e}"))
    }

    /// Drops the held items, keeping the sticky events among them as a queue does: stored on the
    /// source pad, they go downstream before the next buffer (caps in particular are not sent
    /// again by upstream after a flush).
    pub(super) fn drop_held(&self) {
        for event in self.hold.flush() {
            if event.is_sticky()
                && !matches!(event.type_(), gst::EventType::Eos | gst::EventType::Segment)
            {
                gst::debug!(
                    OFFLOAD_CAT,
                    imp = self,
                    "keeping {:?} across the flush",
                    event.type_()
                );
                let _ = self.srcpad.store_sticky_event(&event);
            }
        }
    }

    /// Attaches the result and pushes the buffer downstream.
    pub(super) fn push_result(
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
}

/// Applies how a held frame ended to its result.
/// The element stopping: its frames' requests end, which is no failure to tell anyone of.
const STOPPED: &str = "offload client stopped";

/// What kind of failure a reason names: the text before its first `": "` (the reasons are
/// written "kind: detail", e.g. "server error too-large: request larger than 4096 bytes
/// (frame 9)").
fn failure_kind(reason: &str) -> &str {
    reason.split(": ").next().unwrap_or(reason)
}

fn finish_result(
    counts: &mut FrameCounts,
    mut result: CboResult,
    outcome: Outcome<ServerResult>,
    merge: Option<&MergeModel>,
    imp: &CboFilter,
) -> CboResult {
    match outcome {
        Outcome::Ready => {}
        Outcome::Answered(sr) => {
            counts.answered += 1;
            let a = &sr.answer;
            match a.class_ids.first().zip(a.scores.first()) {
                None => result.decision = Decision::Failed,
                Some((&class_id, &score))
                    if !server_label_wins(
                        merge,
                        result.device_class_id,
                        result.device_confidence,
                        class_id,
                        score as f64,
                        sr.short_side,
                    ) =>
                {
                    gst::debug!(
                        OFFLOAD_CAT,
                        imp = imp,
                        "frame {}: the server's {class_id} ({score:.3}) overruled by the device's {} ({:.3})",
                        result.frame,
                        result.device_class_id,
                        result.device_confidence
                    );
                    counts.overruled += 1;
                    result.decision = Decision::Overruled;
                }
                Some((&class_id, &score)) => {
                    result.class_id = class_id;
                    result.label = a.labels.first().cloned().unwrap_or_default();
                    result.confidence = score as f64;
                    result.raw_confidence = score as f64;
                    result.top_classes = a.class_ids.clone();
                    result.top_scores = a.scores.iter().map(|&s| s as f64).collect();
                    result.source = Source::Server;
                    result.decision = Decision::Offload;
                }
            }
            result.resolution = sr.short_side as i32;
            result.server_latency_us = sr.latency.as_micros() as u64;
        }
        Outcome::Late => {
            counts.late += 1;
            result.decision = Decision::Late;
        }
        Outcome::Failed(reason) => {
            counts.failed += 1;
            gst::debug!(
                OFFLOAD_CAT,
                imp = imp,
                "frame {} not offloaded: {reason}",
                result.frame
            );
            result.decision = Decision::Failed;
        }
    }
    result
}

/// Gives a frame that stays on the device the answer of an earlier alike frame where
/// [`AnswerReuse`] says it applies; returns whether it did.
fn apply_reuse(
    reuse: Option<&mut OutputReuse>,
    buffer: &gst::Buffer,
    mut result: CboResult,
) -> (CboResult, bool) {
    let Some(r) = reuse else {
        return (result, false);
    };
    if result.decision == Decision::Overruled {
        // Its answer lost to the device's label: it labels no frame after it either.
        r.reuse.reset();
    }
    // Times are compared within one time base only: a switch between PTS and the wall clock (a
    // source that timestamps some frames only) ends the run. A DISCONT alone does not: a live
    // source marks one after every lost packet with time running on, and a gap longer than the
    // window ends the run by its age anyway (while the planner counts on the run going on).
    let timed_by_pts = buffer.pts().is_some();
    if r.timed_by_pts.is_some_and(|t| t != timed_by_pts) {
        r.reuse.reset();
    }
    r.timed_by_pts = Some(timed_by_pts);
    // Stream time, so that a file decoded faster than real time keeps the window's meaning.
    let arrival_ms = match buffer.pts() {
        Some(pts) => pts.nseconds() as f64 / 1e6,
        None => r.epoch.elapsed().as_secs_f64() * 1000.0,
    };
    let answer = (result.source == Source::Server).then(|| {
        let index = r
            .profile
            .resolutions
            .iter()
            .position(|p| p.short_side as i32 == result.resolution)
            .unwrap_or(0);
        let label = ServerLabel {
            class_id: result.class_id,
            label: result.label.clone(),
            score: result.raw_confidence,
            top_classes: result.top_classes.clone(),
            top_scores: result.top_scores.clone(),
        };
        FrameAnswer {
            class: label.class_id,
            score: label.score,
            label,
            resolution: index,
        }
    });
    let Some(u) = r.reuse.leave(
        &r.profile,
        arrival_ms,
        result.device_class_id,
        result.device_confidence,
        answer,
    ) else {
        return (result, false);
    };
    result.class_id = u.label.class_id;
    result.label = u.label.label;
    result.confidence = u.expected_accuracy;
    result.raw_confidence = u.label.score;
    result.top_classes = u.label.top_classes;
    result.top_scores = u.label.top_scores;
    result.source = Source::Server;
    result.decision = Decision::Reuse;
    (result, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A frame the client gave up on at its deadline ("no answer before the deadline") leaves
    /// `late`, whichever of the client's timer and the output task came first; one the server
    /// refused leaves `failed`, with the reason, whose kind is what the user is warned of once.
    #[test]
    fn a_request_out_of_time_leaves_late_and_a_refused_one_failed() {
        gst::init().unwrap();
        let hold = Hold::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in [1, 2] {
            let item = Item::Frame {
                buffer: gst::Buffer::new(),
                result: CboResult::default(),
            };
            hold.lock().queue.push_waiting(item, id, deadline);
        }
        hold.complete(1, Err(ClientError::Timeout));
        let refusal = "server error too-large: request larger than 1024 bytes (frame 2)";
        hold.complete(2, Err(ClientError::Request(refusal.into())));
        let mut inner = hold.lock();
        // Still waiting: it leaves at its deadline, late.
        assert!(inner.queue.pop(Instant::now()).is_none());
        assert!(matches!(
            inner.queue.pop(deadline),
            Some((_, Outcome::Late))
        ));
        match inner.queue.pop(deadline) {
            Some((_, Outcome::Failed(reason))) => {
                assert_eq!(reason, refusal);
                assert_eq!(failure_kind(&reason), "server error too-large");
            }
            _ => panic!("frame 2 leaves failed"),
        }
        assert_eq!(failure_kind("offload client stopped"), STOPPED);
    }
}
