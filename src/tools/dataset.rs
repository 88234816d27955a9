//! Labelled inputs for the calibration and evaluation tools: a photo list (TSV) or a clip with a
//! per-frame labels CSV, run through the device model with exactly the element's decoding
//! (`decodebin`) and pre-processing ([`Classifier`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::calibration::Dataset;
use crate::inference::Classifier;
use crate::postprocess::OutputKind;

/// Where labelled frames come from.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// Photo list: TSV with columns `file` (relative to the TSV) and `class_index`
    #[arg(long, conflicts_with = "video", required_unless_present = "video")]
    pub images: Option<PathBuf>,
    /// Only the TSV rows whose `split` column has this value (e.g. dev)
    #[arg(long, requires = "images")]
    pub split: Option<String>,
    /// Video clip whose frames are labelled by --labels
    #[arg(long, requires = "labels")]
    pub video: Option<PathBuf>,
    /// Per-frame ground truth for --video: CSV with columns `frame` and `class_index`
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Use at most this many samples (0 = all)
    #[arg(long, default_value_t = 0)]
    pub max_samples: usize,
}

impl InputArgs {
    pub fn describe(&self) -> String {
        match (&self.images, &self.video) {
            (Some(tsv), _) => format!(
                "photos {}{}",
                tsv.display(),
                self.split
                    .as_ref()
                    .map(|s| format!(" (split {s})"))
                    .unwrap_or_default()
            ),
            (None, Some(v)) => format!("video {}", v.display()),
            _ => String::new(),
        }
    }
}

/// Column index of `name` in a header row, or an error naming the file.
fn column(header: &[&str], name: &str, file: &Path) -> Result<usize, String> {
    header
        .iter()
        .position(|h| h.trim() == name)
        .ok_or_else(|| format!("'{}' has no '{name}' column", file.display()))
}

/// (file, ImageNet class index) rows of a photo TSV.
pub fn read_image_list(tsv: &Path, split: Option<&str>) -> Result<Vec<(PathBuf, usize)>, String> {
    let text = std::fs::read_to_string(tsv)
        .map_err(|e| format!("cannot read '{}': {e}", tsv.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| format!("'{}' is empty", tsv.display()))?
        .split('\t')
        .collect();
    let (fi, ci) = (
        column(&header, "file", tsv)?,
        column(&header, "class_index", tsv)?,
    );
    let si = match split {
        Some(_) => Some(column(&header, "split", tsv)?),
        None => None,
    };
    let base = tsv.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        if let (Some(si), Some(want)) = (si, split)
            && cols.get(si).map(|s| s.trim()) != Some(want)
        {
            continue;
        }
        let bad = || format!("'{}' row {}: malformed", tsv.display(), n + 2);
        let file = cols.get(fi).ok_or_else(bad)?;
        let class = cols
            .get(ci)
            .ok_or_else(bad)?
            .trim()
            .parse()
            .map_err(|_| bad())?;
        out.push((base.join(file), class));
    }
    Ok(out)
}

/// Frame index → ImageNet class index from a clip's labels CSV.
pub fn read_clip_labels(csv: &Path) -> Result<Vec<usize>, String> {
    let text = std::fs::read_to_string(csv)
        .map_err(|e| format!("cannot read '{}': {e}", csv.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| format!("'{}' is empty", csv.display()))?
        .split(',')
        .collect();
    let (fi, ci) = (
        column(&header, "frame", csv)?,
        column(&header, "class_index", csv)?,
    );
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let cols: Vec<&str> = line.split(',').collect();
        let bad = || format!("'{}' row {}: malformed", csv.display(), n + 2);
        let frame: usize = cols
            .get(fi)
            .ok_or_else(bad)?
            .trim()
            .parse()
            .map_err(|_| bad())?;
        let class: usize = cols
            .get(ci)
            .ok_or_else(bad)?
            .trim()
            .parse()
            .map_err(|_| bad())?;
        if frame != out.len() {
            return Err(format!(
                "'{}' row {}: frame {frame} out of order (expected {})",
                csv.display(),
                n + 2,
                out.len()
            ));
        }
        out.push(class);
    }
    Ok(out)
}

/// Runs the classifier over the labelled input and collects each frame's score row (logits; or
/// log-probabilities for probability-output models, as the element calibrates them) with the
/// output index of its true class.
pub fn gather(
    classifier: &mut Classifier,
    input: &InputArgs,
    progress: bool,
) -> Result<Dataset, String> {
    let max = if input.max_samples == 0 {
        usize::MAX
    } else {
        input.max_samples
    };
    let mut data = Dataset::default();
    let mut add = |classifier: &mut Classifier,
                   buf: &gst::Buffer,
                   caps: &gst::CapsRef,
                   class: usize,
                   total: usize|
     -> Result<(), String> {
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &info)
            .map_err(|e| e.to_string())?;
        classifier
            .classify_frame(&frame)
            .map_err(|e| e.to_string())?;
        let pp = classifier.postprocessor();
        let target = class + usize::from(pp.has_background());
        let row: Vec<f32> = if pp.kind() == OutputKind::Probabilities {
            classifier
                .last_output()
                .iter()
                .map(|p| p.max(1e-12).ln())
                .collect()
        } else {
            classifier.last_output().to_vec()
        };
        let width = row.len();
        data.push(row, (target < width).then_some(target));
        if progress && (data.len() % 50 == 0 || data.len() == total) {
            eprint!("\r  {} / {total} samples", data.len());
            let _ = std::io::stderr().flush();
        }
        Ok(())
    };
    match (&input.images, &input.video, &input.labels) {
        (Some(tsv), _, _) => {
            let list = read_image_list(tsv, input.split.as_deref())?;
            let total = list.len().min(max);
            for (file, class) in list.into_iter().take(max) {
                crate::tools::for_each_frame(&file, 1, |buf, caps| {
                    add(classifier, buf, caps, class, total)
                })?;
            }
        }
        (None, Some(video), Some(csv)) => {
            let labels = read_clip_labels(csv)?;
            let total = labels.len().min(max);
            let mut i = 0;
            crate::tools::for_each_frame(video, total, |buf, caps| {
                let class = *labels.get(i).ok_or_else(|| {
                    format!(
                        "'{}' has more frames than '{}' labels",
                        video.display(),
                        csv.display()
                    )
                })?;
                i += 1;
                add(classifier, buf, caps, class, total)
            })?;
        }
        _ => return Err("give --images TSV, or --video CLIP with --labels CSV".into()),
    }
    if progress {
        eprintln!();
    }
    if data.is_empty() {
        return Err(format!("no labelled samples in {}", input.describe()));
    }
    Ok(data)
}
