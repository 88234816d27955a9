//! Choosing the planner's constants by cross-validation (pure).
//!
//! A constant chosen on the settings it is then scored on looks better than it is. Here every
//! setting (clip × trace × deadline) is scored with the candidate chosen on the *other* trace
//! sources and the *other* clips only: the held-out cell (source `s`, clip `c`) gets the
//! candidate that is best on the settings whose source is not `s` and whose clip is not `c`
//! (with a single clip: not `s`). "Best" means: among the candidates that meet the element
//! default's two safety targets on those settings, a mean deadline-miss rate of at most a limit
//! and in no setting more than [`MAX_BELOW_LOCAL`] below keeping every device label, the one with
//! the highest mean accuracy over the best causal baseline of each setting. If none meets both,
//! the miss limit alone decides feasibility; if none keeps misses that low, the one with the
//! fewest misses wins.
//!
//! The miss limit is itself chosen by cross-validation, inside the training settings
//! ([`miss_limit`]). Choosing the most accurate candidate whose training misses are at most
//! [`MAX_MISS_RATE`] picks, among many candidates near that boundary, the ones whose misses the
//! training settings happened to understate, so on new settings the choice misses more than its
//! training promised (on the dev grid: 1.17 % held out against 1 % on training). The limit that
//! keeps the *held-out* miss rate at the target is the largest of [`miss_limits`] whose
//! leave-one-out miss rate within the training settings is at most [`MAX_MISS_RATE`]; nothing
//! outside the training settings is looked at.

use serde::Serialize;

use super::sim::SimResult;

/// The deadline-miss rate the chosen candidate should have on settings it was not chosen on (the
/// project's target for the element default).
pub const MAX_MISS_RATE: f64 = 0.01;

/// How far below `local` (every device label kept) a chosen candidate may end in any one of its
/// training settings (the project's "never worse than the device" target, 0.2 points).
pub const MAX_BELOW_LOCAL: f64 = 0.002;

/// The training miss limits [`miss_limit`] chooses from: 50 % to 100 % of [`MAX_MISS_RATE`] in
/// steps of 5 %, from the largest down.
pub fn miss_limits() -> impl Iterator<Item = f64> {
    (0..=10)
        .rev()
        .map(|i| MAX_MISS_RATE * (0.5 + 0.05 * f64::from(i)))
}

/// One setting's results for every candidate.
#[derive(Debug, Clone)]
pub struct CvSetting {
    pub clip: String,
    pub source: String,
    /// The best causal baseline's accuracy in this setting.
    pub best_baseline: f64,
    /// `local`'s accuracy in this setting (every device label kept).
    pub local: f64,
    /// Per candidate, in the candidates' order.
    pub per_candidate: Vec<SimResult>,
}

/// The candidate chosen for one held-out cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fold {
    pub clip: String,
    pub source: String,
    pub chosen: usize,
    /// The training miss limit it was chosen under ([`miss_limit`]).
    pub miss_limit: f64,
    /// Training settings it was chosen on.
    pub trained_on: usize,
}

/// Per candidate, over some settings: mean accuracy over the best baseline, mean miss rate,
/// worst shortfall against `local`.
struct Scores(Vec<(f64, f64, f64)>);

impl Scores {
    fn of(settings: &[&CvSetting]) -> Option<Self> {
        let candidates = settings.first()?.per_candidate.len();
        let n = settings.len() as f64;
        let score = |k: usize| -> (f64, f64, f64) {
            let (mut over, mut miss, mut below) = (0.0, 0.0, 0.0_f64);
            for s in settings {
                let r = &s.per_candidate[k];
                over += r.accuracy - s.best_baseline;
                miss += r.deadline_miss_rate;
                below = below.max(s.local - r.accuracy);
            }
            (over / n, miss / n, below)
        };
        Some(Self((0..candidates).map(score).collect()))
    }

    /// The best candidate under a training miss limit (see the module docs).
    fn best(&self, miss_limit: f64) -> usize {
        let scores = &self.0;
        let misses_ok = |k: &usize| scores[*k].1 <= miss_limit + 1e-12;
        let never_below = |k: &usize| scores[*k].2 <= MAX_BELOW_LOCAL + 1e-12;
        let best = |ks: Vec<usize>| {
            ks.into_iter()
                .max_by(|&a, &b| scores[a].0.total_cmp(&scores[b].0).then(b.cmp(&a)))
        };
        let all = 0..scores.len();
        best(all.clone().filter(misses_ok).filter(never_below).collect())
            .or_else(|| best(all.clone().filter(misses_ok).collect()))
            .or_else(|| all.min_by(|&a, &b| scores[a].1.total_cmp(&scores[b].1)))
            .unwrap_or(0)
    }
}

/// The (clip, source) cells of the settings `within` selects, and whether they span several
/// clips (then a held-out cell's clip is left out of its training settings too).
fn cells(
    settings: &[CvSetting],
    within: &impl Fn(&CvSetting) -> bool,
) -> (Vec<(String, String)>, bool) {
    let mut cells: Vec<(String, String)> = settings
        .iter()
        .filter(|s| within(s))
        .map(|s| (s.clip.clone(), s.source.clone()))
        .collect();
    cells.sort();
    cells.dedup();
    let mut clips: Vec<&str> = cells.iter().map(|c| c.0.as_str()).collect();
    clips.dedup();
    let several_clips = clips.len() > 1;
    (cells, several_clips)
}

/// The best candidate on the settings `train` selects under a training miss limit;
/// `None` without any settings.
pub fn choose_under(
    settings: &[CvSetting],
    train: impl Fn(&CvSetting) -> bool,
    miss_limit: f64,
) -> Option<usize> {
    let used: Vec<&CvSetting> = settings.iter().filter(|s| train(s)).collect();
    Some(Scores::of(&used)?.best(miss_limit))
}

/// The training miss limit for the settings `train` selects: the largest of [`miss_limits`]
/// under which leave-one-out *within those settings* (one source and, with several clips, one
/// clip out) misses at most [`MAX_MISS_RATE`] on the settings held out; the smallest if none
/// does, [`MAX_MISS_RATE`] if they are too few to hold any out.
pub fn miss_limit(settings: &[CvSetting], train: impl Fn(&CvSetting) -> bool) -> f64 {
    let limits: Vec<f64> = miss_limits().collect();
    let (cells, several_clips) = cells(settings, &train);
    // Per limit: held-out misses summed over held-out settings.
    let mut missed = vec![0.0; limits.len()];
    let mut held_out = 0usize;
    for (clip, source) in &cells {
        let inner =
            |s: &CvSetting| train(s) && s.source != *source && (!several_clips || s.clip != *clip);
        let used: Vec<&CvSetting> = settings.iter().filter(|s| inner(s)).collect();
        let Some(scores) = Scores::of(&used) else {
            continue;
        };
        let cell: Vec<&CvSetting> = settings
            .iter()
            .filter(|s| train(s) && s.clip == *clip && s.source == *source)
            .collect();
        held_out += cell.len();
        for (m, &limit) in missed.iter_mut().zip(&limits) {
            let k = scores.best(limit);
            *m += cell
                .iter()
                .map(|s| s.per_candidate[k].deadline_miss_rate)
                .sum::<f64>();
        }
    }
    if held_out == 0 {
        return MAX_MISS_RATE;
    }
    limits
        .iter()
        .zip(&missed)
        .find(|&(_, m)| m / held_out as f64 <= MAX_MISS_RATE + 1e-12)
        .map_or(limits[limits.len() - 1], |(&limit, _)| limit)
}

/// The best candidate on the settings `train` selects, under the miss limit cross-validation
/// within them chooses ([`miss_limit`]); with that limit. `None` without any settings.
pub fn choose(settings: &[CvSetting], train: impl Fn(&CvSetting) -> bool) -> Option<(usize, f64)> {
    let limit = miss_limit(settings, &train);
    Some((choose_under(settings, train, limit)?, limit))
}

/// Leave one trace source and one clip out: the candidate each setting is scored with, and the
/// folds (one per clip × source cell).
pub fn leave_one_out(settings: &[CvSetting]) -> (Vec<usize>, Vec<Fold>) {
    let (cells, several_clips) = cells(settings, &|_| true);
    let mut folds = Vec::new();
    let mut chosen = vec![0; settings.len()];
    for (clip, source) in cells {
        let train = |s: &CvSetting| s.source != source && (!several_clips || s.clip != clip);
        let trained_on = settings.iter().filter(|s| train(s)).count();
        // A cell with nothing else to learn from (a single source) falls back to everything.
        let (k, miss_limit) = choose(settings, train)
            .or_else(|| choose(settings, |_| true))
            .unwrap_or((0, MAX_MISS_RATE));
        for (i, s) in settings.iter().enumerate() {
            if s.clip == clip && s.source == source {
                chosen[i] = k;
            }
        }
        folds.push(Fold {
            clip,
            source,
            chosen: k,
            miss_limit,
            trained_on,
        });
    }
    (chosen, folds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(accuracy: f64, miss: f64) -> SimResult {
        SimResult::scored(accuracy, miss)
    }

    fn s(clip: &str, source: &str, results: &[(f64, f64)]) -> CvSetting {
        CvSetting {
            clip: clip.into(),
            source: source.into(),
            best_baseline: 0.5,
            local: 0.4,
            per_candidate: results.iter().map(|&(a, m)| r(a, m)).collect(),
        }
    }

    #[test]
    fn the_most_accurate_candidate_within_the_miss_budget_wins() {
        let settings = [
            s("a", "x", &[(0.60, 0.0), (0.70, 0.05), (0.65, 0.005)]),
            s("a", "y", &[(0.60, 0.0), (0.70, 0.05), (0.64, 0.005)]),
        ];
        assert_eq!(choose_under(&settings, |_| true, MAX_MISS_RATE), Some(2));
        // Nobody within budget: the fewest misses.
        let settings = [s("a", "x", &[(0.6, 0.03), (0.7, 0.02)])];
        assert_eq!(choose_under(&settings, |_| true, MAX_MISS_RATE), Some(1));
        assert_eq!(choose_under(&settings, |_| false, MAX_MISS_RATE), None);
    }

    #[test]
    fn a_candidate_that_ends_below_the_device_somewhere_loses_to_one_that_never_does() {
        let mut settings = [
            s("a", "x", &[(0.70, 0.0), (0.60, 0.0)]),
            s("a", "y", &[(0.70, 0.0), (0.60, 0.0)]),
            s("a", "z", &[(0.39, 0.0), (0.45, 0.0)]),
        ];
        // Candidate 0 is more accurate on the mean, but 1 point below `local` (0.4) on z.
        assert_eq!(choose_under(&settings, |_| true, MAX_MISS_RATE), Some(1));
        // 0.2 points below is within the target.
        settings[2].per_candidate[0] = r(0.398, 0.0);
        assert_eq!(choose_under(&settings, |_| true, MAX_MISS_RATE), Some(0));
        // If every candidate ends below somewhere, the miss budget alone decides.
        settings[2].per_candidate[0] = r(0.30, 0.0);
        settings[2].per_candidate[1] = r(0.35, 0.0);
        assert_eq!(choose_under(&settings, |_| true, MAX_MISS_RATE), Some(0));
    }

    #[test]
    fn a_held_out_cell_never_sees_its_own_source_or_clip() {
        // Candidate 0 is best on source x, candidate 1 everywhere else: cells of x get 1
        // (learnt elsewhere), the other cells get 0 only if x is most of their training data.
        let settings = [
            s("a", "x", &[(0.9, 0.0), (0.6, 0.0)]),
            s("b", "x", &[(0.9, 0.0), (0.6, 0.0)]),
            s("a", "y", &[(0.5, 0.0), (0.6, 0.0)]),
            s("b", "y", &[(0.5, 0.0), (0.6, 0.0)]),
            s("a", "z", &[(0.5, 0.0), (0.6, 0.0)]),
            s("b", "z", &[(0.5, 0.0), (0.6, 0.0)]),
        ];
        let (chosen, folds) = leave_one_out(&settings);
        assert_eq!(folds.len(), 6);
        // (a, x): trained on (b, y), (b, z): candidate 1.
        assert_eq!(chosen[0], 1);
        // (a, y): trained on (b, x) and (b, z): 0.9 + 0.5 vs 0.6 + 0.6 -> candidate 0.
        assert_eq!(chosen[2], 0);
        assert!(folds.iter().all(|f| f.trained_on == 2));
    }

    #[test]
    fn a_miss_limit_that_held_out_settings_exceed_is_lowered() {
        // Candidate 1 is the most accurate and misses 1 % on the mean, but 0.6 % on two
        // sources and 1.8 % on the third; candidate 2 misses 0.8 % everywhere.
        let settings = [
            s("a", "x", &[(0.5, 0.0), (0.8, 0.006), (0.7, 0.008)]),
            s("a", "y", &[(0.5, 0.0), (0.8, 0.006), (0.7, 0.008)]),
            s("a", "z", &[(0.5, 0.0), (0.8, 0.018), (0.7, 0.008)]),
        ];
        // Chosen at 1 %: candidate 1.
        assert_eq!(choose_under(&settings, |_| true, MAX_MISS_RATE), Some(1));
        // Held out at 0.8 % or more: x and y get candidate 2 (0.8 %), z gets 1 (1.8 %): 1.13 %.
        // Below 0.8 %: x and y get 0, z gets 1: 0.6 %. The largest such limit is 0.75 %, and
        // under it only candidate 0 meets the limit on all three.
        assert!((miss_limit(&settings, |_| true) - 0.0075).abs() < 1e-12);
        assert_eq!(choose(&settings, |_| true), Some((0, 0.0075)));
        // A single source cannot be held out: the target itself.
        assert_eq!(miss_limit(&settings, |s| s.source == "x"), MAX_MISS_RATE);
        assert_eq!(choose(&settings, |_| false), None);
    }
}
