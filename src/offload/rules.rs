//! The simple policies as planners (pure): `local`, `all`, `threshold`, `threshold-raw` and FastVA,
//! the baselines the CBO planner ([`super::planner`]) must beat, driven the same way.

use super::link_estimate::LinkEstimate;
use super::planner::{
    Action, AnswerIn, FrameIn, MARGIN_MS, Option_, Planner, ServerTimeScale, options, wire_bytes,
};
use crate::profile::Profile;

/// The simple rules: `local`, `all`, `threshold`, `threshold-raw` (a fixed resolution, decided at
/// arrival, late answers dropped), and FastVA (send whenever the estimate says the answer arrives
/// in time, at the largest resolution that fits, ignoring confidence).
pub struct RulePlanner {
    rule: Rule,
    shorts: Vec<u32>,
    /// Index of the fixed resolution.
    fixed: usize,
    opts: Vec<Option_>,
    pub link: LinkEstimate,
    /// FastVA: the profile's server time scaled by what answers report, as the CBO planner does
    /// (the FastVA paper budgets the measured processing time, not a fixed one).
    server_scale: ServerTimeScale,
    /// FastVA: the resolution of each unanswered request, to compare its answer's reported
    /// server time with the profile's at that resolution.
    open: Vec<(u64, usize)>,
    due: Vec<(u64, Action)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Local,
    All,
    Threshold(f64),
    ThresholdRaw(f64),
    FastVa,
}

impl RulePlanner {
    pub fn new(
        rule: Rule,
        profile: &Profile,
        fixed_short_side: u32,
        initial_bps: f64,
        rtt_ms: f64,
    ) -> Self {
        let opts = options(profile);
        let shorts: Vec<u32> = opts.iter().map(|o| o.short_side).collect();
        let fixed = shorts
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.abs_diff(fixed_short_side))
            .map(|(i, _)| i)
            .unwrap_or(0);
        Self {
            rule,
            shorts,
            fixed,
            opts,
            link: LinkEstimate::new(initial_bps, rtt_ms),
            server_scale: ServerTimeScale::default(),
            open: Vec::new(),
            due: Vec::new(),
        }
    }

    /// A fixed-resolution rule without a profile: it sends at exactly `short_side` (the only
    /// resolution). FastVA needs the profile's sizes and takes [`RulePlanner::new`].
    pub fn fixed(rule: Rule, short_side: u32) -> Self {
        Self {
            rule,
            shorts: vec![short_side],
            fixed: 0,
            opts: vec![Option_ {
                short_side,
                bytes: 0.0,
                server_ms: 0.0,
                encode_ms: 0.0,
            }],
            link: LinkEstimate::new(1e6, 0.0),
            server_scale: ServerTimeScale::default(),
            open: Vec::new(),
            due: Vec::new(),
        }
    }
}

impl Planner for RulePlanner {
    fn name(&self) -> &'static str {
        match self.rule {
            Rule::Local => "local",
            Rule::All => "all",
            Rule::Threshold(_) => "threshold",
            Rule::ThresholdRaw(_) => "threshold-raw",
            Rule::FastVa => "fastva",
        }
    }

    fn on_frame(&mut self, f: FrameIn) {
        let send = |r: usize| Action::Send { resolution: r };
        let action = match self.rule {
            Rule::Local => Action::Keep,
            Rule::All => send(self.fixed),
            Rule::Threshold(t) if f.confidence < t => send(self.fixed),
            Rule::ThresholdRaw(t) if f.raw_confidence < t => send(self.fixed),
            Rule::Threshold(_) | Rule::ThresholdRaw(_) => Action::Keep,
            Rule::FastVa => {
                self.link.refresh(f.arrival_ms);
                self.server_scale.expire(f.arrival_ms);
                let scale = self.server_scale.get();
                let t0 = self.link.link_free_ms.max(f.arrival_ms);
                let bytes = |r: usize| wire_bytes(self.opts[r].bytes * self.link.size_ratio);
                // Time left for the upload after RTT, server, encode and margin.
                let budget = |r: usize| {
                    let o = &self.opts[r];
                    f.deadline_ms
                        - t0
                        - self.link.rtt_ms
                        - o.server_ms * scale
                        - o.encode_ms
                        - MARGIN_MS
                };
                let fits = (0..self.opts.len())
                    .rev()
                    .find(|&r| bytes(r) / self.link.bandwidth.max(1e-6) <= budget(r));
                // Nothing fits on the initial guess alone: probe, as the cbo planner does
                // (`LinkEstimate::unmeasured`), with the resolution needing the least
                // throughput; else the guess, never measured, stops FastVA for good.
                let probe = || {
                    (0..self.opts.len())
                        .filter(|&r| budget(r) > 0.0)
                        .min_by(|&a, &b| (bytes(a) / budget(a)).total_cmp(&(bytes(b) / budget(b))))
                };
                match fits {
                    Some(r) => send(r),
                    None if self.link.unmeasured(f.arrival_ms) => {
                        probe().map_or(Action::Keep, send)
                    }
                    None => Action::Keep,
                }
            }
        };
        if let Action::Send { resolution } = action {
            let bytes = wire_bytes(self.opts[resolution].bytes * self.link.size_ratio);
            self.link.on_send(f.id, f.arrival_ms, bytes);
            if self.rule == Rule::FastVa {
                self.open.push((f.id, resolution));
            }
        }
        self.due.push((f.id, action));
    }

    fn on_answer(&mut self, a: AnswerIn) {
        if let Some(i) = self.open.iter().position(|o| o.0 == a.id) {
            let (_, r) = self.open.swap_remove(i);
            self.server_scale
                .on_answer(self.opts[r].server_ms, a.server_ms, a.now_ms);
        }
        self.link.on_answer(&a, None);
    }

    fn on_failure(&mut self, id: u64, now_ms: f64) {
        self.open.retain(|o| o.0 != id);
        self.link.on_failure(id, now_ms);
    }

    fn poll(&mut self, _now_ms: f64) -> Vec<(u64, Action)> {
        std::mem::take(&mut self.due)
    }

    fn next_wakeup(&self) -> Option<f64> {
        None
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

    fn set_threshold(&mut self, threshold: f64) {
        if let Rule::Threshold(t) | Rule::ThresholdRaw(t) = &mut self.rule {
            *t = threshold;
        }
    }

    fn describe(&self) -> String {
        match self.rule {
            Rule::FastVa => self.link.describe(),
            Rule::Threshold(t) | Rule::ThresholdRaw(t) => format!("threshold {t}"),
            Rule::Local | Rule::All => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::planner::tests::{frame, profile};

    #[test]
    fn rules() {
        let pr = profile();
        let mut p = RulePlanner::new(Rule::Threshold(0.5), &pr, 224, 8e6, 20.0);
        p.on_frame(frame(0, 0.0, 0.4));
        p.on_frame(frame(1, 0.0, 0.6));
        assert_eq!(
            p.poll(0.0),
            vec![(0, Action::Send { resolution: 1 }), (1, Action::Keep)]
        );
        let mut p = RulePlanner::new(Rule::FastVa, &pr, 224, 0.4e6, 20.0);
        p.on_frame(frame(0, 0.0, 0.99));
        // 224 needs 351 ms ≤ 500: the largest fits.
        assert_eq!(p.poll(0.0), vec![(0, Action::Send { resolution: 1 })]);
        p.on_frame(frame(1, 0.0, 0.99));
        // Behind it: 300 + 100 + 51 = 451 ≤ 500 fits only the small one.
        assert_eq!(p.poll(0.0), vec![(1, Action::Send { resolution: 0 })]);
        p.on_frame(frame(2, 0.0, 0.99));
        assert_eq!(p.poll(0.0), vec![(2, Action::Keep)]);
    }

    #[test]
    fn fastva_probes_when_its_initial_guess_lets_nothing_arrive() {
        // 0.04 Mbit/s (5 B/ms) carries neither 5 nor 15 kB in time: the guess is probed at the
        // resolution needing the least throughput, one probe at a time.
        let mut p = RulePlanner::new(Rule::FastVa, &profile(), 224, 0.04e6, 20.0);
        p.on_frame(frame(0, 0.0, 0.2));
        p.on_frame(frame(1, 0.0, 0.2));
        assert_eq!(
            p.poll(0.0),
            vec![(0, Action::Send { resolution: 0 }), (1, Action::Keep)]
        );
        // Once measured (the probe failed: its bound stands), the estimate decides.
        p.on_failure(0, 500.0);
        p.on_frame(frame(2, 600.0, 0.2));
        assert_eq!(p.poll(600.0), vec![(2, Action::Keep)]);
    }

    #[test]
    fn fastva_budgets_the_server_time_answers_report() {
        // 8 Mbit/s: a 224-px request is on the link ~15 ms; the profile's server time is 20 ms.
        let mut p = RulePlanner::new(Rule::FastVa, &profile(), 224, 8e6, 20.0);
        let answer = |id, now_ms, server_ms| AnswerIn {
            id,
            now_ms,
            bytes: 15_000.0,
            server_ms,
        };
        p.on_frame(frame(0, 0.0, 0.99));
        assert_eq!(p.poll(0.0), vec![(0, Action::Send { resolution: 1 })]);
        // A server 25 times slower than profiled: 500 ms of server time leave nothing of a
        // 500 ms deadline, at any resolution.
        p.on_answer(answer(0, 560.0, 500.0));
        p.on_frame(frame(1, 600.0, 0.99));
        assert_eq!(p.poll(600.0), vec![(1, Action::Keep)]);
        // 10 s without an answer: back to the profile's time (else nothing would ever be sent
        // again to learn that the server recovered).
        p.on_frame(frame(2, 10_700.0, 0.99));
        assert_eq!(p.poll(10_700.0), vec![(2, Action::Send { resolution: 1 })]);
        // A server at the profile's time keeps the largest resolution; a failed request
        // teaches nothing about the server.
        p.on_answer(answer(2, 10_760.0, 20.0));
        p.on_frame(frame(3, 10_800.0, 0.99));
        assert_eq!(p.poll(10_800.0), vec![(3, Action::Send { resolution: 1 })]);
        p.on_failure(3, 11_300.0);
        p.on_frame(frame(4, 11_400.0, 0.99));
        assert_eq!(p.poll(11_400.0), vec![(4, Action::Send { resolution: 1 })]);
    }
}
