//! Which frames to offload (pure, sans-IO: the element feeds it each frame's calibrated
//! confidence and the link state, and reads a decision).
//!
//! This module holds the per-frame rules `local`, `all`, `threshold` and `threshold-raw`. The
//! `cbo` policy (a knapsack over the frames in flight, resolutions, bandwidth and deadlines) and
//! the `fastva` baseline need the link estimate and are planners ([`super::planner`]).

/// The `policy` property.
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
    /// The CBO planner ([`super::planner::CboPlanner`]) decides; [`decide`] is not used.
    Cbo,
    /// FastVA ([`super::planner::Rule::FastVa`]) decides; [`decide`] is not used.
    FastVa,
}

impl PolicyKind {
    /// Decided by a planner with a link estimate rather than frame by frame.
    pub fn planned(self) -> bool {
        matches!(self, PolicyKind::Cbo | PolicyKind::FastVa)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    pub threshold: f64,
    /// Short side of offloaded frames.
    pub resolution: u32,
    pub max_in_flight: usize,
    /// Live source: a frame never waits for room in the in-flight window (it stays on the
    /// device, `busy`); a non-live source (file processing) waits instead.
    pub live: bool,
}

/// What happens to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The device result is kept (policy).
    Keep,
    /// Send the frame at this short side.
    Offload { short_side: u32 },
    /// The policy wanted to offload but `max-in-flight` frames are outstanding (live source).
    Busy,
    /// The policy wanted to offload but no server connection is up.
    Offline,
    /// Non-live source with a full window: wait for an answer, then decide again.
    WaitForRoom,
}

impl Decision {
    /// The `decision` field of the meta for a frame that was not offloaded.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Keep => "device",
            Decision::Offload { .. } => "offload",
            Decision::Busy => "busy",
            Decision::Offline => "offline",
            Decision::WaitForRoom => "wait",
        }
    }
}

/// Decides for one frame of calibrated confidence `confidence` (raw: `raw_confidence`).
pub fn decide(
    cfg: &PolicyConfig,
    confidence: f64,
    raw_confidence: f64,
    in_flight: usize,
    connected: bool,
) -> Decision {
    let wants = match cfg.kind {
        PolicyKind::Local => false,
        PolicyKind::All => true,
        PolicyKind::Threshold => confidence < cfg.threshold,
        PolicyKind::ThresholdRaw => raw_confidence < cfg.threshold,
        PolicyKind::Cbo | PolicyKind::FastVa => false,
    };
    if !wants {
        Decision::Keep
    } else if !connected {
        Decision::Offline
    } else if in_flight >= cfg.max_in_flight {
        if cfg.live {
            Decision::Busy
        } else {
            Decision::WaitForRoom
        }
    } else {
        Decision::Offload {
            short_side: cfg.resolution,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: PolicyKind, live: bool) -> PolicyConfig {
        PolicyConfig {
            kind,
            threshold: 0.5,
            resolution: 224,
            max_in_flight: 2,
            live,
        }
    }

    #[test]
    fn rules() {
        let off = Decision::Offload { short_side: 224 };
        assert_eq!(
            decide(&cfg(PolicyKind::Local, true), 0.0, 0.0, 0, true),
            Decision::Keep
        );
        assert_eq!(
            decide(&cfg(PolicyKind::All, true), 0.99, 0.99, 0, true),
            off
        );
        let t = cfg(PolicyKind::Threshold, true);
        assert_eq!(decide(&t, 0.49, 0.49, 0, true), off);
        assert_eq!(decide(&t, 0.5, 0.5, 0, true), Decision::Keep);
        assert_eq!(decide(&t, 0.1, 0.1, 0, false), Decision::Offline);
        assert_eq!(decide(&t, 0.1, 0.1, 1, true), off);
        assert_eq!(decide(&t, 0.1, 0.1, 2, true), Decision::Busy);
        let file = cfg(PolicyKind::Threshold, false);
        assert_eq!(decide(&file, 0.1, 0.1, 2, true), Decision::WaitForRoom);
        assert_eq!(decide(&file, 0.9, 0.9, 2, true), Decision::Keep);
        // threshold-raw looks at the raw softmax only; threshold at the calibrated one only.
        let raw = cfg(PolicyKind::ThresholdRaw, true);
        assert_eq!(decide(&raw, 0.9, 0.3, 0, true), off);
        assert_eq!(decide(&raw, 0.3, 0.9, 0, true), Decision::Keep);
        assert_eq!(decide(&t, 0.9, 0.3, 0, true), Decision::Keep);
        // The planned policies are not decided here.
        for kind in [PolicyKind::Cbo, PolicyKind::FastVa] {
            assert!(kind.planned());
            assert_eq!(decide(&cfg(kind, true), 0.0, 0.0, 0, true), Decision::Keep);
        }
    }
}
