//! The hold-mode merge queue (pure, no GStreamer, no clock of its own: its deadlines are
//! instants of a [`Clock`], the system clock in the element and virtual time in the simulator,
//! which both release frames through it).
//!
//! Frames (and the serialized events between them) leave in arrival order. A frame sent to the
//! server waits at the head of the queue until its answer arrives, the request fails, or its
//! deadline passes, whichever is first; every item behind it waits too, so the stream stays in
//! order. Nothing is dropped or duplicated: each pushed item is popped exactly once, and a server
//! answer for a frame that already left is reported as late and ignored.

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
    Ready,
    Waiting { id: u64, deadline: T },
    Answered(A),
    Failed(String),
}

struct Entry<P, A, T> {
    payload: P,
    slot: Slot<A, T>,
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

    /// Answers that arrived after their frame had left.
    pub fn late_answers(&self) -> u64 {
        self.late_answers
    }

    /// Appends an item that may leave as soon as everything before it has.
    pub fn push_ready(&mut self, payload: P) {
        self.entries.push_back(Entry {
            payload,
            slot: Slot::Ready,
        });
    }

    /// Appends an offloaded frame `id` that waits for its answer until `deadline`.
    pub fn push_waiting(&mut self, payload: P, id: u64, deadline: C::Instant) {
        self.entries.push_back(Entry {
            payload,
            slot: Slot::Waiting { id, deadline },
        });
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
            Slot::Waiting { deadline, .. } => *deadline <= now,
            _ => true,
        };
        if !ready {
            return None;
        }
        let entry = self.entries.pop_front().expect("front exists");
        let outcome = match entry.slot {
            Slot::Ready => Outcome::Ready,
            Slot::Waiting { .. } => Outcome::Late,
            Slot::Answered(a) => Outcome::Answered(a),
            Slot::Failed(r) => Outcome::Failed(r),
        };
        Some((entry.payload, outcome))
    }

    /// When the head item will be released at the latest, if it is waiting.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::clock::VirtualClock;
    use std::time::{Duration, Instant};

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
}
