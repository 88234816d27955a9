//! Reusing a recent server answer for the frames that follow it (pure: no GStreamer, no I/O).
//!
//! Consecutive video frames are alike. While the device keeps giving the same top-1 as it gave
//! for a frame the server answered, the scene most likely still shows what the server saw, so
//! the server's label is a better guess than the device's for those frames too. A run ends when
//! the device's top-1 changes (the scene or the object changed) or the answered frame is older
//! than the window, either way in stream time (reverse playback feeds frames with falling times:
//! a frame that far from the answered one shows another moment of the scene, whichever way the
//! stream runs). The server's label replaces the device's only where it is more likely right:
//! its expected accuracy (the profile's accuracy of the answered label, merged when the stream
//! merges, for the answered frame's confidence and resolution) must exceed the device's
//! calibrated confidence for this frame, and, with a merge rule ([`super::merge`]), the rule that
//! decides the answered frame's own label must also give this frame the server's label.
//!
//! Frames are fed in stream order as they leave, so every answer that can be reused has arrived
//! (a frame leaves only after the frames before it).

use super::merge::{MergeModel, server_label_wins};
use crate::profile::Profile;

/// A server answer for a frame; `T` is what the caller needs of it (a class id in the
/// simulator, the whole answer in the element).
#[derive(Debug, Clone, PartialEq)]
pub struct Answered<T> {
    pub label: T,
    /// Probability the label is right, as the profile predicts it.
    pub expected_accuracy: f64,
    /// The server's top-1, its score and the short side it was sent at (for the merge rule).
    pub class: i32,
    pub score: f64,
    pub short_side: u32,
}

/// A frame's own server answer as the caller has it: the label to reuse, the index of the
/// profile resolution it was sent at, and the server's top-1 and its score (for the merge rule).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameAnswer<T> {
    pub label: T,
    pub resolution: usize,
    pub class: i32,
    pub score: f64,
}

/// A frame leaving the element.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaving<T> {
    pub arrival_ms: f64,
    /// The device's top-1 and its calibrated confidence.
    pub device_class: i32,
    pub device_confidence: f64,
    /// The server's answer for this frame, if it has one.
    pub answer: Option<Answered<T>>,
}

/// What a reused label is worth, for the frame it is given to.
#[derive(Debug, Clone, PartialEq)]
pub struct Reused<T> {
    pub label: T,
    pub expected_accuracy: f64,
    /// How far from this frame the answered frame arrived, in either direction.
    pub age_ms: f64,
}

#[derive(Debug, Clone)]
struct Source<T> {
    device_class: i32,
    arrival_ms: f64,
    answer: Answered<T>,
}

/// The run state: the latest answer and the device label it was given for.
#[derive(Debug, Clone)]
pub struct AnswerReuse<T> {
    window_ms: f64,
    /// How conservatively an answer's accuracy is taken ([`Profile::answer_accuracy`]): the
    /// planner's [`crate::offload::planner::CboParams::gain_z`], so both value it alike.
    gain_z: f64,
    merge: Option<MergeModel>,
    source: Option<Source<T>>,
    last_device_class: Option<i32>,
}

impl<T: Clone> AnswerReuse<T> {
    /// `window_ms`: how far from the answered frame's arrival (after it, or before it when times
    /// run backwards) its answer may still be reused.
    pub fn new(window_ms: f64) -> Self {
        Self {
            window_ms,
            gain_z: crate::offload::planner::DEFAULT_PARAMS.gain_z,
            merge: None,
            source: None,
            last_device_class: None,
        }
    }

    /// Values answers with another `gain_z` than the default (cross-validation).
    pub fn with_gain_z(mut self, gain_z: f64) -> Self {
        self.gain_z = gain_z;
        self
    }

    /// Reuses an answer only where `merge` (the rule of the answered frame's own label) gives
    /// this frame the server's label too (default: `None`, the profile's expectation alone).
    pub fn with_merge(mut self, merge: Option<MergeModel>) -> Self {
        self.merge = merge;
        self
    }

    /// Feeds the next frame in stream order; returns the answer to use instead of the device's
    /// result, if one applies. Frames with their own answer return `None` (and start a run).
    pub fn next(&mut self, f: Leaving<T>) -> Option<Reused<T>> {
        if self.last_device_class != Some(f.device_class) {
            self.source = None;
        }
        self.last_device_class = Some(f.device_class);
        if let Some(answer) = f.answer {
            self.source = Some(Source {
                device_class: f.device_class,
                arrival_ms: f.arrival_ms,
                answer,
            });
            return None;
        }
        let s = self.source.as_ref()?;
        // Absolute: in reverse playback every frame arrives "before" the answered one, and a
        // signed age would pass the window however far back it went.
        let age_ms = (f.arrival_ms - s.arrival_ms).abs();
        (s.device_class == f.device_class
            && age_ms <= self.window_ms
            && s.answer.expected_accuracy > f.device_confidence
            && server_label_wins(
                self.merge.as_ref(),
                f.device_class,
                f.device_confidence,
                s.answer.class,
                s.answer.score,
                s.answer.short_side,
            ))
        .then(|| Reused {
            label: s.answer.label.clone(),
            expected_accuracy: s.answer.expected_accuracy,
            age_ms,
        })
    }

    /// [`AnswerReuse::next`] for a frame whose answer is worth what `profile` says (at the same
    /// lower bound the planner plans with): the element's output and the simulator both leave
    /// frames through here.
    pub fn leave(
        &mut self,
        profile: &Profile,
        arrival_ms: f64,
        device_class: i32,
        device_confidence: f64,
        answer: Option<FrameAnswer<T>>,
    ) -> Option<Reused<T>> {
        self.next(Leaving {
            arrival_ms,
            device_class,
            device_confidence,
            answer: answer.map(|a| Answered {
                label: a.label,
                expected_accuracy: profile.answer_accuracy(
                    device_confidence,
                    a.resolution,
                    self.gain_z,
                ),
                class: a.class,
                score: a.score,
                short_side: profile
                    .resolutions
                    .get(a.resolution)
                    .map_or(0, |x| x.short_side),
            }),
        })
    }

    /// Forgets the run (after a flush or a gap in the stream).
    pub fn reset(&mut self) {
        self.source = None;
        self.last_device_class = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(t: f64, class: i32, conf: f64, answer: Option<(i32, f64)>) -> Leaving<i32> {
        Leaving {
            arrival_ms: t,
            device_class: class,
            device_confidence: conf,
            answer: answer.map(|(label, expected_accuracy)| Answered {
                label,
                expected_accuracy,
                class: label,
                // As sure as the profile says it is right.
                score: expected_accuracy,
                short_side: 224,
            }),
        }
    }

    #[test]
    fn answer_carries_over_while_the_device_label_holds() {
        let mut r = AnswerReuse::new(1000.0);
        assert_eq!(r.next(frame(0.0, 5, 0.3, None)), None);
        assert_eq!(r.next(frame(100.0, 5, 0.3, Some((7, 0.8)))), None);
        let got = r.next(frame(200.0, 5, 0.4, None)).unwrap();
        assert_eq!((got.label, got.age_ms), (7, 100.0));
        assert_eq!(r.next(frame(300.0, 5, 0.4, None)).unwrap().label, 7);
        // The device changes its mind: the run ends, and does not resume when it changes back.
        assert_eq!(r.next(frame(400.0, 6, 0.4, None)), None);
        assert_eq!(r.next(frame(500.0, 5, 0.4, None)), None);
    }

    #[test]
    fn only_within_the_window_and_only_when_more_likely_right() {
        let mut r = AnswerReuse::new(250.0);
        r.next(frame(0.0, 1, 0.2, Some((2, 0.7))));
        // The device is surer than the answer is expected to be right.
        assert_eq!(r.next(frame(100.0, 1, 0.9, None)), None);
        assert!(r.next(frame(200.0, 1, 0.5, None)).is_some());
        assert_eq!(r.next(frame(300.0, 1, 0.5, None)), None, "past the window");
        // A newer answer starts a new run.
        r.next(frame(400.0, 1, 0.2, Some((3, 0.75))));
        assert_eq!(r.next(frame(500.0, 1, 0.5, None)).unwrap().label, 3);
        r.reset();
        assert_eq!(r.next(frame(600.0, 1, 0.5, None)), None);
    }

    #[test]
    fn the_window_holds_when_times_run_backwards() {
        // Reverse playback: each frame is 100 ms earlier than the one before.
        let mut r = AnswerReuse::new(250.0);
        assert_eq!(r.next(frame(1000.0, 1, 0.2, Some((2, 0.7)))), None);
        let got = r.next(frame(900.0, 1, 0.5, None)).unwrap();
        assert_eq!((got.label, got.age_ms), (2, 100.0));
        assert_eq!(r.next(frame(800.0, 1, 0.5, None)).unwrap().age_ms, 200.0);
        assert_eq!(r.next(frame(700.0, 1, 0.5, None)), None, "past the window");
        assert_eq!(r.next(frame(100.0, 1, 0.5, None)), None, "far past it");
        // A newer answer (earlier in stream time) starts a new run, as forwards.
        r.next(frame(600.0, 1, 0.2, Some((3, 0.75))));
        assert_eq!(r.next(frame(500.0, 1, 0.5, None)).unwrap().label, 3);
    }

    #[test]
    fn an_answer_is_reused_only_where_its_own_score_beats_the_device() {
        let answer = |score: f64| Leaving {
            arrival_ms: 0.0,
            device_class: 1,
            device_confidence: 0.2,
            answer: Some(Answered {
                label: 2,
                expected_accuracy: 0.9,
                class: 2,
                score,
                short_side: 224,
            }),
        };
        // The profile expects 0.9 but the server gave this answer only 0.4.
        let mut r = AnswerReuse::new(1000.0).with_merge(Some(crate::offload::merge::SCORES));
        r.next(answer(0.4));
        assert!(r.next(frame(100.0, 1, 0.3, None)).is_some());
        assert_eq!(r.next(frame(200.0, 1, 0.5, None)), None);
        // `merge=server`: the profile's expectation alone decides.
        let mut r = AnswerReuse::new(1000.0);
        r.next(answer(0.4));
        assert!(r.next(frame(200.0, 1, 0.5, None)).is_some());
    }
}
