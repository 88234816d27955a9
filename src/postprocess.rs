//! Turning a classifier's output row into a ranked, labelled result.
//!
//! Pure code: no GStreamer, no ONNX Runtime. The element, the tools and the server all go through
//! [`Postprocessor::classify`], so they agree on what "the top class" and "its confidence" are.

use std::fmt;
use std::path::Path;

/// How to read the model's output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputKind {
    /// Decide from the first row: non-negative values summing to 1 are probabilities, anything
    /// else is logits.
    #[default]
    Auto,
    /// Unnormalised scores; a softmax turns them into probabilities.
    Logits,
    /// Already a probability distribution (e.g. a model ending in Softmax).
    Probabilities,
}

impl OutputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Auto => "auto",
            OutputKind::Logits => "logits",
            OutputKind::Probabilities => "probabilities",
        }
    }
}

impl std::str::FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "logits" => Ok(Self::Logits),
            "probabilities" | "probs" => Ok(Self::Probabilities),
            other => Err(format!(
                "unknown output kind '{other}' (expected auto, logits or probabilities)"
            )),
        }
    }
}

/// A row is taken for a probability distribution when every entry is in [0, 1] and the sum is
/// within what quantisation explains: at most [`PROBABILITY_SUM_ABOVE`] over 1, and under 1 by at
/// most what `n` classes lose when each rounds down by less than one uint8 step (1/256), and
/// never below [`PROBABILITY_SUM_FLOOR`]. Quantised softmax outputs lose the mass of the many
/// classes that round to 0: the Edge-TPU MobileNet V2's 1001-wide rows sum to about 0.76, V1
/// 0.25's to about 0.90 (a fixed ±0.02 read them as logits and softmaxed them again, to
/// confidences of ~0.001). A narrow row keeps the tight bound (10 classes: 0.96), so that a small
/// logits model whose first scores happen to lie in [0, 1] is not taken for probabilities.
const PROBABILITY_SUM_ABOVE: f32 = 0.02;
const PROBABILITY_SUM_FLOOR: f32 = 0.5;

/// True when `row` looks like a probability distribution rather than logits.
pub fn looks_like_probabilities(row: &[f32]) -> bool {
    if row.is_empty() || row.iter().any(|v| !(0.0..=1.0 + f32::EPSILON).contains(v)) {
        return false;
    }
    let sum: f32 = row.iter().sum();
    let lost = (row.len() as f32 / 256.0).max(PROBABILITY_SUM_ABOVE);
    let lowest = (1.0 - lost).max(PROBABILITY_SUM_FLOOR);
    (lowest..=1.0 + PROBABILITY_SUM_ABOVE).contains(&sum)
}

/// Numerically stable softmax of `logits` into `out` (same length).
pub fn softmax(logits: &[f32], out: &mut [f32]) {
    debug_assert_eq!(logits.len(), out.len());
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        let e = (l - max).exp();
        *o = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(values: &[f32], k: usize, out: &mut Vec<usize>) {
    out.clear();
    let k = k.min(values.len());
    if k == 0 {
        return;
    }
    // k is small (default 5) and rows are ~1000 long: a bounded insertion list beats sorting.
    for (i, &v) in values.iter().enumerate() {
        if out.len() == k && values[out[k - 1]] >= v {
            continue;
        }
        let pos = out.partition_point(|&j| values[j] >= v);
        if out.len() == k {
            out.pop();
        }
        out.insert(pos, i);
    }
}

/// Class names, indexed by class id.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    names: Vec<String>,
}

/// Why a labels file was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelsError(pub String);

impl fmt::Display for LabelsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabelsError {}

impl Labels {
    /// Numeric names "class 0" .. "class n-1", for models without a labels file.
    pub fn numeric(n: usize) -> Self {
        Self {
            names: (0..n).map(|i| format!("class {i}")).collect(),
        }
    }

    pub fn from_names(names: Vec<String>) -> Self {
        Self { names }
    }

    /// Parses either one label per line, or the TSV `index<TAB>wnid<TAB>name` (the name is the
    /// last column; rows must be in index order starting at 0). Blank lines at the end are
    /// ignored; a header line whose first column is not a number is skipped in TSV files.
    ///
    /// A JSON object with an `id2label` map (a Hugging Face model's `config.json`, beside its
    /// Optimum ONNX export) gives the names by index; every index from 0 must be there.
    pub fn parse(text: &str) -> Result<Self, LabelsError> {
        // A byte-order mark (spreadsheets on Windows write one) is not part of the first name.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim_start().starts_with('{') {
            return Self::from_id2label(text);
        }
        let mut lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        if lines.is_empty() {
            return Err(LabelsError("labels file is empty".into()));
        }
        let is_tsv = lines.iter().filter(|l| l.contains('\t')).count() * 2 > lines.len();
        if !is_tsv {
            return Ok(Self {
                names: lines.iter().map(|l| l.trim().to_string()).collect(),
            });
        }
        let mut names = Vec::with_capacity(lines.len());
        for (lineno, line) in lines.iter().enumerate() {
            let cols: Vec<&str> = line.split('\t').collect();
            let index = match cols[0].trim().parse::<usize>() {
                Ok(i) => i,
                Err(_) if lineno == 0 => continue, // header
                Err(_) => {
                    return Err(LabelsError(format!(
                        "line {}: first column '{}' is not a class index",
                        lineno + 1,
                        cols[0]
                    )));
                }
            };
            if index != names.len() {
                return Err(LabelsError(format!(
                    "line {}: class index {index} out of order (expected {})",
                    lineno + 1,
                    names.len()
                )));
            }
            let name = cols.last().map(|s| s.trim()).unwrap_or_default();
            names.push(name.to_string());
        }
        if names.is_empty() {
            return Err(LabelsError("labels file has a header but no rows".into()));
        }
        Ok(Self { names })
    }

    /// The names of a JSON object's `id2label` map: `{"id2label": {"0": "tench", ...}}`.
    fn from_id2label(text: &str) -> Result<Self, LabelsError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| LabelsError(format!("not a labels file, nor readable JSON: {e}")))?;
        let map = value
            .get("id2label")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| {
                LabelsError(
                    "a JSON labels file needs an \"id2label\" object (as a Hugging Face \
                     config.json has)"
                        .into(),
                )
            })?;
        let mut names = vec![None; map.len()];
        for (key, name) in map {
            let index = key
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&i| i < names.len())
                .ok_or_else(|| {
                    LabelsError(format!(
                        "id2label key '{key}' is not a class index from 0 to {}",
                        map.len().saturating_sub(1)
                    ))
                })?;
            let name = name
                .as_str()
                .ok_or_else(|| LabelsError(format!("id2label '{key}' is not a string")))?;
            names[index] = Some(name.to_string());
        }
        let names = names
            .into_iter()
            .enumerate()
            .map(|(i, n)| n.ok_or_else(|| LabelsError(format!("id2label has no class {i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Err(LabelsError("id2label is empty".into()));
        }
        Ok(Self { names })
    }

    pub fn load(path: &Path) -> Result<Self, LabelsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LabelsError(format!("cannot read labels '{}': {e}", path.display())))?;
        Self::parse(&text).map_err(|e| LabelsError(format!("labels '{}': {e}", path.display())))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, class_id: usize) -> &str {
        self.names.get(class_id).map(String::as_str).unwrap_or("")
    }
}

/// Name given to index 0 of a model that has one output more than it has labels.
pub const BACKGROUND_LABEL: &str = "background";

/// One classified frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Classification {
    /// Top class (label index); -1 is the background entry of a model with one.
    pub class_id: i32,
    pub label: String,
    /// Softmax probability of the top class.
    pub confidence: f64,
    /// The `top_k` classes and their probabilities, best first.
    pub top_classes: Vec<i32>,
    pub top_scores: Vec<f32>,
}

/// Maps an output row to a [`Classification`]; owns the scratch buffers so the per-frame path
/// allocates nothing but the result's own vectors.
#[derive(Debug, Clone)]
pub struct Postprocessor {
    labels: Labels,
    /// Output width = labels + background_offset.
    background_offset: usize,
    kind: OutputKind,
    top_k: usize,
    probs: Vec<f32>,
    top: Vec<usize>,
}

impl Postprocessor {
    /// `width` is the model's output row length. A model with one output more than labels has a
    /// background entry at index 0 (the Edge-TPU convention); any other mismatch is an error.
    pub fn new(
        labels: Labels,
        width: usize,
        kind: OutputKind,
        top_k: usize,
    ) -> Result<Self, LabelsError> {
        let background_offset = if width == labels.len() {
            0
        } else if width == labels.len() + 1 {
            1
        } else {
            return Err(LabelsError(format!(
                "the labels have {} entries but the model outputs {width} scores \
                 (expected {width}, or {} with a background entry at index 0)",
                labels.len(),
                width.saturating_sub(1)
            )));
        };
        Ok(Self {
            labels,
            background_offset,
            kind,
            top_k: top_k.max(1),
            probs: vec![0.0; width],
            top: Vec::with_capacity(top_k + 1),
        })
    }

    pub fn width(&self) -> usize {
        self.probs.len()
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    pub fn has_background(&self) -> bool {
        self.background_offset == 1
    }

    /// What to warn about when the labels were read as following a background class in a model
    /// whose width is not that of the models known to have one (TF-slim and Edge-TPU ImageNet
    /// classifiers: 1000 classes and background): a labels file that lost one name reads exactly
    /// so, and every label is then off by one (999 names for a 1000-class model named the water
    /// bottle "washer").
    pub fn background_note(&self) -> Option<String> {
        const KNOWN_WIDTH: usize = 1001;
        (self.has_background() && self.width() != KNOWN_WIDTH).then(|| {
            format!(
                "the labels have {} names for {} scores: read as a background class at index 0 \
                 followed by the names; if the labels file lost a name, every label is off by one",
                self.labels.len(),
                self.width()
            )
        })
    }

    /// The output kind in force: `Auto` is resolved on the first row and then kept, so one odd
    /// frame cannot flip the interpretation mid-stream.
    pub fn kind(&self) -> OutputKind {
        self.kind
    }

    /// Probabilities of the last classified row (after softmax where the output is logits).
    pub fn probabilities(&self) -> &[f32] {
        &self.probs
    }

    fn class_id(&self, output_index: usize) -> i32 {
        output_index as i32 - self.background_offset as i32
    }

    fn label_of(&self, output_index: usize) -> String {
        if output_index < self.background_offset {
            BACKGROUND_LABEL.to_string()
        } else {
            self.labels
                .name(output_index - self.background_offset)
                .to_string()
        }
    }

    /// Classifies one output row. Scores that cannot be read as the configured kind are an error
    /// rather than a label: a non-finite score (a broken model, or an execution provider whose
    /// reduced precision overflowed) would give a NaN confidence that every policy misreads
    /// (`NaN < threshold` is false, so the frames the device knows least about would never be
    /// offloaded), and a "probability" above 1 (`output-kind=probabilities` on a model that
    /// outputs logits) a confidence the calibration was never fitted on.
    pub fn classify(&mut self, row: &[f32]) -> Result<Classification, ScoreError> {
        debug_assert_eq!(row.len(), self.probs.len());
        if let Some(i) = row.iter().position(|v| !v.is_finite()) {
            return Err(ScoreError(format!(
                "the model output a non-finite score ({} for class index {i}); the model or its \
                 execution provider is broken for this input",
                row[i]
            )));
        }
        if self.kind == OutputKind::Auto {
            self.kind = if looks_like_probabilities(row) {
                OutputKind::Probabilities
            } else {
                OutputKind::Logits
            };
        }
        match self.kind {
            OutputKind::Logits | OutputKind::Auto => softmax(row, &mut self.probs),
            OutputKind::Probabilities => {
                // A dequantised probability may round a little past 0 or 1, nothing more.
                if let Some(&v) = row.iter().find(|&&v| !(-0.01..=1.01).contains(&v)) {
                    return Err(ScoreError(format!(
                        "output-kind=probabilities, but the model output a score of {v}, which \
                         is no probability: set output-kind=logits (or auto)"
                    )));
                }
                self.probs.copy_from_slice(row)
            }
        }
        let mut top = std::mem::take(&mut self.top);
        top_k(&self.probs, self.top_k, &mut top);
        let best = top[0];
        let result = Classification {
            class_id: self.class_id(best),
            label: self.label_of(best),
            confidence: self.probs[best] as f64,
            top_classes: top.iter().map(|&i| self.class_id(i)).collect(),
            top_scores: top.iter().map(|&i| self.probs[i]).collect(),
        };
        self.top = top;
        Ok(result)
    }
}

/// An output row that is no classification of the configured kind ([`Postprocessor::classify`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ScoreError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let logits = [1.0, 3.0, 2.0, -50.0];
        let mut p = [0.0; 4];
        softmax(&logits, &mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[2] && p[2] > p[0] && p[0] > p[3]);
        // Large logits must not overflow.
        softmax(&[1000.0, 999.0, 0.0, 0.0], &mut p);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!((p[0] / p[1] - std::f32::consts::E).abs() < 1e-3);
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let v = [0.1, 0.5, 0.2, 0.5, 0.05];
        let mut out = Vec::new();
        top_k(&v, 3, &mut out);
        assert_eq!(out, vec![1, 3, 2]);
        top_k(&v, 10, &mut out);
        assert_eq!(out, vec![1, 3, 2, 0, 4]);
        top_k(&v, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn probability_detection() {
        assert!(looks_like_probabilities(&[0.25, 0.25, 0.5]));
        assert!(!looks_like_probabilities(&[2.0, -1.0, 0.5]));
        assert!(!looks_like_probabilities(&[0.1, 0.1, 0.1]));
        // Quantised softmax: the classes rounded to 0 took a quarter of the mass.
        let mut quantised = vec![0.0f32; 1001];
        quantised[898] = 80.0 / 256.0;
        quantised[440] = 49.0 / 256.0;
        quantised[1..=64].fill(1.0 / 256.0);
        assert!(looks_like_probabilities(&quantised));
        assert!(!looks_like_probabilities(&[0.5, 0.6, 0.2]));
        // A narrow row keeps the tight bound: these could be a small model's logits.
        assert!(!looks_like_probabilities(&[0.3, 0.4]));
        assert!(!looks_like_probabilities(&[0.09; 10]));
        assert!(looks_like_probabilities(&[0.097; 10]));
        assert!(!looks_like_probabilities(&[]));
    }

    #[test]
    fn labels_from_a_hugging_face_config() {
        // Keys in any order, as a config.json may hold them; other fields are ignored.
        let l = Labels::parse(
            r#"{"architectures": ["X"], "id2label": {"1": "goldfish", "0": "tench", "2": "shark"}}"#,
        )
        .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l.name(0), l.name(1), l.name(2)),
            ("tench", "goldfish", "shark")
        );
        for (text, why) in [
            (r#"{"label2id": {"tench": 0}}"#, "needs an \"id2label\""),
            (r#"{"id2label": {"0": "a", "2": "c"}}"#, "key '2'"),
            (r#"{"id2label": {"0": "a", "x": "c"}}"#, "key 'x'"),
            (r#"{"id2label": {"0": 5}}"#, "not a string"),
            (r#"{"id2label": {}}"#, "empty"),
            ("{not json", "nor readable JSON"),
        ] {
            let e = Labels::parse(text).expect_err(text).0;
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn labels_plain_and_tsv() {
        let plain = Labels::parse("cat\ndog\n\n").unwrap();
        assert_eq!(plain.len(), 2);
        assert_eq!(plain.name(1), "dog");
        let tsv = Labels::parse("0\tn01\ttench\n1\tn02\tgoldfish\n").unwrap();
        assert_eq!(tsv.len(), 2);
        assert_eq!(tsv.name(0), "tench");
        let with_header = Labels::parse("index\twnid\tname\n0\ta\tx\n1\tb\ty\n").unwrap();
        assert_eq!(with_header.name(1), "y");
        assert!(Labels::parse("0\ta\tx\n2\tb\ty\n").is_err());
        assert!(Labels::parse("\n\n").is_err());
        // A byte-order mark is not part of the first name (nor hides a TSV header's index).
        assert_eq!(Labels::parse("\u{feff}cat\ndog\n").unwrap().name(0), "cat");
        let tsv = Labels::parse("\u{feff}0\tn01\ttench\n1\tn02\tgoldfish\n").unwrap();
        assert_eq!((tsv.len(), tsv.name(0)), (2, "tench"));
    }

    #[test]
    fn background_entry_shifts_class_ids() {
        let labels = Labels::from_names(vec!["a".into(), "b".into()]);
        let mut pp = Postprocessor::new(labels.clone(), 3, OutputKind::Auto, 2).unwrap();
        assert!(pp.has_background());
        assert!(
            pp.background_note()
                .is_some_and(|n| n.contains("2 names for 3 scores")),
            "a width other than 1001 is worth a word"
        );
        let r = pp.classify(&[0.1, 0.2, 0.7]).unwrap();
        assert_eq!(pp.kind(), OutputKind::Probabilities);
        assert_eq!(r.class_id, 1);
        assert_eq!(r.label, "b");
        assert!((r.confidence - 0.7).abs() < 1e-6);
        assert_eq!(r.top_classes, vec![1, 0]);
        let r = pp.classify(&[0.8, 0.1, 0.1]).unwrap();
        assert_eq!(r.class_id, -1);
        assert_eq!(r.label, BACKGROUND_LABEL);
        assert!(Postprocessor::new(labels, 5, OutputKind::Auto, 2).is_err());
    }

    #[test]
    fn logits_are_softmaxed() {
        let labels = Labels::numeric(3);
        let mut pp = Postprocessor::new(labels, 3, OutputKind::Auto, 1).unwrap();
        let r = pp.classify(&[2.0, 0.0, -1.0]).unwrap();
        assert_eq!(pp.kind(), OutputKind::Logits);
        assert_eq!(r.class_id, 0);
        let expected = 2f64.exp() / (2f64.exp() + 1.0 + (-1f64).exp());
        assert!((r.confidence - expected).abs() < 1e-5);
        assert_eq!(r.label, "class 0");
    }

    #[test]
    fn scores_that_are_no_classification_are_an_error_not_a_label() {
        let labels = Labels::numeric(3);
        // A non-finite score, whatever the kind: no NaN confidence reaches a policy.
        for kind in [
            OutputKind::Auto,
            OutputKind::Logits,
            OutputKind::Probabilities,
        ] {
            let mut pp = Postprocessor::new(labels.clone(), 3, kind, 1).unwrap();
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let e = pp.classify(&[0.2, bad, 0.3]).unwrap_err();
                assert!(e.0.contains("non-finite score"), "{e}");
            }
            // and the next, sound row is classified as usual.
            assert_eq!(pp.classify(&[0.1, 0.2, 0.7]).unwrap().class_id, 2);
        }
        // Logits read as probabilities: named, with what to set instead.
        let mut pp = Postprocessor::new(labels.clone(), 3, OutputKind::Probabilities, 1).unwrap();
        let e = pp.classify(&[7.27, -1.0, 0.5]).unwrap_err();
        assert!(
            e.0.contains("7.27") && e.0.contains("output-kind=logits"),
            "{e}"
        );
        // A dequantised probability a hair outside [0, 1] is still one.
        let r = pp.classify(&[1.004, -0.002, 0.0]).unwrap();
        assert_eq!(r.class_id, 0);
    }
}
