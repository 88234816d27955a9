//! The hold-mode merge queue (pure, no GStreamer, no clock of its own: its deadlines are
//! instants of a [`Clock`], the system clock in the element and virtual time in the simulator,
//! which both release frames through it).
//!
//! Frames (and the serialized events between them) leave in arrival order. A frame enters either
//! classified (ready, or waiting for the planner and the server) or still to be classified (the
//! element's streaming thread has pre-processed it and the model has not run yet): such a frame
//! cannot leave before its result is in ([`HoldQueue::classified`]). A frame sent to the server
//! waits at the head of the queue until its answer arrives, the request fails, or its deadline
//! passes, whichever is first; every item behind it waits too, so the stream stays in order.
//! Nothing is dropped or duplicated: each pushed item is popped exactly once, and a server answer
//! for a frame that already left is reported as late and ignored.
//!
//! [`Admission`] says when the element lets the next frame in: at most one frame pre-processed
//! and waiting for the model, and a small fixed number in the element when nothing is offloaded.

use std::collections::VecDeque;
use std::marker::PhantomData;

use super::clock::{Clock, SystemClock};

/// Why a frame left the queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<A> {
    /// Never offloaded (or an event): it was ready on arrival.
    Ready,
    /// The server answered before the deadline.
    Answered(A),
    /// The deadline passed first.
    Late,
    /// The request failed before the deadline (connection lost, server error).
    Failed(String),
}

enum Slot<A, T> {
    /// Pre-processed; the model has not given its result yet.
    Classifying {
        id: u64,
    },
    Ready,
    Waiting {
        id: u64,
        deadline: T,
    },
    Answered(A),
    Failed(String),
}

struct Entry<P, A, T> {
    payload: P,
    slot: Slot<A, T>,
    /// A frame (pushed classifying or waiting), not an event.
    frame: bool,
}

/// Ordered queue of `P` items; offloaded items wait for an `A` answer until a deadline on
/// clock `C`.
pub struct HoldQueue<P, A, C: Clock = SystemClock> {
    entries: VecDeque<Entry<P, A, C::Instant>>,
    late_answers: u64,
    clock: PhantomData<C>,
}

impl<P, A, C: Clock> Default for HoldQueue<P, A, C> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            late_answers: 0,
            clock: PhantomData,
        }
    }
}

impl<P, A, C: Clock> HoldQueue<P, A, C> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Frames still waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.slot, Slot::Waiting { .. }))
            .count()
    }

    /// Frames whose classification has not come back yet.
    pub fn classifying(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.slot, Slot::Classifying { .. }))
            .count()
    }

    /// What is queued, for [`Admission::may_enter`]; `to_classify`: frames handed over whose
    /// model run has not started.
    pub fn occupancy(&self, to_classify: usize) -> Occupancy {
        let mut o = Occupancy {
            items: self.entries.len(),
            to_classify,
            ..Occupancy::default()
        };
        for e in &self.entries {
            o.frames += usize::from(e.frame);
            o.undecided += usize::from(matches!(
                e.slot,
                Slot::Classifying { .. } | Slot::Waiting { .. }
            ));
        }
        o
    }

    /// Answers that arrived after their frame had left.
    pub fn late_answers(&self) -> u64 {
        self.late_answers
    }

    /// Appends an item that may leave as soon as everything before it has.
    pub fn push_ready(&mut self, payload: P) {
        self.entries.push_back(Entry {
            payload,
            slot: Slot::Ready,
            frame: false,
        });
    }

    /// Appends an offloaded frame `id` that waits for its answer until `deadline`.
    pub fn push_waiting(&mut self, payload: P, id: u64, deadline: C::Instant) {
        self.entries.push_back(Entry {
            payload,
            slot: Slot::Waiting { id, deadline },
            frame: true,
        });
    }

    /// Appends frame `id` before its classification: it leaves only after
    /// [`HoldQueue::classified`] (or goes with [`HoldQueue::remove_classifying`]).
    pub fn push_classifying(&mut self, payload: P, id: u64) {
        self.entries.push_back(Entry {
            payload,
            slot: Slot::Classifying { id },
            frame: true,
        });
    }

    /// Frame `id` is classified: `f` updates its payload, and it is ready (`deadline` `None`) or
    /// waits for the planner and the server until `deadline`. False when it is not queued as
    /// classifying any more (dropped by a flush).
    pub fn classified(
        &mut self,
        id: u64,
        deadline: Option<C::Instant>,
        f: impl FnOnce(&mut P),
    ) -> bool {
        match self
            .entries
            .iter_mut()
            .find(|e| matches!(e.slot, Slot::Classifying { id: i } if i == id))
        {
            Some(e) => {
                f(&mut e.payload);
                e.slot = match deadline {
                    Some(deadline) => Slot::Waiting { id, deadline },
                    None => Slot::Ready,
                };
                true
            }
            None => false,
        }
    }

    /// Removes every frame still to be classified (its classification failed, or the ones
    /// behind it are not wanted after that), returning their payloads in order; events and
    /// classified frames stay.
    pub fn remove_classifying(&mut self) -> Vec<P> {
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .entries
            .drain(..)
            .partition(|e| matches!(e.slot, Slot::Classifying { .. }));
        self.entries = kept.into();
        gone.into_iter().map(|e| e.payload).collect()
    }

    /// Removes the frames ahead of the first event that `boundary` accepts (every frame when no
    /// such event is queued), whatever their state, returning their payloads in order and
    /// whether such an event is queued. Events stay, and so do the frames behind the boundary.
    /// Downstream returned EOS: it takes no more frames of this segment, but EOS or a new segment
    /// behind them must still reach it, followed by the new segment's frames, as `queue` does.
    /// Results and answers still to come for the removed frames find them gone, as after a flush.
    pub fn remove_frames_before(&mut self, boundary: impl Fn(&P) -> bool) -> (Vec<P>, bool) {
        let end = self
            .entries
            .iter()
            .position(|e| !e.frame && boundary(&e.payload));
        let mut gone = Vec::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for (i, e) in self.entries.drain(..).enumerate() {
            if e.frame && end.is_none_or(|end| i < end) {
                gone.push(e.payload);
            } else {
                kept.push_back(e);
            }
        }
        self.entries = kept;
        (gone, end.is_some())
    }

    fn waiting_slot(&mut self, id: u64) -> Option<&mut Slot<A, C::Instant>> {
        self.entries
            .iter_mut()
            .map(|e| &mut e.slot)
            .find(|s| matches!(s, Slot::Waiting { id: i, .. } if *i == id))
    }

    /// Records the server's answer for frame `id`. Returns false when that frame is no longer
    /// waiting (it left at its deadline): the answer is dropped and counted as late.
    pub fn answer(&mut self, id: u64, answer: A) -> bool {
        match self.waiting_slot(id) {
            Some(slot) => {
                *slot = Slot::Answered(answer);
                true
            }
            None => {
                self.late_answers += 1;
                false
            }
        }
    }

    /// Records that frame `id`'s request failed: it may leave with its device result.
    pub fn fail(&mut self, id: u64, reason: String) -> bool {
        match self.waiting_slot(id) {
            Some(slot) => {
                *slot = Slot::Failed(reason);
                true
            }
            None => false,
        }
    }

    /// Lets a waiting frame `id` leave as soon as it reaches the head (the policy kept it on
    /// the device), after `f` updated its payload. False when it is no longer waiting.
    pub fn release(&mut self, id: u64, f: impl FnOnce(&mut P)) -> bool {
        match self
            .entries
            .iter_mut()
            .find(|e| matches!(e.slot, Slot::Waiting { id: i, .. } if i == id))
        {
            Some(e) => {
                f(&mut e.payload);
                e.slot = Slot::Ready;
                true
            }
            None => false,
        }
    }

    /// Updates the payload of waiting frame `id` (it keeps waiting). False when it left.
    pub fn update(&mut self, id: u64, f: impl FnOnce(&mut P)) -> bool {
        match self
            .entries
            .iter_mut()
            .find(|e| matches!(e.slot, Slot::Waiting { id: i, .. } if i == id))
        {
            Some(e) => {
                f(&mut e.payload);
                true
            }
            None => false,
        }
    }

    /// Removes and returns the head item if it may leave at `now`.
    pub fn pop(&mut self, now: C::Instant) -> Option<(P, Outcome<A>)> {
        let ready = match &self.entries.front()?.slot {
            Slot::Classifying { .. } => false,
            Slot::Waiting { deadline, .. } => *deadline <= now,
            _ => true,
        };
        if !ready {
            return None;
        }
        let entry = self.entries.pop_front().expect("front exists");
        let outcome = match entry.slot {
            Slot::Classifying { .. } => unreachable!("a classifying frame never leaves"),
            Slot::Ready => Outcome::Ready,
            Slot::Waiting { .. } => Outcome::Late,
            Slot::Answered(a) => Outcome::Answered(a),
            Slot::Failed(r) => Outcome::Failed(r),
        };
        Some((entry.payload, outcome))
    }

    /// When the head item will be released at the latest, if it is waiting (a frame still
    /// classifying has no deadline: it waits for its result).
    pub fn next_deadline(&self) -> Option<C::Instant> {
        match self.entries.front()?.slot {
            Slot::Waiting { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Empties the queue (flush), returning the payloads in order. Answers still to come for
    /// the frames dropped here are counted as late and ignored.
    pub fn drain(&mut self) -> Vec<P> {
        self.entries.drain(..).map(|e| e.payload).collect()
    }
}

/// What is between the element's sink pad and its output, as [`Admission`] counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Items queued: frames and events.
    pub items: usize,
    /// Frames queued, whatever their state.
    pub frames: usize,
    /// Frames pre-processed and handed over whose model run has not started.
    pub to_classify: usize,
    /// Frames without their final label yet: classifying, or waiting for the planner or the
    /// server.
    pub undecided: usize,
}

/// Frames queued device only, beyond which the streaming thread waits: one in the model (or
/// ready) and one pre-processed behind it; with the one being pushed, three frames at most.
pub const DEVICE_FRAMES: usize = 2;

/// Most frames the element holds at once (as buffers upstream allocated), at most `max_items`:
/// device only the [`DEVICE_FRAMES`] queued and the one being pushed; offloading, every frame
/// that entered in the last `deadline_ms` (at `fps`) besides those, or `max_items` when the rate
/// is unknown (variable). An upstream buffer pool needs that many buffers beyond its own, or a
/// live source with a bounded pool (a camera's, a hardware decoder's) runs dry while frames wait
/// for answers.
pub fn frames_held_at_most(
    offloading: bool,
    deadline_ms: u32,
    fps: Option<f64>,
    max_items: usize,
) -> usize {
    let device = DEVICE_FRAMES + 1;
    if !offloading {
        return device.min(max_items);
    }
    match fps.filter(|f| f.is_finite() && *f > 0.0) {
        Some(fps) => (device + (deadline_ms as f64 / 1000.0 * fps).ceil() as usize).min(max_items),
        None => max_items,
    }
}

/// A buffer pool's (min, max) with `held` more buffers: both grow, so min stays within a bounded
/// max; an unbounded max (0) stays unbounded.
pub fn pool_with_held(min: u32, max: u32, held: u32) -> (u32, u32) {
    let max = if max == 0 {
        0
    } else {
        max.saturating_add(held)
    };
    (min.saturating_add(held), max)
}

/// When the streaming thread may take the next frame in (pre-process it and hand it over). Never
/// while a frame it handed over has not reached the model yet, so at most one frame is in the
/// model and one pre-processed behind it; and beyond that, per mode:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Device only: while fewer than [`DEVICE_FRAMES`] frames are queued. A frame leaves as soon
    /// as it is classified, so a slower downstream blocks the streaming thread, as it did when
    /// the streaming thread pushed.
    Device,
    /// Offloading: while fewer than `max_items` items are queued, and on a non-live source
    /// (`window`: the in-flight window) while fewer than `window` frames are undecided, so that
    /// file processing goes at the server's pace instead of missing deadlines.
    Hold {
        max_items: usize,
        window: Option<usize>,
    },
}

impl Admission {
    pub fn may_enter(&self, o: &Occupancy) -> bool {
        o.to_classify == 0
            && match *self {
                Admission::Device => o.frames < DEVICE_FRAMES,
                Admission::Hold { max_items, window } => {
                    o.items < max_items && window.is_none_or(|w| o.undecided < w)
                }
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::clock::VirtualClock;
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    #[test]
    fn frames_held_are_the_deadlines_worth_of_frames_beyond_the_device_queue() {
        assert_eq!(frames_held_at_most(false, 200, Some(30.0), 32), 3);
        // 200 ms at 30 fps: 6 frames waiting, and the 3 of the device queue.
        assert_eq!(frames_held_at_most(true, 200, Some(30.0), 32), 9);
        assert_eq!(frames_held_at_most(true, 210, Some(30.0), 32), 10);
        // Unknown rate (variable, 0/1): as many as asked for at most.
        assert_eq!(frames_held_at_most(true, 200, None, 32), 32);
        assert_eq!(frames_held_at_most(true, 200, Some(0.0), 32), 32);
        // Never more than that.
        assert_eq!(frames_held_at_most(true, 60_000, Some(1000.0), 32), 32);
        // Pools: both bounds grow; unbounded stays unbounded.
        assert_eq!(pool_with_held(2, 0, 9), (11, 0));
        assert_eq!(pool_with_held(2, 4, 9), (11, 13));
    }

    #[test]
    fn frames_leave_in_order_when_answered_or_due() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q: HoldQueue<&str, u32> = HoldQueue::default();
        q.push_ready("caps");
        q.push_waiting("f0", 0, ms(100));
        q.push_ready("f1");
        q.push_waiting("f2", 2, ms(120));
        q.push_waiting("f3", 3, ms(130));
        assert_eq!(q.pop(t0), Some(("caps", Outcome::Ready)));
        assert_eq!(q.pop(ms(50)), None, "f0 waits for its answer");
        assert_eq!(q.next_deadline(), Some(ms(100)));
        // f2 answered first: still behind f0.
        assert!(q.answer(2, 7));
        assert_eq!(q.pop(ms(60)), None);
        assert!(q.answer(0, 5));
        assert_eq!(q.pop(ms(60)), Some(("f0", Outcome::Answered(5))));
        assert_eq!(q.pop(ms(60)), Some(("f1", Outcome::Ready)));
        assert_eq!(q.pop(ms(60)), Some(("f2", Outcome::Answered(7))));
        assert_eq!(q.waiting(), 1);
        // f3's deadline passes: it leaves late, and its answer afterwards is dropped.
        assert_eq!(q.pop(ms(129)), None);
        assert_eq!(q.pop(ms(130)), Some(("f3", Outcome::Late)));
        assert!(!q.answer(3, 9));
        assert_eq!(q.late_answers(), 1);
        assert!(q.is_empty());
        assert_eq!(q.pop(ms(1000)), None);
    }

    #[test]
    fn virtual_time_releases_the_same_way() {
        let mut q: HoldQueue<u32, (), VirtualClock> = HoldQueue::default();
        q.push_waiting(0, 0, 100.0);
        q.push_ready(1);
        assert_eq!(q.next_deadline(), Some(100.0));
        assert_eq!(q.pop(99.5), None);
        assert_eq!(q.pop(100.0), Some((0, Outcome::Late)));
        assert_eq!(q.pop(100.0), Some((1, Outcome::Ready)));
    }

    #[test]
    fn release_and_update_touch_only_waiting_frames() {
        let t0 = Instant::now();
        let mut q: HoldQueue<u32, ()> = HoldQueue::default();
        q.push_waiting(1, 1, t0 + Duration::from_secs(1));
        q.push_waiting(2, 2, t0 + Duration::from_secs(1));
        assert!(q.update(2, |p| *p = 20));
        assert!(q.release(1, |p| *p = 10));
        assert_eq!(q.pop(t0), Some((10, Outcome::Ready)));
        assert_eq!(q.pop(t0), None, "2 still waits");
        assert!(!q.release(1, |_| {}), "1 already left");
        assert!(q.release(2, |_| {}));
        assert_eq!(q.pop(t0), Some((20, Outcome::Ready)));
    }

    #[test]
    fn failures_release_early_and_flush_returns_everything() {
        let t0 = Instant::now();
        let mut q: HoldQueue<u32, ()> = HoldQueue::default();
        q.push_waiting(10, 10, t0 + Duration::from_secs(1));
        q.push_ready(11);
        assert!(q.fail(10, "connection lost".into()));
        assert!(!q.fail(99, "unknown".into()));
        assert_eq!(
            q.pop(t0),
            Some((10, Outcome::Failed("connection lost".into())))
        );
        q.push_waiting(12, 12, t0 + Duration::from_secs(1));
        assert_eq!(q.drain(), vec![11, 12]);
        assert!(q.is_empty());
    }

    /// Random interleavings: every item comes out exactly once, in order, never before its time.
    #[test]
    fn nothing_lost_or_reordered_under_random_interleavings() {
        let t0 = Instant::now();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut q: HoldQueue<u64, u64> = HoldQueue::default();
        let mut out = Vec::new();
        let mut now = t0;
        for i in 0..2000u64 {
            now += Duration::from_millis(rand() % 20);
            if rand() % 3 == 0 {
                q.push_ready(i);
            } else {
                q.push_waiting(i, i, now + Duration::from_millis(100));
            }
            for _ in 0..(rand() % 3) {
                let id = i.saturating_sub(rand() % 10);
                if rand() % 4 == 0 {
                    q.fail(id, String::new());
                } else {
                    q.answer(id, id);
                }
            }
            while let Some((p, outcome)) = q.pop(now) {
                if let Outcome::Answered(a) = outcome {
                    assert_eq!(a, p, "an answer reaches its own frame");
                }
                out.push(p);
            }
        }
        while let Some((p, _)) = q.pop(now + Duration::from_secs(10)) {
            out.push(p);
        }
        assert_eq!(out, (0..2000).collect::<Vec<_>>());
    }

    #[test]
    fn a_frame_being_classified_holds_the_head_until_its_result() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        let mut q: HoldQueue<&str, u32> = HoldQueue::default();
        q.push_classifying("f0", 0);
        q.push_ready("caps");
        q.push_classifying("f1", 1);
        q.push_classifying("f2", 2);
        assert_eq!(q.classifying(), 3);
        // No deadline: it waits for its result however long that takes.
        assert_eq!(q.next_deadline(), None);
        assert_eq!(q.pop(later), None);
        // f1 classified first (device only: ready) still waits behind f0.
        assert!(q.classified(1, None, |p| *p = "f1 labelled"));
        assert_eq!(q.pop(later), None);
        // f0 offloaded: it waits for the server until its deadline.
        assert!(q.classified(0, Some(t0 + Duration::from_millis(100)), |_| {}));
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(q.waiting(), 1);
        assert!(q.answer(0, 5));
        assert_eq!(q.pop(t0), Some(("f0", Outcome::Answered(5))));
        assert_eq!(q.pop(t0), Some(("caps", Outcome::Ready)));
        assert_eq!(q.pop(t0), Some(("f1 labelled", Outcome::Ready)));
        assert_eq!(q.pop(later), None, "f2 still classifying");
        assert!(!q.classified(1, None, |_| {}), "f1 already left");
        assert!(!q.answer(2, 1), "a frame being classified takes no answer");
        assert!(q.classified(2, None, |_| {}));
        assert_eq!(q.pop(t0), Some(("f2", Outcome::Ready)));
        assert!(q.is_empty());
    }

    #[test]
    fn a_failed_classification_removes_the_unclassified_frames_only() {
        let t0 = Instant::now();
        let mut q: HoldQueue<&str, u32> = HoldQueue::default();
        q.push_classifying("f0", 0);
        q.push_classifying("f1", 1);
        q.push_ready("eos");
        assert!(q.classified(0, None, |_| {}));
        assert_eq!(q.remove_classifying(), vec!["f1"]);
        assert_eq!(q.pop(t0), Some(("f0", Outcome::Ready)));
        assert_eq!(q.pop(t0), Some(("eos", Outcome::Ready)));
        assert!(!q.classified(1, None, |_| {}), "removed");
        // A flush drops frames being classified too; their results come back to nothing.
        q.push_classifying("f2", 2);
        assert_eq!(q.drain(), vec!["f2"]);
        assert!(!q.classified(2, None, |_| {}));
    }

    #[test]
    fn removing_the_frames_keeps_the_events_in_order() {
        let t0 = Instant::now();
        let mut q: HoldQueue<&str, u32> = HoldQueue::default();
        q.push_classifying("f0", 0);
        q.push_ready("caps");
        q.push_waiting("f1", 1, t0 + Duration::from_secs(5));
        q.push_classifying("f2", 2);
        assert!(q.classified(2, None, |_| {}));
        q.push_ready("tag");
        q.push_classifying("f3", 3);
        // No boundary queued: ready, waiting and classifying frames all go, in order; the events
        // stay.
        let (gone, boundary) = q.remove_frames_before(|p| *p == "segment");
        assert_eq!(gone, vec!["f0", "f1", "f2", "f3"]);
        assert!(!boundary);
        assert_eq!(q.occupancy(0).frames, 0);
        assert!(!q.classified(0, None, |_| {}), "its result finds it gone");
        assert!(!q.answer(1, 7), "so does its answer");
        assert_eq!(q.pop(t0), Some(("caps", Outcome::Ready)));
        assert_eq!(q.pop(t0), Some(("tag", Outcome::Ready)));
        assert!(q.is_empty());
    }

    #[test]
    fn frames_are_removed_up_to_the_first_boundary_only() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let mut q: HoldQueue<&str, u32> = HoldQueue::default();
        q.push_waiting("f0", 0, later);
        q.push_ready("tag");
        q.push_classifying("f1", 1);
        q.push_ready("segment");
        q.push_waiting("f2", 2, later);
        q.push_classifying("f3", 3);
        q.push_ready("segment");
        q.push_classifying("f4", 4);
        let boundary = |p: &&str| *p == "segment";
        let (gone, found) = q.remove_frames_before(boundary);
        assert_eq!(gone, vec!["f0", "f1"]);
        assert!(found);
        assert!(!q.answer(0, 1), "a removed frame takes no answer");
        assert!(!q.classified(1, None, |_| {}), "nor its result");
        // The frames of the new segment keep their state: still waiting, still classifying.
        assert_eq!(q.occupancy(0).frames, 3);
        assert_eq!(q.waiting(), 1);
        assert_eq!(q.classifying(), 2);
        assert_eq!(q.pop(t0), Some(("tag", Outcome::Ready)));
        assert_eq!(q.pop(t0), Some(("segment", Outcome::Ready)));
        assert_eq!(q.pop(t0), None, "f2 waits for its answer");
        assert!(q.answer(2, 7));
        assert_eq!(q.pop(t0), Some(("f2", Outcome::Answered(7))));
        // Downstream refuses the new segment too before f3 leaves: only f3 goes, up to the next
        // segment; again with nothing left to stop at: f4 goes.
        let (gone, found) = q.remove_frames_before(boundary);
        assert_eq!((gone, found), (vec!["f3"], true));
        assert_eq!(q.pop(t0), Some(("segment", Outcome::Ready)));
        let (gone, found) = q.remove_frames_before(boundary);
        assert_eq!((gone, found), (vec!["f4"], false));
        assert!(q.is_empty());
        // A frame equal to the boundary is still a frame: only events stop the removal.
        q.push_classifying("segment", 5);
        q.push_ready("eos");
        let (gone, found) = q.remove_frames_before(boundary);
        assert_eq!((gone, found), (vec!["segment"], false));
    }

    #[test]
    fn admission_allows_one_frame_in_the_model_and_one_behind_it() {
        let o = |items, frames, to_classify, undecided| Occupancy {
            items,
            frames,
            to_classify,
            undecided,
        };
        let device = Admission::Device;
        assert!(device.may_enter(&o(0, 0, 0, 0)));
        // One in the model: the next may be pre-processed.
        assert!(device.may_enter(&o(1, 1, 0, 1)));
        // One handed over that the model has not taken: wait.
        assert!(!device.may_enter(&o(1, 1, 1, 1)));
        // One ready (downstream slow) and one in the model: wait.
        assert!(!device.may_enter(&o(2, 2, 0, 1)));
        // Events do not count as frames.
        assert!(device.may_enter(&o(3, 1, 0, 1)));
        let hold = Admission::Hold {
            max_items: 4,
            window: None,
        };
        assert!(hold.may_enter(&o(3, 3, 0, 3)));
        assert!(!hold.may_enter(&o(4, 2, 0, 0)));
        assert!(!hold.may_enter(&o(1, 1, 1, 1)));
        let windowed = Admission::Hold {
            max_items: 512,
            window: Some(2),
        };
        assert!(windowed.may_enter(&o(5, 5, 0, 1)));
        assert!(!windowed.may_enter(&o(5, 5, 0, 2)));
        let q: HoldQueue<u8, ()> = {
            let mut q = HoldQueue::default();
            q.push_ready(0);
            q.push_classifying(1, 1);
            q.push_waiting(2, 2, Instant::now());
            q.push_classifying(3, 3);
            assert!(q.classified(3, None, |_| {}));
            q
        };
        assert_eq!(q.occupancy(1), o(4, 3, 1, 2));
    }

    /// The element's three stages at random speeds (pre-processing, the model, the output) with
    /// events between frames: every item leaves once, in order, and device only the queue never
    /// holds more than the admission allows.
    #[test]
    fn staged_frames_leave_in_order_within_the_admission_bound() {
        let t0 = Instant::now();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for admission in [
            Admission::Device,
            Admission::Hold {
                max_items: 6,
                window: Some(3),
            },
        ] {
            let mut q: HoldQueue<u64, u64> = HoldQueue::default();
            // Frames handed over, not taken by the model; the one in the model.
            let mut to_classify: VecDeque<u64> = VecDeque::new();
            let mut in_model: Option<u64> = None;
            let (mut next, mut frames_in, total) = (0u64, 0, 2000);
            let mut out = Vec::new();
            let now = t0 + Duration::from_secs(1);
            loop {
                match rand() % 4 {
                    // The streaming thread: an event, or a frame when admitted.
                    0 if frames_in < total => {
                        if rand() % 8 == 0 {
                            q.push_ready(next);
                            next += 1;
                        } else if admission.may_enter(&q.occupancy(to_classify.len())) {
                            q.push_classifying(next, next);
                            to_classify.push_back(next);
                            next += 1;
                            frames_in += 1;
                        }
                    }
                    // The model: finishes its frame, or takes the next.
                    1 => match in_model.take() {
                        Some(id) => {
                            let deadline = match admission {
                                Admission::Device => None,
                                _ => Some(t0),
                            };
                            assert!(q.classified(id, deadline, |_| {}));
                        }
                        None => in_model = to_classify.pop_front(),
                    },
                    // The output: the head, if it may leave.
                    _ => {
                        if let Some((p, _)) = q.pop(now) {
                            out.push(p);
                        }
                    }
                }
                let o = q.occupancy(to_classify.len());
                assert!(o.to_classify <= 1, "{o:?}");
                if admission == Admission::Device {
                    assert!(o.frames <= DEVICE_FRAMES, "{o:?}");
                }
                if frames_in == total
                    && to_classify.is_empty()
                    && in_model.is_none()
                    && q.is_empty()
                {
                    break;
                }
            }
            assert_eq!(out, (0..next).collect::<Vec<_>>(), "{admission:?}");
        }
    }
}
