//! What the adaptive planners know of the uplink (pure: no sockets, no clock of its own): this
//! connection's delivery record (per-request throughput from answers, the bound a failure or an
//! overdue request proves), the path's RTT, the stream's JPEG size ratio, and from them the
//! probability that a transfer started now is answered by its deadline
//! ([`LinkEstimate::arrival_probability`]), which the CBO planner plans with
//! ([`super::planner`]).

use super::planner::{AnswerIn, wire_bytes};

/// Delivery records (per-request throughput, or its upper bound for a request that failed) the
/// link estimate keeps by default ([`LinkEstimate::with_records`]; the CBO planner's
/// `CboParams::records`, chosen by cross-validation).
pub(crate) const SAMPLES: usize = 20;
/// Records older than this no longer describe the link.
pub(crate) const SAMPLE_AGE_MS: f64 = 10_000.0;
/// The quantile of recent throughput FastVA plans with (its paper uses the recent throughput;
/// a low quantile keeps its deadline misses comparable).
pub const FASTVA_QUANTILE: f64 = 0.1;

/// The arrival probability of one transfer as a function of how late it starts, for a planner
/// that tabulates it over every start in one sweep ([`Self::reset`], then [`Self::at`] with
/// starts that never decrease). Its buffers are kept between transfers.
#[derive(Debug, Default)]
pub(super) struct ArrivalSweep {
    /// Per measured record, the latest start (ms of planned link time) at which it still carries
    /// the transfer, largest first.
    latest: Vec<f64>,
    /// The failures' bounds.
    bounds: Vec<f64>,
    /// How many of `latest` are at or after the last start asked for.
    carrying: usize,
    ahead: f64,
    bytes: f64,
    budget_ms: f64,
    charge: f64,
}

impl ArrivalSweep {
    /// For a transfer of `bytes` that waits behind `ahead + s · charge` bytes when the planner
    /// puts it `s` ms of link time after its start (`charge`: the bytes per ms planned link time
    /// stands for), with `budget_ms` from now.
    pub(super) fn reset(
        &mut self,
        link: &LinkEstimate,
        ahead: f64,
        bytes: f64,
        budget_ms: f64,
        charge: f64,
    ) {
        let charge = charge.max(1e-9);
        self.latest.clear();
        self.bounds.clear();
        for (rate, censored) in link.rates() {
            if censored {
                self.bounds.push(rate);
            } else {
                self.latest
                    .push((rate * budget_ms - bytes - ahead) / charge);
            }
        }
        self.latest.sort_by(|a, b| b.total_cmp(a));
        self.carrying = self.latest.len();
        (self.ahead, self.bytes, self.budget_ms, self.charge) = (ahead, bytes, budget_ms, charge);
    }

    /// The arrival probability when the transfer starts `start_ms` of planned link time late.
    pub(super) fn at(&mut self, start_ms: f64) -> f64 {
        let n = self.latest.len() + self.bounds.len();
        if self.budget_ms <= 0.0 || n == 0 {
            return 0.0;
        }
        while self.carrying > 0 && self.latest[self.carrying - 1] < start_ms {
            self.carrying -= 1;
        }
        let need = (self.ahead + start_ms * self.charge + self.bytes) / self.budget_ms;
        let failures: f64 = self.bounds.iter().map(|&b| carried(b, true, need)).sum();
        (self.carrying as f64 + failures) / n as f64
    }
}

/// One delivery record: the throughput a request met, or for a request that failed the bound its
/// failure proves.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Bytes per ms.
    rate: f64,
    /// A failure: the link was slower than `rate`, by how much is unknown.
    censored: bool,
    /// When it stops describing the link.
    until_ms: f64,
}

/// The chance that a record of `rate` bytes per ms carries a transfer that needs `need`: 1 or 0
/// for a measured rate. A failure proves only that the link was slower than its `rate`; where
/// below is unknown, so it counts the share of `[0, rate)` at or above `need`.
///
/// Counted as a measured rate instead, a failure carried the next transfer whenever that needed
/// a little less, and it did: the bound is `bytes / busy` with `busy` about the time the failed
/// transfer was given, so the next, slightly smaller transfer always fitted under it. On
/// `nyc3g-up-subway` at 200 ms the planner sent twelve transfers in 1.2 s into a link that
/// carried 15–45 B/ms, every one planned at P = 1 on records of failures at ~100 B/ms, and all
/// twelve missed (docs/evaluation.md).
pub(super) fn carried(rate: f64, censored: bool, need: f64) -> f64 {
    if !censored {
        f64::from(u8::from(rate >= need))
    } else if rate > 0.0 {
        (1.0 - need / rate).max(0.0)
    } else {
        0.0
    }
}

impl LinkEstimate {
    pub(super) fn describe(&self) -> String {
        format!(
            "uplink {:.0} kbit/s, rtt {:.1} ms, size ratio {:.2}, link free at {:.1} ms",
            self.bandwidth * 8.0,
            self.rtt_ms,
            self.size_ratio,
            self.link_free_ms
        )
    }
}

/// Link estimates shared by the adaptive policies.
#[derive(Debug, Clone)]
pub struct LinkEstimate {
    /// Bytes per ms the planners charge for link time: the quantile (`with_quantile`) of recent
    /// delivery records, because a cellular uplink's capacity swings several-fold within a
    /// second and an optimistic estimate turns straight into deadline misses.
    pub bandwidth: f64,
    /// Which quantile of the records [`Self::bandwidth`] is (0.1: exceeded 90 % of the time).
    quantile: f64,
    /// Recent per-request delivery records, newest last. A request that failed contributes the
    /// upper bound its failure proves, for `failure_memory_ms`.
    samples: std::collections::VecDeque<Record>,
    /// How many of them it keeps.
    max_samples: usize,
    /// How long a failure's record lasts (answers' last [`SAMPLE_AGE_MS`]), doubled for each
    /// further failure of the same outage.
    failure_memory_ms: f64,
    /// Failures since the last answer (any answer, also one too quick to give a record), counting
    /// only requests sent after the previous failure was known (those sent before it met the
    /// same moment of the outage).
    outage_failures: u32,
    /// When the last failure was known.
    last_failure_ms: f64,
    /// Recent transport RTT samples (time, ms), newest last.
    rtts: std::collections::VecDeque<(f64, f64)>,
    /// Where the estimate starts, and returns to once every sample is stale: a probe. It is
    /// the only record [`Self::arrival_probability`] has until the first answer or failure.
    initial: f64,
    /// The bound the oldest unanswered request proves at the last refresh, if it is below the
    /// records' quantile (an outage shows up here long before any answer does).
    overdue: Option<f64>,
    /// Typical server time, from answers.
    server_ms: f64,
    pub rtt_ms: f64,
    /// The RTT the estimate starts from, and returns to once every transport sample is stale:
    /// the initial guess, then the path's RTT the connection reported ([`Self::on_path_rtt`]).
    initial_rtt_ms: f64,
    /// Actual / predicted JPEG size for this stream.
    pub size_ratio: f64,
    /// When our last sent request is estimated to have left the uplink.
    pub link_free_ms: f64,
    /// Last upload completion inferred from an answer.
    last_completion_ms: f64,
    sent: Vec<(u64, f64, f64)>,
}

impl LinkEstimate {
    pub fn new(initial_bps: f64, rtt_ms: f64) -> Self {
        Self {
            bandwidth: initial_bps / 8.0 / 1000.0,
            quantile: FASTVA_QUANTILE,
            samples: std::collections::VecDeque::new(),
            max_samples: SAMPLES,
            failure_memory_ms: SAMPLE_AGE_MS,
            outage_failures: 0,
            last_failure_ms: f64::NEG_INFINITY,
            rtts: std::collections::VecDeque::new(),
            initial: initial_bps / 8.0 / 1000.0,
            overdue: None,
            server_ms: 0.0,
            rtt_ms,
            initial_rtt_ms: rtt_ms,
            size_ratio: 1.0,
            link_free_ms: f64::NEG_INFINITY,
            last_completion_ms: f64::NEG_INFINITY,
            sent: Vec::new(),
        }
    }

    /// Keeps the last `n` delivery records (at least one) instead of `SAMPLES` (20).
    pub fn with_records(mut self, n: usize) -> Self {
        self.max_samples = n.max(1);
        self
    }

    /// Forgets a failure's record after `ms` (at most `SAMPLE_AGE_MS`, how long an answer's
    /// lasts), doubled for each further failure of the same outage.
    ///
    /// A failure shows an outage, and counted by its bound (see `carried`) it holds large
    /// transfers back while it lasts. Nothing sent means nothing that could replace it, so kept
    /// as long as an answer it held them back 10 s after every outage on a driving trace whose
    /// outages end within a second. How long an outage lasts is unknown; one that has outlasted
    /// a failure's memory is likely to last longer (a request sent after the previous failure
    /// was known fails too), so each such failure is remembered twice as long as the one before,
    /// until an answer comes: the probes into a long outage thin out instead of recurring every
    /// `ms`. The base memory is cross-validated (`CboParams::failure_memory_ms`; 1 s).
    pub fn with_failure_memory(mut self, ms: f64) -> Self {
        self.failure_memory_ms = ms.clamp(0.0, SAMPLE_AGE_MS);
        self
    }

    /// Plans link time with the `quantile` of recent throughput.
    pub fn with_quantile(mut self, quantile: f64) -> Self {
        self.quantile = quantile.clamp(0.0, 1.0);
        self
    }

    /// The rates [`Self::arrival_probability`] weighs, each with weight one and whether it is a
    /// failure's bound: the recent records, or the initial estimate while there is none.
    ///
    /// The initial estimate is a guess, not a measurement: once the connection has a record it
    /// no longer counts. Kept as a record of weight one it capped every probability at
    /// `n / (n + 1)`, so a transfer on a 20 Mbit/s link that the last 12 requests all made in
    /// time was planned with `P = 0.92` (the initial 1 Mbit/s "failed" it) and the least arrival
    /// probability the planner then required (0.95) refused it: cross-validated over the dev
    /// grid, dropping it raised the share of settings where `cbo+reuse` is the best rule from
    /// 67 % to 74 % (docs/evaluation.md).
    ///
    /// A request overdue *now* is a fact about the present link, not one more draw: it caps every
    /// record (as it caps [`Self::bandwidth`]) until it is answered or fails. A failure, once
    /// over, is one record among the others: capping on it until the next answer stopped all
    /// sending for seconds after every miss on a bursty link.
    fn rates(&self) -> impl Iterator<Item = (f64, bool)> + '_ {
        let cap = self.overdue.unwrap_or(f64::INFINITY);
        self.samples
            .iter()
            .map(|s| (s.rate, s.censored))
            .chain(self.samples.is_empty().then_some((self.initial, false)))
            .map(move |(r, c)| if r > cap { (cap, c) } else { (r, c) })
    }

    /// Whether the estimate stands on nothing measured: no delivery record (the initial guess
    /// stands in), no request in flight whose answer or failure will give one, and no answer
    /// for `SAMPLE_AGE_MS`, 10 s (an answer too quick to give a record still shows the link
    /// works). Current as of the last [`Self::refresh`].
    ///
    /// A planner whose guess rules out every transfer then probes
    /// ([`super::planner::CboPlanner`], FastVA): the guess is no measurement, and without a
    /// send there never is one. Where it said nothing could arrive (a deadline tighter than the
    /// guess allows, however fast the real link), the planner never sent, so never learned
    /// otherwise, for the whole stream.
    pub fn unmeasured(&self, now_ms: f64) -> bool {
        self.samples.is_empty()
            && self.sent.is_empty()
            && now_ms - self.last_completion_ms > SAMPLE_AGE_MS
    }

    /// The probability that `bytes` handed to the uplink now, behind `ahead` bytes still to
    /// cross it, are answered within `budget_ms` (the deadline less now, RTT, server time,
    /// encode and margin), estimated from this connection's delivery record: the share of recent
    /// requests whose throughput would have carried all of it in time. A failed request counts
    /// by the share of what lies below its bound that would have (`carried`), the initial
    /// estimate stands in until there is a record, and the newest evidence of a slow link caps
    /// them all (see `rates`).
    pub fn arrival_probability(&self, ahead: f64, bytes: f64, budget_ms: f64) -> f64 {
        if budget_ms <= 0.0 {
            return 0.0;
        }
        let need = (ahead + bytes) / budget_ms;
        let (mut carrying, mut n) = (0.0, 0usize);
        for (rate, censored) in self.rates() {
            n += 1;
            carrying += carried(rate, censored, need);
        }
        carrying / n.max(1) as f64
    }

    /// A transport RTT sample. The planner uses the minimum of the last `SAMPLE_AGE_MS` (10 s): the
    /// transport's smoothed RTT includes the time our own packets queue at the bottleneck, which
    /// the link model already counts as upload time (counting it twice made the element plan
    /// with ~100 ms less than it had on a slow uplink).
    pub fn on_rtt(&mut self, now_ms: f64, rtt_ms: f64) {
        // Keep only samples that can still be the minimum (a monotone queue).
        while self.rtts.back().is_some_and(|&(_, r)| r >= rtt_ms) {
            self.rtts.pop_back();
        }
        self.rtts.push_back((now_ms, rtt_ms));
        self.expire_rtts(now_ms);
    }

    /// The path's RTT measured when the connection came up (quinn's minimum, seeded by the
    /// handshake): a sample, and from now on what the RTT returns to once every sample is stale,
    /// instead of the initial guess. It is the path's floor, without queueing, so it cannot
    /// hold transfers back the way a stale queue-inflated sample did (`expire_rtts`); `cbo eval`
    /// starts from the path's RTT the same way. A connection that comes up is a path of its own
    /// (a reconnection may go another way, e.g. after a Wi-Fi to cellular handover): the samples
    /// of the previous connection are dropped, or a shorter old path's minimum would stand for
    /// up to `SAMPLE_AGE_MS` and let the planner promise deadlines the new path cannot meet.
    pub fn on_path_rtt(&mut self, now_ms: f64, rtt_ms: f64) {
        self.initial_rtt_ms = rtt_ms;
        self.rtts.clear();
        self.on_rtt(now_ms, rtt_ms);
    }

    /// Drops RTT samples older than [`SAMPLE_AGE_MS`]; with none left the RTT returns to where
    /// it started, or to the path's RTT once the connection reported one
    /// ([`Self::on_path_rtt`]). Samples come mostly with answers: a stale one that said "the
    /// deadline cannot be met" (a single 540 ms sample against a 500 ms deadline) otherwise
    /// stopped every send, and with it every new sample, for the rest of the stream (seen for
    /// real on a 0.7 Mbit/s trace, `cbo eval --e2e`).
    fn expire_rtts(&mut self, now_ms: f64) {
        while self
            .rtts
            .front()
            .is_some_and(|&(t, _)| now_ms - t > SAMPLE_AGE_MS)
        {
            self.rtts.pop_front();
        }
        self.rtt_ms = self.rtts.front().map_or(self.initial_rtt_ms, |&(_, r)| r);
    }

    /// Records a send of `bytes` at `now`, returning when its upload should finish.
    pub fn on_send(&mut self, id: u64, now_ms: f64, bytes: f64) -> f64 {
        let start = self.link_free_ms.max(now_ms);
        self.link_free_ms = start + bytes / self.bandwidth.max(1e-6);
        self.sent.push((id, now_ms, bytes));
        self.link_free_ms
    }

    /// Recomputes the estimate at `now`: the quantile of fresh records, capped by what an
    /// overdue request proves. The oldest unanswered request has not finished uploading by
    /// `now − RTT − server time`; if that is longer than the estimate allowed, the link is slower
    /// than estimated.
    pub fn refresh(&mut self, now: f64) {
        self.expire_rtts(now);
        // An answer's record lasts SAMPLE_AGE_MS; a failure's less (`with_failure_memory`).
        self.samples.retain(|s| now <= s.until_ms);
        self.overdue = None;
        self.bandwidth = if self.samples.is_empty() {
            self.initial
        } else {
            let mut sorted: Vec<f64> = self.samples.iter().map(|s| s.rate).collect();
            sorted.sort_by(f64::total_cmp);
            sorted[((sorted.len() - 1) as f64 * self.quantile).floor() as usize]
        };
        let outstanding: f64 = self.sent.iter().map(|s| s.2).sum();
        if let Some(&(_, sent, bytes)) = self.sent.first() {
            let busy = now - self.rtt_ms - self.server_ms - sent.max(self.last_completion_ms);
            if busy > bytes / self.bandwidth.max(1e-6) {
                self.bandwidth = (bytes / busy).max(1e-3);
                self.overdue = Some(self.bandwidth);
                self.link_free_ms = now + outstanding / self.bandwidth;
                return;
            }
        }
        // What we sent and is unanswered can keep the link busy at most this long.
        self.link_free_ms = self
            .link_free_ms
            .min(now + outstanding / self.bandwidth.max(1e-6));
    }
    pub fn on_answer(&mut self, a: &AnswerIn, predicted_bytes: Option<f64>) {
        self.server_ms = if self.server_ms == 0.0 {
            a.server_ms
        } else {
            0.8 * self.server_ms + 0.2 * a.server_ms
        };
        let Some(pos) = self.sent.iter().position(|s| s.0 == a.id) else {
            return;
        };
        // What actually crossed (the send recorded only the prediction).
        let (_, sent_ms, _) = self.sent.remove(pos);
        let bytes = wire_bytes(a.bytes);
        let completion = a.now_ms - self.rtt_ms - a.server_ms;
        let busy = completion - sent_ms.max(self.last_completion_ms);
        self.last_completion_ms = self.last_completion_ms.max(completion);
        // Any answer ends an outage, also one too close behind the previous completion to
        // measure a rate.
        self.outage_failures = 0;
        if busy > 0.5 {
            self.push_record(Record {
                rate: bytes / busy,
                censored: false,
                until_ms: a.now_ms + SAMPLE_AGE_MS,
            });
        }
        self.refresh(a.now_ms);
        if let Some(p) = predicted_bytes.filter(|&p| p > 0.0) {
            self.size_ratio = 0.8 * self.size_ratio + 0.2 * (bytes / p);
        }
    }

    /// A request got no answer (given up at its deadline, or failed). Its upload had not finished
    /// by `now − RTT − server time`, so the link delivered fewer than `bytes / busy` bytes per ms:
    /// that bound becomes a sample. Without it a run of failures (an outage, or frames larger
    /// than the profile predicts) would leave no trace once the request is gone, and the estimate
    /// would stay at its optimistic value while every transfer misses.
    pub fn on_failure(&mut self, id: u64, now: f64) {
        if let Some(pos) = self.sent.iter().position(|s| s.0 == id) {
            let (_, sent_ms, bytes) = self.sent.remove(pos);
            let busy = now - self.rtt_ms - self.server_ms - sent_ms.max(self.last_completion_ms);
            // A request sent after the last failure was known that fails too finds the outage
            // still there: it has lasted longer than that failure's memory allowed.
            if sent_ms > self.last_failure_ms {
                self.outage_failures += 1;
            }
            self.last_failure_ms = now;
            if busy > 0.5 {
                let memory = self.failure_memory_ms
                    * 2f64.powi(self.outage_failures.saturating_sub(1).min(16) as i32);
                self.push_record(Record {
                    rate: bytes / busy,
                    censored: true,
                    until_ms: now + memory.min(SAMPLE_AGE_MS),
                });
            }
        }
        self.refresh(now);
    }

    fn push_record(&mut self, record: Record) {
        while self.samples.len() >= self.max_samples {
            self.samples.pop_front();
        }
        self.samples.push_back(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_replaces_the_previous_paths_rtt() {
        let mut link = LinkEstimate::new(1e6, 40.0);
        link.on_path_rtt(0.0, 20.0);
        link.on_rtt(500.0, 25.0);
        assert_eq!(link.rtt_ms, 20.0);
        // Reconnected over a longer path: its handshake RTT is the RTT at once, not after the
        // old path's 20 ms sample has aged out.
        link.on_path_rtt(1_000.0, 90.0);
        assert_eq!(link.rtt_ms, 90.0);
        // and it is still a sample like any other: a smaller one later lowers it, and with
        // every sample stale the RTT returns to the new path's, not the first one's.
        link.on_rtt(1_500.0, 85.0);
        assert_eq!(link.rtt_ms, 85.0);
        link.on_rtt(20_000.0, 300.0);
        link.on_rtt(40_000.0, 300.0);
        assert_eq!(link.rtt_ms, 300.0);
        link.expire_rtts(60_000.0);
        assert_eq!(link.rtt_ms, 90.0);
    }

    #[test]
    fn rtt_is_the_recent_minimum_not_the_queue_inflated_average() {
        let mut link = LinkEstimate::new(1e6, 40.0);
        link.on_rtt(0.0, 42.0);
        link.on_rtt(100.0, 180.0);
        link.on_rtt(200.0, 120.0);
        assert_eq!(link.rtt_ms, 42.0);
        // The 42 ms sample ages out; the smallest of the rest remains.
        link.on_rtt(10_050.0, 150.0);
        assert_eq!(link.rtt_ms, 120.0);
        link.on_rtt(10_300.0, 60.0);
        assert_eq!(link.rtt_ms, 60.0);
    }

    #[test]
    fn the_arrival_probability_counts_the_last_records_only() {
        // Two slow requests (100 B/ms), then three fast ones (1000 B/ms), one at a time.
        let record = |records: usize| {
            let mut l = LinkEstimate::new(1e6, 20.0).with_records(records);
            let mut now = 0.0;
            for (id, rate) in [100.0, 100.0, 1000.0, 1000.0, 1000.0]
                .into_iter()
                .enumerate()
            {
                let bytes = 10_000.0;
                l.on_send(id as u64, now, bytes);
                let upload = wire_bytes(bytes) / rate;
                let answer = AnswerIn {
                    id: id as u64,
                    now_ms: now + upload + 20.0 + 5.0,
                    bytes,
                    server_ms: 5.0,
                };
                l.on_answer(&answer, None);
                now = answer.now_ms + 100.0;
            }
            // 20 kB within 50 ms needs 400 B/ms: only the fast records carry it.
            l.arrival_probability(0.0, 20_000.0, 50.0)
        };
        assert!((record(5) - 0.6).abs() < 1e-9, "{}", record(5));
        assert_eq!(record(3), 1.0);
        assert!((record(4) - 0.75).abs() < 1e-9, "{}", record(4));
    }

    #[test]
    fn a_failure_carries_the_share_below_its_bound_that_would_do() {
        assert_eq!(carried(100.0, false, 99.0), 1.0);
        assert_eq!(carried(100.0, false, 101.0), 0.0);
        assert!((carried(100.0, true, 25.0) - 0.75).abs() < 1e-12);
        assert_eq!(carried(100.0, true, 99.0 + 2.0), 0.0);
        assert_eq!(carried(0.0, true, 1.0), 0.0);
    }

    #[test]
    fn failures_of_one_moment_count_once_and_a_later_one_is_remembered_twice_as_long() {
        let mut l = LinkEstimate::new(8e6, 20.0).with_failure_memory(1000.0);
        // Three requests sent together fail one after the other: one moment of an outage, each
        // remembered 1 s.
        for id in 0..3 {
            l.on_send(id, 0.0, 10_000.0);
        }
        for id in 0..3 {
            l.on_failure(id, 500.0 + id as f64 * 100.0);
        }
        l.refresh(1_650.0);
        assert_eq!(l.samples.len(), 1);
        l.refresh(1_701.0);
        assert!(l.samples.is_empty());
        // One sent after them that fails too: the outage outlasted their memory, 2 s.
        l.on_send(3, 1_800.0, 10_000.0);
        l.on_failure(3, 2_300.0);
        l.refresh(4_299.0);
        assert_eq!(l.samples.len(), 1);
        l.refresh(4_301.0);
        assert!(l.samples.is_empty());
        // An answer ends the outage: the next failure is remembered 1 s again.
        l.on_send(4, 5_000.0, 10_000.0);
        l.on_answer(
            &AnswerIn {
                id: 4,
                now_ms: 5_100.0,
                bytes: 10_000.0,
                server_ms: 5.0,
            },
            None,
        );
        l.on_send(5, 6_000.0, 10_000.0);
        l.on_failure(5, 6_500.0);
        l.refresh(7_499.0);
        assert_eq!(l.samples.len(), 2);
        l.refresh(7_501.0);
        assert_eq!(l.samples.len(), 1, "the answer's record stays");
    }

    #[test]
    fn an_answer_too_quick_to_measure_still_ends_the_outage() {
        let mut l = LinkEstimate::new(8e6, 20.0).with_failure_memory(1000.0);
        // Two moments of an outage: the second failure is remembered 2 s.
        l.on_send(0, 0.0, 10_000.0);
        l.on_failure(0, 500.0);
        l.on_send(1, 1_600.0, 10_000.0);
        l.on_failure(1, 2_100.0);
        // An answer whose upload took no measurable time (0.3 ms): no record, but the link
        // works again.
        l.on_send(2, 5_000.0, 100.0);
        l.on_answer(
            &AnswerIn {
                id: 2,
                now_ms: 5_000.0 + 20.0 + 5.0 + 0.3,
                bytes: 100.0,
                server_ms: 5.0,
            },
            None,
        );
        assert!(l.samples.is_empty());
        // The next failure starts a new outage: remembered 1 s, not 4 s.
        l.on_send(3, 6_000.0, 10_000.0);
        l.on_failure(3, 6_500.0);
        l.refresh(7_499.0);
        assert_eq!(l.samples.len(), 1);
        l.refresh(7_501.0);
        assert!(l.samples.is_empty());
    }

    #[test]
    fn bandwidth_estimate_ignores_self_queueing() {
        let mut l = LinkEstimate::new(1e6, 20.0);
        // Two 10 kB requests sent together on a true 1000 B/ms link: uploads end at 10 and 20 ms.
        l.on_send(1, 0.0, 10_000.0);
        l.on_send(2, 0.0, 10_000.0);
        l.on_answer(
            &AnswerIn {
                id: 1,
                now_ms: 10.0 + 20.0 + 5.0,
                bytes: 10_000.0,
                server_ms: 5.0,
            },
            None,
        );
        l.on_answer(
            &AnswerIn {
                id: 2,
                now_ms: 20.0 + 20.0 + 5.0,
                bytes: 10_000.0,
                server_ms: 5.0,
            },
            None,
        );
        // Both samples say 1000 B/ms; the estimate moves from 125 towards it.
        assert!(l.bandwidth > 500.0, "{}", l.bandwidth);
    }

    #[test]
    fn the_planners_sweep_agrees_with_the_arrival_probability() {
        // The planner tabulates P over every start in one sweep; the rest of it asks
        // `arrival_probability` one transfer at a time. They must be the same number: answers
        // at several rates, failures' bounds, and then an overdue request capping them all.
        let mut l = LinkEstimate::new(1e6, 20.0).with_failure_memory(5_000.0);
        let mut t = 0.0;
        for (id, &(bytes, took, fails)) in [
            (8_000.0, 40.0, false),
            (6_000.0, 90.0, false),
            (9_000.0, 35.0, false),
            (30_000.0, 150.0, true),
            (5_000.0, 60.0, false),
            (40_000.0, 250.0, true),
            (4_000.0, 33.0, false),
        ]
        .iter()
        .enumerate()
        {
            let id = id as u64;
            t += 1_000.0;
            l.on_send(id, t, bytes);
            let end = t + took + 20.0 + 5.0;
            if fails {
                l.on_failure(id, end);
            } else {
                l.on_answer(
                    &AnswerIn {
                        id,
                        now_ms: end,
                        bytes,
                        server_ms: 5.0,
                    },
                    None,
                );
            }
        }
        let check = |l: &LinkEstimate| {
            let mut sweep = ArrivalSweep::default();
            for (ahead, bytes, budget) in [(0.0, 6_000.0, 300.0), (3_000.0, 2_500.0, 150.0)] {
                let charge = 150.0;
                sweep.reset(l, ahead, bytes, budget, charge);
                let mut seen = Vec::new();
                for step in 0..300 {
                    let start = step as f64 * 2.5;
                    let swept = sweep.at(start);
                    let direct = l.arrival_probability(ahead + start * charge, bytes, budget);
                    assert!(
                        (swept - direct).abs() < 1e-9,
                        "at {start}: {swept} vs {direct}"
                    );
                    seen.push(swept);
                }
                // A walk from likely to impossible, through both kinds of record (a failure's
                // bound carries a share, so some steps are not multiples of 1/7).
                assert!(seen[0] > 0.5 && *seen.last().unwrap() == 0.0, "{seen:?}");
                assert!(
                    seen.iter()
                        .any(|p| ((p * 7.0) - (p * 7.0).round()).abs() > 1e-6),
                    "{seen:?}"
                );
            }
        };
        assert_eq!(l.samples.iter().filter(|r| r.censored).count(), 2);
        check(&l);
        // An overdue request caps every record.
        l.on_send(99, t + 2_000.0, 20_000.0);
        l.refresh(t + 2_400.0);
        assert!(l.overdue.is_some());
        check(&l);
    }
}
