//! Which label an answered frame leaves with (pure: the element's output and the simulator both
//! decide here), and the model behind it, fitted by `cbo profile`.
//!
//! The planner sends a frame because the server is *on average* better on frames like it (the
//! profile's gain at that confidence and resolution). The answer itself says more: the server
//! model's score for its top-1. When the server names the same class as the device there is
//! nothing to choose. When it names another, at most one of the two is right, and the frame
//! keeps the one more likely right: the server's when
//!
//! `P(the server's label is the right one | they differ, one is right) =
//!  σ(w0 + w1·logit(p) + w2·logit(q) + w3·ln(r / 224)) > 0.5`
//!
//! with `p` the device's calibrated confidence, `q` the server's score and `r` the short side the
//! frame was sent at: a logistic regression fitted on the profile's observations (the frames of
//! the fitting clip at every profiled resolution where the two disagree and one is right). Not
//! the marginal comparison `q > p`: given that the two disagree, each is less likely right than
//! its confidence says, and not by the same amount (the raw scores of the server model are
//! also far from calibrated: 0.5–0.6 is right 75–88 % of the time on the fitting clip). Measured
//! on the dev grid (docs/evaluation.md): merging this way instead of always taking the server's
//! label moved the element default from 3 % of settings below the device alone (worst 1.87
//! points) to 0.6 % (worst 0.29).

use serde::{Deserialize, Serialize};

use crate::calibration::{fit_logistic, sigmoid};

/// How an answer that disagrees with the device is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Merge {
    /// The more likely right of the two labels, by the profile's [`MergeModel`] (the server's
    /// when the profile has none).
    #[default]
    Confidence,
    /// The server's label, always (for a server model known to be better on this content).
    Server,
}

impl Merge {
    pub const NAMES: [&'static str; 2] = ["confidence", "server"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "confidence" => Some(Merge::Confidence),
            "server" => Some(Merge::Server),
            _ => None,
        }
    }

    /// [`Merge::parse`] for command-line arguments.
    pub fn parse_arg(name: &str) -> Result<Self, String> {
        Self::parse(name).ok_or_else(|| {
            format!(
                "unknown merge '{name}' (one of: {})",
                Self::NAMES.join(", ")
            )
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Merge::Confidence => "confidence",
            Merge::Server => "server",
        }
    }

    /// The rule this setting applies with `model` (the profile's): `None` takes the server's
    /// label always.
    pub fn rule(self, model: Option<MergeModel>) -> Option<MergeModel> {
        match self {
            Merge::Confidence => model,
            Merge::Server => None,
        }
    }
}

/// The fitted weights (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergeModel {
    pub intercept: f64,
    pub device_logit: f64,
    pub server_logit: f64,
    pub log_resolution: f64,
    /// Disagreements it was fitted on.
    pub n: usize,
}

/// The short side the resolution term is relative to (the device model's input).
const REFERENCE_SHORT_SIDE: f64 = 224.0;

/// Log-odds, clamped at 1e-4 (not calibration's 1e-12): the fitted weights assume this range,
/// and a device confidence of 1 − 1e-9 says no more than one of 0.9999 here.
fn logit(x: f64) -> f64 {
    let x = x.clamp(1e-4, 1.0 - 1e-4);
    (x / (1.0 - x)).ln()
}

fn features(device_confidence: f64, server_score: f64, short_side: u32) -> [f64; 4] {
    [
        1.0,
        logit(device_confidence),
        logit(server_score),
        (short_side.max(1) as f64 / REFERENCE_SHORT_SIDE).ln(),
    ]
}

/// One answer that disagrees with the device where one of the two is right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disagreement {
    pub device_confidence: f64,
    pub server_score: f64,
    pub short_side: u32,
    pub server_right: bool,
}

impl MergeModel {
    /// `P(the server's label is the right one)` for a disagreement.
    pub fn server_probability(
        &self,
        device_confidence: f64,
        server_score: f64,
        short_side: u32,
    ) -> f64 {
        let x = features(device_confidence, server_score, short_side);
        let w = [
            self.intercept,
            self.device_logit,
            self.server_logit,
            self.log_resolution,
        ];
        sigmoid(w.iter().zip(x).map(|(w, x)| w * x).sum())
    }

    /// Maximum-likelihood fit ([`fit_logistic`], a weak ridge keeping it defined when the data
    /// separate); `None` without both outcomes among the rows.
    pub fn fit(rows: &[Disagreement]) -> Option<Self> {
        let right = rows.iter().filter(|d| d.server_right).count();
        if right == 0 || right == rows.len() {
            return None;
        }
        let xs: Vec<([f64; 4], bool)> = rows
            .iter()
            .map(|d| {
                (
                    features(d.device_confidence, d.server_score, d.short_side),
                    d.server_right,
                )
            })
            .collect();
        let [intercept, device_logit, server_logit, log_resolution] =
            fit_logistic(&xs, [0.0; 4], 1e-3)?;
        Some(Self {
            intercept,
            device_logit,
            server_logit,
            log_resolution,
            n: rows.len(),
        })
    }
}

/// Whether the server's label (`server_class`, score `server_score`, sent at `short_side`) is the
/// frame's label, against the device's (`device_class`, calibrated confidence
/// `device_confidence`), under `rule` (`None`: the server's always).
pub fn server_label_wins(
    rule: Option<&MergeModel>,
    device_class: i32,
    device_confidence: f64,
    server_class: i32,
    server_score: f64,
    short_side: u32,
) -> bool {
    match rule {
        None => true,
        Some(m) => {
            server_class == device_class
                || m.server_probability(device_confidence, server_score, short_side) > 0.5
        }
    }
}

/// `q > p` as a model (logit(q) − logit(p) > 0), for tests of what merges.
#[cfg(test)]
pub(crate) const SCORES: MergeModel = MergeModel {
    intercept: 0.0,
    device_logit: -1.0,
    server_logit: 1.0,
    log_resolution: 0.0,
    n: 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_more_likely_right_label_wins() {
        let m = Some(&SCORES);
        // Same class: nothing to choose (whatever the scores say).
        assert!(server_label_wins(m, 7, 0.9, 7, 0.1, 224));
        // Different classes: the surer one, here.
        assert!(server_label_wins(m, 7, 0.3, 9, 0.6, 224));
        assert!(!server_label_wins(m, 7, 0.7, 9, 0.6, 224));
        // No model (`merge=server`, or a profile without one): the server's label always.
        assert!(server_label_wins(None, 7, 0.99, 9, 0.01, 224));
        assert_eq!(Merge::Server.rule(Some(SCORES)), None);
        assert_eq!(Merge::Confidence.rule(Some(SCORES)), Some(SCORES));
        for name in Merge::NAMES {
            assert_eq!(Merge::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(Merge::parse("device"), None);
    }

    #[test]
    fn the_fit_recovers_the_weights_it_was_drawn_from() {
        // Disagreements drawn from known weights on a grid of confidences, scores and
        // resolutions, with the exact expected share of server-right outcomes per cell.
        let truth = MergeModel {
            intercept: 1.0,
            device_logit: -1.2,
            server_logit: 0.8,
            log_resolution: 1.5,
            n: 0,
        };
        let mut rows = Vec::new();
        for &p in &[0.1, 0.3, 0.5, 0.7, 0.9] {
            for &q in &[0.1, 0.3, 0.5, 0.7, 0.9] {
                for &r in &[96u32, 160, 224, 320] {
                    let share = truth.server_probability(p, q, r);
                    let right = (share * 200.0).round() as usize;
                    for k in 0..200 {
                        rows.push(Disagreement {
                            device_confidence: p,
                            server_score: q,
                            short_side: r,
                            server_right: k < right,
                        });
                    }
                }
            }
        }
        let m = MergeModel::fit(&rows).unwrap();
        assert_eq!(m.n, rows.len());
        for (got, want) in [
            (m.intercept, truth.intercept),
            (m.device_logit, truth.device_logit),
            (m.server_logit, truth.server_logit),
            (m.log_resolution, truth.log_resolution),
        ] {
            assert!((got - want).abs() < 0.05, "{m:?}");
        }
        // One outcome only: nothing to fit.
        assert_eq!(MergeModel::fit(&rows[..1]), None);
    }
}
