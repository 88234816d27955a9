//! Summaries of a grid of replays (pure): how each policy fares across many (clip × trace ×
//! deadline) settings against the best simple rule of each setting and against the bounds.
//!
//! A policy that looks good on average can still lose to a plain threshold in most settings, or
//! make a stream less accurate than the device alone; the summary is built to show exactly that:
//! the regret against the best *causal baseline* of each setting (the rules a user could have
//! picked instead: [`CAUSAL_BASELINES`]), how often it is within [`BEST_WITHIN`] of it, how often
//! it ends below `local`, and which share of the gain over `local` that the `clairvoyant` and the
//! `link-oracle` bounds reach it reaches.

use std::collections::BTreeMap;

use serde::Serialize;

use super::reliability::ArrivalReliability;
use super::sim::SimResult;

/// The simple rules a user could run instead of `cbo`; none of them is tuned per setting.
pub const CAUSAL_BASELINES: [&str; 5] = ["local", "all", "threshold", "threshold-raw", "fastva"];

/// A policy within this much accuracy (0.5 points) of the best baseline counts as best.
pub const BEST_WITHIN: f64 = 0.005;

/// Bounds whose gain over `local` is below this (0.5 points) are left out of the gain shares:
/// a share of a gain that small is noise.
pub const MIN_BOUND_GAIN: f64 = 0.005;

/// One policy over a grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    /// Settings the policy ran in.
    pub settings: usize,
    pub mean_accuracy: f64,
    /// Best causal baseline's accuracy minus this policy's (positive: worse), mean and worst.
    pub mean_regret: f64,
    pub worst_regret: f64,
    /// Share of settings in which it is within [`BEST_WITHIN`] of the best causal baseline.
    pub best_share: f64,
    /// Share of settings in which it is less accurate than `local`, and by how much at worst.
    pub below_local_share: f64,
    pub worst_below_local: f64,
    pub mean_miss_rate: f64,
    pub mean_offload_ratio: f64,
    /// Mean over settings of (policy − local) / (bound − local), against `clairvoyant` and
    /// `link-oracle` (their `+reuse` variants for a `+reuse` policy); `None` when the bound did
    /// not run or never gained [`MIN_BOUND_GAIN`].
    pub clairvoyant_gain_share: Option<f64>,
    pub link_oracle_gain_share: Option<f64>,
    /// Its sends over every setting, binned by the arrival probability they were planned with
    /// against the share that arrived in time (the estimated-link `cbo` policies only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrival_reliability: Option<ArrivalReliability>,
}

/// The best causal baseline's accuracy in one setting (−∞ when none ran).
pub fn best_baseline(policies: &BTreeMap<String, SimResult>) -> f64 {
    CAUSAL_BASELINES
        .iter()
        .filter_map(|b| policies.get(*b))
        .map(|b| b.accuracy)
        .fold(f64::NEG_INFINITY, f64::max)
}

/// The bound a policy's gain is compared with: `bound`, or `bound+reuse` for a reuse policy.
fn bound_for(policy: &str, bound: &str) -> String {
    if policy.ends_with("+reuse") {
        format!("{bound}+reuse")
    } else {
        bound.to_string()
    }
}

/// Summarises every policy that ran in the settings (each setting: policy name → result).
pub fn summarise(settings: &[&BTreeMap<String, SimResult>]) -> BTreeMap<String, PolicySummary> {
    let mut names: Vec<&String> = settings.iter().flat_map(|s| s.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = BTreeMap::new();
    for name in names {
        let mut n = 0usize;
        let (mut acc, mut regret, mut worst, mut best, mut below, mut worst_below) =
            (0.0, 0.0, f64::NEG_INFINITY, 0usize, 0usize, 0.0f64);
        let (mut miss, mut offload) = (0.0, 0.0);
        let mut shares: [(f64, usize); 2] = [(0.0, 0), (0.0, 0)];
        let mut arrival: Option<ArrivalReliability> = None;
        for s in settings {
            let Some(r) = s.get(name) else { continue };
            n += 1;
            if let Some(a) = &r.arrival {
                arrival.get_or_insert_with(Default::default).merge(a);
            }
            acc += r.accuracy;
            miss += r.deadline_miss_rate;
            offload += r.offload_ratio;
            let baseline = best_baseline(s);
            if baseline.is_finite() {
                let d = baseline - r.accuracy;
                regret += d;
                worst = worst.max(d);
                best += usize::from(d <= BEST_WITHIN + 1e-12);
            }
            if let Some(local) = s.get("local") {
                if r.accuracy < local.accuracy {
                    below += 1;
                    worst_below = worst_below.max(local.accuracy - r.accuracy);
                }
                for (k, bound) in ["clairvoyant", "link-oracle"].iter().enumerate() {
                    if let Some(b) = s.get(&bound_for(name, bound)) {
                        let gain = b.accuracy - local.accuracy;
                        if gain >= MIN_BOUND_GAIN {
                            shares[k].0 += (r.accuracy - local.accuracy) / gain;
                            shares[k].1 += 1;
                        }
                    }
                }
            }
        }
        if n == 0 {
            continue;
        }
        let nf = n as f64;
        let share = |(sum, k): (f64, usize)| (k > 0).then(|| sum / k as f64);
        out.insert(
            name.clone(),
            PolicySummary {
                settings: n,
                mean_accuracy: acc / nf,
                mean_regret: regret / nf,
                worst_regret: if worst.is_finite() { worst } else { 0.0 },
                best_share: best as f64 / nf,
                below_local_share: below as f64 / nf,
                worst_below_local: worst_below,
                mean_miss_rate: miss / nf,
                mean_offload_ratio: offload / nf,
                clairvoyant_gain_share: share(shares[0]),
                link_oracle_gain_share: share(shares[1]),
                arrival_reliability: arrival,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(accuracy: f64, miss: f64) -> SimResult {
        SimResult::scored(accuracy, miss)
    }

    fn setting(v: &[(&str, f64, f64)]) -> BTreeMap<String, SimResult> {
        v.iter()
            .map(|&(n, a, m)| (n.to_string(), r(a, m)))
            .collect()
    }

    #[test]
    fn a_tiny_grid_summarises_as_counted_by_hand() {
        // Setting 1: best baseline threshold 0.80; cbo 0.81 (best, regret -0.01); bounds 0.90
        // and 0.85 over local 0.70 -> shares 0.55 and 0.733.
        let s1 = setting(&[
            ("local", 0.70, 0.0),
            ("threshold", 0.80, 0.02),
            ("all", 0.60, 0.30),
            ("cbo", 0.81, 0.01),
            ("clairvoyant", 0.90, 0.0),
            ("link-oracle", 0.85, 0.0),
        ]);
        // Setting 2: best baseline local 0.70 (the link is useless); cbo 0.69: regret 0.01,
        // not best, below local; bounds gain 0.002 < MIN_BOUND_GAIN: no share.
        let s2 = setting(&[
            ("local", 0.70, 0.0),
            ("threshold", 0.65, 0.10),
            ("all", 0.50, 0.50),
            ("cbo", 0.69, 0.03),
            ("clairvoyant", 0.702, 0.0),
            ("link-oracle", 0.701, 0.0),
        ]);
        // Setting 3: cbo within 0.5 points below the best baseline: counts as best.
        let s3 = setting(&[
            ("local", 0.50, 0.0),
            ("fastva", 0.60, 0.0),
            ("cbo", 0.596, 0.0),
            ("clairvoyant", 0.70, 0.0),
        ]);
        let sum = summarise(&[&s1, &s2, &s3]);
        let c = &sum["cbo"];
        assert_eq!(c.settings, 3);
        assert!((c.mean_accuracy - (0.81 + 0.69 + 0.596) / 3.0).abs() < 1e-12);
        assert!((c.mean_regret - (-0.01 + 0.01 + 0.004) / 3.0).abs() < 1e-12);
        assert!((c.worst_regret - 0.01).abs() < 1e-12);
        assert!((c.best_share - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.below_local_share - 1.0 / 3.0).abs() < 1e-12);
        assert!((c.worst_below_local - 0.01).abs() < 1e-12);
        assert!((c.mean_miss_rate - 0.04 / 3.0).abs() < 1e-12);
        // Clairvoyant: settings 1 (0.11/0.20) and 3 (0.096/0.20); link-oracle: setting 1 only.
        let cs = c.clairvoyant_gain_share.unwrap();
        assert!((cs - (0.55 + 0.48) / 2.0).abs() < 1e-9, "{cs}");
        let ls = c.link_oracle_gain_share.unwrap();
        assert!((ls - 0.11 / 0.15).abs() < 1e-9, "{ls}");
        // A baseline is its own best in setting 1 only when it is the best one.
        let t = &sum["threshold"];
        assert_eq!(t.settings, 2);
        assert!((t.best_share - 0.5).abs() < 1e-12);
        assert!((t.worst_regret - 0.05).abs() < 1e-12);
        // Only a policy whose replays logged arrival probabilities gets a diagram.
        assert_eq!(c.arrival_reliability, None);
        // A policy without its bound has no share.
        let only = setting(&[
            ("local", 0.5, 0.0),
            ("cbo+reuse", 0.6, 0.0),
            ("clairvoyant", 0.7, 0.0),
        ]);
        assert_eq!(
            summarise(&[&only])["cbo+reuse"].clairvoyant_gain_share,
            None
        );
    }

    #[test]
    fn the_arrival_diagrams_of_every_setting_add_up() {
        use crate::offload::reliability::ArrivalReliability;
        let with = |log: &[(u64, f64)], arrived: &[u64]| {
            let mut m = setting(&[("local", 0.5, 0.0), ("cbo", 0.6, 0.01)]);
            m.get_mut("cbo").unwrap().arrival =
                Some(ArrivalReliability::of(log, |id| arrived.contains(&id)));
            m
        };
        let s1 = with(&[(0, 1.0), (1, 0.85)], &[0]);
        let s2 = with(&[(4, 1.0), (7, 0.6)], &[4, 7]);
        let a = summarise(&[&s1, &s2])["cbo"]
            .arrival_reliability
            .clone()
            .expect("merged");
        assert_eq!((a.sends(), a.arrived()), (4, 3));
        let top = a.bins.last().unwrap();
        assert_eq!((top.sends, top.arrived), (2, 2));
        // |0.85 − 0| + |0.6 − 1| + |2 − 2| over 4 sends.
        assert!((a.calibration_error() - 1.25 / 4.0).abs() < 1e-12);
    }
}
