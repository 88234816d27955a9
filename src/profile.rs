//! The offload profile: what sending a frame to the server at resolution `r` costs and gains.
//!
//! Pure data and arithmetic, no GStreamer: `cbo profile` measures [`FrameObservation`]s on a
//! labelled clip and [`Profile::build`] aggregates them; the offload policy reads the result.
//!
//! Per resolution (short side of the frame) the profile records the JPEG size distribution, the
//! encode time, the server's decode and inference time and its top-1 accuracy. Per bin of the
//! device's *calibrated* confidence (10 equal-width bins) it records how often the device is right
//! and how often the server is right at each resolution: the gain of offloading a frame of
//! confidence `c` at `r` is `server_accuracy(c, r) − c` (the device is right with probability `c`
//! when calibrated). With a merge model ([`crate::offload::merge`], fitted on the same
//! observations) it also records how often the label the merge leaves is right, which is what
//! an answer is worth to a stream that merges ([`Profile::gain_lower_bound`]).
//!
//! File format (JSON, `format: "cbo-profile"`, `version: 1`): see [`Profile`];
//! `docs/profile.md` shows the shipped profile's numbers.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::offload::merge::{Disagreement, Merge, MergeModel, server_label_wins};

pub const FORMAT: &str = "cbo-profile";
pub const VERSION: u32 = 1;
/// Equal-width bins of calibrated device confidence.
pub const CONFIDENCE_BINS: usize = 10;
/// Weight, in frames, of the resolution's overall server accuracy when estimating a sparsely
/// populated bin: a bin with 3 frames should not claim the server is always right.
pub const PRIOR_FRAMES: f64 = 5.0;

/// One labelled frame as measured by `cbo profile`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameObservation {
    /// Calibrated confidence of the device's top-1.
    pub device_confidence: f64,
    /// Its raw softmax confidence.
    pub raw_confidence: f64,
    pub device_correct: bool,
    /// The device's top-1 class and the labelled class (for answer reuse in `cbo eval`).
    pub device_class: i32,
    pub truth: i32,
    /// One entry per profiled resolution, in the profile's order.
    pub server: Vec<ServerObservation>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerObservation {
    pub jpeg_bytes: u32,
    pub server_correct: bool,
    /// The server's top-1 class, and its probability.
    pub server_class: i32,
    pub server_score: f32,
    pub encode_us: u32,
    pub decode_us: u32,
    pub inference_us: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub file: String,
    pub sha256: String,
    /// How `cbo profile` fed the model and read its output, where that was not the default
    /// (`None`: [`ModelInput::default`]); `cbo eval` replays the model the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<ModelInput>,
}

/// A model's pre-processing and output reading, as the element's properties of the same names
/// (and the tools' `--input-mean`, ... flags) give them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInput {
    pub input_mean: String,
    pub input_std: String,
    /// `auto`, `logits` or `probabilities`.
    pub output_kind: String,
    /// The side a model with a dynamic image size was run at; 0: the model's own size.
    pub input_size: u32,
}

impl Default for ModelInput {
    /// The element's defaults.
    fn default() -> Self {
        Self {
            input_mean: "127".into(),
            input_std: "128".into(),
            output_kind: "auto".into(),
            input_size: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolutionProfile {
    /// Short side in pixels (the `resolution` property's unit).
    pub short_side: u32,
    /// Size of the encoded image for the profiled clip's frame size.
    pub width: u32,
    pub height: u32,
    pub bytes_mean: f64,
    pub bytes_p50: f64,
    pub bytes_p90: f64,
    pub encode_ms_mean: f64,
    pub server_decode_ms_mean: f64,
    pub server_inference_ms_mean: f64,
    pub server_inference_ms_p90: f64,
    pub server_accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceBin {
    pub lo: f64,
    pub hi: f64,
    /// Frames whose calibrated device confidence fell in `[lo, hi)` (the last bin includes 1).
    pub n: usize,
    pub mean_confidence: f64,
    pub device_accuracy: f64,
    /// Server top-1 accuracy on these frames, one per resolution in `resolutions` order.
    pub server_accuracy: Vec<f64>,
    /// Distinct scenes (runs of consecutive frames with the same true class) among these frames:
    /// the independent evidence behind the accuracies, since the frames of one scene are nearly
    /// copies of each other. Absent in profiles made before it was recorded (then `n` counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenes: Option<usize>,
    /// Accuracy of the label these frames leave with once answered at each resolution, when an
    /// answer that disagrees with the device is merged by the profile's [`Profile::merge`]
    /// model: the device's label where the model keeps it, the server's where it does not.
    /// What an answer is worth to a stream that merges; absent in profiles made before it was
    /// recorded, and without a merge model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_accuracy: Option<Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedOn {
    pub source: String,
    pub n: usize,
    pub frame_width: u32,
    pub frame_height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub format: String,
    pub version: u32,
    pub device_model: ModelRef,
    pub server_model: ModelRef,
    /// Calibration file the device confidences were read through (`None`: raw confidence).
    pub calibration: Option<ModelRef>,
    pub jpeg_quality: u32,
    pub encoder: String,
    pub fitted_on: FittedOn,
    pub device_accuracy: f64,
    pub resolutions: Vec<ResolutionProfile>,
    pub bins: Vec<ConfidenceBin>,
    /// Which label an answer that disagrees with the device should leave with
    /// ([`crate::offload::merge`]); absent in profiles made before it existed.
    #[serde(default)]
    pub merge: Option<MergeModel>,
}

/// Why a profile could not be built, read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no frames to build a profile from")]
    NoFrames,
    #[error("no resolutions to profile")]
    NoResolutions,
    #[error("an observation has {got} server entries for {expected} resolutions")]
    ServerEntries { got: usize, expected: usize },
    #[error("not a JSON profile: {0}")]
    NotJson(serde_json::Error),
    #[error("not a cbo profile ({}; expected \"format\": \"{FORMAT}\")", format_field(.0))]
    NotAProfile(Option<String>),
    /// The `version` field as written (`2`, `"1"`, or `missing`).
    #[error("unsupported profile version {0} (this build reads version {VERSION})")]
    Version(String),
    #[error("malformed profile: {0}")]
    Malformed(serde_json::Error),
    /// Figures out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read profile '{path}': {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("profile '{path}': {source}")]
    In {
        path: std::path::PathBuf,
        source: Box<ProfileError>,
    },
    #[error("cannot write '{path}': {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What a file's `format` field says, for [`ProfileError::NotAProfile`].
fn format_field(format: &Option<String>) -> String {
    match format {
        Some(f) => format!("its \"format\" is \"{f}\""),
        None => "it has no \"format\"".into(),
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

/// The `q`-quantile (0..=1) by the nearest-rank method.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Bin index of a confidence: `[k/10, (k+1)/10)`, 1.0 in the last bin.
pub fn bin_of(confidence: f64) -> usize {
    ((confidence.clamp(0.0, 1.0) * CONFIDENCE_BINS as f64) as usize).min(CONFIDENCE_BINS - 1)
}

/// What a profile is built from besides the observations.
#[derive(Debug, Clone)]
pub struct ProfileInputs {
    pub device_model: ModelRef,
    pub server_model: ModelRef,
    pub calibration: Option<ModelRef>,
    pub jpeg_quality: u32,
    pub encoder: String,
    pub fitted_on: FittedOn,
    /// `(short_side, width, height)` per resolution.
    pub resolutions: Vec<(u32, u32, u32)>,
}

impl Profile {
    /// Aggregates observations (each with one server entry per resolution).
    pub fn build(inputs: ProfileInputs, obs: &[FrameObservation]) -> Result<Self, ProfileError> {
        if obs.is_empty() {
            return Err(ProfileError::NoFrames);
        }
        let nres = inputs.resolutions.len();
        if nres == 0 {
            return Err(ProfileError::NoResolutions);
        }
        if let Some(bad) = obs.iter().find(|o| o.server.len() != nres) {
            return Err(ProfileError::ServerEntries {
                got: bad.server.len(),
                expected: nres,
            });
        }
        let acc = |b: bool| if b { 1.0 } else { 0.0 };
        let resolutions = inputs
            .resolutions
            .iter()
            .enumerate()
            .map(|(r, &(short_side, width, height))| {
                let mut bytes: Vec<f64> =
                    obs.iter().map(|o| o.server[r].jpeg_bytes as f64).collect();
                bytes.sort_by(f64::total_cmp);
                let mut inf: Vec<f64> = obs
                    .iter()
                    .map(|o| o.server[r].inference_us as f64 / 1000.0)
                    .collect();
                inf.sort_by(f64::total_cmp);
                ResolutionProfile {
                    short_side,
                    width,
                    height,
                    bytes_mean: mean(bytes.iter().copied()),
                    bytes_p50: quantile(&bytes, 0.5),
                    bytes_p90: quantile(&bytes, 0.9),
                    encode_ms_mean: mean(obs.iter().map(|o| o.server[r].encode_us as f64 / 1000.0)),
                    server_decode_ms_mean: mean(
                        obs.iter().map(|o| o.server[r].decode_us as f64 / 1000.0),
                    ),
                    server_inference_ms_mean: mean(inf.iter().copied()),
                    server_inference_ms_p90: quantile(&inf, 0.9),
                    server_accuracy: mean(obs.iter().map(|o| acc(o.server[r].server_correct))),
                }
            })
            .collect();
        // Scene number of each observation: a new scene whenever the true class changes (a
        // photo set has one scene per photo, a clip one per shot).
        let scene_of: Vec<usize> = obs
            .iter()
            .scan((None, 0usize), |(last, n), o| {
                if *last != Some(o.truth) {
                    *last = Some(o.truth);
                    *n += 1;
                }
                Some(*n)
            })
            .collect();
        let merge = MergeModel::fit(&disagreements(&inputs.resolutions, obs));
        // Whether frame `o`'s answer at `r` leaves right under the merge model.
        let merged_right = |m: &MergeModel, o: &FrameObservation, r: usize| {
            let s = &o.server[r];
            if server_label_wins(
                Some(m),
                o.device_class,
                o.device_confidence,
                s.server_class,
                s.server_score as f64,
                inputs.resolutions[r].0,
            ) {
                s.server_correct
            } else {
                o.device_correct
            }
        };
        let bins = (0..CONFIDENCE_BINS)
            .map(|k| {
                let in_bin: Vec<&FrameObservation> = obs
                    .iter()
                    .filter(|o| bin_of(o.device_confidence) == k)
                    .collect();
                let mut scenes: Vec<usize> = obs
                    .iter()
                    .zip(&scene_of)
                    .filter(|(o, _)| bin_of(o.device_confidence) == k)
                    .map(|(_, &s)| s)
                    .collect();
                scenes.dedup();
                scenes.sort_unstable();
                scenes.dedup();
                ConfidenceBin {
                    lo: k as f64 / CONFIDENCE_BINS as f64,
                    hi: (k + 1) as f64 / CONFIDENCE_BINS as f64,
                    n: in_bin.len(),
                    mean_confidence: mean(in_bin.iter().map(|o| o.device_confidence)),
                    device_accuracy: mean(in_bin.iter().map(|o| acc(o.device_correct))),
                    server_accuracy: (0..nres)
                        .map(|r| mean(in_bin.iter().map(|o| acc(o.server[r].server_correct))))
                        .collect(),
                    scenes: Some(scenes.len()),
                    merged_accuracy: merge.as_ref().map(|m| {
                        (0..nres)
                            .map(|r| mean(in_bin.iter().map(|o| acc(merged_right(m, o, r)))))
                            .collect()
                    }),
                }
            })
            .collect();
        Ok(Self {
            format: FORMAT.into(),
            version: VERSION,
            device_model: inputs.device_model,
            server_model: inputs.server_model,
            calibration: inputs.calibration,
            jpeg_quality: inputs.jpeg_quality,
            encoder: inputs.encoder,
            fitted_on: inputs.fitted_on,
            device_accuracy: mean(obs.iter().map(|o| acc(o.device_correct))),
            merge,
            resolutions,
            bins,
        })
    }

    /// Index of the profiled resolution with this short side.
    pub fn resolution_index(&self, short_side: u32) -> Option<usize> {
        self.resolutions
            .iter()
            .position(|r| r.short_side == short_side)
    }

    /// Expected server top-1 accuracy at resolution index `r` for a frame whose calibrated device
    /// confidence is `confidence`: the bin's measured accuracy, shrunk towards the resolution's
    /// overall accuracy by [`PRIOR_FRAMES`] pseudo-frames so that thin bins stay plausible.
    pub fn server_accuracy(&self, confidence: f64, r: usize) -> f64 {
        let overall = self.resolutions[r].server_accuracy;
        let bin = &self.bins[bin_of(confidence)];
        let n = bin.n as f64;
        (bin.server_accuracy[r] * n + overall * PRIOR_FRAMES) / (n + PRIOR_FRAMES)
    }

    /// What sending a frame of calibrated confidence `confidence` at resolution `r` is expected
    /// to gain over keeping the device's label, `z` standard errors below the profile's estimate.
    ///
    /// The estimate is paired within the confidence bin (server accuracy minus device accuracy
    /// on the same frames), shrunk towards no gain by [`PRIOR_FRAMES`] pseudo-samples, so a thin
    /// bin promises little. Its standard error uses the variance of the per-frame difference of
    /// two right/wrong outcomes (at most the share of frames on which they differ) over the
    /// bin's *scenes*, not its frames: the frames of one scene are nearly copies, and counting
    /// them as independent made the one-clip profile promise gains other clips do not show.
    pub fn gain_lower_bound(&self, confidence: f64, r: usize, z: f64) -> f64 {
        let bin = &self.bins[bin_of(confidence)];
        let n = bin.scenes.unwrap_or(bin.n).min(bin.n) as f64;
        let (a, b) = (self.answered_accuracy(bin, r), bin.device_accuracy);
        let shrunk = (a - b) * n / (n + PRIOR_FRAMES);
        let var = (a * (1.0 - b) + b * (1.0 - a) - (a - b).powi(2)).max(0.0);
        shrunk - z * (var / (n + PRIOR_FRAMES)).sqrt()
    }

    /// The accuracy of the label a frame of `bin` leaves with once answered at `r`: under the
    /// profile's merge model when it has one (the element's `merge=confidence`; a caller that
    /// takes the server's label always drops the model, [`Profile::merged_by`]), else the
    /// server's.
    fn answered_accuracy(&self, bin: &ConfidenceBin, r: usize) -> f64 {
        match (&self.merge, &bin.merged_accuracy) {
            (Some(_), Some(m)) => m[r],
            _ => bin.server_accuracy[r],
        }
    }

    /// This profile as seen by a stream that merges answers by `merge`: with
    /// [`Merge::Server`] it drops its merge model, and its gains count the server's labels.
    pub fn merged_by(mut self, merge: Merge) -> Self {
        self.merge = merge.rule(self.merge);
        self
    }

    /// The probability that an answered frame's label at `r` is right (the server's, or the
    /// merged one when the profile merges) for a frame of calibrated confidence `confidence`,
    /// taken at the gain's lower bound ([`Self::gain_lower_bound`]): what the planner and
    /// answer reuse count on.
    pub fn answer_accuracy(&self, confidence: f64, r: usize, z: f64) -> f64 {
        (confidence + self.gain_lower_bound(confidence, r, z)).clamp(0.0, 1.0)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a profile serialises")
    }

    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(ProfileError::NotJson)?;
        match value.get("format").and_then(|v| v.as_str()) {
            Some(FORMAT) => {}
            other => return Err(ProfileError::NotAProfile(other.map(str::to_string))),
        }
        match value.get("version") {
            Some(v) if crate::calibration::version_number(v) == Some(u64::from(VERSION)) => {}
            Some(v) => return Err(ProfileError::Version(v.to_string())),
            None => return Err(ProfileError::Version("missing".into())),
        }
        let mut value = value;
        // `1.0` as the integer the struct holds.
        value["version"] = VERSION.into();
        let profile: Profile = serde_json::from_value(value).map_err(ProfileError::Malformed)?;
        profile.validate()?;
        Ok(profile)
    }

    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |m: String| Err(ProfileError::Invalid(m));
        if self.resolutions.is_empty() {
            return bad("the profile lists no resolutions".into());
        }
        if self.bins.len() != CONFIDENCE_BINS {
            return bad(format!(
                "the profile has {} confidence bins, expected {CONFIDENCE_BINS}",
                self.bins.len()
            ));
        }
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        // What `cbo profile` can write, with room to spare: the planner divides by these, adds
        // them to deadlines and sends the short side on the wire, so a figure out of all reason
        // (a time of 1e308 ms made `cbo eval`'s link oracle loop; a negative server time made the
        // element send frames that could not arrive) is a broken file, refused here.
        let ms = |x: f64| x.is_finite() && (0.0..=60_000.0).contains(&x);
        let bytes = |x: f64| x.is_finite() && (0.0..=256.0 * 1024.0 * 1024.0).contains(&x);
        let side = 16..=crate::jpeg::MAX_DECODED_SIDE as u32;
        if !(1..=100).contains(&self.jpeg_quality) {
            return bad(format!(
                "jpeg_quality {} is not in 1..=100",
                self.jpeg_quality
            ));
        }
        for (i, r) in self.resolutions.iter().enumerate() {
            // The short side is the one asked for (16-4096, as `cbo profile --resolutions`
            // takes it); the frame's sides can be smaller (a frame is never upscaled) or, for an
            // extreme aspect ratio, its short side shrunk to keep the long one at 4096.
            let any_side = 1..=crate::jpeg::MAX_DECODED_SIDE as u32;
            if !side.contains(&r.short_side)
                || !any_side.contains(&r.width)
                || !any_side.contains(&r.height)
            {
                return bad(format!(
                    "resolution {} ({}x{}): a short side from 16 and sides up to {} px (the short side too)",
                    r.short_side,
                    r.width,
                    r.height,
                    crate::jpeg::MAX_DECODED_SIDE
                ));
            }
            if self.resolutions[..i]
                .iter()
                .any(|o| o.short_side == r.short_side)
            {
                return bad(format!("resolution {} is listed twice", r.short_side));
            }
            let times = [
                r.encode_ms_mean,
                r.server_decode_ms_mean,
                r.server_inference_ms_mean,
                r.server_inference_ms_p90,
            ];
            if !unit(r.server_accuracy)
                || ![r.bytes_mean, r.bytes_p50, r.bytes_p90]
                    .iter()
                    .all(|&b| bytes(b))
                || !times.iter().all(|&t| ms(t))
            {
                return bad(format!(
                    "resolution {} has invalid figures (accuracies in [0, 1], sizes from 0 to \
                     256 MiB, times from 0 to 60000 ms)",
                    r.short_side
                ));
            }
        }
        let width = 1.0 / CONFIDENCE_BINS as f64;
        for (k, b) in self.bins.iter().enumerate() {
            // The planner finds a frame's bin by its confidence (k / 10 <= p < (k + 1) / 10): a
            // file with other edges would be read as if it had these.
            let (lo, hi) = (k as f64 * width, (k + 1) as f64 * width);
            if (b.lo - lo).abs() > 1e-9 || (b.hi - hi).abs() > 1e-9 {
                return bad(format!(
                    "confidence bin {k} is [{}, {}), expected [{lo}, {hi})",
                    b.lo, b.hi
                ));
            }
            if b.scenes.is_some_and(|s| s == 0 && b.n > 0 || s > b.n) {
                return bad(format!(
                    "confidence bin [{}, {}) has {} frames in {:?} scenes",
                    b.lo, b.hi, b.n, b.scenes
                ));
            }
        }
        if let Some(m) = &self.merge {
            let moderate = |x: f64| x.is_finite() && x.abs() <= 1000.0;
            if ![
                m.intercept,
                m.device_logit,
                m.server_logit,
                m.log_resolution,
            ]
            .iter()
            .all(|&w| moderate(w))
            {
                return bad("the merge model's weights must be finite, at most 1000".into());
            }
        }
        for b in &self.bins {
            if b.server_accuracy.len() != self.resolutions.len()
                || !b.server_accuracy.iter().all(|&a| unit(a))
                || !unit(b.device_accuracy)
                || b.merged_accuracy.as_ref().is_some_and(|m| {
                    m.len() != self.resolutions.len() || !m.iter().all(|&a| unit(a))
                })
            {
                return bad(format!("confidence bin [{}, {}) is malformed", b.lo, b.hi));
            }
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| ProfileError::In {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        std::fs::write(path, self.to_json() + "\n").map_err(|source| ProfileError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The answers of `obs` that name another class than the device where one of the two is right:
/// what [`MergeModel`] is fitted on.
fn disagreements(resolutions: &[(u32, u32, u32)], obs: &[FrameObservation]) -> Vec<Disagreement> {
    obs.iter()
        .flat_map(|o| {
            o.server
                .iter()
                .zip(resolutions)
                .filter(|(s, _)| {
                    s.server_class != o.device_class && (s.server_correct || o.device_correct)
                })
                .map(|(s, &(short_side, _, _))| Disagreement {
                    device_confidence: o.device_confidence,
                    server_score: s.server_score as f64,
                    short_side,
                    server_right: s.server_correct,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped profile is valid; figures no `cbo profile` writes are refused, naming what.
    #[test]
    fn a_profile_with_figures_out_of_all_reason_is_refused() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/efficientnet-lite0-to-lite2.profile.json");
        let shipped = Profile::load(&path).unwrap();
        shipped.validate().unwrap();
        type Break = Box<dyn Fn(&mut Profile)>;
        let broken: Vec<(&str, Break)> = vec![
            (
                "invalid figures",
                Box::new(|p| p.resolutions[0].encode_ms_mean = 1e308),
            ),
            (
                "invalid figures",
                Box::new(|p| p.resolutions[1].server_inference_ms_mean = -1e6),
            ),
            (
                "invalid figures",
                Box::new(|p| p.resolutions[2].bytes_p90 = f64::NAN),
            ),
            (
                "up to 4096",
                Box::new(|p| p.resolutions[0].short_side = 100_000),
            ),
            (
                "listed twice",
                Box::new(|p| p.resolutions[1].short_side = p.resolutions[0].short_side),
            ),
            ("expected [0.1, 0.2)", Box::new(|p| p.bins[1].lo = 0.15)),
            ("scenes", Box::new(|p| p.bins[9].scenes = Some(0))),
            (
                "merge",
                Box::new(|p| p.merge.as_mut().unwrap().server_logit = 1e300),
            ),
            ("jpeg_quality", Box::new(|p| p.jpeg_quality = 0)),
        ];
        for (what, breaks) in broken {
            let mut p = shipped.clone();
            breaks(&mut p);
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    fn inputs(res: &[u32]) -> ProfileInputs {
        let m = ModelRef {
            file: "m.onnx".into(),
            sha256: "00".into(),
            input: None,
        };
        ProfileInputs {
            device_model: m.clone(),
            server_model: m,
            calibration: None,
            jpeg_quality: 80,
            encoder: "test".into(),
            fitted_on: FittedOn {
                source: "synthetic".into(),
                n: 0,
                frame_width: 480,
                frame_height: 360,
            },
            resolutions: res.iter().map(|&r| (r, r * 4 / 3, r)).collect(),
        }
    }

    fn obs(conf: f64, device: bool, server: &[(u32, bool)]) -> FrameObservation {
        FrameObservation {
            device_confidence: conf,
            raw_confidence: conf,
            device_correct: device,
            device_class: if device { 1 } else { 2 },
            truth: 1,
            server: server
                .iter()
                .map(|&(b, c)| ServerObservation {
                    jpeg_bytes: b,
                    server_correct: c,
                    server_class: if c { 1 } else { 3 },
                    server_score: 0.5,
                    encode_us: 1000,
                    decode_us: 500,
                    inference_us: 20_000,
                })
                .collect(),
        }
    }

    #[test]
    fn aggregates_sizes_accuracies_and_bins() {
        let frames = vec![
            obs(0.05, false, &[(1000, false), (3000, true)]),
            obs(0.15, false, &[(2000, true), (4000, true)]),
            obs(0.95, true, &[(3000, true), (5000, true)]),
            obs(1.0, true, &[(4000, false), (6000, true)]),
        ];
        let p = Profile::build(inputs(&[96, 224]), &frames).unwrap();
        assert_eq!(p.resolutions[0].bytes_mean, 2500.0);
        assert_eq!(p.resolutions[0].bytes_p50, 2000.0);
        assert_eq!(p.resolutions[0].bytes_p90, 4000.0);
        assert_eq!(p.resolutions[0].server_accuracy, 0.5);
        assert_eq!(p.resolutions[1].server_accuracy, 1.0);
        assert_eq!(p.device_accuracy, 0.5);
        assert_eq!(p.bins[0].n, 1);
        assert_eq!(p.bins[1].n, 1);
        assert_eq!(p.bins[9].n, 2, "1.0 falls in the last bin");
        assert_eq!(p.bins[9].device_accuracy, 1.0);
        assert_eq!(p.bins[9].server_accuracy, vec![0.5, 1.0]);
        assert_eq!(p.bins[5].n, 0);
        // Thin bin 0: server 0/1 at 96 px, shrunk towards the overall 0.5.
        let a = p.server_accuracy(0.01, 0);
        assert!((a - 2.5 / 6.0).abs() < 1e-12, "{a}");
        // Empty bin: the overall accuracy.
        assert_eq!(p.server_accuracy(0.55, 1), 1.0);
        assert_eq!(p.resolution_index(224), Some(1));
        assert_eq!(p.resolution_index(100), None);
    }

    #[test]
    fn an_answer_is_worth_the_label_the_merge_leaves() {
        // Confident, right device frames whose 96 px answers are half wrong with a low score,
        // and unsure, wrong device frames whose answers are half right with a high score.
        // Every frame its own scene, so that the bins' evidence is not shrunk away.
        let frame = |scene: i32, conf: f64, device: bool, server: bool| {
            let mut o = obs(conf, device, &[(1000, server)]);
            o.server[0].server_score = if server { 0.9 } else { 0.3 };
            o.truth = scene;
            o
        };
        let frames: Vec<FrameObservation> = (0..100)
            .flat_map(|i| {
                [
                    frame(2 * i, 0.95, true, i % 2 == 0),
                    frame(2 * i + 1, 0.15, false, i % 2 == 0),
                ]
            })
            .collect();
        let p = Profile::build(inputs(&[96]), &frames).unwrap();
        assert!(p.merge.is_some(), "50 + 50 disagreements fit a model");
        // The merge keeps the right device labels and takes the right server ones.
        assert_eq!(p.bins[9].server_accuracy, vec![0.5]);
        assert_eq!(p.bins[9].merged_accuracy, Some(vec![1.0]));
        assert_eq!(p.bins[1].merged_accuracy, Some(vec![0.5]));
        // Sending a confident frame loses half its labels when the server's label is taken,
        // nothing when the stream merges; an unsure frame gains the same either way.
        let server = p.clone().merged_by(Merge::Server);
        assert!(server.merge.is_none());
        assert!(server.gain_lower_bound(0.95, 0, 0.0) < -0.4);
        assert_eq!(p.gain_lower_bound(0.95, 0, 0.0), 0.0);
        assert_eq!(
            p.gain_lower_bound(0.15, 0, 0.0),
            server.gain_lower_bound(0.15, 0, 0.0)
        );
        let read = Profile::parse(&p.to_json()).unwrap();
        assert_eq!(read.bins[9].merged_accuracy, Some(vec![1.0]));
        // A profile made before merged accuracies were recorded values answers as the server's.
        let mut old = p.clone();
        old.bins.iter_mut().for_each(|b| b.merged_accuracy = None);
        let old = Profile::parse(&old.to_json()).unwrap();
        assert!(old.merge.is_some());
        assert_eq!(
            old.gain_lower_bound(0.95, 0, 0.0),
            server.gain_lower_bound(0.95, 0, 0.0)
        );
    }

    #[test]
    fn round_trips_and_refuses_bad_files() {
        let frames = vec![obs(0.5, true, &[(1000, true)])];
        let p = Profile::build(inputs(&[160]), &frames).unwrap();
        assert_eq!(Profile::parse(&p.to_json()).unwrap(), p);
        assert!(matches!(Profile::parse("{"), Err(ProfileError::NotJson(_))));
        let e = Profile::parse(r#"{"format":"cbo-calibration","version":1}"#).unwrap_err();
        assert!(e.to_string().contains("not a cbo profile"), "{e}");
        let v2 = p.to_json().replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            Profile::parse(&v2),
            Err(ProfileError::Version(ref v)) if v == "2"
        ));
        // `1.0` is version 1; a string or no version is named as written (it read "None").
        let v1 = p.to_json().replace("\"version\": 1", "\"version\": 1.0");
        assert_eq!(Profile::parse(&v1).unwrap(), p);
        let text = p.to_json().replace("\"version\": 1", "\"version\": \"1\"");
        let e = Profile::parse(&text).unwrap_err().to_string();
        assert!(e.contains("version \"1\""), "{e}");
        let text = p.to_json().replace("\"version\": 1,", "");
        let e = Profile::parse(&text).unwrap_err().to_string();
        assert!(e.contains("version missing"), "{e}");
        let bad = p
            .to_json()
            .replace("\"server_accuracy\": 1.0", "\"server_accuracy\": 1.5");
        let e = Profile::parse(&bad).unwrap_err();
        assert!(e.to_string().contains("invalid"), "{e}");
        assert!(matches!(
            Profile::build(inputs(&[160]), &[]),
            Err(ProfileError::NoFrames)
        ));
        assert!(matches!(
            Profile::build(inputs(&[160, 224]), &frames),
            Err(ProfileError::ServerEntries {
                got: 1,
                expected: 2
            })
        ));
    }
}
