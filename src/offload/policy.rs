//! The `policy` names and the planner each one is: the element (`policy=...`) and `cbo eval`
//! build their planners here, so both run the same [`Planner`] for the same name.
//!
//! The per-frame rules (`local`, `all`, `threshold`, `threshold-raw`) and the FastVA baseline are
//! a [`RulePlanner`]; `cbo` is the [`CboPlanner`], and `cbo+reuse` the same planner told that
//! answers are reused ([`super::reuse`]). What the element adds around a planner (the in-flight
//! window, offline frames) is the [`super::driver::PolicyDriver`]'s.

use super::planner::{CboPlanner, Planner};
use super::rules::{Rule, RulePlanner};
use crate::profile::Profile;

/// The policies by name (`cbo eval --policies`, the element's `policy` nicks).
pub const NAMES: [&str; 6] = [
    "local",
    "all",
    "threshold",
    "threshold-raw",
    "fastva",
    "cbo",
];
/// Appended to `cbo`: the planner counts on answer reuse, and the output applies it.
pub const REUSE_SUFFIX: &str = "+reuse";

/// Every policy the element runs: [`NAMES`] and `cbo` with answer reuse (its default).
/// (`cbo eval`'s bounds, `link-oracle` and `clairvoyant`, exist only in the simulator.)
pub const ELEMENT_POLICIES: [&str; 7] = [
    NAMES[0],
    NAMES[1],
    NAMES[2],
    NAMES[3],
    NAMES[4],
    NAMES[5],
    "cbo+reuse",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Never offload.
    Local,
    /// Offload every frame.
    All,
    /// Offload frames whose (calibrated) confidence is below the threshold.
    Threshold,
    /// Offload frames whose raw (uncalibrated) confidence is below the threshold.
    ThresholdRaw,
    /// FastVA: offload whenever the link estimate says the answer arrives in time.
    FastVa,
    /// The CBO planner.
    Cbo,
}

impl PolicyKind {
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Local => "local",
            PolicyKind::All => "all",
            PolicyKind::Threshold => "threshold",
            PolicyKind::ThresholdRaw => "threshold-raw",
            PolicyKind::FastVa => "fastva",
            PolicyKind::Cbo => "cbo",
        }
    }

    /// Needs the offload profile (sizes, server times; accuracies for `cbo`).
    pub fn needs_profile(self) -> bool {
        matches!(self, PolicyKind::FastVa | PolicyKind::Cbo)
    }
}

/// A policy and its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicySpec {
    pub kind: PolicyKind,
    pub threshold: f64,
    /// Short side the fixed-resolution rules send at.
    pub resolution: u32,
    /// `cbo` only: answers are reused for this long ([`super::reuse`]).
    pub reuse_window_ms: Option<f64>,
}

impl PolicySpec {
    /// `name` as `cbo eval` spells it (`cbo+reuse` for reuse with `reuse_window_ms`).
    pub fn parse(
        name: &str,
        threshold: f64,
        resolution: u32,
        reuse_window_ms: f64,
    ) -> Result<Self, String> {
        let reuse = name.ends_with(REUSE_SUFFIX);
        let base = name.strip_suffix(REUSE_SUFFIX).unwrap_or(name);
        let kind = match base {
            "local" => PolicyKind::Local,
            "all" => PolicyKind::All,
            "threshold" => PolicyKind::Threshold,
            "threshold-raw" => PolicyKind::ThresholdRaw,
            "fastva" => PolicyKind::FastVa,
            "cbo" => PolicyKind::Cbo,
            other => return Err(format!("unknown policy '{other}'")),
        };
        if reuse && kind != PolicyKind::Cbo {
            return Err(format!("'{name}': only cbo reuses answers"));
        }
        Ok(Self {
            kind,
            threshold,
            resolution,
            reuse_window_ms: reuse.then_some(reuse_window_ms),
        })
    }

    /// The planner. With a `profile`, every policy picks among its resolutions (the fixed rules
    /// at the one nearest `resolution`: the simulator only knows those); without one, the fixed
    /// rules send at exactly `resolution`. `None` when the policy needs a profile and has none.
    pub fn planner(
        &self,
        profile: Option<&Profile>,
        initial_bps: f64,
        rtt_ms: f64,
    ) -> Option<Box<dyn Planner>> {
        let rule = match self.kind {
            PolicyKind::Local => Rule::Local,
            PolicyKind::All => Rule::All,
            PolicyKind::Threshold => Rule::Threshold(self.threshold),
            PolicyKind::ThresholdRaw => Rule::ThresholdRaw(self.threshold),
            PolicyKind::FastVa => Rule::FastVa,
            PolicyKind::Cbo => {
                let mut cbo = CboPlanner::new(profile?.clone(), initial_bps, rtt_ms);
                if let Some(w) = self.reuse_window_ms {
                    cbo = cbo.with_reuse(w);
                }
                return Some(Box::new(cbo));
            }
        };
        Some(Box::new(match profile {
            Some(p) => RulePlanner::new(rule, p, self.resolution, initial_bps, rtt_ms),
            None if rule == Rule::FastVa => return None,
            None => RulePlanner::fixed(rule, self.resolution),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::planner::{Action, FrameIn};

    fn frame(id: u64, confidence: f64, raw_confidence: f64) -> FrameIn {
        FrameIn {
            id,
            arrival_ms: 0.0,
            deadline_ms: 200.0,
            confidence,
            raw_confidence,
            class: 1,
            small_jpeg_bytes: None,
        }
    }

    fn decide(name: &str, confidence: f64, raw: f64) -> Action {
        let spec = PolicySpec::parse(name, 0.5, 300, 1000.0).unwrap();
        let mut p = spec.planner(None, 1e6, 40.0).unwrap();
        p.on_frame(frame(0, confidence, raw));
        let a = p.poll(0.0);
        assert_eq!(a.len(), 1, "{name}: decided at arrival");
        a[0].1
    }

    #[test]
    fn the_rules_without_a_profile_send_at_exactly_the_resolution() {
        let send = Action::Send { resolution: 0 };
        assert_eq!(decide("local", 0.0, 0.0), Action::Keep);
        assert_eq!(decide("all", 0.99, 0.99), send);
        assert_eq!(decide("threshold", 0.49, 0.9), send);
        assert_eq!(decide("threshold", 0.5, 0.1), Action::Keep);
        // threshold-raw looks at the raw softmax only.
        assert_eq!(decide("threshold-raw", 0.9, 0.3), send);
        assert_eq!(decide("threshold-raw", 0.3, 0.9), Action::Keep);
        let spec = PolicySpec::parse("all", 0.5, 300, 0.0).unwrap();
        assert_eq!(spec.planner(None, 1e6, 40.0).unwrap().resolutions(), [300]);
    }

    #[test]
    fn names() {
        assert!(
            PolicySpec::parse("cbo+reuse", 0.5, 224, 800.0)
                .unwrap()
                .reuse_window_ms
                == Some(800.0)
        );
        assert!(PolicySpec::parse("threshold+reuse", 0.5, 224, 800.0).is_err());
        assert!(PolicySpec::parse("bogus", 0.5, 224, 800.0).is_err());
        for n in NAMES {
            let spec = PolicySpec::parse(n, 0.5, 224, 0.0).unwrap();
            assert_eq!(spec.kind.name(), n);
            // Only the policies that need a profile lack a planner without one.
            assert_eq!(
                spec.planner(None, 1e6, 40.0).is_none(),
                spec.kind.needs_profile()
            );
        }
    }
}
