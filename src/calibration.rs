//! Confidence calibration: fitting, applying, measuring, and the calibration file.
//!
//! Pure code: no GStreamer, no ONNX Runtime. A calibrator maps the device model's top-class
//! confidence to the probability that the top class is right.
//!
//! - **Temperature scaling** divides the logits by one temperature T fitted by minimising the
//!   negative log-likelihood of the true class (convex in 1/T; solved by safeguarded Newton). For
//!   probability-output models the log-probabilities stand in for logits. The top class never
//!   changes, only its confidence.
//! - **Platt scaling** fits `sigmoid(a · logit(p) + b)` (a > 0) to the top-label confidence by
//!   minimising the NLL of "the top class is right".
//! - **Histogram binning** puts the fitting confidences into equal-mass bins and maps each bin to
//!   its accuracy; bin accuracies are made non-decreasing by pool-adjacent-violators so the map is
//!   monotone.
//! - **Isotonic regression** (pool-adjacent-violators on confidence vs. correctness), applied by
//!   linear interpolation between the pooled blocks.
//! - **auto** picks the method with the lowest cross-validated top-label NLL (ties: ECE).
//!
//! Metrics are top-label: ECE over 15 equal-width bins, adaptive ECE over 15 equal-mass bins, MCE,
//! NLL and Brier score of the binary event "the top class is right", accuracy.

use serde::{Deserialize, Serialize};

/// Bins used by ECE/MCE, as is customary (Guo et al. 2017).
pub const ECE_BINS: usize = 15;

/// Smallest probability used inside logarithms.
const P_EPS: f64 = 1e-12;

/// One fitted mapping from raw to calibrated confidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Calibrator {
    Temperature {
        temperature: f64,
    },
    /// `upper[i]` is the highest raw confidence of bin i; confidences above the last bound use
    /// the last value.
    HistogramBinning {
        upper: Vec<f64>,
        values: Vec<f64>,
    },
    /// Knots (x, y), x strictly increasing, y non-decreasing; linear in between, flat outside.
    Isotonic {
        x: Vec<f64>,
        y: Vec<f64>,
    },
    /// Platt scaling of the top-label log-odds: sigmoid(a * logit(raw) + b), a > 0. Two
    /// parameters fix over- and under-confidence at both ends, which one temperature cannot.
    Platt {
        a: f64,
        b: f64,
    },
}

/// Method names accepted by `cbo calibrate --method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Auto,
    Temperature,
    HistogramBinning,
    Isotonic,
    Platt,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "temperature" => Ok(Self::Temperature),
            "histogram" | "histogram-binning" => Ok(Self::HistogramBinning),
            "isotonic" => Ok(Self::Isotonic),
            "platt" => Ok(Self::Platt),
            other => Err(format!(
                "unknown calibration method '{other}' (auto, temperature, histogram-binning, isotonic, platt)"
            )),
        }
    }
}

/// Fitting data: score rows (logits, or log-probabilities) and the index of the true class in each
/// row (`None` when the true class is not among the outputs: counted as wrong).
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub rows: Vec<Vec<f32>>,
    pub targets: Vec<Option<usize>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn push(&mut self, row: Vec<f32>, target: Option<usize>) {
        self.rows.push(row);
        self.targets.push(target);
    }

    /// Top-label view: (confidence, top class right?) at temperature 1.
    pub fn top_label(&self) -> Vec<(f64, bool)> {
        self.rows
            .iter()
            .zip(&self.targets)
            .map(|(row, t)| {
                let (arg, conf) = top_softmax(row, 1.0);
                (conf, Some(arg) == *t)
            })
            .collect()
    }

    fn subset(&self, idx: &[usize]) -> Dataset {
        Dataset {
            rows: idx.iter().map(|&i| self.rows[i].clone()).collect(),
            targets: idx.iter().map(|&i| self.targets[i]).collect(),
        }
    }
}

/// Index and softmax probability of the largest entry of `row / temperature`.
pub fn top_softmax(row: &[f32], temperature: f64) -> (usize, f64) {
    let p = top_probability(row, temperature);
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (row.iter().position(|&v| v == max).unwrap_or(0), p)
}

/// Softmax probability of the largest entry of `row / temperature`.
///
/// This runs per frame when a temperature calibration is loaded, so it is written to vectorise:
/// a branch-free max, then a polynomial `exp` in f32 (relative error ~1e-7) summed over the row,
/// compiled for AVX2/FMA where the CPU has them: under a microsecond for 1000 classes
/// (`cbo bench` measures it).
pub fn top_probability(row: &[f32], temperature: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { top_probability_avx2(row, temperature) };
    }
    top_probability_generic(row, temperature)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn top_probability_avx2(row: &[f32], temperature: f64) -> f64 {
    top_probability_generic(row, temperature)
}

#[inline(always)]
fn top_probability_generic(row: &[f32], temperature: f64) -> f64 {
    if row.is_empty() {
        return 1.0;
    }
    // Eight running maxima with `if v > m` (no NaN bookkeeping): compiles to plain maxps.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let inv_t = (1.0 / temperature) as f32;
    // Eight partial sums: lets the compiler keep a vector accumulator.
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp_nonpositive((v - max) * inv_t);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| exp_nonpositive((v - max) * inv_t))
        .sum();
    1.0 / (acc.iter().sum::<f32>() + tail) as f64
}

/// e^x for x <= 0 (Cephes-style: x = n ln 2 + r, degree-6 polynomial for e^r). Results below
/// e^-87 flush to ~0, which is what a softmax sum wants.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.666_666_7e-1
                    + r * (4.166_666_8e-2 + r * (8.333_452e-3 + r * 1.388_731_6e-3)))));
    // 2^n built in the exponent bits. `as i32` would saturate (and stop vectorisation); n is
    // clamped to [-126, 0] first, where the plain conversion is exact.
    let n = n.clamp(-126.0, 0.0);
    // SAFETY: n is finite and within i32 range.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    f32::from_bits(((n + 127) as u32) << 23) * p
}

/// Why a calibration could not be fitted, loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// The parameters are out of range or the map is not monotone.
    #[error("{0}")]
    Invalid(&'static str),
    #[error("calibration needs at least 10 labelled samples, got {0}")]
    TooFewSamples(usize),
    /// Each fold of a cross-validation is fitted on the others, which need 10 samples.
    #[error(
        "calibration by {folds}-fold cross-validation needs at least {min} labelled samples \
         (10 to fit on in each fold), got {n}"
    )]
    TooFewForFolds { n: usize, folds: usize, min: usize },
    #[error("cannot read '{path}': {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read calibration '{path}': {source}")]
    ReadCalibration {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("not a cbo calibration file (expected \"format\": \"{FILE_FORMAT}\")")]
    NotACalibration,
    /// The `version` field as written (`2`, `"1"`).
    #[error(
        "calibration file version {0} is not supported (this cbo reads version {FILE_VERSION})"
    )]
    Version(String),
    #[error("calibration file has no version")]
    NoVersion,
    #[error("corrupt calibration file: {0}")]
    Corrupt(serde_json::Error),
    #[error("calibration '{path}': {source}")]
    In {
        path: std::path::PathBuf,
        source: Box<CalibrationError>,
    },
    #[error(
        "calibration was fitted for model '{file}' (sha256 {fitted}), not for '{model}' (sha256 {hash})"
    )]
    OtherModel {
        file: String,
        fitted: String,
        model: std::path::PathBuf,
        hash: String,
    },
    #[error("cannot write '{path}': {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Calibrator {
    /// Calibrated confidence of a frame whose top raw confidence is `raw` and score row `row`.
    pub fn apply(&self, raw: f64, row: &[f32]) -> f64 {
        match self {
            Calibrator::Temperature { temperature } => top_probability(row, *temperature),
            Calibrator::HistogramBinning { upper, values } => {
                let i = upper.partition_point(|&u| u < raw).min(values.len() - 1);
                values[i]
            }
            Calibrator::Isotonic { x, y } => interpolate(x, y, raw),
            Calibrator::Platt { a, b } => sigmoid(a * logit(raw).clamp(-30.0, 30.0) + b),
        }
    }

    /// [`Self::apply`] to a model's raw output row: temperature scaling works on logits, so a
    /// probability-output model's row is taken to log space first (in `scratch`), as
    /// `cbo calibrate` fits it. The element and the tools calibrate through this one function.
    pub fn apply_to_output(
        &self,
        raw: f64,
        output: &[f32],
        output_is_probabilities: bool,
        scratch: &mut Vec<f32>,
    ) -> f64 {
        match self {
            Calibrator::Temperature { .. } if output_is_probabilities => {
                scratch.clear();
                scratch.extend(output.iter().map(|p| p.max(1e-12).ln()));
                self.apply(raw, scratch)
            }
            _ => self.apply(raw, output),
        }
    }

    pub fn method_name(&self) -> &'static str {
        match self {
            Calibrator::Temperature { .. } => "temperature",
            Calibrator::HistogramBinning { .. } => "histogram-binning",
            Calibrator::Isotonic { .. } => "isotonic",
            Calibrator::Platt { .. } => "platt",
        }
    }

    /// Checks the parameters: finite, in range, and a monotone non-decreasing map.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        let bad = |m: &'static str| Err(CalibrationError::Invalid(m));
        let in_unit = |v: &[f64]| v.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p));
        let non_decreasing = |v: &[f64]| v.windows(2).all(|w| w[0] <= w[1]);
        match self {
            Calibrator::Temperature { temperature } => {
                // Logits are multiplied by 1 / T in single precision: a T whose reciprocal
                // overflows gives no probability at all.
                if !(temperature.is_finite()
                    && *temperature > 0.0
                    && ((1.0 / temperature) as f32).is_finite())
                {
                    return bad("temperature must be a positive finite number (at least 3e-39)");
                }
            }
            Calibrator::HistogramBinning { upper, values } => {
                if values.is_empty() || upper.len() != values.len() {
                    return bad(
                        "histogram binning needs as many bin bounds as values (at least one)",
                    );
                }
                if !in_unit(upper) || !non_decreasing(upper) {
                    return bad("histogram bin bounds must be increasing confidences in [0, 1]");
                }
                if !in_unit(values) {
                    return bad("histogram bin values must be probabilities in [0, 1]");
                }
                if !non_decreasing(values) {
                    return bad(
                        "histogram bin values are not monotone: a higher raw confidence would map to a lower calibrated one",
                    );
                }
            }
            Calibrator::Platt { a, b } => {
                if !(a.is_finite() && b.is_finite()) {
                    return bad("platt parameters must be finite");
                }
                if *a <= 0.0 {
                    return bad(
                        "platt slope a is not positive: the map is not monotone (a higher raw confidence would map to a lower calibrated one)",
                    );
                }
            }
            Calibrator::Isotonic { x, y } => {
                if x.is_empty() || x.len() != y.len() {
                    return bad("isotonic calibration needs as many x as y knots (at least one)");
                }
                if !in_unit(x) || x.windows(2).any(|w| w[0] >= w[1]) {
                    return bad(
                        "isotonic knots x must be strictly increasing confidences in [0, 1]",
                    );
                }
                if !in_unit(y) {
                    return bad("isotonic knots y must be probabilities in [0, 1]");
                }
                if !non_decreasing(y) {
                    return bad(
                        "isotonic knots y are not monotone: a higher raw confidence would map to a lower calibrated one",
                    );
                }
            }
        }
        Ok(())
    }

    /// Fits `method` on `data` (`Auto`: 5-fold cross-validation picks the method).
    pub fn fit(method: Method, data: &Dataset) -> Result<Self, CalibrationError> {
        if data.len() < 10 {
            return Err(CalibrationError::TooFewSamples(data.len()));
        }
        match method {
            Method::Temperature => Ok(Calibrator::Temperature {
                temperature: fit_temperature(data),
            }),
            Method::HistogramBinning => Ok(fit_histogram(&data.top_label(), ECE_BINS)),
            Method::Isotonic => Ok(fit_isotonic(&data.top_label())),
            Method::Platt => Ok(fit_platt(&data.top_label())),
            Method::Auto => {
                let candidates = [
                    Method::Temperature,
                    Method::Platt,
                    Method::HistogramBinning,
                    Method::Isotonic,
                ];
                let mut best: Option<(Method, f64, f64)> = None;
                for m in candidates {
                    let (nll, ece) = cross_validate(m, data, 5)?;
                    if best.is_none_or(|(_, bn, be)| {
                        nll < bn - 1e-9 || (nll - bn).abs() <= 1e-9 && ece < be
                    }) {
                        best = Some((m, nll, ece));
                    }
                }
                Calibrator::fit(best.expect("three candidates").0, data)
            }
        }
    }

    /// Calibrated top-label view of `data`.
    pub fn top_label(&self, data: &Dataset) -> Vec<(f64, bool)> {
        data.rows
            .iter()
            .zip(&data.targets)
            .map(|(row, t)| {
                let (arg, raw) = top_softmax(row, 1.0);
                (self.apply(raw, row), Some(arg) == *t)
            })
            .collect()
    }
}

/// Mean top-label NLL and ECE of `method` over `folds` contiguous folds.
fn cross_validate(
    method: Method,
    data: &Dataset,
    folds: usize,
) -> Result<(f64, f64), CalibrationError> {
    let m = cross_validated_metrics(method, data, folds)?;
    Ok((m.nll, m.ece))
}

/// Metrics of `method` when each of `folds` contiguous folds is calibrated by a fit on the
/// others: an honest estimate of how the method does on data it was not fitted on.
pub fn cross_validated_metrics(
    method: Method,
    data: &Dataset,
    folds: usize,
) -> Result<Metrics, CalibrationError> {
    // Said for the whole set up front, not as a fold's "got 9" when 12 were given.
    let smallest_training = |n: usize| {
        (0..folds)
            .map(|f| (0..n).filter(|i| i * folds / n != f).count())
            .min()
            .unwrap_or(0)
    };
    if smallest_training(data.len()) < 10 {
        let min = (10..)
            .find(|&n| smallest_training(n) >= 10)
            .expect("some n");
        return Err(CalibrationError::TooFewForFolds {
            n: data.len(),
            folds,
            min,
        });
    }
    let mut preds = Vec::with_capacity(data.len());
    for f in 0..folds {
        // Contiguous folds: consecutive video frames are near-duplicates, and interleaved folds
        // would put a frame's neighbours in its own training set.
        let n = data.len();
        let (test, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i * folds / n == f);
        let cal = Calibrator::fit(method, &data.subset(&train))?;
        preds.extend(cal.top_label(&data.subset(&test)));
    }
    Ok(Metrics::of(&preds))
}

fn interpolate(x: &[f64], y: &[f64], v: f64) -> f64 {
    let i = x.partition_point(|&k| k < v);
    if i == 0 {
        return y[0];
    }
    if i == x.len() {
        return y[x.len() - 1];
    }
    let t = (v - x[i - 1]) / (x[i] - x[i - 1]);
    y[i - 1] + t * (y[i] - y[i - 1])
}

/// Temperature minimising the mean NLL of the true class. NLL is convex in b = 1/T: Newton on b
/// with bisection as the safeguard.
pub fn fit_temperature(data: &Dataset) -> f64 {
    // d/db NLL = mean(E_p[z] - z_y), d2/db2 = mean(Var_p[z]).
    let grad_hess = |b: f64| {
        let (mut g, mut h) = (0.0, 0.0);
        for (row, t) in data.rows.iter().zip(&data.targets) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let (mut s, mut sz, mut szz) = (0.0, 0.0, 0.0);
            for &z in row {
                let z = z as f64;
                let e = (b * (z - max)).exp();
                s += e;
                sz += e * z;
                szz += e * z * z;
            }
            let mean = sz / s;
            // A true class outside the outputs contributes only through normalisation.
            let zy = t.map(|i| row[i] as f64).unwrap_or(mean);
            g += mean - zy;
            h += (szz / s - mean * mean).max(0.0);
        }
        let n = data.len() as f64;
        (g / n, h / n)
    };
    let (mut lo, mut hi) = (1e-3, 1e3);
    let mut b: f64 = 1.0;
    for _ in 0..100 {
        let (g, h) = grad_hess(b);
        if g.abs() < 1e-10 {
            break;
        }
        if g > 0.0 {
            hi = b;
        } else {
            lo = b;
        }
        let newton = b - g / h;
        b = if h > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            (lo * hi).sqrt()
        };
        if (hi - lo) / hi < 1e-12 {
            break;
        }
    }
    1.0 / b
}

/// Pool-adjacent-violators: non-decreasing fit to `values` with `weights`. Returns the pooled
/// blocks as (start index, end index exclusive, value).
fn pav(values: &[f64], weights: &[f64]) -> Vec<(usize, usize, f64)> {
    let mut blocks: Vec<(usize, usize, f64, f64)> = Vec::new(); // start, end, mean, weight
    for (i, (&v, &w)) in values.iter().zip(weights).enumerate() {
        blocks.push((i, i + 1, v, w));
        while blocks.len() > 1 && blocks[blocks.len() - 2].2 > blocks[blocks.len() - 1].2 {
            let b = blocks.pop().expect("len > 1");
            let a = blocks.last_mut().expect("len > 1");
            let w = a.3 + b.3;
            a.2 = (a.2 * a.3 + b.2 * b.3) / w;
            a.3 = w;
            a.1 = b.1;
        }
    }
    blocks.into_iter().map(|(s, e, v, _)| (s, e, v)).collect()
}

fn sorted_by_confidence(points: &[(f64, bool)]) -> Vec<(f64, bool)> {
    let mut p = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

/// Equal-mass histogram binning with monotone (PAV-pooled) bin values.
pub fn fit_histogram(points: &[(f64, bool)], bins: usize) -> Calibrator {
    let p = sorted_by_confidence(points);
    let bins = bins.clamp(1, p.len().max(1));
    let mut upper = Vec::with_capacity(bins);
    let mut acc = Vec::with_capacity(bins);
    let mut weight = Vec::with_capacity(bins);
    for b in 0..bins {
        let (s, e) = (b * p.len() / bins, (b + 1) * p.len() / bins);
        if s == e {
            continue;
        }
        let chunk = &p[s..e];
        upper.push(chunk[chunk.len() - 1].0);
        acc.push(laplace(
            chunk.iter().filter(|x| x.1).count() as f64,
            chunk.len() as f64,
        ));
        weight.push(chunk.len() as f64);
    }
    let mut values = vec![0.0; acc.len()];
    for (s, e, v) in pav(&acc, &weight) {
        values[s..e].fill(v);
    }
    Calibrator::HistogramBinning { upper, values }
}

/// Isotonic regression of correctness on confidence.
pub fn fit_isotonic(points: &[(f64, bool)]) -> Calibrator {
    let p = sorted_by_confidence(points);
    let y: Vec<f64> = p.iter().map(|x| if x.1 { 1.0 } else { 0.0 }).collect();
    let w = vec![1.0; p.len()];
    // The end blocks are often all-wrong or all-right; keep them off 0 and 1 by one sample's
    // worth, so a log loss stays bounded (monotonicity is unaffected).
    let eps = 1.0 / (p.len() as f64 + 2.0);
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for (s, e, v) in pav(&y, &w) {
        let v = v.clamp(eps, 1.0 - eps);
        // Each pooled block becomes one knot at its mean confidence.
        let x = p[s..e].iter().map(|q| q.0).sum::<f64>() / (e - s) as f64;
        if xs.last().is_some_and(|&last: &f64| x <= last) {
            // Equal confidences in neighbouring blocks: keep the higher (later) value.
            *ys.last_mut().expect("non-empty") = v;
            continue;
        }
        xs.push(x);
        ys.push(v);
    }
    Calibrator::Isotonic { x: xs, y: ys }
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(P_EPS, 1.0 - P_EPS);
    (p / (1.0 - p)).ln()
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Logistic regression of correctness on the log-odds of the raw confidence ([`fit_logistic`]
/// with the features (log-odds, 1), shrunk towards the identity map (1, 0)).
pub fn fit_platt(points: &[(f64, bool)]) -> Calibrator {
    let rows: Vec<([f64; 2], bool)> = points
        .iter()
        .map(|&(p, c)| ([logit(p).clamp(-30.0, 30.0), 1.0], c))
        .collect();
    let ridge = 1e-6 * rows.len() as f64;
    match fit_logistic(&rows, [1.0, 0.0], ridge) {
        // A non-positive slope would mean confidence is anti-informative; keep the identity
        // rather than write a non-monotone map.
        Some([a, b]) if a > 0.0 => Calibrator::Platt { a, b },
        _ => Calibrator::Platt { a: 1.0, b: 0.0 },
    }
}

/// Maximum-likelihood logistic regression `P(y) = σ(w · x)`: Newton's method from `prior` with
/// step halving (the log loss must fall at every step) and a ridge `ridge · |w − prior|² / 2`
/// that keeps separable data finite. `None` when the weights do not come out finite.
pub fn fit_logistic<const K: usize>(
    rows: &[([f64; K], bool)],
    prior: [f64; K],
    ridge: f64,
) -> Option<[f64; K]> {
    let z = |w: &[f64; K], x: &[f64; K]| -> f64 { w.iter().zip(x).map(|(w, x)| w * x).sum() };
    let loss = |w: &[f64; K]| {
        let l: f64 = rows
            .iter()
            .map(|(x, y)| {
                let z = z(w, x);
                // log(1 + e^z) - y z, computed stably.
                z.max(0.0) + (-z.abs()).exp().ln_1p() - if *y { z } else { 0.0 }
            })
            .sum();
        l + 0.5
            * ridge
            * w.iter()
                .zip(&prior)
                .map(|(w, p)| (w - p).powi(2))
                .sum::<f64>()
    };
    let mut w = prior;
    let mut current = loss(&w);
    for _ in 0..100 {
        let mut g = [0.0; K];
        let mut h = [[0.0; K]; K];
        for i in 0..K {
            g[i] = ridge * (w[i] - prior[i]);
            h[i][i] = ridge;
        }
        for (x, y) in rows {
            let q = sigmoid(z(&w, x));
            let r = q - if *y { 1.0 } else { 0.0 };
            for i in 0..K {
                g[i] += r * x[i];
                for j in 0..K {
                    h[i][j] += q * (1.0 - q) * x[i] * x[j];
                }
            }
        }
        let Some(d) = solve(h, g) else {
            break;
        };
        let mut step = 1.0;
        let mut improved = false;
        for _ in 0..30 {
            let mut next = w;
            for (n, d) in next.iter_mut().zip(&d) {
                *n -= step * d;
            }
            let l = loss(&next);
            if l.is_finite() && l <= current {
                (w, current, improved) = (next, l, true);
                break;
            }
            step *= 0.5;
        }
        if !improved || step * d.iter().map(|d| d.abs()).sum::<f64>() < 1e-10 {
            break;
        }
    }
    w.iter().all(|w| w.is_finite()).then_some(w)
}

/// Solves `a · x = b` (Gaussian elimination with partial pivoting); `None` when singular.
fn solve<const K: usize>(mut a: [[f64; K]; K], mut b: [f64; K]) -> Option<[f64; K]> {
    for c in 0..K {
        let pivot = (c..K).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[pivot][c].abs() < 1e-300 {
            return None;
        }
        a.swap(c, pivot);
        b.swap(c, pivot);
        let pivot_row = a[c];
        for r in c + 1..K {
            let f = a[r][c] / pivot_row[c];
            for (x, p) in a[r].iter_mut().zip(pivot_row).skip(c) {
                *x -= f * p;
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = [0.0; K];
    for r in (0..K).rev() {
        let s: f64 = (r + 1..K).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// Accuracy of a bin with `hits` of `n` right, shrunk towards 1/2 (Laplace's rule of
/// succession): a small bin never claims certainty, which a log loss would punish without bound.
fn laplace(hits: f64, n: f64) -> f64 {
    (hits + 1.0) / (n + 2.0)
}

/// Top-label calibration metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    pub mean_confidence: f64,
    /// Expected calibration error, 15 equal-width bins.
    pub ece: f64,
    /// ECE over 15 equal-mass bins.
    pub adaptive_ece: f64,
    /// Maximum calibration error over the non-empty equal-width bins.
    pub mce: f64,
    /// Binary log loss of "the top class is right".
    pub nll: f64,
    /// Brier score of the same event.
    pub brier: f64,
}

impl Metrics {
    pub fn of(points: &[(f64, bool)]) -> Self {
        let n = points.len();
        if n == 0 {
            return Self::default();
        }
        let nf = n as f64;
        let hit = |c: bool| if c { 1.0 } else { 0.0 };
        let accuracy = points.iter().map(|p| hit(p.1)).sum::<f64>() / nf;
        let mean_confidence = points.iter().map(|p| p.0).sum::<f64>() / nf;
        let nll = points
            .iter()
            .map(|&(p, c)| {
                let p = p.clamp(P_EPS, 1.0 - P_EPS);
                -(if c { p.ln() } else { (1.0 - p).ln() })
            })
            .sum::<f64>()
            / nf;
        let brier = points
            .iter()
            .map(|&(p, c)| (p - hit(c)).powi(2))
            .sum::<f64>()
            / nf;

        // Equal-width bins (the last bin includes 1.0).
        let mut bins = [(0.0f64, 0.0f64, 0usize); ECE_BINS];
        for &(p, c) in points {
            let b = ((p * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
            bins[b].0 += p;
            bins[b].1 += hit(c);
            bins[b].2 += 1;
        }
        let (mut ece, mut mce) = (0.0, 0.0f64);
        for &(sp, sc, k) in bins.iter().filter(|b| b.2 > 0) {
            let gap = (sp - sc).abs() / k as f64;
            ece += gap * k as f64 / nf;
            mce = mce.max(gap);
        }
        let sorted = sorted_by_confidence(points);
        let mut adaptive_ece = 0.0;
        for b in 0..ECE_BINS.min(n) {
            let chunk = &sorted[b * n / ECE_BINS.min(n)..(b + 1) * n / ECE_BINS.min(n)];
            if chunk.is_empty() {
                continue;
            }
            let k = chunk.len() as f64;
            let gap = (chunk.iter().map(|p| p.0).sum::<f64>()
                - chunk.iter().map(|p| hit(p.1)).sum::<f64>())
            .abs();
            adaptive_ece += gap / k * k / nf;
        }
        Self {
            n,
            accuracy,
            mean_confidence,
            ece,
            adaptive_ece,
            mce,
            nll,
            brier,
        }
    }
}

/// Identifies calibration files.
pub const FILE_FORMAT: &str = "cbo-calibration";
/// Current calibration file version.
pub const FILE_VERSION: u32 = 1;

/// What a calibration was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedOn {
    /// Human-readable description of the data (file names, frame counts).
    pub source: String,
    pub n: usize,
}

/// The calibration file written by `cbo calibrate` and read by `cbofilter calibration=FILE`.
///
/// ```json
/// { "format": "cbo-calibration", "version": 1,
///   "method": "temperature", "temperature": 1.31,
///   "model_sha256": "…", "model_file": "efficientnet-lite0-int8pt-224.onnx",
///   "fitted_on": { "source": "dev-slideshow.mp4", "n": 1500 },
///   "metrics_raw": { "n": 1500, "ece": 0.14, … }, "metrics_calibrated": { … } }
/// ```
/// `method` is `temperature` (`temperature`), `histogram-binning` (`upper`, `values`) or
/// `isotonic` (`x`, `y`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationFile {
    pub format: String,
    pub version: u32,
    #[serde(flatten)]
    pub calibrator: Calibrator,
    /// SHA-256 (hex) of the ONNX model file the calibration was fitted for.
    pub model_sha256: String,
    pub model_file: String,
    pub fitted_on: FittedOn,
    pub metrics_raw: Metrics,
    pub metrics_calibrated: Metrics,
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &std::path::Path) -> Result<String, CalibrationError> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|source| CalibrationError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl CalibrationFile {
    pub fn new(
        calibrator: Calibrator,
        model: &std::path::Path,
        fitted_on: FittedOn,
        metrics_raw: Metrics,
        metrics_calibrated: Metrics,
    ) -> Result<Self, CalibrationError> {
        Ok(Self {
            format: FILE_FORMAT.into(),
            version: FILE_VERSION,
            calibrator,
            model_sha256: sha256_file(model)?,
            model_file: model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            fitted_on,
            metrics_raw,
            metrics_calibrated,
        })
    }

    /// Parses and validates a calibration file's text.
    pub fn parse(text: &str) -> Result<Self, CalibrationError> {
        // Check the header first, so a file of another version says so rather than failing on
        // whichever field changed.
        let header: serde_json::Value =
            serde_json::from_str(text).map_err(CalibrationError::NotJson)?;
        if header.get("format").and_then(|v| v.as_str()) != Some(FILE_FORMAT) {
            return Err(CalibrationError::NotACalibration);
        }
        match header.get("version") {
            Some(v) if version_number(v) == Some(u64::from(FILE_VERSION)) => {}
            Some(v) => return Err(CalibrationError::Version(v.to_string())),
            None => return Err(CalibrationError::NoVersion),
        }
        let mut header = header;
        // `1.0` as the integer the struct holds.
        header["version"] = FILE_VERSION.into();
        let file: Self = serde_json::from_value(header).map_err(CalibrationError::Corrupt)?;
        file.calibrator.validate()?;
        Ok(file)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, CalibrationError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| CalibrationError::ReadCalibration {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&text).map_err(|e| CalibrationError::In {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Errors unless the file was fitted for exactly this model file.
    pub fn check_model(&self, model: &std::path::Path) -> Result<(), CalibrationError> {
        let hash = sha256_file(model)?;
        if hash != self.model_sha256 {
            return Err(CalibrationError::OtherModel {
                file: self.model_file.clone(),
                fitted: self.model_sha256.clone(),
                model: model.to_path_buf(),
                hash,
            });
        }
        Ok(())
    }

    pub fn save(&self, path: &std::path::Path) -> Result<(), CalibrationError> {
        let text = serde_json::to_string_pretty(self).expect("serialisable");
        std::fs::write(path, text + "\n").map_err(|source| CalibrationError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A file format's `version` field as a number: `1` and `1.0` alike (JSON does not tell them
/// apart for a reader, and a hand-edited file may hold either); `None` for anything else.
pub(crate) fn version_number(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(f))
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic generator (xorshift) so tests never flake.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn gauss(&mut self) -> f64 {
            let (u, v) = (self.next().max(1e-12), self.next());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    /// Logits whose true distribution is softmax(z); labels are drawn from it, then the logits
    /// are multiplied by `scale`. A perfectly fitted temperature is `scale`.
    fn synthetic(n: usize, classes: usize, scale: f64, seed: u64) -> Dataset {
        let mut rng = Rng(seed);
        let mut d = Dataset::default();
        for _ in 0..n {
            let z: Vec<f64> = (0..classes).map(|_| 2.0 * rng.gauss()).collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
            let s: f64 = e.iter().sum();
            let mut u = rng.next() * s;
            let mut y = classes - 1;
            for (i, &p) in e.iter().enumerate() {
                if u < p {
                    y = i;
                    break;
                }
                u -= p;
            }
            d.push(z.iter().map(|v| (v * scale) as f32).collect(), Some(y));
        }
        d
    }

    #[test]
    fn temperature_recovers_known_scale() {
        for scale in [0.5, 1.0, 2.5] {
            let d = synthetic(4000, 10, scale, 7);
            let t = fit_temperature(&d);
            assert!(
                (t - scale).abs() / scale < 0.08,
                "scale {scale}: fitted T {t}"
            );
        }
    }

    #[test]
    fn perfectly_calibrated_data_has_near_zero_ece() {
        let d = synthetic(20000, 10, 1.0, 3);
        let m = Metrics::of(&d.top_label());
        assert!(m.ece < 0.02, "ece {}", m.ece);
        let overconfident = Metrics::of(&synthetic(20000, 10, 3.0, 3).top_label());
        assert!(overconfident.ece > 0.1, "ece {}", overconfident.ece);
    }

    #[test]
    fn every_method_reduces_ece_on_held_out_data() {
        let fit = synthetic(3000, 10, 2.5, 11);
        let test = synthetic(3000, 10, 2.5, 12);
        let raw = Metrics::of(&test.top_label());
        for m in [
            Method::Temperature,
            Method::HistogramBinning,
            Method::Isotonic,
            Method::Platt,
            Method::Auto,
        ] {
            let cal = Calibrator::fit(m, &fit).unwrap();
            cal.validate().unwrap();
            let after = Metrics::of(&cal.top_label(&test));
            assert!(
                after.ece < 0.05 && after.ece < 0.6 * raw.ece,
                "{m:?}: {} -> {}",
                raw.ece,
                after.ece
            );
            assert!(
                after.nll < raw.nll,
                "{m:?}: nll {} -> {}",
                raw.nll,
                after.nll
            );
        }
    }

    #[test]
    fn isotonic_and_binning_are_monotone() {
        let mut rng = Rng(5);
        let pts: Vec<(f64, bool)> = (0..2000)
            .map(|_| {
                let p = rng.next();
                (p, rng.next() < p * p)
            })
            .collect();
        for cal in [fit_isotonic(&pts), fit_histogram(&pts, 15)] {
            cal.validate().unwrap();
            let mut last = -1.0;
            for i in 0..=1000 {
                let v = cal.apply(i as f64 / 1000.0, &[]);
                assert!(v >= last - 1e-12, "{cal:?} not monotone at {i}");
                assert!((0.0..=1.0).contains(&v));
                last = v;
            }
        }
    }

    #[test]
    fn pav_pools_violators() {
        let blocks = pav(&[1.0, 3.0, 2.0, 4.0], &[1.0; 4]);
        assert_eq!(blocks, vec![(0, 1, 1.0), (1, 3, 2.5), (3, 4, 4.0)]);
    }

    #[test]
    fn validation_rejects_bad_parameters() {
        assert!(
            Calibrator::Temperature { temperature: 0.0 }
                .validate()
                .is_err()
        );
        assert!(
            Calibrator::Temperature {
                temperature: f64::NAN
            }
            .validate()
            .is_err()
        );
        // 1 / T overflows single precision: the element would compute no probability at all.
        assert!(
            Calibrator::Temperature {
                temperature: 1e-300
            }
            .validate()
            .is_err()
        );
        assert!(
            Calibrator::Temperature { temperature: 1e-3 }
                .validate()
                .is_ok()
        );
        let non_monotone = Calibrator::Isotonic {
            x: vec![0.1, 0.5],
            y: vec![0.6, 0.2],
        };
        assert!(
            non_monotone
                .validate()
                .unwrap_err()
                .to_string()
                .contains("monotone")
        );
        let mismatched = Calibrator::HistogramBinning {
            upper: vec![0.5],
            values: vec![0.1, 0.2],
        };
        assert!(mismatched.validate().is_err());
    }

    #[test]
    fn temperature_application_matches_full_softmax() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32) * 0.13 - 5.0)
            .collect();
        let t = 1.7;
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let full = 1.0
            / row
                .iter()
                .map(|&v| ((v as f64 - max) / t).exp())
                .sum::<f64>();
        let cal = Calibrator::Temperature { temperature: t };
        assert!(
            (cal.apply(0.0, &row) - full).abs() < 1e-6 * full,
            "{} vs {full}",
            cal.apply(0.0, &row)
        );
        for x in [0.0f32, -0.3, -1.0, -5.5, -20.0, -86.0] {
            let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= 2e-7 * want,
                "exp({x}) = {got} vs {want}"
            );
        }
    }

    #[test]
    fn calibration_file_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"model bytes").unwrap();
        let other = dir.path().join("other.onnx");
        std::fs::write(&other, b"other bytes").unwrap();
        for cal in [
            Calibrator::Temperature { temperature: 1.5 },
            Calibrator::HistogramBinning {
                upper: vec![0.3, 1.0],
                values: vec![0.2, 0.9],
            },
            Calibrator::Isotonic {
                x: vec![0.1, 0.9],
                y: vec![0.05, 0.95],
            },
        ] {
            let file = CalibrationFile::new(
                cal,
                &model,
                FittedOn {
                    source: "test".into(),
                    n: 10,
                },
                Metrics::default(),
                Metrics::default(),
            )
            .unwrap();
            let path = dir.path().join("cal.json");
            file.save(&path).unwrap();
            let back = CalibrationFile::load(&path).unwrap();
            assert_eq!(back, file);
            back.check_model(&model).unwrap();
            let err = back.check_model(&other).unwrap_err();
            assert!(matches!(err, CalibrationError::OtherModel { .. }), "{err}");
            assert!(
                err.to_string().contains("fitted for model 'model.onnx'"),
                "{err}"
            );
        }
        let good = serde_json::to_value(
            CalibrationFile::new(
                Calibrator::Temperature { temperature: 1.5 },
                &model,
                FittedOn {
                    source: "t".into(),
                    n: 1,
                },
                Metrics::default(),
                Metrics::default(),
            )
            .unwrap(),
        )
        .unwrap();
        let variant = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            CalibrationFile::parse(&v.to_string())
                .unwrap_err()
                .to_string()
        };
        assert!(variant(&|v| v["version"] = 2.into()).contains("version 2"));
        // A version written `1.0` is version 1; a string is named as written (it read "has no
        // version").
        let mut v1 = good.clone();
        v1["version"] = 1.0.into();
        assert!(CalibrationFile::parse(&v1.to_string()).is_ok());
        assert!(variant(&|v| v["version"] = "1".into()).contains("version \"1\""));
        assert_eq!(version_number(&serde_json::json!(1.5)), None);
        assert_eq!(version_number(&serde_json::json!(-1.0)), None);
        assert!(variant(&|v| v["format"] = "x".into()).contains("not a cbo calibration"));
        assert!(variant(&|v| v["temperature"] = (-1.0).into()).contains("positive"));
        assert!(variant(&|v| v["method"] = "magic".into()).contains("corrupt"));
        assert!(matches!(
            CalibrationFile::parse("{ truncated"),
            Err(CalibrationError::NotJson(_))
        ));
        let err = variant(&|v| {
            v["method"] = "isotonic".into();
            v["x"] = serde_json::json!([0.1, 0.5]);
            v["y"] = serde_json::json!([0.9, 0.2]);
        });
        assert!(err.contains("monotone"), "{err}");
    }

    #[test]
    fn too_little_data_is_an_error() {
        let d = synthetic(5, 3, 1.0, 1);
        assert!(matches!(
            Calibrator::fit(Method::Temperature, &d),
            Err(CalibrationError::TooFewSamples(5))
        ));
        // Choosing the method cross-validates: 12 samples leave 9 to fit on in one of 5 folds,
        // and the error says so for the whole set (13 needed), not as a fold's "got 9".
        let d = synthetic(12, 3, 1.0, 1);
        let e = Calibrator::fit(Method::Auto, &d).unwrap_err();
        assert!(
            matches!(
                e,
                CalibrationError::TooFewForFolds {
                    n: 12,
                    folds: 5,
                    min: 13
                }
            ),
            "{e}"
        );
        assert!(Calibrator::fit(Method::Auto, &synthetic(13, 3, 1.0, 1)).is_ok());
    }
}
