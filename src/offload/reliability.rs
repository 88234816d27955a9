//! How far the arrival probabilities a planner sent with came true (pure: no GStreamer, no I/O).
//!
//! The CBO planner sends a frame when `P(arrives) · gain` outweighs what a miss costs
//! ([`super::planner`]), so `P` has to mean what it says: of the transfers sent with `P = 0.9`,
//! nine in ten should be answered in time. The unit tests check that on scripted links; this
//! measures it on whatever a replay ran (`cbo eval`, every trace of a grid): the sends binned by
//! the probability they were planned with, and per bin the share answered by the deadline (a
//! reliability diagram), with the mean gap between the two (the expected calibration error).

use serde::ser::{Serialize, SerializeStruct, Serializer};

/// Bin edges of the predicted probability. Most sends are planned near certainty, so the top is
/// split finely; the last bin holds `P ≥ 0.99` (every record carried the transfer).
pub const BIN_EDGES: [f64; 8] = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0];

/// Sends whose planned probability fell in `[lo, hi)` (the last bin includes 1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub sends: usize,
    /// Sum of the predicted probabilities (their mean is `predicted / sends`).
    pub predicted: f64,
    /// How many were answered by their deadline.
    pub arrived: usize,
}

impl ReliabilityBin {
    pub fn mean_predicted(&self) -> f64 {
        self.predicted / self.sends.max(1) as f64
    }

    pub fn arrived_share(&self) -> f64 {
        self.arrived as f64 / self.sends.max(1) as f64
    }
}

impl Serialize for ReliabilityBin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut b = s.serialize_struct("ReliabilityBin", 5)?;
        b.serialize_field("lo", &self.lo)?;
        b.serialize_field("hi", &self.hi)?;
        b.serialize_field("sends", &self.sends)?;
        b.serialize_field("mean_predicted", &self.mean_predicted())?;
        b.serialize_field("arrived_share", &self.arrived_share())?;
        b.end()
    }
}

/// A reliability diagram of arrival probabilities: one bin per [`BIN_EDGES`] interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrivalReliability {
    pub bins: Vec<ReliabilityBin>,
}

impl Default for ArrivalReliability {
    fn default() -> Self {
        Self {
            bins: BIN_EDGES
                .windows(2)
                .map(|w| ReliabilityBin {
                    lo: w[0],
                    hi: w[1],
                    ..Default::default()
                })
                .collect(),
        }
    }
}

impl ArrivalReliability {
    /// From a planner's log of sends (frame id, predicted probability) and whether each frame
    /// was answered by its deadline.
    pub fn of(log: &[(u64, f64)], arrived: impl Fn(u64) -> bool) -> Self {
        let mut out = Self::default();
        for &(id, p) in log {
            let p = if p.is_finite() {
                p.clamp(0.0, 1.0)
            } else {
                0.0
            };
            let last = out.bins.len() - 1;
            let k = out.bins.iter().position(|b| p < b.hi).unwrap_or(last);
            let bin = &mut out.bins[k];
            bin.sends += 1;
            bin.predicted += p;
            bin.arrived += usize::from(arrived(id));
        }
        out
    }

    /// Adds another diagram's sends (same bins).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            a.sends += b.sends;
            a.predicted += b.predicted;
            a.arrived += b.arrived;
        }
    }

    pub fn sends(&self) -> usize {
        self.bins.iter().map(|b| b.sends).sum()
    }

    pub fn arrived(&self) -> usize {
        self.bins.iter().map(|b| b.arrived).sum()
    }

    /// Mean predicted probability over every send.
    pub fn mean_predicted(&self) -> f64 {
        self.bins.iter().map(|b| b.predicted).sum::<f64>() / self.sends().max(1) as f64
    }

    /// Share of sends answered in time.
    pub fn arrived_share(&self) -> f64 {
        self.arrived() as f64 / self.sends().max(1) as f64
    }

    /// The expected calibration error: per bin |mean predicted − arrived share|, weighted by
    /// the bin's sends (0 without sends).
    pub fn calibration_error(&self) -> f64 {
        let gap: f64 = self
            .bins
            .iter()
            .map(|b| (b.predicted - b.arrived as f64).abs())
            .sum();
        gap / self.sends().max(1) as f64
    }
}

impl Serialize for ArrivalReliability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut r = s.serialize_struct("ArrivalReliability", 5)?;
        r.serialize_field("sends", &self.sends())?;
        r.serialize_field("mean_predicted", &self.mean_predicted())?;
        r.serialize_field("arrived_share", &self.arrived_share())?;
        r.serialize_field("calibration_error", &self.calibration_error())?;
        r.serialize_field("bins", &self.bins)?;
        r.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_fall_in_the_bin_of_their_probability_and_the_gaps_are_counted_by_hand() {
        // Frames 0..=5; the even ones arrived.
        let log = [
            (0, 1.0),
            (1, 0.995),
            (2, 0.92),
            (3, 0.92),
            (4, 0.3),
            (5, f64::NAN),
        ];
        let r = ArrivalReliability::of(&log, |id| id % 2 == 0);
        let by_lo = |lo: f64| r.bins.iter().find(|b| b.lo == lo).unwrap();
        // [0.99, 1]: 1.0 (arrived) and 0.995 (not): predicted 0.9975, arrived 0.5.
        let top = by_lo(0.99);
        assert_eq!((top.sends, top.arrived), (2, 1));
        assert!((top.mean_predicted() - 0.9975).abs() < 1e-12);
        // [0.9, 0.95): two at 0.92, one arrived.
        assert_eq!((by_lo(0.9).sends, by_lo(0.9).arrived), (2, 1));
        // [0, 0.5): 0.3 (arrived) and a NaN counted as 0 (not).
        assert_eq!((by_lo(0.0).sends, by_lo(0.0).arrived), (2, 1));
        assert_eq!((r.sends(), r.arrived()), (6, 3));
        // |1.995 − 1| + |1.84 − 1| + |0.3 − 1| over 6 sends.
        let ece = (0.995 + 0.84 + 0.7) / 6.0;
        assert!((r.calibration_error() - ece).abs() < 1e-12);
        // Merging doubles the counts, not the gaps' mean.
        let mut twice = r.clone();
        twice.merge(&r);
        assert_eq!(twice.sends(), 12);
        assert!((twice.calibration_error() - ece).abs() < 1e-12);
        let json = serde_json::to_value(&twice).unwrap();
        assert_eq!(json["bins"].as_array().unwrap().len(), BIN_EDGES.len() - 1);
        assert_eq!(json["sends"], 12);
    }

    #[test]
    fn no_sends_is_an_empty_diagram_not_a_division_by_zero() {
        let r = ArrivalReliability::of(&[], |_| true);
        assert_eq!(r.sends(), 0);
        assert_eq!(r.calibration_error(), 0.0);
        assert_eq!(r.arrived_share(), 0.0);
    }
}
