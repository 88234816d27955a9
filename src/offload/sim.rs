//! Trace-driven replay of an offloading policy (pure: no sockets, no GStreamer), with the
//! element's event model, and the clairvoyant upper bound.
//!
//! Event model (the element's): frame `i` arrives at `i / fps`; its device result is known at
//! once; the policy's `Send` at time `t` hands the frame to the encoder (`encode_ms` of that
//! frame at that resolution), then its JPEG enters the uplink, a [`LinkQueue`] driven by the
//! Mahimahi trace; the request reaches the server one-way delay (`rtt/2`) after its last byte
//! crosses, takes `server_ms`, and the answer returns after another `rtt/2`. An answer after the
//! frame's deadline is dropped (the frame leaves with its device label: a deadline miss). Frames
//! leave in order through the element's [`HoldQueue`] (on virtual time): frame `i` leaves when it
//! is resolved and frame `i − 1` has left; answers are reused as the element's output reuses
//! them ([`AnswerReuse::leave`]), and answers and RTT reach the planner as in the element
//! ([`feed_answer`]).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use serde::Serialize;

use super::clock::VirtualClock;
use super::hold::{HoldQueue, Outcome};
use super::merge::{MergeModel, server_label_wins};
use super::planner::{Action, AnswerIn, FrameIn, Planner, feed_answer};
use super::reliability::ArrivalReliability;
use super::reuse::{AnswerReuse, FrameAnswer};
use super::sender::{Crossing, Sender};
use crate::profile::Profile;
use crate::trace::{LinkQueue, MTU, Trace};

/// Answer reuse in a replay ([`super::reuse`]): the window, and the profile that says how likely
/// an answer is right and, by its merge model, which label an answer leaves with (the replay's
/// [`SimConfig::merge`] must be that same model: [`Profile::merged_by`]).
#[derive(Debug, Clone, Copy)]
pub struct SimReuse<'a> {
    pub window_ms: f64,
    pub profile: &'a Profile,
    /// How conservatively answers are valued ([`AnswerReuse::with_gain_z`]).
    pub gain_z: f64,
}

/// What is known about one frame (measured once, replayed under every policy).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimFrame {
    pub confidence: f64,
    pub raw_confidence: f64,
    pub device_correct: bool,
    /// The device's top-1 and the true class (answer reuse compares them with server labels).
    pub device_class: i32,
    pub truth: i32,
    /// Per resolution, in the policy's resolution order.
    pub server: Vec<SimServer>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimServer {
    pub bytes: u32,
    pub correct: bool,
    /// The server's top-1, and its probability (the server model's own confidence).
    pub class: i32,
    pub score: f32,
    pub encode_ms: f64,
    pub server_ms: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub fps: f64,
    pub deadline_ms: f64,
    pub rtt_ms: f64,
    /// Drop-tail queue in front of the uplink.
    pub queue_bytes: u64,
    /// Per-request bytes on top of the JPEG: the request header and the QUIC stream set-up.
    pub overhead_bytes: u32,
    /// The transport's congestion window: how much of our requests may be in the bottleneck at
    /// once; what waits behind it is withdrawn when a request is cancelled at its deadline
    /// ([`super::sender`]; `u64::MAX`: all of it goes on the path at once, nothing is withdrawn).
    pub send_window_bytes: u64,
    /// Which label an answer that disagrees with the device leaves with
    /// ([`super::merge`]; `None`: the server's, always).
    pub merge: Option<MergeModel>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SimResult {
    pub accuracy: f64,
    pub deadline_miss_rate: f64,
    pub offload_ratio: f64,
    /// Mean short side of offloaded frames (0 when none).
    pub mean_resolution: f64,
    /// Bytes of the offloaded frames' requests.
    pub bytes: u64,
    /// Of those, what never went on the path: cancelled at the deadline while still being
    /// encoded or waiting behind the transport's window.
    pub withdrawn_bytes: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Share of frames that left with a reused earlier answer.
    pub reuse_ratio: f64,
    /// Per frame: the short side it was sent at (0 = kept), for plots.
    #[serde(skip)]
    pub sent_at: Vec<u32>,
    /// Per frame: sent and answered by its deadline.
    #[serde(skip)]
    pub answered: Vec<bool>,
    /// The planner's sends binned by the arrival probability they were planned with, and how
    /// many of each arrived in time; only for a planner that logs them
    /// ([`Planner::arrival_log`]: `cbo eval` asks the estimated-link `cbo` policies to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrival: Option<ArrivalReliability>,
}

impl SimResult {
    /// A result with only its accuracy and miss rate set (for tests of what reads them).
    #[cfg(test)]
    pub(crate) fn scored(accuracy: f64, deadline_miss_rate: f64) -> Self {
        Self {
            accuracy,
            deadline_miss_rate,
            ..Default::default()
        }
    }
}

#[derive(PartialEq)]
struct Pending {
    at: f64,
    id: u64,
    bytes: f64,
    server_ms: f64,
    /// No answer by the deadline: the element's client gives up then and reports a failure.
    failed: bool,
}

impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on time.
        other.at.total_cmp(&self.at).then(other.id.cmp(&self.id))
    }
}

/// Bytes a request of a `jpeg`-byte image puts on the uplink: the JPEG and the replay's request
/// overhead, in QUIC datagrams with their headers, as the planners count them
/// ([`super::planner::wire_bytes`]; the relay, like Mahimahi, carries whole IP packets).
pub fn wire_bytes(jpeg: u32, cfg: &SimConfig) -> u64 {
    use super::planner::{DATAGRAM_OVERHEAD_BYTES, DATAGRAM_PAYLOAD_BYTES};
    let payload = jpeg as u64 + cfg.overhead_bytes as u64;
    payload + payload.div_ceil(DATAGRAM_PAYLOAD_BYTES as u64) * DATAGRAM_OVERHEAD_BYTES as u64
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Replays `planner` over `frames` on `trace`, reusing answers as [`SimReuse`] says.
pub fn simulate(
    planner: &mut dyn Planner,
    frames: &[SimFrame],
    trace: &Trace,
    cfg: &SimConfig,
    reuse: Option<SimReuse<'_>>,
) -> SimResult {
    let n = frames.len();
    let shorts = planner.resolutions().to_vec();
    let mut sender = Sender::new(
        LinkQueue::new(trace.clone(), cfg.queue_bytes),
        cfg.send_window_bytes,
    );
    let mut answers: BinaryHeap<Pending> = BinaryHeap::new();
    // Requests being encoded: (ready at ms, frame).
    let mut encoding: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    // Sent frames whose last byte is not on the path yet (encoding or in the sender): cancelled
    // at their deadline.
    let mut open: Vec<u64> = Vec::new();
    // Per frame: resolved at, correct, sent resolution index.
    let mut resolved: Vec<Option<(f64, bool)>> = vec![None; n];
    let mut sent: Vec<Option<usize>> = vec![None; n];
    let mut missed = 0usize;
    let mut bytes_total = 0u64;
    let mut withdrawn = 0u64;
    let arrival = |i: usize| i as f64 * 1000.0 / cfg.fps;
    let deadline = |i: usize| arrival(i) + cfg.deadline_ms;
    let failed_at_deadline = |id: u64| Pending {
        at: deadline(id as usize),
        id,
        bytes: 0.0,
        server_ms: 0.0,
        failed: true,
    };
    // A request whose last byte the path has taken: answered one RTT and the server's time
    // after that byte crosses, or, if that is after the deadline (or the queue dropped it),
    // failed at the deadline.
    let on_path = |crossed: Vec<Crossing>,
                   sent: &[Option<usize>],
                   open: &mut Vec<u64>,
                   answers: &mut BinaryHeap<Pending>| {
        for c in crossed {
            open.retain(|&id| id != c.id);
            let i = c.id as usize;
            let s = frames[i].server[sent[i].expect("only sent frames are on the path")];
            let at = c
                .last_byte_ms
                .map(|done| done as f64 + cfg.rtt_ms + s.server_ms)
                .filter(|&at| at <= deadline(i));
            answers.push(match at {
                Some(at) => Pending {
                    at,
                    id: c.id,
                    // The element reports the JPEG's size; the planner adds the overhead.
                    bytes: s.bytes as f64,
                    server_ms: s.server_ms,
                    failed: false,
                },
                None => failed_at_deadline(c.id),
            });
        }
    };
    let mut next_frame = 0usize;
    let mut now = 0.0f64;
    loop {
        let now_ms = now.ceil() as u64;
        let t_frame = (next_frame < n).then(|| arrival(next_frame));
        let t_answer = answers.peek().map(|p| p.at);
        let t_wake = planner.next_wakeup().map(|w| w.max(now + 0.5));
        let t_encoded = encoding.peek().map(|Reverse((at, _))| *at as f64);
        let t_room = sender.next_room_ms(now_ms).map(|t| t as f64);
        let t_cancel = open
            .iter()
            .map(|&id| deadline(id as usize))
            .min_by(f64::total_cmp);
        let Some(t) = [t_frame, t_answer, t_wake, t_encoded, t_room, t_cancel]
            .into_iter()
            .flatten()
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
        else {
            break;
        };
        now = now.max(t);
        let now_ms = now.ceil() as u64;
        if t_frame == Some(t) {
            let i = next_frame;
            next_frame += 1;
            planner.on_frame(FrameIn {
                id: i as u64,
                arrival_ms: t,
                deadline_ms: deadline(i),
                confidence: frames[i].confidence,
                raw_confidence: frames[i].raw_confidence,
                class: frames[i].device_class,
                // The element encodes every undecided frame at the smallest resolution too.
                small_jpeg_bytes: frames[i].server.first().map(|s| s.bytes as f64),
            });
        }
        // At its deadline the client gives up on a request not yet answered: one still being
        // encoded never goes out, one still partly in the sender is cancelled (its stream
        // reset) and what is left of it is withdrawn; the frame leaves with its device label.
        let mut k = 0;
        while k < open.len() {
            let id = open[k];
            if deadline(id as usize) <= now {
                open.swap_remove(k);
                withdrawn += if encoding.iter().any(|Reverse((_, e))| *e == id) {
                    let i = id as usize;
                    wire_bytes(frames[i].server[sent[i].expect("sent")].bytes, cfg)
                } else {
                    sender.cancel(id)
                };
                answers.push(failed_at_deadline(id));
            } else {
                k += 1;
            }
        }
        while let Some(&Reverse((at, id))) = encoding.peek() {
            if at > now_ms {
                break;
            }
            encoding.pop();
            if open.contains(&id) {
                let i = id as usize;
                let s = frames[i].server[sent[i].expect("only sent frames are encoded")];
                let crossed = sender.submit(at, id, wire_bytes(s.bytes, cfg));
                on_path(crossed, &sent, &mut open, &mut answers);
            }
        }
        let crossed = sender.pump(now_ms);
        on_path(crossed, &sent, &mut open, &mut answers);
        while answers.peek().is_some_and(|p| p.at <= now) {
            let p = answers.pop().expect("peeked");
            let i = p.id as usize;
            if p.failed {
                planner.on_failure(p.id, p.at);
                continue;
            }
            let r = sent[i].expect("answers are for sent frames");
            resolved[i] = Some((p.at, frames[i].server[r].correct));
            feed_answer(
                planner,
                AnswerIn {
                    id: p.id,
                    now_ms: p.at,
                    bytes: p.bytes,
                    server_ms: p.server_ms,
                },
                Some(cfg.rtt_ms),
            );
        }
        for (id, action) in planner.poll(now) {
            let i = id as usize;
            match action {
                Action::Keep => resolved[i] = Some((now, frames[i].device_correct)),
                Action::Send { resolution } => {
                    let s = frames[i].server[resolution];
                    bytes_total += wire_bytes(s.bytes, cfg);
                    sent[i] = Some(resolution);
                    open.push(id);
                    encoding.push(Reverse(((now + s.encode_ms).ceil() as u64, id)));
                }
            }
        }
    }
    // Frames leave in order through the element's hold queue: a kept frame once it is decided,
    // an answered one with its answer, one sent but not answered in time at its deadline with
    // the device label; a frame the policy never decided (a policy bug) counts as wrong and late.
    let mut right = 0usize;
    let mut reused = 0usize;
    let mut latencies = Vec::with_capacity(n);
    let mut reuse_state = reuse.map(|r| {
        // One merge rule: the one the reuse profile's merged accuracies assume, which must be
        // the one deciding the answered frames themselves (`Profile::merged_by`).
        debug_assert_eq!(cfg.merge, r.profile.merge, "reuse and replay merge alike");
        (
            AnswerReuse::new(r.window_ms)
                .with_gain_z(r.gain_z)
                .with_merge(r.profile.merge),
            r.profile,
        )
    });
    let mut leave = |i: usize, at: f64, outcome: Outcome<bool>, missed: &mut usize| {
        let f = &frames[i];
        // An answered frame whose answer lost to the device's label ([`Merge`]) leaves as if it
        // had stayed, and its answer labels no frame after it.
        let overruled = matches!(outcome, Outcome::Answered(_))
            && sent[i].is_some_and(|r| {
                let s = f.server[r];
                !server_label_wins(
                    cfg.merge.as_ref(),
                    f.device_class,
                    f.confidence,
                    s.class,
                    s.score as f64,
                    shorts[r],
                )
            });
        let mut correct = match outcome {
            Outcome::Answered(_) if overruled => f.device_correct,
            Outcome::Answered(correct) => correct,
            Outcome::Ready => f.device_correct,
            _ if sent[i].is_some() => {
                *missed += 1;
                f.device_correct
            }
            _ => false,
        };
        if let Some((state, profile)) = &mut reuse_state {
            if overruled {
                state.reset();
            }
            let answer = (matches!(outcome, Outcome::Answered(_)) && !overruled)
                .then(|| {
                    sent[i].map(|r| {
                        let s = f.server[r];
                        FrameAnswer {
                            label: s.class,
                            resolution: r,
                            class: s.class,
                            score: s.score as f64,
                        }
                    })
                })
                .flatten();
            if let Some(u) = state.leave(profile, arrival(i), f.device_class, f.confidence, answer)
            {
                correct = u.label == f.truth;
                reused += 1;
            }
        }
        right += usize::from(correct);
        latencies.push(at - arrival(i));
    };
    // Arrivals and resolutions in time order (an arrival before what happens to it at the same
    // time).
    let mut events: Vec<(f64, u8, usize)> = (0..n).map(|i| (arrival(i), 0, i)).collect();
    events.extend(
        resolved
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|(at, _)| (at, 1, i))),
    );
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut hold: HoldQueue<usize, bool, VirtualClock> = HoldQueue::default();
    let mut pop_until =
        |hold: &mut HoldQueue<usize, bool, VirtualClock>, t: f64, missed: &mut usize| {
            // Deadlines before `t` first, each at its own time.
            while let Some(d) = hold.next_deadline().filter(|&d| d < t) {
                while let Some((i, outcome)) = hold.pop(d) {
                    leave(i, d, outcome, missed);
                }
            }
            while let Some((i, outcome)) = hold.pop(t) {
                leave(i, t, outcome, missed);
            }
        };
    for (t, kind, i) in events {
        pop_until(&mut hold, t, &mut missed);
        if kind == 0 {
            hold.push_waiting(i, i as u64, deadline(i));
        } else {
            match (sent[i], resolved[i]) {
                (Some(_), Some((_, correct))) => {
                    hold.answer(i as u64, correct);
                }
                _ => {
                    hold.release(i as u64, |_| {});
                }
            }
        }
        pop_until(&mut hold, t, &mut missed);
    }
    pop_until(&mut hold, f64::INFINITY, &mut missed);
    latencies.sort_by(f64::total_cmp);
    let offloaded: Vec<u32> = sent.iter().flatten().map(|&r| shorts[r]).collect();
    let arrived = |i: usize| sent[i].is_some() && resolved[i].is_some();
    let arrival = planner.arrival_log().map(|log| {
        ArrivalReliability::of(log, |id| {
            usize::try_from(id).is_ok_and(|i| i < n && arrived(i))
        })
    });
    SimResult {
        accuracy: right as f64 / n.max(1) as f64,
        deadline_miss_rate: missed as f64 / n.max(1) as f64,
        offload_ratio: offloaded.len() as f64 / n.max(1) as f64,
        mean_resolution: if offloaded.is_empty() {
            0.0
        } else {
            offloaded.iter().map(|&s| s as f64).sum::<f64>() / offloaded.len() as f64
        },
        bytes: bytes_total,
        withdrawn_bytes: withdrawn,
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        reuse_ratio: reused as f64 / n.max(1) as f64,
        sent_at: sent.iter().map(|s| s.map_or(0, |r| shorts[r])).collect(),
        answered: (0..n).map(arrived).collect(),
        arrival,
    }
}

/// The clairvoyant upper bound: knowing which frames the device gets wrong, what the server
/// answers at every resolution and the link's future capacity, the most frames that can be right.
///
/// Exact by dynamic programming over frames in arrival order with state "when the uplink is next
/// free" (1 ms steps, clamped to the current arrival: an idle link's past capacity is lost).
/// Sending in arrival order is optimal for a FIFO link because deadlines are in arrival order.
/// Two relaxations keep it an upper bound of the simulation: a transfer takes
/// `max(1, floor(bytes / 1500))` delivery opportunities (the simulation's partial opportunities
/// can only be slower), and states are rounded down.
///
/// With `reuse_window_ms` it bounds the policies that reuse answers ([`super::reuse`]): the state
/// also holds the latest answered frame of the current run of equal device labels, and a frame
/// that is not sent counts as right if the device is right *or* the server's label for that
/// answered frame at *any* resolution is right for it (the real rule picks one of the two labels
/// and the resolution that was sent, so this can only over-count).
pub fn clairvoyant(
    frames: &[SimFrame],
    shorts: &[u32],
    trace: &Trace,
    cfg: &SimConfig,
    reuse_window_ms: Option<f64>,
) -> SimResult {
    use std::collections::BTreeMap;
    const NO_SOURCE: u32 = u32::MAX;
    let n = frames.len();
    let arrival = |i: usize| i as f64 * 1000.0 / cfg.fps;
    // First frame of the run of equal device labels each frame belongs to.
    let mut run_start = vec![0usize; n];
    for i in 1..n {
        run_start[i] = if frames[i].device_class == frames[i - 1].device_class {
            run_start[i - 1]
        } else {
            i
        };
    }
    // Per frame: state (answered source frame, link free at ms) -> (frames right so far,
    // previous state, resolution sent).
    type Key = (u32, u64);
    type Layer = BTreeMap<Key, (u32, Key, Option<usize>)>;
    let mut layers: Vec<Layer> = Vec::with_capacity(n + 1);
    let mut first = BTreeMap::new();
    first.insert((NO_SOURCE, 0u64), (0u32, (NO_SOURCE, 0u64), None));
    layers.push(first);
    for (i, f) in frames.iter().enumerate() {
        let a = arrival(i);
        let a_ms = a.floor() as u64;
        let dl = a + cfg.deadline_ms;
        let mut next = Layer::new();
        let mut relax = |state: Key, value: u32, from: Key, choice: Option<usize>| {
            let e = next.entry(state).or_insert((0, from, choice));
            if value > e.0 || (value == e.0 && e.2.is_some() && choice.is_none()) {
                *e = (value, from, choice);
            }
        };
        for (&key, &(value, _, _)) in &layers[i] {
            let (mut source, state) = key;
            let usable = |j: u32| {
                reuse_window_ms.is_some_and(|w| {
                    j != NO_SOURCE && j as usize >= run_start[i] && a - arrival(j as usize) <= w
                })
            };
            if !usable(source) {
                source = NO_SOURCE;
            }
            let free = state.max(a_ms);
            let kept_right = f.device_correct
                || (source != NO_SOURCE
                    && frames[source as usize]
                        .server
                        .iter()
                        .any(|s| s.class == f.truth));
            relax((source, free), value + u32::from(kept_right), key, None);
            // Without reuse only a wrong device result is worth a transfer; with it, an answer
            // may also serve the frames after it.
            if kept_right && reuse_window_ms.is_none() {
                continue;
            }
            for (r, s) in f.server.iter().enumerate() {
                if !s.correct && reuse_window_ms.is_none() {
                    continue;
                }
                let bytes = wire_bytes(s.bytes, cfg);
                let start = free.max((a + s.encode_ms).floor() as u64);
                let k = trace.first_at_or_after(start) + (bytes / MTU).max(1) - 1;
                let done = trace.time_of(k);
                if done as f64 + cfg.rtt_ms + s.server_ms <= dl {
                    let new_source = if reuse_window_ms.is_some() {
                        i as u32
                    } else {
                        NO_SOURCE
                    };
                    relax(
                        (new_source, done),
                        value + u32::from(s.correct),
                        key,
                        Some(r),
                    );
                }
            }
        }
        // Dominance within a source: a later free time with no more frames right is useless.
        let mut pruned = BTreeMap::new();
        let mut best: Option<(u32, u32)> = None;
        for (&k, &v) in &next {
            if best.is_none_or(|(src, b)| src != k.0 || v.0 > b) {
                best = Some((k.0, v.0));
                pruned.insert(k, v);
            }
        }
        layers.push(pruned);
    }
    let (mut key, &(right, _, _)) = layers[n]
        .iter()
        .max_by_key(|(k, v)| (v.0, std::cmp::Reverse(k.1)))
        .map(|(k, v)| (*k, v))
        .unwrap_or(((NO_SOURCE, 0), &(0, (NO_SOURCE, 0), None)));
    let mut sent_at = vec![0u32; n];
    let mut bytes = 0u64;
    for i in (1..=n).rev() {
        let (_, from, choice) = layers[i][&key];
        if let Some(r) = choice {
            sent_at[i - 1] = shorts[r];
            bytes += wire_bytes(frames[i - 1].server[r].bytes, cfg);
        }
        key = from;
    }
    let offloaded: Vec<u32> = sent_at.iter().copied().filter(|&s| s > 0).collect();
    SimResult {
        accuracy: right as f64 / n.max(1) as f64,
        deadline_miss_rate: 0.0,
        offload_ratio: offloaded.len() as f64 / n.max(1) as f64,
        mean_resolution: if offloaded.is_empty() {
            0.0
        } else {
            offloaded.iter().map(|&s| s as f64).sum::<f64>() / offloaded.len() as f64
        },
        bytes,
        withdrawn_bytes: 0,
        latency_p50_ms: f64::NAN,
        latency_p99_ms: f64::NAN,
        reuse_ratio: 0.0,
        answered: sent_at.iter().map(|&s| s > 0).collect(),
        sent_at,
        // It knows what arrives: no probabilities to check.
        arrival: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::rules::{Rule, RulePlanner};
    use crate::profile::{FrameObservation, Profile, ServerObservation};

    /// `cbo eval` replays the model results from its cache (`--cache`, JSON) exactly as it
    /// replays them in the run that computed them. serde_json's default float parser may miss
    /// by an ulp (371 of the 27 347 floats of the bottle clip's cache), and an ulp in one
    /// frame's confidence can flip one decision and, through the link time it takes, the rest of
    /// a trace: a fresh run of the dev grid differed from its cached rerun in 6 of 168
    /// settings, by up to 0.9 points. Hence serde_json's `float_roundtrip` feature.
    #[test]
    fn model_results_round_trip_through_json_bit_exactly() {
        // Values like the cache's: confidences and times of 17 significant digits, f32 scores.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let frames: Vec<SimFrame> = (0..2000)
            .map(|i| SimFrame {
                confidence: next(),
                raw_confidence: next(),
                device_correct: i % 2 == 0,
                device_class: i,
                truth: i,
                server: (0..3)
                    .map(|_| SimServer {
                        bytes: 4000,
                        correct: true,
                        class: i,
                        score: next() as f32,
                        encode_ms: next() * 3.0,
                        server_ms: next() * 40.0,
                    })
                    .collect(),
            })
            .collect();
        let text = serde_json::to_string(&frames).unwrap();
        let back: Vec<SimFrame> = serde_json::from_str(&text).unwrap();
        let bits = |f: &SimFrame| {
            let mut v = vec![f.confidence.to_bits(), f.raw_confidence.to_bits()];
            for s in &f.server {
                v.extend([
                    u64::from(s.score.to_bits()),
                    s.encode_ms.to_bits(),
                    s.server_ms.to_bits(),
                ]);
            }
            v
        };
        let differing = frames
            .iter()
            .zip(&back)
            .filter(|(a, b)| bits(a) != bits(b))
            .count();
        assert_eq!(differing, 0, "frames whose values changed through JSON");
    }

    /// A frame of true class `truth`: the device says `device_class` with `confidence`; the
    /// server is right at the large resolution only.
    fn frame(truth: i32, device_class: i32, confidence: f64) -> SimFrame {
        SimFrame {
            confidence,
            raw_confidence: confidence,
            device_correct: device_class == truth,
            device_class,
            truth,
            server: vec![
                SimServer {
                    bytes: 4000,
                    correct: false,
                    class: -1,
                    score: 0.3,
                    encode_ms: 1.0,
                    server_ms: 20.0,
                },
                SimServer {
                    bytes: 12000,
                    correct: true,
                    class: truth,
                    score: 0.9,
                    encode_ms: 1.0,
                    server_ms: 20.0,
                },
            ],
        }
    }

    /// Frames alternating sure-and-right / unsure-and-wrong (every frame its own scene).
    fn frames(n: usize) -> Vec<SimFrame> {
        (0..n as i32)
            .map(|i| {
                if i % 2 == 1 {
                    frame(i, 10_000 + i, 0.2)
                } else {
                    frame(i, i, 0.95)
                }
            })
            .collect()
    }

    /// Scenes of ten alike frames each, on all of which the device is unsure and wrong.
    fn scenes(n: usize) -> Vec<SimFrame> {
        (0..n as i32)
            .map(|i| frame(i / 10, 10_000 + i / 10, 0.2))
            .collect()
    }

    fn profile_of(frames: &[SimFrame]) -> Profile {
        let obs: Vec<FrameObservation> = frames
            .iter()
            .map(|f| FrameObservation {
                device_confidence: f.confidence,
                raw_confidence: f.raw_confidence,
                device_correct: f.device_correct,
                device_class: f.device_class,
                truth: f.truth,
                server: f
                    .server
                    .iter()
                    .map(|s| ServerObservation {
                        jpeg_bytes: s.bytes,
                        server_correct: s.correct,
                        server_class: s.class,
                        server_score: s.score,
                        encode_us: 1000,
                        decode_us: 0,
                        inference_us: 20_000,
                    })
                    .collect(),
            })
            .collect();
        let m = crate::profile::ModelRef {
            file: "m".into(),
            sha256: "0".into(),
            input: None,
        };
        Profile::build(
            crate::profile::ProfileInputs {
                device_model: m.clone(),
                server_model: m,
                calibration: None,
                jpeg_quality: 80,
                encoder: "t".into(),
                fitted_on: crate::profile::FittedOn {
                    source: "synthetic".into(),
                    n: obs.len(),
                    frame_width: 480,
                    frame_height: 360,
                },
                resolutions: vec![(96, 128, 96), (224, 298, 224)],
            },
            &obs,
        )
        .unwrap()
    }

    fn cfg() -> SimConfig {
        SimConfig {
            fps: 10.0,
            deadline_ms: 500.0,
            rtt_ms: 40.0,
            queue_bytes: 10_000_000,
            overhead_bytes: 0,
            send_window_bytes: crate::offload::sender::MEASURED_WINDOW_BYTES,
            merge: None,
        }
    }

    #[test]
    fn policies_on_a_fast_and_a_slow_link() {
        let f = frames(200);
        let p = profile_of(&f);
        let fast = Trace::constant(8e6);
        let local = simulate(
            &mut RulePlanner::new(Rule::Local, &p, 224, 8e6, 40.0),
            &f,
            &fast,
            &cfg(),
            None,
        );
        assert_eq!(local.accuracy, 0.5);
        assert_eq!(local.offload_ratio, 0.0);
        let cbo = simulate(
            &mut super::super::planner::CboPlanner::new(p.clone(), 8e6, 40.0),
            &f,
            &fast,
            &cfg(),
            None,
        );
        assert_eq!(cbo.accuracy, 1.0, "{cbo:?}");
        assert_eq!(cbo.deadline_miss_rate, 0.0);
        // Every unsure frame goes at 224 (spare capacity may carry sure frames too: the profile
        // says the server is right on them slightly more often than their confidence).
        assert!(cbo.offload_ratio >= 0.5, "{cbo:?}");
        assert!(cbo.sent_at.iter().skip(1).step_by(2).all(|&s| s == 224));
        let bound = clairvoyant(&f, &[96, 224], &fast, &cfg(), None);
        assert_eq!(bound.accuracy, 1.0);
        // 0.5 Mbit/s: a 12 kB frame takes 192 ms; one every 200 ms at 10 fps / 2 → link nearly
        // full. `all` at 224 floods the link and misses deadlines; cbo does not.
        let slow = Trace::constant(0.5e6);
        let all = simulate(
            &mut RulePlanner::new(Rule::All, &p, 224, 0.5e6, 40.0),
            &f,
            &slow,
            &cfg(),
            None,
        );
        assert!(all.deadline_miss_rate > 0.3, "{all:?}");
        let cbo = simulate(
            &mut super::super::planner::CboPlanner::new(p.clone(), 0.5e6, 40.0),
            &f,
            &slow,
            &cfg(),
            None,
        );
        assert!(cbo.deadline_miss_rate <= 0.01, "{cbo:?}");
        assert!(cbo.accuracy > all.accuracy, "{cbo:?} vs {all:?}");
        let bound = clairvoyant(&f, &[96, 224], &slow, &cfg(), None);
        assert!(bound.accuracy >= cbo.accuracy, "{bound:?} vs {cbo:?}");
        assert!(bound.accuracy >= local.accuracy);
        // Frames leave in order within the deadline.
        assert!(cbo.latency_p99_ms <= 500.0 + 1.0);
    }

    #[test]
    fn a_guess_that_lets_nothing_arrive_is_probed_not_believed() {
        // The initial guess, 0.04 Mbit/s, says no answer (4 or 12 kB) can arrive in 500 ms; the
        // link carries 8 Mbit/s. Believed, the guess kept every frame on the device for the
        // whole stream (no send, so no record to replace it): accuracy 0.5, nothing offloaded.
        let f = frames(200);
        let p = profile_of(&f);
        let fast = Trace::constant(8e6);
        let cbo = simulate(
            &mut super::super::planner::CboPlanner::new(p.clone(), 0.04e6, 40.0),
            &f,
            &fast,
            &cfg(),
            None,
        );
        // One probe, then the record shows the link: every unsure frame from the second on.
        assert!(cbo.accuracy >= 0.99, "{cbo:?}");
        assert_eq!(cbo.deadline_miss_rate, 0.0);
        assert!(cbo.sent_at.iter().skip(3).step_by(2).all(|&s| s == 224));
        // FastVA, on the same estimate, alike.
        let fastva = simulate(
            &mut RulePlanner::new(Rule::FastVa, &p, 224, 0.04e6, 40.0),
            &f,
            &fast,
            &cfg(),
            None,
        );
        assert!(fastva.offload_ratio >= 0.99, "{fastva:?}");
        assert_eq!(fastva.deadline_miss_rate, 0.0);
    }

    #[test]
    fn reusing_answers_serves_alike_frames_on_a_slow_link() {
        // One 12 kB transfer per 200 ms fits 0.5 Mbit/s; the scenes have ten frames per second.
        let f = scenes(300);
        let p = profile_of(&f);
        let slow = Trace::constant(0.5e6);
        // The cbo planner's answers merge by the profile's model, as in the element.
        let merged = SimConfig {
            merge: p.merge,
            ..cfg()
        };
        let reuse = SimReuse {
            window_ms: 1000.0,
            profile: &p,
            gain_z: crate::offload::planner::DEFAULT_PARAMS.gain_z,
        };
        let plain = simulate(
            &mut super::super::planner::CboPlanner::new(p.clone(), 0.5e6, 40.0),
            &f,
            &slow,
            &merged,
            None,
        );
        assert_eq!(plain.reuse_ratio, 0.0);
        assert!(plain.accuracy < 0.6, "{plain:?}");
        let reusing = simulate(
            &mut super::super::planner::CboPlanner::new(p.clone(), 0.5e6, 40.0).with_reuse(1000.0),
            &f,
            &slow,
            &merged,
            Some(reuse),
        );
        // The first frame of each scene is sent; its answer labels the rest.
        assert!(reusing.accuracy > 0.85, "{reusing:?}");
        assert!(reusing.reuse_ratio > 0.6, "{reusing:?}");
        assert!(reusing.offload_ratio < plain.offload_ratio, "{reusing:?}");
        assert!(reusing.deadline_miss_rate <= 0.01, "{reusing:?}");
        // The reuse bound bounds it, and is at least the bound without reuse.
        let bound = clairvoyant(&f, &[96, 224], &slow, &cfg(), Some(1000.0));
        let bound_plain = clairvoyant(&f, &[96, 224], &slow, &cfg(), None);
        assert!(
            bound.accuracy >= reusing.accuracy,
            "{bound:?} vs {reusing:?}"
        );
        assert!(bound.accuracy >= bound_plain.accuracy);
        assert!(bound_plain.accuracy >= plain.accuracy);
        // Alternating scenes (every frame its own): nothing to reuse, nothing changes.
        let f = frames(200);
        let p = profile_of(&f);
        let merged = SimConfig {
            merge: p.merge,
            ..cfg()
        };
        let a = simulate(
            &mut super::super::planner::CboPlanner::new(p.clone(), 0.5e6, 40.0),
            &f,
            &slow,
            &merged,
            None,
        );
        let b = simulate(
            &mut super::super::planner::CboPlanner::new(p.clone(), 0.5e6, 40.0).with_reuse(1000.0),
            &f,
            &slow,
            &merged,
            Some(SimReuse {
                window_ms: 1000.0,
                profile: &p,
                gain_z: crate::offload::planner::DEFAULT_PARAMS.gain_z,
            }),
        );
        assert_eq!(b.reuse_ratio, 0.0);
        assert_eq!(a.accuracy, b.accuracy);
    }

    /// A scripted uplink: `(until_ms, packets_per_second)` phases (0 = outage), one period.
    fn scripted(phases: &[(u64, u64)]) -> Trace {
        let mut lines = Vec::new();
        let mut from = 0;
        for &(until, pps) in phases {
            if let Some(gap) = 1000u64.checked_div(pps) {
                lines.extend((from / gap + 1..=until / gap).map(|k| (k * gap).to_string()));
            }
            from = until;
        }
        // The period ends with the last phase.
        lines.push(from.to_string());
        Trace::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn a_scripted_link_steps_down_goes_out_and_comes_back() {
        // Unsure frames (every other one) that the server gets right at 224 always and at 96
        // half the time; sure frames stay whatever happens.
        let f: Vec<SimFrame> = (0..700i32)
            .map(|i| {
                if i % 2 == 0 {
                    // The server is no better on these (wrong on one in ten).
                    let mut fr = frame(i, i, 0.95);
                    fr.server[1].correct = i % 20 != 0;
                    fr.server[1].class = if i % 20 != 0 { i } else { -1 };
                    return fr;
                }
                let mut fr = frame(i, 10_000 + i, 0.2);
                fr.server[0].correct = i % 4 == 1;
                fr.server[0].class = if i % 4 == 1 { i } else { -1 };
                fr
            })
            .collect();
        let p = profile_of(&f);
        // 0-20 s: 4 Mbit/s; 20-40 s: 0.24 Mbit/s (12 kB would take 600 ms); 40-50 s: outage;
        // 50-70 s: 4 Mbit/s again.
        let link = scripted(&[(20_000, 333), (40_000, 20), (50_000, 0), (70_000, 333)]);
        let r = simulate(
            &mut super::super::planner::CboPlanner::new(p.clone(), 4e6, 40.0),
            &f,
            &link,
            &cfg(),
            None,
        );
        let phase = |from_s: usize, to_s: usize| &r.sent_at[from_s * 10..to_s * 10];
        let sent = |s: &[u32]| s.iter().filter(|&&x| x > 0).count();
        let mean_res = |s: &[u32]| {
            let v: Vec<f64> = s.iter().filter(|&&x| x > 0).map(|&x| x as f64).collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        // Sure frames are never sent.
        assert!(r.sent_at.iter().step_by(2).all(|&s| s == 0));
        // Fast: every unsure frame, at 224.
        assert!(sent(phase(1, 20)) >= 90, "{:?}", phase(1, 20));
        assert_eq!(mean_res(phase(1, 20)), 224.0);
        // Slow: only 96 fits the deadline.
        let slow = phase(22, 40);
        assert!(sent(slow) > 20, "{slow:?}");
        assert!(mean_res(slow) < 100.0, "{slow:?}");
        // Outage: a few probes, then fewer and fewer. The answered records from before it say
        // the link carries a small transfer, and each failure is one record more that says it
        // does not: probes go on (two at a time, the second sent before the first is known to
        // have failed) until the failures weigh more than the answers at the price of a miss;
        // later ones only as failures' memories (doubled for each failure of the outage) run out.
        let probes: Vec<usize> = phase(40, 50)
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 0)
            .map(|(i, _)| i)
            .collect();
        assert!(probes.len() <= 10, "{:?}", phase(40, 50));
        let bursts: Vec<usize> = probes
            .iter()
            .enumerate()
            .filter(|&(k, &i)| k == 0 || i - probes[k - 1] > 3)
            .map(|(_, &i)| i)
            .collect();
        let gaps: Vec<usize> = bursts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 2, "{:?}", phase(40, 50));
        assert!(
            gaps.last() > Some(&(3 * gaps[0])),
            "probes at {probes:?} (in 100 ms from 40 s)"
        );
        assert!(
            probes.iter().filter(|&&i| i >= 50).count() <= 2,
            "probes at {probes:?} (in 100 ms from 40 s)"
        );
        // Back: it probes and offloads again, at 224.
        let back = phase(55, 70);
        assert!(sent(back) > 40, "{back:?}");
        assert!(mean_res(back) > 200.0);
        // Only frames sent when the link stepped down or went out missed: a change of regime
        // costs the few transfers it takes the record to show it (each failure is one record
        // among the answers): within 5 s of the step down, and from just before the outage.
        let missed: Vec<usize> = (0..f.len())
            .filter(|&i| r.sent_at[i] > 0 && !r.answered[i])
            .collect();
        assert!(
            missed
                .iter()
                .all(|&i| (200..250).contains(&i) || (395..500).contains(&i)),
            "missed {missed:?}"
        );
        assert!(missed.len() <= 15, "missed {missed:?}");
    }

    #[test]
    fn cancelled_transfers_free_the_link_in_the_simulator() {
        // `all` at 224 px (12 kB a frame, 10 frames/s, ~1 Mbit/s) on a 4 Mbit/s link that goes
        // out from 10 s to 18 s. The requests of the outage pile up in the sender. Put on the
        // path whole (no window), none can be withdrawn, and after the outage the frames wait
        // until ~1 MB of requests nobody waits for any more has crossed (2-3 s). Behind the
        // measured window, a request cancelled at its deadline withdraws what is still in the
        // sender, and the frames after the outage are answered at once.
        let f = frames(400);
        let p = profile_of(&f);
        let link = scripted(&[(10_000, 333), (18_000, 0), (40_000, 333)]);
        let run = |window: u64| {
            let cfg = SimConfig {
                send_window_bytes: window,
                ..cfg()
            };
            simulate(
                &mut RulePlanner::new(Rule::All, &p, 224, 4e6, 40.0),
                &f,
                &link,
                &cfg,
                None,
            )
        };
        let whole = run(u64::MAX);
        let windowed = run(crate::offload::sender::MEASURED_WINDOW_BYTES);
        let answered_after_outage =
            |r: &SimResult| r.answered[180..230].iter().filter(|&&a| a).count();
        assert_eq!(whole.withdrawn_bytes, 0);
        assert!(windowed.withdrawn_bytes > 50 * 12_000, "{windowed:?}");
        assert!(
            answered_after_outage(&whole) <= 35,
            "{:?}",
            &whole.answered[180..230]
        );
        assert!(
            answered_after_outage(&windowed) >= 48,
            "{:?}",
            &windowed.answered[180..230]
        );
        assert!(
            windowed.accuracy > whole.accuracy,
            "{windowed:?} vs {whole:?}"
        );
        // Before the outage the link keeps up: the window changes nothing.
        assert_eq!(whole.answered[..95], windowed.answered[..95]);
    }

    #[test]
    fn an_answer_the_server_is_less_sure_of_keeps_the_device_label() {
        // `all` at 96 px on a fast link: every frame is answered. The server is wrong on every
        // frame at 96 px (score 0.3); the device is right on the sure frames (0.95) and wrong on
        // the unsure ones (0.2).
        let f = frames(200);
        let p = profile_of(&f);
        let fast = Trace::constant(8e6);
        let run = |merge: Option<MergeModel>, reuse: bool| {
            let cfg = SimConfig { merge, ..cfg() };
            let p = Profile { merge, ..p.clone() };
            let mut planner = RulePlanner::new(Rule::All, &p, 96, 8e6, 40.0);
            let reuse = reuse.then_some(SimReuse {
                window_ms: 1000.0,
                profile: &p,
                gain_z: 0.0,
            });
            simulate(&mut planner, &f, &fast, &cfg, reuse)
        };
        let server = run(None, false);
        assert!(server.answered.iter().all(|&a| a));
        assert_eq!(server.accuracy, 0.0, "the server's label, always");
        // The sure frames keep their (right) device label; the unsure ones take the server's.
        let merged = run(Some(crate::offload::merge::SCORES), false);
        assert_eq!(merged.accuracy, 0.5);
    }

    #[test]
    fn an_overruled_answer_labels_no_frame_after_it() {
        // Scenes of ten frames the device gets right: the first unsure (0.2: `threshold` 0.5
        // sends it at 224 px), the rest surer (0.55: kept). The server is wrong on all of them
        // (score 0.3, above the first frame's 0.2, below the rest's 0.55), but the profile (from
        // other frames) promises it is right at 224 px on frames like the first, so
        // with `merge=server` its answer is reused for the rest of the scene.
        let p = profile_of(&frames(200));
        let f: Vec<SimFrame> = (0..200)
            .map(|i| {
                let scene = i / 10;
                let mut fr = frame(scene, scene, if i % 10 == 0 { 0.2 } else { 0.55 });
                fr.server[1].correct = false;
                fr.server[1].class = -1;
                fr.server[1].score = 0.3;
                fr
            })
            .collect();
        let run = |merge: Option<MergeModel>| {
            let cfg = SimConfig { merge, ..cfg() };
            let p = Profile { merge, ..p.clone() };
            let mut planner = RulePlanner::new(Rule::Threshold(0.5), &p, 224, 8e6, 40.0);
            let reuse = SimReuse {
                window_ms: 1000.0,
                profile: &p,
                gain_z: 0.0,
            };
            simulate(&mut planner, &f, &Trace::constant(8e6), &cfg, Some(reuse))
        };
        let server = run(None);
        assert!(server.reuse_ratio > 0.8, "{server:?}");
        assert!(server.accuracy < 0.1, "{server:?}");
        // `confidence`: the first frame of each scene takes the server's label (0.3 > 0.2), but
        // a frame sure of another label (0.55 > 0.3) keeps its own.
        let merged = run(Some(crate::offload::merge::SCORES));
        assert!(merged.accuracy >= 0.9, "{merged:?}");
    }

    /// A periodic uplink: `on_ms` at `pps` packets per second, then `off_ms` of nothing.
    fn on_off(on_ms: u64, off_ms: u64, pps: u64) -> Trace {
        let gap = 1000 / pps;
        let mut lines: Vec<String> = (1..=on_ms / gap).map(|k| (k * gap).to_string()).collect();
        lines.push((on_ms + off_ms).to_string());
        Trace::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn the_arrival_probability_is_calibrated_on_scripted_links() {
        // Every frame unsure and worth sending, so the planner sends whenever it dares; what it
        // predicted for each transfer is compared with what happened.
        let f: Vec<SimFrame> = (0..900i32).map(|i| frame(i, 10_000 + i, 0.2)).collect();
        let p = profile_of(&f);
        let links = [
            ("constant 1 Mbit/s", Trace::constant(1e6)),
            (
                "step down 4 -> 0.6 Mbit/s",
                scripted(&[(45_000, 333), (90_000, 50)]),
            ),
            (
                "outages",
                scripted(&[
                    (20_000, 333),
                    (30_000, 0),
                    (60_000, 200),
                    (70_000, 0),
                    (90_000, 333),
                ]),
            ),
            ("bursty on/off", on_off(400, 600, 500)),
        ];
        let (mut predicted, mut arrived, mut n) = (0.0, 0.0, 0usize);
        for (name, link) in &links {
            let mut planner =
                super::super::planner::CboPlanner::new(p.clone(), 1e6, 40.0).with_arrival_log();
            let r = simulate(&mut planner, &f, link, &cfg(), None);
            let log = planner.arrival_log().expect("asked for");
            // The replay's own diagram counts the same sends and arrivals.
            let diagram = r
                .arrival
                .as_ref()
                .expect("a logging planner gets a diagram");
            assert_eq!(diagram.sends(), log.len());
            let answered = log
                .iter()
                .filter(|&&(id, _)| r.answered[id as usize])
                .count();
            assert_eq!(diagram.arrived(), answered);
            assert!(log.len() > 30, "{name}: only {} sends", log.len());
            let (mut pr, mut ar) = (0.0, 0.0);
            // A transfer is made only where `P · gain > price · (1 − P)`; no gain exceeds 1, so
            // none goes at `P ≤ price / (1 + price)`.
            let price = planner.params().miss_price;
            for &(id, prob) in log {
                assert!(prob > price / (1.0 + price), "{name}: sent at {prob}");
                pr += prob;
                ar += f64::from(u8::from(r.answered[id as usize]));
            }
            let k = log.len() as f64;
            eprintln!(
                "{name}: {} sends, predicted {:.3}, arrived {:.3}",
                log.len(),
                pr / k,
                ar / k
            );
            // Per link the record is short and the link changes under it: the share that
            // arrives stays within 0.15 of what was predicted. The periodic on/off link is the
            // hard case: the record does not see the phase, and transfers sent late in an "on"
            // period miss (there: predicted ~0.94, arrived ~0.83).
            assert!(
                (ar / k - pr / k).abs() < 0.15,
                "{name}: predicted {} arrived {}",
                pr / k,
                ar / k
            );
            predicted += pr;
            arrived += ar;
            n += log.len();
        }
        let (predicted, arrived) = (predicted / n as f64, arrived / n as f64);
        assert!(
            (arrived - predicted).abs() < 0.05,
            "over {n} transfers: predicted {predicted:.3}, arrived {arrived:.3}"
        );
    }

    #[test]
    fn nothing_is_sent_when_the_device_is_better_at_every_resolution() {
        // The server is wrong wherever the device is right, and never right where it is wrong.
        let f: Vec<SimFrame> = (0..300i32)
            .map(|i| {
                let mut fr = if i % 2 == 0 {
                    frame(i, i, 0.9)
                } else {
                    frame(i, 10_000 + i, 0.2)
                };
                for s in &mut fr.server {
                    s.correct = false;
                    s.class = -1;
                }
                fr
            })
            .collect();
        let p = profile_of(&f);
        for reuse in [None, Some(1000.0)] {
            let mut planner = super::super::planner::CboPlanner::new(p.clone(), 50e6, 40.0);
            if let Some(w) = reuse {
                planner = planner.with_reuse(w);
            }
            let r = simulate(&mut planner, &f, &Trace::constant(50e6), &cfg(), None);
            assert_eq!(r.offload_ratio, 0.0, "{r:?}");
            assert_eq!(r.accuracy, 0.5);
        }
    }
}
