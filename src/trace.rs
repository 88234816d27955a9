//! Mahimahi link traces (pure): when a cellular uplink could deliver bytes.
//!
//! Each line of a trace is a millisecond timestamp at which one 1500-byte packet may cross the
//! link; repeated timestamps mean several packets in that millisecond; the trace repeats with a
//! period equal to its last timestamp (as `mm-link` does). Here every delivery opportunity drains
//! up to [`MTU`] bytes of whatever is queued, byte-granular (a packet may complete over several
//! opportunities), which is how both `cbo netem` (the real relay) and the `cbo eval` simulation
//! use it, so the two agree.

use std::path::Path;

/// Bytes one delivery opportunity carries.
pub const MTU: u64 = 1500;

/// Latest timestamp a trace may have, ms (2^40, ~35 years): real traces last minutes to hours,
/// and the relay's and the simulator's time arithmetic (a period's start plus a delay, a second's
/// index) stays far from overflowing below it. A trace of two lines, `1` and `18446744073709551615`,
/// made `cbo netem` allocate per-second statistics until it ran out of memory, and `cbo eval` loop.
pub const MAX_TIME_MS: u64 = 1 << 40;

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace '{path}': {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: '{text}' is not a millisecond count")]
    NotANumber { line: usize, text: String },
    #[error("line {line}: timestamp {t} goes backwards")]
    Backwards { line: usize, t: u64 },
    #[error(
        "line {line}: timestamp {t} ms is later than the {MAX_TIME_MS} ms (~35 years) a trace may last"
    )]
    TooLate { line: usize, t: u64 },
    #[error("the trace has no delivery opportunities")]
    Empty,
    #[error("the trace's last timestamp must be positive (it is the period)")]
    ZeroPeriod,
    #[error("trace '{path}': {source}")]
    In {
        path: std::path::PathBuf,
        source: Box<TraceError>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Opportunity timestamps within one period, ms, non-decreasing.
    times_ms: Vec<u64>,
    /// The trace repeats every `period_ms`.
    period_ms: u64,
}

impl Trace {
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut times_ms = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let t: u64 = line.parse().map_err(|_| TraceError::NotANumber {
                line: i + 1,
                text: line.to_string(),
            })?;
            if times_ms.last().is_some_and(|&last| t < last) {
                return Err(TraceError::Backwards { line: i + 1, t });
            }
            if t > MAX_TIME_MS {
                return Err(TraceError::TooLate { line: i + 1, t });
            }
            times_ms.push(t);
        }
        let period_ms = *times_ms.last().ok_or(TraceError::Empty)?;
        if period_ms == 0 {
            return Err(TraceError::ZeroPeriod);
        }
        Ok(Self {
            times_ms,
            period_ms,
        })
    }

    pub fn load(path: &Path) -> Result<Self, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| TraceError::In {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// A constant-rate link of `bits_per_second` (one opportunity per ms or fewer).
    pub fn constant(bits_per_second: f64) -> Self {
        let per_ms = bits_per_second / 8.0 / MTU as f64 / 1000.0;
        // Spread opportunities evenly over a 1 s period.
        let n = (per_ms * 1000.0).round().max(1.0) as u64;
        let times_ms = (1..=n).map(|k| (k * 1000).div_ceil(n)).collect();
        Self {
            times_ms,
            period_ms: 1000,
        }
    }

    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// Mean capacity over one period, bits per second.
    pub fn mean_bps(&self) -> f64 {
        self.times_ms.len() as f64 * MTU as f64 * 8.0 / (self.period_ms as f64 / 1000.0)
    }

    /// Index (over the repeated trace) of the first opportunity at or after `t_ms`.
    pub fn first_at_or_after(&self, t_ms: u64) -> u64 {
        let n = self.times_ms.len() as u64;
        // Opportunity k of period p happens at p * period + times[k]; period p covers
        // (p * period, (p + 1) * period] because the last timestamp equals the period.
        let p = t_ms.saturating_sub(1) / self.period_ms;
        let within = t_ms - p * self.period_ms;
        let k = self.times_ms.partition_point(|&x| x < within) as u64;
        p * n + k
    }

    /// Time (ms) of opportunity `index` over the repeated trace.
    pub fn time_of(&self, index: u64) -> u64 {
        let n = self.times_ms.len() as u64;
        (index / n) * self.period_ms + self.times_ms[(index % n) as usize]
    }

    /// The same link met `offset_ms` into it: opportunity `t` of this trace is at `t − offset`
    /// (modulo the period) in the result. `cbo eval --e2e` replays a cell with the trace as the
    /// real run met it (its clip started some time after the relay's trace clock).
    pub fn rotated(&self, offset_ms: u64) -> Self {
        let offset = offset_ms % self.period_ms;
        let mut times_ms: Vec<u64> = self
            .times_ms
            .iter()
            .map(|&t| match (t + self.period_ms - offset) % self.period_ms {
                // A period covers (0, period]: time 0 is the previous period's last instant.
                0 => self.period_ms,
                r => r,
            })
            .collect();
        times_ms.sort_unstable();
        Self {
            times_ms,
            period_ms: self.period_ms,
        }
    }

    /// Bytes the link can carry in `[t0_ms, t1_ms)`.
    pub fn capacity_bytes(&self, t0_ms: u64, t1_ms: u64) -> u64 {
        if t1_ms <= t0_ms {
            return 0;
        }
        (self.first_at_or_after(t1_ms) - self.first_at_or_after(t0_ms)) * MTU
    }
}

/// A drop-tail FIFO in front of a trace-driven link, byte-granular: the uplink model shared by the
/// relay and the simulator. Time only moves forward.
#[derive(Debug, Clone)]
pub struct LinkQueue {
    trace: Trace,
    /// Next opportunity not yet used.
    next: u64,
    /// Bytes of the opportunity `next - 1` still unused (an opportunity partly used by the last
    /// packet serves the next packet too).
    spare: u64,
    /// When the last queued byte leaves, ms.
    busy_until_ms: u64,
    queue_limit_bytes: u64,
}

impl LinkQueue {
    pub fn new(trace: Trace, queue_limit_bytes: u64) -> Self {
        Self {
            trace,
            next: 0,
            spare: 0,
            busy_until_ms: 0,
            queue_limit_bytes,
        }
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// When the last byte accepted so far crosses the link.
    pub fn busy_until_ms(&self) -> u64 {
        self.busy_until_ms
    }

    /// Bytes waiting at `now_ms`: those assigned to opportunities at or after `now_ms` (the ones
    /// before have crossed), less the unused part of the last assigned opportunity.
    pub fn backlog_bytes(&self, now_ms: u64) -> u64 {
        let first = self.trace.first_at_or_after(now_ms);
        if self.next <= first {
            return 0;
        }
        (self.next - first) * MTU - self.spare
    }

    /// Enqueues a packet of `bytes` arriving at `now_ms`; returns when its last byte crosses the
    /// link, or `None` when the drop-tail queue is full (the packet is lost).
    pub fn send(&mut self, now_ms: u64, bytes: u64) -> Option<u64> {
        if now_ms >= self.busy_until_ms {
            // Idle link: unused opportunities are gone.
            let first = self.trace.first_at_or_after(now_ms);
            if first >= self.next {
                self.next = first;
                self.spare = 0;
            }
        }
        if self.backlog_bytes(now_ms) + bytes > self.queue_limit_bytes {
            return None;
        }
        let mut left = bytes;
        let mut done_at = self.busy_until_ms.max(now_ms);
        let used = left.min(self.spare);
        left -= used;
        self.spare -= used;
        while left > 0 {
            done_at = self.trace.time_of(self.next);
            self.next += 1;
            let used = left.min(MTU);
            left -= used;
            self.spare = MTU - used;
        }
        self.busy_until_ms = done_at;
        Some(done_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_trace_is_the_same_link_met_later() {
        let t = Trace::parse("3\n3\n7\n12\n20").unwrap();
        assert_eq!(t.rotated(0), t);
        assert_eq!(t.rotated(20), t);
        let r = t.rotated(7);
        assert_eq!(r.period_ms(), 20);
        // What the original carries in [7 + a, 7 + b), the rotated one carries in [a, b) (from
        // time 1: as in any trace, time 0 is the end of the period before the first).
        for (a, b) in [
            (1, 5),
            (1, 13),
            (4, 30),
            (1, 40),
            (13, 19),
            (13, 21),
            (20, 47),
        ] {
            assert_eq!(
                r.capacity_bytes(a, b),
                t.capacity_bytes(7 + a, 7 + b),
                "[{a}, {b})"
            );
        }
        assert_eq!(r.mean_bps(), t.mean_bps());
    }

    #[test]
    fn parses_and_repeats() {
        let t = Trace::parse("1\n1\n3\n5\n").unwrap();
        assert_eq!(t.period_ms(), 5);
        // 4 opportunities of 1500 B per 5 ms = 9.6 Mbit/s.
        assert!((t.mean_bps() - 9.6e6).abs() < 1.0);
        assert_eq!(t.first_at_or_after(0), 0);
        assert_eq!(t.first_at_or_after(1), 0);
        assert_eq!(t.first_at_or_after(2), 2);
        assert_eq!(t.first_at_or_after(5), 3);
        assert_eq!(t.first_at_or_after(6), 4);
        assert_eq!(t.time_of(4), 6);
        assert_eq!(t.time_of(7), 10);
        assert_eq!(t.capacity_bytes(0, 5), 3 * MTU);
        assert_eq!(t.capacity_bytes(0, 6), 4 * MTU);
        assert_eq!(
            t.capacity_bytes(0, 1000),
            799 * MTU,
            "the one at 1000 ms is not before 1000"
        );
        assert!(matches!(Trace::parse(""), Err(TraceError::Empty)));
        assert!(matches!(
            Trace::parse("3\n2\n"),
            Err(TraceError::Backwards { line: 2, t: 2 })
        ));
        let e = Trace::parse("1\nx\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(matches!(Trace::parse("0\n"), Err(TraceError::ZeroPeriod)));
        assert!(matches!(
            Trace::parse("1\n18446744073709551615\n"),
            Err(TraceError::TooLate { line: 2, .. })
        ));
        assert!(Trace::parse(&format!("1\n{MAX_TIME_MS}\n")).is_ok());
    }

    #[test]
    fn constant_rate_matches() {
        let t = Trace::constant(12e6);
        assert!((t.mean_bps() - 12e6).abs() / 12e6 < 0.01);
        let t = Trace::constant(1e6);
        assert!((t.mean_bps() - 1e6).abs() / 1e6 < 0.02);
    }

    #[test]
    fn link_queue_serialises_packets_on_opportunities() {
        // One opportunity per ms.
        let mut q = LinkQueue::new(Trace::parse("1\n").unwrap(), 10_000);
        // 3000 bytes at t=0: opportunities at 1 and 2 ms.
        assert_eq!(q.send(0, 3000), Some(2));
        // Behind it: 1000 bytes take opportunity 3 (500 spare after).
        assert_eq!(q.send(0, 1000), Some(3));
        assert_eq!(
            q.send(1, 400),
            Some(3),
            "fits in the spare of opportunity 3"
        );
        assert_eq!(q.backlog_bytes(1), 4400);
        // Idle link later: starts at the next opportunity after now.
        assert_eq!(q.send(10, 100), Some(10));
        // Drop-tail.
        let mut q = LinkQueue::new(Trace::parse("10\n").unwrap(), 3000);
        assert_eq!(q.send(0, 3000), Some(20));
        assert_eq!(q.send(0, 1), None);
        // Drop-tail on what is still queued: once the first packet has crossed (t=10), the
        // second one's 1500 bytes leave room for 1500 more.
        assert_eq!(q.backlog_bytes(11), 1500);
        assert_eq!(q.send(11, 1500), Some(30));
        assert_eq!(q.send(11, 1), None);
    }

    #[test]
    fn a_saturated_queue_stays_full_and_drops_evenly() {
        // 2 Mbit/s, 30 kB queue, offered twice the rate: after the queue fills, about every
        // other packet is accepted, and the link never idles.
        let trace = Trace::constant(2e6);
        let mut q = LinkQueue::new(trace.clone(), 30_000);
        let (mut accepted_bytes, mut longest_drop_run, mut run) = (0u64, 0u32, 0u32);
        let mut last_done = 0;
        for t in (0..2000u64).step_by(5) {
            for _ in 0..2 {
                match q.send(t, 1228) {
                    Some(done) => {
                        accepted_bytes += 1228;
                        last_done = done;
                        run = 0;
                    }
                    None => {
                        run += 1;
                        longest_drop_run = longest_drop_run.max(run);
                    }
                }
            }
            if t >= 200 {
                assert!(
                    q.backlog_bytes(t) > 30_000 - 2 * 1500,
                    "t={t}: {}",
                    q.backlog_bytes(t)
                );
            }
        }
        assert!(longest_drop_run <= 4, "{longest_drop_run}");
        // Everything accepted crosses back to back: the capacity up to the last completion.
        let carried = trace.capacity_bytes(0, last_done + 1);
        assert!(
            accepted_bytes <= carried && carried - accepted_bytes < 1500,
            "{accepted_bytes} vs {carried}"
        );
    }

    #[test]
    fn real_traces_have_the_documented_means() {
        // The shared assets: CBO_ASSETS, or ../shared/assets beside the checkout (as the
        // integration tests find them).
        let assets = std::env::var_os("CBO_ASSETS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets"));
        let dir = assets.join("traces");
        for (file, mbps) in [
            ("Verizon-LTE-short.up", 5.95),
            ("TMobile-LTE-short.up", 13.3),
            ("ATT-LTE-driving.up", 0.83),
        ] {
            let t = Trace::load(&dir.join(file)).unwrap();
            assert!(
                (t.mean_bps() / 1e6 - mbps).abs() < 0.1,
                "{file}: {}",
                t.mean_bps()
            );
        }
    }
}
