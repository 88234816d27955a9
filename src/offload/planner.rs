//! Offloading policies as sans-IO state machines: feed them frames, answers and the clock, read
//! actions. The element (`policy=cbo`) and the trace-driven simulator (`cbo eval`) drive the same
//! objects, so what the simulation measures is what the element does.
//!
//! Time is in milliseconds as `f64` on the caller's clock.
//!
//! # The CBO formulation
//!
//! Each frame `i` arrives at `a_i` with calibrated device confidence `p_i` (the probability the
//! device is right) and must leave by `d_i = a_i + D`. Keeping it is worth `p_i`. Offloading it
//! at resolution `r` costs `b_r` bytes on the uplink ([`wire_bytes`] of the profile's JPEG size at
//! `r`, scaled by the frame's own JPEG size at the smallest resolution when the caller measured
//! it, [`FrameIn::small_jpeg_bytes`], and by this stream's actual/predicted ratio) and, if its
//! answer arrives by `d_i`, is worth `A(p_i, r) = p_i + G(p_i, r)`: the profile's gain over the
//! device for frames of that confidence (of the label the frame leaves with: merged by the
//! profile's merge model when the stream merges), at its lower bound
//! ([`Profile::answer_accuracy`], [`CboParams::gain_z`]). Its answer arrives at
//! `c + RTT + s_r` where `c` is when its last byte crosses the uplink and `s_r` the server time
//! (the profile's, scaled by what this connection's answers report). The uplink is one FIFO
//! (QUIC streams share one congestion window), so frames are sent in deadline (= arrival)
//! order.
//!
//! Whether an answer arrives is a probability, not a margin: `P` that the bytes ahead of it plus
//! its own cross the uplink within `d_i − now − (RTT + s_r + encode + margin)`, from this
//! connection's delivery record ([`LinkEstimate::arrival_probability`]). A transfer is worth
//! `P · (A − p_i) − λ · (1 − P)` expected right labels: a miss leaves the device label, takes
//! its link time from later frames (charged at the record's median throughput) and costs `λ`,
//! the price of a deadline miss ([`CboParams::miss_price`]), the multiplier of the miss-rate
//! budget; it is planned only where that is positive.
//!
//! The planner maximises the expected right labels over the frames waiting for a decision, a
//! multiple-choice knapsack solved exactly by dynamic programming over (frame, link time in
//! [`TIME_STEP_MS`] steps) in arrival order, with `P` tabulated per start step:
//! `O(n · H/step · |R|)` for `n` waiting frames and a horizon `H ≤ D`; with `D = 1 s`, 10 frames
//! waiting and 7 resolutions that is ~35 k cell updates, tens of µs. It commits only the first
//! frame of the plan, and only when the uplink is about to be free (so a better frame arriving
//! meanwhile can still take the link), and re-plans at every arrival, answer and link-free time.
//! Frames that no option can serve at a positive worth any more, or that no option improves,
//! are kept on the device at once.
//!
//! Throughput records come from answers: request `k` finished its upload at
//! `c_k = answer_k − RTT − s_k`, and occupied the link for `c_k − max(send_k, c_{k−1})`, so
//! `bytes / that` is a record; queueing behind our own earlier requests is not counted as
//! slowness. A request with no answer by its deadline gives an upper bound the same way, which
//! carries a transfer with the share of the rates below it that would
//! (`link_estimate::carried`) and describes the link only for
//! [`CboParams::failure_memory_ms`] (longer for each further failure of the same outage).
//!
//! With answer reuse ([`super::reuse`], [`CboPlanner::with_reuse`]) keeping a frame is worth
//! more than `p_i` when it is in the run of equal device labels of the latest sent frame: it will
//! get that frame's answer, right with probability `A(p_j, r_j)` (weighted by the recent share of
//! answers that arrived, until it has).
//!
//! With a trace ([`CboPlanner::with_link_oracle`]) the same planner is `cbo eval`'s `link-oracle`
//! bound: transfers cross exactly when the trace says.

use std::sync::Arc;

use super::link_estimate::{ArrivalSweep, LinkEstimate};
use crate::profile::Profile;
use crate::trace::{LinkQueue, MTU, Trace};

/// What one request adds to its JPEG on the uplink: the protocol frame and JSON header and the
/// QUIC stream's set-up (measured on the wire: ~200 bytes).
pub const REQUEST_OVERHEAD_BYTES: f64 = 200.0;
/// QUIC packs a request into datagrams of about this many payload bytes, each carrying this
/// many bytes of QUIC/AEAD (46) and UDP/IPv4 (28) headers (the relay, like Mahimahi, carries
/// whole IP packets).
pub const DATAGRAM_PAYLOAD_BYTES: f64 = 1200.0;
pub const DATAGRAM_OVERHEAD_BYTES: f64 = 74.0;

/// Bytes a request for a `jpeg`-byte image puts on the uplink. Planners reason in these: a
/// 5 kB JPEG costs ~5.5 kB of link, and ignoring that made every early transfer late.
pub fn wire_bytes(jpeg: f64) -> f64 {
    let payload = jpeg + REQUEST_OVERHEAD_BYTES;
    payload + (payload / DATAGRAM_PAYLOAD_BYTES).ceil() * DATAGRAM_OVERHEAD_BYTES
}

/// Link-time resolution of the planner's dynamic programme.
pub const TIME_STEP_MS: f64 = 2.0;
/// Safety margin on every deadline: timer granularity and the encoder's variation.
pub const MARGIN_MS: f64 = 10.0;
/// Bounds on one answer's reported / profiled server time: a report outside them (a clock
/// glitch) moves the scale no further than this.
const SERVER_SCALE_RANGE: (f64, f64) = (0.02, 50.0);

/// Server time assumed per resolution: the profile's, scaled by what answers report (moving
/// average of reported / profiled; 1 until the first answer). The profile was measured against
/// one server on one machine; the server a stream talks to may be a GPU that answers in a tenth
/// of that, or a loaded CPU that takes three times as long, and a planner's deadline budget must
/// be this one's. With the time of the last answer: with no answer for
/// [`SAMPLE_AGE_MS`](super::link_estimate::SAMPLE_AGE_MS) it returns to 1, so a scale that made
/// every transfer look too slow (and so stopped the answers that would lower it) cannot stop
/// offloading for good; the reported time includes the server's queue, which our own burst may
/// have filled. Shared by the CBO planner and FastVA.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ServerTimeScale(Option<(f64, f64)>);

impl ServerTimeScale {
    /// An answer at `now_ms` reporting `reported_ms` for a resolution the profile gives
    /// `profiled_ms`. A server that reports no time (0) says nothing about its speed.
    pub(super) fn on_answer(&mut self, profiled_ms: f64, reported_ms: f64, now_ms: f64) {
        if profiled_ms <= 0.0 || reported_ms <= 0.0 {
            return;
        }
        let ratio = (reported_ms / profiled_ms).clamp(SERVER_SCALE_RANGE.0, SERVER_SCALE_RANGE.1);
        let scale = match self.0 {
            None => ratio,
            Some((s, _)) => 0.8 * s + 0.2 * ratio,
        };
        self.0 = Some((scale, now_ms));
    }

    /// Forgets the scale once no answer has come for `SAMPLE_AGE_MS`.
    pub(super) fn expire(&mut self, now_ms: f64) {
        if self
            .0
            .is_some_and(|(_, at)| now_ms - at > super::link_estimate::SAMPLE_AGE_MS)
        {
            self.0 = None;
        }
    }

    /// Reported / profiled server time: 1 before the first answer and again 10 s after the
    /// last.
    pub(super) fn get(&self) -> f64 {
        self.0.map_or(1.0, |(scale, _)| scale)
    }
}

/// The cbo planner's four constants. Each has a meaning, and each is chosen by
/// leave-one-source-out cross-validation over the trace corpus and the dev clips
/// (`cbo eval --cv`, docs/evaluation.md), never on the traces they are reported on.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CboParams {
    /// What one deadline miss costs, in right labels: a transfer whose answer arrives by the
    /// frame's deadline with probability `P` ([`LinkEstimate::arrival_probability`]) is worth
    /// `P · gain − miss_price · (1 − P)`, and is planned only when that is positive. The price
    /// of the stream's deadline-miss budget (a Lagrange multiplier): a miss gains nothing,
    /// holds its frame until the deadline and counts against the miss rate, so an unlikely
    /// transfer must be worth more to be made, and one that gains little must be near certain
    /// (a fixed least `P` instead spent the same misses on transfers that gain little).
    pub miss_price: f64,
    /// The gain of a transfer is taken `gain_z` standard errors below the profile's estimate
    /// ([`Profile::gain_lower_bound`]): the profile comes from one clip, other content gains less.
    pub gain_z: f64,
    /// How many recent delivery records (at most 10 s old) describe the link: fewer
    /// follow a changing link sooner, more give a finer arrival probability (it moves in steps of
    /// one record).
    #[serde(default = "default_records")]
    pub records: usize,
    /// How long a failed request's bound describes the link (ms), doubled for each further
    /// failure of the same outage ([`LinkEstimate::with_failure_memory`]): it shows an outage,
    /// and the link comes back from most of those sooner than an answered request's throughput
    /// stops describing it (`SAMPLE_AGE_MS`, 10 s).
    #[serde(default = "default_failure_memory")]
    pub failure_memory_ms: f64,
}

fn default_records() -> usize {
    DEFAULT_PARAMS.records
}

fn default_failure_memory() -> f64 {
    DEFAULT_PARAMS.failure_memory_ms
}

/// The constants the element and `cbo eval` use: the candidate `cbo eval --cv` chose on the whole
/// dev grid (4 clips × 14 traces × 3 deadlines, failures as bounds with their own memory, under
/// the training miss limit cross-validated within the grid, 0.75 %; docs/evaluation.md). With
/// the model results parsed exactly the grid's choice is `miss_price` 0.5, level with 0.7 within
/// what an ulp of input moves; 0.7 stays (docs/policy.md, "The constants").
pub const DEFAULT_PARAMS: CboParams = CboParams {
    gain_z: 0.25,
    records: 10,
    failure_memory_ms: 1000.0,
    miss_price: 0.7,
};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it now at the resolution with this index (into the planner's resolution list).
    Send { resolution: usize },
    /// Keep the device result; the frame may leave.
    Keep,
}

/// A frame as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameIn {
    pub id: u64,
    pub arrival_ms: f64,
    pub deadline_ms: f64,
    /// Calibrated confidence of the device's top-1.
    pub confidence: f64,
    pub raw_confidence: f64,
    /// The device's top-1 (answer reuse follows runs of equal labels).
    pub class: i32,
    /// This frame's JPEG size at the planner's smallest resolution, when the caller encoded it
    /// (it predicts the frame's size at the others).
    pub small_jpeg_bytes: Option<f64>,
}

/// An answer (or its absence) for a sent frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerIn {
    pub id: u64,
    pub now_ms: f64,
    /// The request's JPEG bytes (the planner adds the request overhead, [`wire_bytes`]).
    pub bytes: f64,
    /// Server decode + queue + inference.
    pub server_ms: f64,
}

/// A policy: events in, actions out.
pub trait Planner: Send {
    fn name(&self) -> &'static str;
    fn on_frame(&mut self, frame: FrameIn);
    fn on_answer(&mut self, answer: AnswerIn);
    /// A sent frame got no answer (error or connection loss).
    fn on_failure(&mut self, id: u64, now_ms: f64);
    /// Actions due at `now_ms` (each frame gets exactly one action, eventually).
    fn poll(&mut self, now_ms: f64) -> Vec<(u64, Action)>;
    /// When `poll` should be called next without another event.
    fn next_wakeup(&self) -> Option<f64>;
    /// Resolution list the indices of [`Action::Send`] refer to (short sides).
    fn resolutions(&self) -> &[u32];
    /// A round-trip time the transport measured at `now_ms`.
    fn on_rtt(&mut self, now_ms: f64, rtt_ms: f64);
    /// The path's RTT without queueing, measured when the connection came up (the handshake):
    /// a sample, and what the RTT returns to once every sample is stale (instead of the
    /// initial guess).
    fn on_path_rtt(&mut self, now_ms: f64, rtt_ms: f64) {
        self.on_rtt(now_ms, rtt_ms);
    }
    /// The `threshold` property changed (the threshold rules only).
    fn set_threshold(&mut self, _threshold: f64) {}
    /// The numbers the planner decides with, for the log.
    fn describe(&self) -> String {
        String::new()
    }
    /// Every transfer sent so far with the probability of arriving in time it was planned with,
    /// if the planner plans with one and was asked to keep them
    /// ([`CboPlanner::with_arrival_log`]); `None` otherwise.
    fn arrival_log(&self) -> Option<&[(u64, f64)]> {
        None
    }
}

/// Feeds an answer to a planner the way the element and the simulator both do: the transport's
/// RTT measured with it first (the planner keeps the recent minimum, [`LinkEstimate::on_rtt`]),
/// then the answer itself.
pub fn feed_answer(planner: &mut dyn Planner, answer: AnswerIn, transport_rtt_ms: Option<f64>) {
    if let Some(rtt) = transport_rtt_ms {
        planner.on_rtt(answer.now_ms, rtt);
    }
    planner.on_answer(answer);
}

/// Per-resolution costs from the profile.
#[derive(Debug, Clone)]
pub(super) struct Option_ {
    pub(super) short_side: u32,
    pub(super) bytes: f64,
    pub(super) server_ms: f64,
    pub(super) encode_ms: f64,
}

pub(super) fn options(profile: &Profile) -> Vec<Option_> {
    profile
        .resolutions
        .iter()
        .map(|r| Option_ {
            short_side: r.short_side,
            bytes: r.bytes_mean,
            server_ms: r.server_decode_ms_mean + r.server_inference_ms_mean,
            encode_ms: r.encode_ms_mean,
        })
        .collect()
}

/// The future link capacity, known exactly: the `link-oracle` bound of `cbo eval` plans with it
/// instead of the estimate, and otherwise as `cbo` does (calibrated confidence and the profile,
/// not which frames the device gets wrong). Evaluation only.
struct LinkOracle {
    trace: Arc<Trace>,
    /// Our own transfers on that link (predicted bytes): when it is free again.
    queue: LinkQueue,
}

impl LinkOracle {
    /// When `bytes` handed to the link at `start_ms`, behind nothing, have crossed.
    fn done(&self, start_ms: f64, bytes: f64) -> f64 {
        let k = self
            .trace
            .first_at_or_after(start_ms.max(0.0).ceil() as u64)
            + ((bytes / MTU as f64).ceil() as u64).max(1)
            - 1;
        self.trace.time_of(k) as f64
    }
}

/// The CBO planner (see the module docs).
pub struct CboPlanner {
    profile: Profile,
    params: CboParams,
    opts: Vec<Option_>,
    shorts: Vec<u32>,
    pub link: LinkEstimate,
    oracle: Option<LinkOracle>,
    /// Frames waiting for a decision, in arrival order.
    waiting: Vec<FrameIn>,
    /// Per open transfer: the bytes predicted (for the size-ratio estimate) and the resolution
    /// it went at (for the server-time scale).
    predicted: Vec<(u64, f64, usize)>,
    /// Server time assumed per resolution: the profile's, scaled by what answers report.
    server_scale: ServerTimeScale,
    /// Answer reuse ([`super::reuse`]), when the element applies it: a waiting frame in the
    /// run of the latest sent frame will get that frame's answer if it stays on the device, so
    /// keeping it is worth the answer's expected accuracy, not just its own confidence.
    reuse_window_ms: Option<f64>,
    /// Run of equal device labels: the label of the newest frame and the run's number.
    run: (Option<i32>, u64),
    /// Run number of each waiting frame.
    run_of: std::collections::HashMap<u64, u64>,
    /// The latest sent frame of a run, whose answer the run's next frames would reuse.
    source: Option<ReuseSource>,
    /// Share of recent transfers answered in time (moving average): how much an answer still
    /// on its way is worth to the frames counting on it.
    delivery: f64,
    /// Per sent frame, the probability of arriving in time it was sent with (estimated link
    /// only), for checking that the estimate is calibrated; `None` unless asked for
    /// ([`CboPlanner::with_arrival_log`]): an element runs for days.
    arrival_log: Option<Vec<(u64, f64)>>,
}

#[derive(Debug, Clone, Copy)]
struct ReuseSource {
    id: u64,
    run: u64,
    arrival_ms: f64,
    /// The profile's accuracy of the answered label for that frame at the resolution it went at.
    accuracy: f64,
    answered: bool,
}

/// One planned transfer option: its link steps from a start state, and its value there.
#[derive(Debug, Clone, Copy)]
struct Step {
    end: usize,
    value: f64,
}

impl CboPlanner {
    pub fn new(profile: Profile, initial_bps: f64, rtt_ms: f64) -> Self {
        let opts = options(&profile);
        let shorts = opts.iter().map(|o| o.short_side).collect();
        Self {
            profile,
            params: DEFAULT_PARAMS,
            opts,
            shorts,
            // Link time is charged at the median throughput (the expected occupancy); how
            // likely a transfer is to arrive comes from the whole record.
            link: LinkEstimate::new(initial_bps, rtt_ms)
                .with_quantile(0.5)
                .with_records(DEFAULT_PARAMS.records)
                .with_failure_memory(DEFAULT_PARAMS.failure_memory_ms),
            oracle: None,
            waiting: Vec::new(),
            predicted: Vec::new(),
            server_scale: ServerTimeScale::default(),
            reuse_window_ms: None,
            run: (None, 0),
            run_of: std::collections::HashMap::new(),
            source: None,
            delivery: 1.0,
            arrival_log: None,
        }
    }

    /// Records every transfer with the probability of arriving in time it was planned with.
    pub fn with_arrival_log(mut self) -> Self {
        self.arrival_log = Some(Vec::new());
        self
    }

    /// Plans with other constants than [`DEFAULT_PARAMS`] (cross-validation).
    pub fn with_params(mut self, params: CboParams) -> Self {
        self.params = params;
        self.link = self
            .link
            .with_records(params.records)
            .with_failure_memory(params.failure_memory_ms);
        self
    }

    /// Plans for an element that reuses answers within `window_ms` ([`super::reuse`]).
    pub fn with_reuse(mut self, window_ms: f64) -> Self {
        self.reuse_window_ms = Some(window_ms);
        self
    }

    /// The `link-oracle` bound: knows the capacity of `trace` (the link it will be replayed on)
    /// exactly instead of estimating it. Evaluation only.
    pub fn with_link_oracle(mut self, trace: Arc<Trace>) -> Self {
        let queue = LinkQueue::new((*trace).clone(), u64::MAX / 4);
        self.oracle = Some(LinkOracle { trace, queue });
        self
    }

    pub fn params(&self) -> CboParams {
        self.params
    }

    /// What keeping frame `f` on the device is worth: its confidence, or the expected accuracy
    /// of the answer it will reuse (weighted by the chance that answer arrives, while it has
    /// not).
    fn keep_value(&self, f: &FrameIn) -> f64 {
        match (self.reuse_window_ms, self.source) {
            (Some(w), Some(s))
                if self.run_of.get(&f.id) == Some(&s.run)
                    && f.arrival_ms > s.arrival_ms
                    && f.arrival_ms - s.arrival_ms <= w =>
            {
                let better = (s.accuracy - f.confidence).max(0.0);
                let arrives = if s.answered { 1.0 } else { self.delivery };
                f.confidence + arrives * better
            }
            _ => f.confidence,
        }
    }

    /// Expected right labels gained by an answer for `f` at `r` over keeping it, if it arrives:
    /// the server's accuracy on such frames (the device's confidence plus the profile's gain,
    /// taken at its lower bound) minus what keeping it is worth.
    fn gain(&self, f: &FrameIn, r: usize) -> f64 {
        self.server_value(f.confidence, r) - self.keep_value(f)
    }

    /// The probability that an answered frame's label at `r` is right (the server's, or the
    /// merged one when the profile merges) for a frame of calibrated confidence `confidence`:
    /// that confidence plus the profile's gain at its lower bound.
    fn server_value(&self, confidence: f64, r: usize) -> f64 {
        self.profile
            .answer_accuracy(confidence, r, self.params.gain_z)
    }

    /// Predicted JPEG bytes of frame `f` at `r` before the stream's correction: the profile's
    /// mean, scaled by how this frame's small JPEG compares with the profile's (frame sizes
    /// swing 2x from scene to scene; the small encode predicts the large one within ~10 %).
    fn predicted_bytes(&self, f: &FrameIn, r: usize) -> f64 {
        let scale = match f.small_jpeg_bytes {
            Some(b) if b > 0.0 && self.opts[0].bytes > 0.0 => b / self.opts[0].bytes,
            _ => 1.0,
        };
        self.opts[r].bytes * scale
    }

    /// Predicted bytes on the uplink for frame `f` at `r`: the predicted JPEG, corrected by
    /// this stream's actual/predicted ratio, plus the request overhead.
    fn bytes(&self, f: &FrameIn, r: usize) -> f64 {
        wire_bytes(self.predicted_bytes(f, r) * self.link.size_ratio)
    }

    /// The time a transfer of `f` at `r` needs besides its upload: encode, RTT, server, margin.
    fn fixed_ms(&self, r: usize) -> f64 {
        let o = &self.opts[r];
        o.encode_ms + self.link.rtt_ms + o.server_ms * self.server_scale.get() + MARGIN_MS
    }

    /// Per waiting frame and resolution, for every start state `s` (the link free at
    /// `t0 + s · TIME_STEP_MS`): where the transfer leaves the link and what it is worth there,
    /// `None` where it is not worth planning (gain ≤ 0, or a worth of 0 or less).
    ///
    /// Estimated link: it occupies `bytes / bandwidth` of link time (the estimate's quantile),
    /// and is worth `P(arrives) · gain − miss_price · (1 − P)`, `P` from the start on
    /// ([`LinkEstimate`], [`Self::worth`]): the expected number of right labels it adds, since a
    /// frame whose answer misses keeps the device label, less what its expected miss costs.
    /// Link oracle: the trace says exactly when it crosses; worth `gain` if that is in time.
    fn option_table(&self, now: f64, t0: f64, steps: usize) -> Vec<Vec<Vec<Option<Step>>>> {
        let mut sweep = ArrivalSweep::default();
        self.waiting
            .iter()
            .map(|f| {
                (0..self.opts.len())
                    .map(|r| {
                        let mut row = vec![None; steps];
                        let gain = self.gain(f, r);
                        if gain <= 0.0 {
                            return row;
                        }
                        let bytes = self.bytes(f, r);
                        let fixed = self.fixed_ms(r);
                        let encode = self.opts[r].encode_ms;
                        if let Some(o) = &self.oracle {
                            // Start times only grow with `s`: walk the trace's opportunities
                            // forward instead of searching for each.
                            let packets = ((bytes / MTU as f64).ceil() as u64).max(1) - 1;
                            let mut first = o.trace.first_at_or_after((t0 + encode).ceil() as u64);
                            for (s, cell) in row.iter_mut().enumerate() {
                                let start = (t0 + s as f64 * TIME_STEP_MS + encode).ceil() as u64;
                                while o.trace.time_of(first) < start {
                                    first += 1;
                                }
                                let done = o.trace.time_of(first + packets) as f64;
                                if done + fixed - encode > f.deadline_ms {
                                    break;
                                }
                                let end = (((done - t0) / TIME_STEP_MS).ceil() as usize).max(s + 1);
                                if end < steps {
                                    *cell = Some(Step { end, value: gain });
                                }
                            }
                            return row;
                        }
                        let charge = self.link.bandwidth.max(1e-6);
                        let cost = ((bytes / charge / TIME_STEP_MS).ceil() as usize).max(1);
                        // Until `t0` the link carries what we sent before: that many bytes are
                        // ahead of this transfer at `s = 0`.
                        sweep.reset(
                            &self.link,
                            (t0 - now).max(0.0) * charge,
                            bytes,
                            f.deadline_ms - now - fixed,
                            charge,
                        );
                        // `P` only falls as the start moves later, and the worth with it.
                        for (s, cell) in row.iter_mut().enumerate() {
                            let p = sweep.at(s as f64 * TIME_STEP_MS);
                            let Some(value) = self.worth(p, gain) else {
                                break;
                            };
                            if s + cost < steps {
                                *cell = Some(Step {
                                    end: s + cost,
                                    value,
                                });
                            }
                        }
                        row
                    })
                    .collect()
            })
            .collect()
    }

    /// Expected right labels a transfer adds that improves its frame by `gain` when it arrives,
    /// which it does with probability `p`: `p · gain − miss_price · (1 − p)`; `None` when it is
    /// not worth planning (worth nothing, [`CboParams::miss_price`]).
    fn worth(&self, p: f64, gain: f64) -> Option<f64> {
        let value = p * gain - self.params.miss_price * (1.0 - p);
        (p > 0.0 && value > 0.0).then_some(value)
    }

    /// Solves the knapsack over the waiting frames at `now`, with the link free from `t0`;
    /// returns the option chosen per waiting frame.
    fn plan(&self, now: f64, t0: f64) -> Vec<Option<usize>> {
        let n = self.waiting.len();
        if n == 0 {
            return Vec::new();
        }
        let horizon = self
            .waiting
            .iter()
            .map(|f| f.deadline_ms)
            .fold(f64::NEG_INFINITY, f64::max)
            - t0;
        if horizon <= 0.0 {
            return vec![None; n];
        }
        let steps = (horizon / TIME_STEP_MS).ceil() as usize + 1;
        let table = self.option_table(now, t0, steps);
        const NONE: f64 = f64::NEG_INFINITY;
        // best[k][s]: max expected gain of the first k frames with the link free from step s.
        let mut best = vec![vec![NONE; steps]; n + 1];
        let mut choice = vec![vec![None::<(usize, usize)>; steps]; n + 1];
        best[0][0] = 0.0;
        for k in 0..n {
            for s in 0..steps {
                let v = best[k][s];
                if v == NONE {
                    continue;
                }
                // Keep.
                if v > best[k + 1][s] {
                    best[k + 1][s] = v;
                    choice[k + 1][s] = None;
                }
                for (r, row) in table[k].iter().enumerate() {
                    let Some(step) = row[s] else { continue };
                    let v2 = v + step.value;
                    if v2 > best[k + 1][step.end] {
                        best[k + 1][step.end] = v2;
                        choice[k + 1][step.end] = Some((r, s));
                    }
                }
            }
        }
        // Backtrack from the best end state.
        let (mut s, _) =
            best[n].iter().enumerate().fold(
                (0, NONE),
                |acc, (s, &v)| if v > acc.1 { (s, v) } else { acc },
            );
        let mut out = vec![None; n];
        for k in (1..=n).rev() {
            if let Some((r, from)) = choice[k][s] {
                out[k - 1] = Some(r);
                s = from;
            }
        }
        out
    }

    /// Sends waiting frame `k` at resolution `r` now: the answer-reuse source, the arrival log,
    /// the link estimate and the prediction for the size ratio learn of it.
    fn commit(&mut self, k: usize, r: usize, now: f64, actions: &mut Vec<(u64, Action)>) {
        let f = self.waiting.remove(k);
        if let Some(run) = self.run_of.remove(&f.id) {
            let accuracy = self.server_value(f.confidence, r);
            self.source = Some(ReuseSource {
                id: f.id,
                run,
                arrival_ms: f.arrival_ms,
                accuracy,
                answered: false,
            });
        }
        let bytes = self.bytes(&f, r);
        if self.oracle.is_none() && self.arrival_log.is_some() {
            let ahead = (self.link_free_ms() - now).max(0.0) * self.link.bandwidth;
            let p =
                self.link
                    .arrival_probability(ahead, bytes, f.deadline_ms - now - self.fixed_ms(r));
            if let Some(log) = &mut self.arrival_log {
                log.push((f.id, p));
            }
        }
        self.link.on_send(f.id, now, bytes);
        if let Some(o) = &mut self.oracle {
            let enqueue = (now + self.opts[r].encode_ms).ceil() as u64;
            o.queue.send(enqueue, bytes.round() as u64);
        }
        self.predicted.push((f.id, self.predicted_bytes(&f, r), r));
        actions.push((f.id, Action::Send { resolution: r }));
    }

    /// The probe, when the link estimate stands on its initial guess alone
    /// ([`LinkEstimate::unmeasured`]) and that guess lets no transfer of any waiting frame at
    /// any resolution arrive in time: of the frames and resolutions that would gain
    /// (`gain > 0`) and could arrive on an infinitely fast link (time left after RTT, server,
    /// encode and margin), the one that needs the least throughput, so the likeliest to arrive
    /// whatever the link is (the most gain among equals).
    ///
    /// Its arrival probability is unknown, not the guess's 0: the guess is no measurement, and
    /// believed it never changes (nothing sent, no record). A probe costs at most one miss, and
    /// one is made only while nothing is in flight and no record stands (a failed probe's
    /// lasts `failure_memory_ms`, doubled per failure of one outage), so at most one per 10 s
    /// on a path that never answers in time. Only where the guess rules out *every* transfer:
    /// where it allows a small one, the planner measures the link with that as before, and
    /// probing the large transfers the guess rules out sent them into slow links (measured:
    /// docs/evaluation.md).
    fn probe(&self, now: f64) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, f64, f64)> = None;
        for (k, f) in self.waiting.iter().enumerate() {
            for r in 0..self.opts.len() {
                let budget = f.deadline_ms - now - self.fixed_ms(r);
                let bytes = self.bytes(f, r);
                if self.link.arrival_probability(0.0, bytes, budget) > 0.0 {
                    return None;
                }
                let gain = self.gain(f, r);
                if gain <= 0.0 || budget <= 0.0 {
                    continue;
                }
                let need = bytes / budget;
                if best.is_none_or(|(_, _, n, g)| need < n || (need == n && gain > g)) {
                    best = Some((k, r, need, gain));
                }
            }
        }
        best.map(|(k, r, ..)| (k, r))
    }

    /// Whether some option could still serve `f` at `now` if its upload started at `t0`.
    fn servable_from(&self, f: &FrameIn, now: f64, t0: f64) -> bool {
        (0..self.opts.len()).any(|r| {
            let bytes = self.bytes(f, r);
            let fixed = self.fixed_ms(r);
            match &self.oracle {
                Some(o) => {
                    let encode = self.opts[r].encode_ms;
                    o.done(t0 + encode, bytes) + fixed - encode <= f.deadline_ms
                }
                None => {
                    let ahead = (t0 - now).max(0.0) * self.link.bandwidth;
                    let p =
                        self.link
                            .arrival_probability(ahead, bytes, f.deadline_ms - now - fixed);
                    self.worth(p, self.gain(f, r)).is_some()
                }
            }
        })
    }

    /// Latest time frame `f` could still start uploading at its best-fitting option, at the
    /// planned bandwidth (a wake-up time; the decision itself is [`Self::servable_from`]).
    fn last_chance(&self, f: &FrameIn) -> f64 {
        (0..self.opts.len())
            .map(|r| {
                f.deadline_ms - self.fixed_ms(r) - self.bytes(f, r) / self.link.bandwidth.max(1e-6)
            })
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// When the link is free for the next transfer.
    fn link_free_ms(&self) -> f64 {
        match &self.oracle {
            Some(o) => o.queue.busy_until_ms() as f64,
            None => self.link.link_free_ms,
        }
    }
}

impl Planner for CboPlanner {
    /// Empty for the link oracle, which knows when a transfer arrives.
    fn arrival_log(&self) -> Option<&[(u64, f64)]> {
        self.arrival_log.as_deref()
    }

    fn name(&self) -> &'static str {
        if self.oracle.is_some() {
            "link-oracle"
        } else {
            "cbo"
        }
    }

    fn on_frame(&mut self, frame: FrameIn) {
        if self.run.0 != Some(frame.class) {
            self.run = (Some(frame.class), self.run.1 + 1);
        }
        self.run_of.insert(frame.id, self.run.1);
        self.waiting.push(frame);
    }

    fn on_answer(&mut self, a: AnswerIn) {
        let predicted = self
            .predicted
            .iter()
            .position(|p| p.0 == a.id)
            .map(|i| self.predicted.swap_remove(i));
        if let Some(&(_, _, r)) = predicted.as_ref() {
            self.server_scale
                .on_answer(self.opts[r].server_ms, a.server_ms, a.now_ms);
        }
        self.link.on_answer(&a, predicted.map(|p| p.1));
        self.delivery = 0.9 * self.delivery + 0.1;
        if let Some(s) = self.source.as_mut().filter(|s| s.id == a.id) {
            s.answered = true;
        }
    }

    fn on_failure(&mut self, id: u64, now_ms: f64) {
        self.predicted.retain(|p| p.0 != id);
        self.delivery *= 0.9;
        if self.source.is_some_and(|s| s.id == id) {
            self.source = None;
        }
        self.link.on_failure(id, now_ms);
    }

    fn poll(&mut self, now: f64) -> Vec<(u64, Action)> {
        self.link.refresh(now);
        self.server_scale.expire(now);
        let mut actions = Vec::new();
        loop {
            // Frames no option can serve any more, or that nothing improves, leave now.
            let t0 = self.link_free_ms().max(now);
            let plan = self.plan(now, t0);
            // Nothing can arrive on the initial guess alone: probe (`Self::probe`).
            if plan.iter().all(Option::is_none)
                && self.oracle.is_none()
                && self.link.unmeasured(now)
                && let Some((k, r)) = self.probe(now)
            {
                self.commit(k, r, now, &mut actions);
                continue;
            }
            let mut kept_any = false;
            let mut keep = vec![false; self.waiting.len()];
            for (k, f) in self.waiting.iter().enumerate() {
                if plan[k].is_some() {
                    continue;
                }
                let useless = (0..self.opts.len()).all(|r| self.gain(f, r) <= 0.0);
                if useless || !self.servable_from(f, now, t0) {
                    keep[k] = true;
                    kept_any = true;
                }
            }
            if kept_any {
                let mut k = 0;
                let run_of = &mut self.run_of;
                self.waiting.retain(|f| {
                    let drop = keep[k];
                    k += 1;
                    if drop {
                        run_of.remove(&f.id);
                        actions.push((f.id, Action::Keep));
                    }
                    !drop
                });
                continue;
            }
            // Commit the first planned frame when the link is (about to be) free.
            let first = plan.iter().position(|c| c.is_some());
            if let Some(k) = first
                && self.link_free_ms() <= now + TIME_STEP_MS
            {
                let r = plan[k].expect("position found a Some");
                self.commit(k, r, now, &mut actions);
                continue;
            }
            break;
        }
        actions
    }

    fn next_wakeup(&self) -> Option<f64> {
        if self.waiting.is_empty() {
            return None;
        }
        let chance = self
            .waiting
            .iter()
            .map(|f| self.last_chance(f))
            .fold(f64::INFINITY, f64::min);
        let t = chance.min(self.link_free_ms());
        t.is_finite().then_some(t)
    }

    fn resolutions(&self) -> &[u32] {
        &self.shorts
    }

    fn on_rtt(&mut self, now_ms: f64, rtt_ms: f64) {
        self.link.on_rtt(now_ms, rtt_ms);
    }

    fn on_path_rtt(&mut self, now_ms: f64, rtt_ms: f64) {
        self.link.on_path_rtt(now_ms, rtt_ms);
    }

    fn describe(&self) -> String {
        format!(
            "{} waiting, {}, delivery {:.2}, server time x{:.2} of the profile's",
            self.waiting.len(),
            self.link.describe(),
            self.delivery,
            self.server_scale.get()
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::offload::link_estimate::SAMPLE_AGE_MS;
    use crate::profile::{ConfidenceBin, FittedOn, ModelRef, ResolutionProfile};

    /// Two resolutions: small (5 kB, server 0.6) and large (15 kB, server 0.9), flat across bins.
    pub(crate) fn profile() -> Profile {
        let m = ModelRef {
            file: "m".into(),
            sha256: "0".into(),
            input: None,
        };
        let res = |short_side, bytes, acc| ResolutionProfile {
            short_side,
            width: short_side * 4 / 3,
            height: short_side,
            bytes_mean: bytes,
            bytes_p50: bytes,
            bytes_p90: bytes,
            encode_ms_mean: 1.0,
            server_decode_ms_mean: 1.0,
            server_inference_ms_mean: 19.0,
            server_inference_ms_p90: 19.0,
            server_accuracy: acc,
        };
        Profile {
            format: crate::profile::FORMAT.into(),
            version: crate::profile::VERSION,
            device_model: m.clone(),
            server_model: m,
            calibration: None,
            jpeg_quality: 80,
            encoder: "test".into(),
            fitted_on: FittedOn {
                source: "synthetic".into(),
                n: 1000,
                frame_width: 480,
                frame_height: 360,
            },
            device_accuracy: 0.7,
            resolutions: vec![res(96, 5000.0, 0.6), res(224, 15000.0, 0.9)],
            bins: (0..10)
                .map(|k| ConfidenceBin {
                    lo: k as f64 / 10.0,
                    hi: (k + 1) as f64 / 10.0,
                    n: 100,
                    mean_confidence: (k as f64 + 0.5) / 10.0,
                    device_accuracy: (k as f64 + 0.5) / 10.0,
                    server_accuracy: vec![0.6, 0.9],
                    scenes: None,
                    merged_accuracy: None,
                })
                .collect(),
            merge: None,
        }
    }

    pub(crate) fn frame(id: u64, at: f64, p: f64) -> FrameIn {
        FrameIn {
            id,
            arrival_ms: at,
            deadline_ms: at + 500.0,
            confidence: p,
            raw_confidence: p,
            class: id as i32,
            small_jpeg_bytes: None,
        }
    }

    #[test]
    fn sure_frames_stay_and_unsure_frames_go_at_the_best_resolution_that_fits() {
        // 8 Mbit/s = 1000 B/ms: 15 kB takes 15 ms; plenty of time.
        let mut p = CboPlanner::new(profile(), 8e6, 20.0);
        p.on_frame(frame(0, 0.0, 0.95));
        p.on_frame(frame(1, 0.0, 0.2));
        let a = p.poll(0.0);
        assert!(a.contains(&(0, Action::Keep)), "{a:?}");
        assert!(a.contains(&(1, Action::Send { resolution: 1 })), "{a:?}");
    }

    #[test]
    fn a_stale_rtt_sample_does_not_stop_sending_for_good() {
        // One transport RTT sample of 540 ms (a bufferbloated moment) against a 500 ms deadline:
        // nothing can arrive in time while it is the newest evidence...
        let mut p = CboPlanner::new(profile(), 8e6, 20.0);
        p.on_rtt(1000.0, 540.0);
        p.on_frame(frame(0, 1000.0, 0.2));
        assert_eq!(p.poll(1000.0), vec![(0, Action::Keep)]);
        // ...but no answer comes to replace it once nothing is sent: after SAMPLE_AGE_MS it no
        // longer describes the path, and the RTT returns to where it started.
        let later = 1000.0 + SAMPLE_AGE_MS + 1.0;
        p.on_frame(frame(1, later, 0.2));
        assert_eq!(p.poll(later), vec![(1, Action::Send { resolution: 1 })]);
        assert_eq!(p.link.rtt_ms, 20.0);
        // A fresh sample counts again.
        p.on_rtt(later + 1.0, 35.0);
        assert_eq!(p.link.rtt_ms, 35.0);
    }

    #[test]
    fn a_slow_link_picks_the_small_resolution_or_keeps() {
        // 0.4 Mbit/s = 50 B/ms: 15 kB = 300 ms + 20 + 20 + 1 + 10 → 351 ms: fits 500 alone.
        // Two unsure frames: both at 224 would need 600 ms of link: one large + one small
        // (300 + 100 = 400 ms) gives 0.7 + 0.4 = 1.1 > 0.7 (one large) → mixed.
        let mut p = CboPlanner::new(profile(), 0.4e6, 20.0);
        p.on_frame(frame(0, 0.0, 0.2));
        p.on_frame(frame(1, 0.0, 0.2));
        let plan = p.plan(0.0, 0.0);
        let mut chosen = plan.clone();
        chosen.sort();
        assert_eq!(chosen, vec![Some(0), Some(1)], "{plan:?}");
        // Only the first is committed now; the second waits for the link.
        let a = p.poll(0.0);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(matches!(a[0].1, Action::Send { .. }));
        assert!(p.next_wakeup().unwrap() > 50.0);
        // Measured at 0.04 Mbit/s nothing fits: both kept at once.
        let mut p = CboPlanner::new(profile(), 8e6, 20.0);
        p.link.on_send(9, 0.0, 5000.0);
        p.link.on_answer(
            &AnswerIn {
                id: 9,
                now_ms: wire_bytes(5000.0) / 5.0 + 40.0,
                bytes: 5000.0,
                server_ms: 20.0,
            },
            None,
        );
        let t = 1000.0;
        p.on_frame(frame(0, t, 0.2));
        p.on_frame(frame(1, t, 0.2));
        let a = p.poll(t);
        assert_eq!(a, vec![(0, Action::Keep), (1, Action::Keep)]);
    }

    #[test]
    fn a_guess_that_lets_nothing_arrive_is_probed_once_at_a_time() {
        // The initial guess, 0.04 Mbit/s (5 B/ms), carries no answer in time: 5 kB needs
        // 12 B/ms over the 449 ms left. Unmeasured, it is probed with the option needing the
        // least throughput (96 px); the other frame stays.
        let mut p = CboPlanner::new(profile(), 0.04e6, 20.0);
        p.on_frame(frame(0, 0.0, 0.2));
        p.on_frame(frame(1, 0.0, 0.2));
        assert_eq!(
            p.poll(0.0),
            vec![(0, Action::Send { resolution: 0 }), (1, Action::Keep)]
        );
        // No second probe while the first is in flight.
        p.on_frame(frame(2, 100.0, 0.2));
        assert_eq!(p.poll(100.0), vec![(2, Action::Keep)]);
        // It fails: its bound stands for `failure_memory_ms` (1 s), and nothing is probed...
        p.on_failure(0, 500.0);
        p.on_frame(frame(3, 600.0, 0.2));
        assert_eq!(p.poll(600.0), vec![(3, Action::Keep)]);
        // ...until it is forgotten.
        p.on_frame(frame(4, 1600.0, 0.2));
        assert_eq!(p.poll(1600.0), vec![(4, Action::Send { resolution: 0 })]);
        // Answered in 48 ms of upload: 110 B/ms. Now 15 kB fits the plan itself.
        p.on_answer(AnswerIn {
            id: 4,
            now_ms: 1600.0 + 1.0 + wire_bytes(5000.0) / 110.0 + 40.0,
            bytes: 5000.0,
            server_ms: 20.0,
        });
        let t = 1800.0;
        p.on_frame(frame(5, t, 0.2));
        assert_eq!(p.poll(t), vec![(5, Action::Send { resolution: 1 })]);
        // A frame nothing improves is never a probe.
        let mut p = CboPlanner::new(profile(), 0.04e6, 20.0);
        p.on_frame(frame(0, 0.0, 0.95));
        assert_eq!(p.poll(0.0), vec![(0, Action::Keep)]);
    }

    #[test]
    fn a_transfer_that_misses_its_deadline_lowers_the_estimate() {
        // Planned at 1000 B/ms; 15 kB had not crossed after 480 ms: < 32 B/ms.
        let mut link = LinkEstimate::new(8e6, 20.0);
        link.on_send(0, 0.0, 15_000.0);
        link.on_failure(0, 500.0);
        assert!(link.bandwidth < 32.0, "{}", link.bandwidth);
        // And the planner stops sending what cannot arrive at that rate (at a price of one
        // right label per miss).
        let mut p = CboPlanner::new(profile(), 8e6, 20.0).with_params(CboParams {
            miss_price: 1.0,
            ..DEFAULT_PARAMS
        });
        p.on_frame(frame(0, 0.0, 0.2));
        assert_eq!(p.poll(0.0), vec![(0, Action::Send { resolution: 1 })]);
        p.on_failure(0, 500.0);
        // The record is now the failure (the initial estimate no longer counts), which proves only
        // that the link carried less than ~31 B/ms, not how much less: a 5 kB transfer needing
        // ~12 B/ms of it arrives with P = 1 − 12 / 31 ≈ 0.63 (the share of [0, 31) that carries
        // it), and its gain of ~0.35 is worth less than the 0.37 expected misses cost; 15 kB not
        // at all.
        let bound = wire_bytes(15_000.0) / 480.0;
        let need = wire_bytes(5_000.0) / 449.0;
        let p5 = p.link.arrival_probability(0.0, wire_bytes(5_000.0), 449.0);
        assert!((p5 - (1.0 - need / bound)).abs() < 1e-9, "{p5}");
        assert!(p.worth(p5, p.gain(&frame(1, 500.0, 0.2), 0)).is_none());
        p.on_frame(frame(1, 500.0, 0.2));
        assert_eq!(p.poll(500.0), vec![(1, Action::Keep)]);
        // An outage ends: after the failure's memory the link is unknown again, and the guess
        // stands in.
        let memory = DEFAULT_PARAMS.failure_memory_ms;
        let t = 500.0 + memory + 1.0;
        p.on_frame(frame(2, t, 0.2));
        assert_eq!(p.poll(t), vec![(2, Action::Send { resolution: 1 })]);
        // That one fails too: the outage outlasted the first failure's memory, so the second
        // is remembered twice as long.
        p.on_failure(2, t + 500.0);
        let t2 = t + 500.0 + memory + 1.0;
        p.on_frame(frame(3, t2, 0.2));
        assert_eq!(p.poll(t2), vec![(3, Action::Keep)]);
        let t3 = t + 500.0 + 2.0 * memory + 1.0;
        p.on_frame(frame(4, t3, 0.2));
        assert_eq!(p.poll(t3), vec![(4, Action::Send { resolution: 1 })]);
    }

    #[test]
    fn the_price_of_a_miss_weighs_the_gain_against_the_arrival_probability() {
        // After a failed 15 kB transfer a 5 kB one arrives with P ≈ 0.63 (see above). Worth
        // `P · gain − price · (1 − P)`: at a price of half a right label per miss, a frame the
        // server would improve by ~0.55 is worth sending at that P (0.35 − 0.19), one it would
        // improve by ~0.15 is not (0.09 − 0.19); with misses free both would go.
        let decide = |price: f64, confidence: f64| {
            let mut p = CboPlanner::new(profile(), 8e6, 20.0).with_params(CboParams {
                miss_price: price,
                ..DEFAULT_PARAMS
            });
            p.on_frame(frame(0, 0.0, 0.2));
            assert_eq!(p.poll(0.0), vec![(0, Action::Send { resolution: 1 })]);
            p.on_failure(0, 500.0);
            let p5 = p.link.arrival_probability(0.0, wire_bytes(5_000.0), 449.0);
            assert!((0.6..0.66).contains(&p5), "{p5}");
            p.on_frame(frame(1, 500.0, confidence));
            p.poll(500.0)
        };
        let send = vec![(1, Action::Send { resolution: 0 })];
        let keep = vec![(1, Action::Keep)];
        assert_eq!(decide(0.5, 0.05), send);
        assert_eq!(decide(0.5, 0.45), keep);
        assert_eq!(decide(0.0, 0.05), send);
        assert_eq!(decide(0.0, 0.45), send);
    }

    #[test]
    fn a_frame_that_encodes_large_is_planned_at_a_smaller_resolution() {
        // 50 B/ms. A frame of the profile's size: 15 kB = ~330 ms with the request overhead (+ RTT,
        // server, encode, margin = ~381 ms) fits 500 ms at 224. One whose small JPEG is 1.5x the
        // profile's would take ~490 ms at 224 (+ 51 ms): it goes at 96 (7.5 kB) instead.
        let mut p = CboPlanner::new(profile(), 0.4e6, 20.0);
        p.on_frame(FrameIn {
            small_jpeg_bytes: Some(5000.0),
            ..frame(0, 0.0, 0.2)
        });
        assert_eq!(p.poll(0.0), vec![(0, Action::Send { resolution: 1 })]);
        let mut p = CboPlanner::new(profile(), 0.4e6, 20.0);
        p.on_frame(FrameIn {
            small_jpeg_bytes: Some(7500.0),
            ..frame(0, 0.0, 0.2)
        });
        assert_eq!(p.poll(0.0), vec![(0, Action::Send { resolution: 0 })]);
    }

    #[test]
    fn with_reuse_a_frame_alike_to_one_sent_stays() {
        let alike = |id: u64, at: f64, class: i32| FrameIn {
            class,
            ..frame(id, at, 0.2)
        };
        for reuse in [false, true] {
            let mut p = CboPlanner::new(profile(), 8e6, 20.0);
            if reuse {
                p = p.with_reuse(1000.0);
            }
            let answer = |id: u64, now_ms: f64| AnswerIn {
                id,
                now_ms,
                bytes: 15000.0,
                server_ms: 20.0,
            };
            p.on_frame(alike(0, 0.0, 7));
            assert_eq!(p.poll(0.0), vec![(0, Action::Send { resolution: 1 })]);
            p.on_answer(answer(0, 60.0));
            // Same device label 100 ms later: the answer for frame 0 (expected 0.9 right)
            // will label it, so sending it gains nothing.
            p.on_frame(alike(1, 100.0, 7));
            let a = p.poll(100.0);
            if reuse {
                assert_eq!(a, vec![(1, Action::Keep)]);
            } else {
                assert_eq!(a, vec![(1, Action::Send { resolution: 1 })]);
                p.on_answer(answer(1, 160.0));
            }
            // A new label is a new scene: sent either way; so is one past the window.
            p.on_frame(alike(2, 200.0, 8));
            assert_eq!(p.poll(200.0), vec![(2, Action::Send { resolution: 1 })]);
            p.on_answer(answer(2, 260.0));
            p.on_frame(alike(3, 1300.0, 8));
            assert_eq!(p.poll(1300.0), vec![(3, Action::Send { resolution: 1 })]);
        }
    }

    /// The deadline budget counts the server time this connection's answers report, not the
    /// profile's: a server ten times slower than profiled leaves no time for a transfer the
    /// profile would allow, one ten times faster leaves time for a larger one.
    #[test]
    fn the_deadline_budget_uses_the_server_time_answers_report() {
        // Profile: server 20 ms at both resolutions; RTT 20, encode 1, margin 10. 8 Mbit/s:
        // ~16 ms for the large frame, ~5 ms for the small one.
        let decide = |server_ms: f64, deadline: f64| {
            let mut p = CboPlanner::new(profile(), 8e6, 20.0);
            for i in 0..5u64 {
                let t = i as f64 * 300.0;
                p.on_frame(frame(i, t, 0.2));
                assert_eq!(p.poll(t), vec![(i, Action::Send { resolution: 1 })]);
                p.on_answer(AnswerIn {
                    id: i,
                    now_ms: t + 16.0 + 20.0 + server_ms,
                    bytes: 15000.0,
                    server_ms,
                });
            }
            p.on_frame(FrameIn {
                deadline_ms: 2000.0 + deadline,
                ..frame(9, 2000.0, 0.2)
            });
            p.poll(2000.0)
        };
        let large = vec![(9, Action::Send { resolution: 1 })];
        let small = vec![(9, Action::Send { resolution: 0 })];
        // As profiled: 90 ms fit the large frame (16 + 51), 60 ms only the small one.
        assert_eq!(decide(20.0, 90.0), large);
        assert_eq!(decide(20.0, 60.0), small);
        // A server at 200 ms: nothing fits 90 ms.
        assert_eq!(decide(200.0, 90.0), vec![(9, Action::Keep)]);
        // ...and with nothing sent, no answer lowers it again: after 10 s without one the
        // budget is the profile's once more.
        let mut p = CboPlanner::new(profile(), 8e6, 20.0);
        for i in 0..5u64 {
            let t = i as f64 * 300.0;
            p.on_frame(frame(i, t, 0.2));
            p.poll(t);
            p.on_answer(AnswerIn {
                id: i,
                now_ms: t + 236.0,
                bytes: 15000.0,
                server_ms: 200.0,
            });
        }
        let late = 1436.0 + SAMPLE_AGE_MS + 1.0;
        p.on_frame(FrameIn {
            deadline_ms: late + 90.0,
            ..frame(9, late, 0.2)
        });
        assert_eq!(p.poll(late), large);
        // A server at 2 ms: the large frame fits 60 ms (16 + 33).
        assert_eq!(decide(2.0, 60.0), large);
        // A server that reports no time changes nothing.
        assert_eq!(decide(0.0, 60.0), small);
    }

    /// The DP's plan against every assignment of {keep, each resolution} to a small window,
    /// under the same link-time steps and feasibility rule.
    #[test]
    fn the_knapsack_equals_brute_force_on_small_windows() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for case in 0..300 {
            let bps = 0.2e6 + rand() * 2e6;
            let mut p = CboPlanner::new(profile(), bps, 20.0);
            let n = 1 + case % 5;
            for i in 0..n as u64 {
                let at = i as f64 * 100.0 * rand();
                p.on_frame(FrameIn {
                    deadline_ms: at + 200.0 + 600.0 * rand(),
                    small_jpeg_bytes: Some(3000.0 + 4000.0 * rand()),
                    ..frame(i, at, rand())
                });
            }
            let t0 = 50.0 * rand();
            let plan = p.plan(0.0, t0);
            // The same options the planner sees (link steps and expected gain per start
            // state); the brute force tries every combination of them in arrival order.
            let horizon = p
                .waiting
                .iter()
                .map(|f| f.deadline_ms)
                .fold(f64::NEG_INFINITY, f64::max)
                - t0;
            let steps = (horizon / TIME_STEP_MS).ceil() as usize + 1;
            let table = p.option_table(0.0, t0, steps);
            let value = |choice: &[Option<usize>]| -> Option<f64> {
                let mut s = 0usize;
                let mut total = 0.0;
                for (k, c) in choice.iter().enumerate() {
                    let Some(r) = *c else { continue };
                    let step = table[k][r][s]?;
                    total += step.value;
                    s = step.end;
                }
                Some(total)
            };
            let options = p.opts.len() + 1;
            let mut best = 0.0f64;
            for code in 0..options.pow(n as u32) {
                let choice: Vec<Option<usize>> = (0..n)
                    .map(|k| match (code / options.pow(k as u32)) % options {
                        0 => None,
                        r => Some(r - 1),
                    })
                    .collect();
                if let Some(v) = value(&choice) {
                    best = best.max(v);
                }
            }
            let got = value(&plan).expect("the plan is feasible");
            assert!(
                (got - best).abs() < 1e-9,
                "case {case}: plan {plan:?} = {got}, brute force {best}"
            );
        }
    }

    #[test]
    fn every_frame_gets_exactly_one_action() {
        let mut p = CboPlanner::new(profile(), 2e6, 30.0);
        let mut seen = std::collections::HashMap::new();
        let mut t = 0.0;
        for i in 0..300u64 {
            p.on_frame(frame(i, t, ((i * 37) % 100) as f64 / 100.0));
            for (id, a) in p.poll(t) {
                assert!(seen.insert(id, a).is_none(), "frame {id} decided twice");
                if let Action::Send { resolution } = a {
                    p.on_answer(AnswerIn {
                        id,
                        now_ms: t + 60.0,
                        bytes: [5000.0, 15000.0][resolution],
                        server_ms: 20.0,
                    });
                }
            }
            t += 33.0;
            while let Some(w) = p.next_wakeup().filter(|&w| w < t) {
                for (id, a) in p.poll(w.max(t - 33.0)) {
                    assert!(seen.insert(id, a).is_none());
                }
                if p.next_wakeup() == Some(w) {
                    break;
                }
            }
        }
        for (id, a) in p.poll(t + 1000.0) {
            assert!(seen.insert(id, a).is_none());
        }
        assert_eq!(seen.len(), 300);
    }
}
