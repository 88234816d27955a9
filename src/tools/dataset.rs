//! Labelled inputs for the calibration and evaluation tools: a photo list (TSV) or a clip with a
//! per-frame labels CSV, run through the device model with exactly the element's decoding
//! (`decodebin`) and pre-processing ([`Classifier`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::calibration::Dataset;
use crate::inference::Classifier;
use crate::postprocess::OutputKind;

/// Where labelled frames come from: photos or a clip, exactly one (a missing one is reported as
/// "--images or --video", not as a missing --images).
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["images", "video"])))]
pub struct InputArgs {
    /// Photo list: TSV with columns `file` (relative to the TSV) and `class_index`
    #[arg(long)]
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
    /// The input's file name (no directories), for plot titles.
    pub fn short_name(&self) -> String {
        let path = self.images.as_ref().or(self.video.as_ref());
        let name = path
            .and_then(|p| p.file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        match &self.split {
            Some(split) => format!("{name} ({split})"),
            None => name,
        }
    }

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

/// A delimited text table with a header row: finds columns by name and reports bad rows with
/// the file and line.
struct Table {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn read(path: &Path, sep: char) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
        // A byte-order mark would be part of the first column's name ("no 'frame' column").
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let split = |l: &str| l.split(sep).map(|c| c.trim().to_string()).collect();
        let header = split(
            lines
                .next()
                .ok_or_else(|| format!("'{}' is empty", path.display()))?
                .1,
        );
        let rows = lines.map(|(n, l)| (n + 1, split(l))).collect();
        Ok(Self {
            path: path.to_path_buf(),
            header,
            rows,
        })
    }

    fn column(&self, name: &str) -> Result<usize, String> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("'{}' has no '{name}' column", self.path.display()))
    }

    fn field<'a>(&self, row: &'a (usize, Vec<String>), col: usize) -> Result<&'a str, String> {
        row.1
            .get(col)
            .map(String::as_str)
            .ok_or_else(|| format!("'{}' line {}: too few columns", self.path.display(), row.0))
    }

    /// A class index: a number the element's `class-id` (an `i32`) can carry. A larger one
    /// wrapped when compared (class 2^32 + 898 scored as 898).
    fn class(&self, row: &(usize, Vec<String>), col: usize) -> Result<usize, String> {
        let n = self.number(row, col)?;
        if i32::try_from(n).is_err() {
            return Err(format!(
                "'{}' line {}: class index {n} is larger than any model's",
                self.path.display(),
                row.0
            ));
        }
        Ok(n)
    }

    fn number(&self, row: &(usize, Vec<String>), col: usize) -> Result<usize, String> {
        let v = self.field(row, col)?;
        v.parse().map_err(|_| {
            format!(
                "'{}' line {}: '{v}' in column '{}' is not a non-negative integer",
                self.path.display(),
                row.0,
                self.header[col]
            )
        })
    }
}

/// (file, ImageNet class index) rows of a photo TSV (`file` relative to the TSV).
pub fn read_image_list(tsv: &Path, split: Option<&str>) -> Result<Vec<(PathBuf, usize)>, String> {
    let t = Table::read(tsv, '\t')?;
    let (fi, ci) = (t.column("file")?, t.column("class_index")?);
    let si = split.map(|_| t.column("split")).transpose()?;
    let base = tsv.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for row in &t.rows {
        if let (Some(si), Some(want)) = (si, split)
            && t.field(row, si)? != want
        {
            continue;
        }
        out.push((base.join(t.field(row, fi)?), t.class(row, ci)?));
    }
    Ok(out)
}

/// Frame index → ImageNet class index from a clip's labels CSV (`frame`, `class_index`).
pub fn read_clip_labels(csv: &Path) -> Result<Vec<usize>, String> {
    let t = Table::read(csv, ',')?;
    let (fi, ci) = (t.column("frame")?, t.column("class_index")?);
    let mut out = Vec::new();
    for row in &t.rows {
        let frame = t.number(row, fi)?;
        if frame != out.len() {
            return Err(format!(
                "'{}' line {}: frame {frame} out of order (expected {})",
                csv.display(),
                row.0,
                out.len()
            ));
        }
        out.push(t.class(row, ci)?);
    }
    Ok(out)
}

/// Decodes every labelled frame of the input (photos or clip frames, as `decodebin` gives them to
/// the element) and calls `f(frame buffer, caps, true class index, total)`, streaming, with a
/// progress line on stderr when `progress` is set. Returns the number of frames visited.
pub fn for_each_labelled(
    input: &InputArgs,
    progress: bool,
    mut f: impl FnMut(&gst::Buffer, &gst::CapsRef, usize) -> Result<(), String>,
) -> Result<usize, String> {
    let max = if input.max_samples == 0 {
        usize::MAX
    } else {
        input.max_samples
    };
    let mut done = 0usize;
    let mut visit = |buf: &gst::Buffer, caps: &gst::CapsRef, class: usize, total: usize| {
        f(buf, caps, class)?;
        done += 1;
        if progress && (done.is_multiple_of(50) || done == total) {
            eprint!("\r  {done} / {total} samples");
            let _ = std::io::stderr().flush();
        }
        Ok(())
    };
    match (&input.images, &input.video, &input.labels) {
        (Some(tsv), _, _) => {
            let list = read_image_list(tsv, input.split.as_deref())?;
            let total = list.len().min(max);
            for (file, class) in list.into_iter().take(max) {
                crate::tools::for_each_frame(&file, 1, |buf, caps| visit(buf, caps, class, total))?;
            }
        }
        (None, Some(video), Some(csv)) => {
            let labels = read_clip_labels(csv)?;
            let total = labels.len().min(max);
            // One frame past the labels (unless --max-samples stops earlier) tells a clip with
            // more frames than labels; fewer frames show at the end. Either means the labels are
            // not this clip's, and scoring them against it would be meaningless, silently.
            let mut i = 0;
            let decoded =
                crate::tools::for_each_frame(video, max.min(labels.len() + 1), |buf, caps| {
                    let class = *labels.get(i).ok_or_else(|| {
                        format!(
                            "'{}' has more frames than '{}' has labels ({})",
                            video.display(),
                            csv.display(),
                            labels.len()
                        )
                    })?;
                    i += 1;
                    visit(buf, caps, class, total)
                })?;
            if decoded < total {
                return Err(format!(
                    "'{}' has {decoded} frames but '{}' labels {} (give the labels of this clip)",
                    video.display(),
                    csv.display(),
                    labels.len()
                ));
            }
        }
        _ => return Err("give --images TSV, or --video CLIP with --labels CSV".into()),
    }
    if progress {
        eprintln!();
    }
    if done == 0 {
        return Err(format!("no labelled samples in {}", input.describe()));
    }
    Ok(done)
}

/// Maps a buffer with its caps as a readable video frame.
pub fn map_frame<'a>(
    buf: &'a gst::Buffer,
    caps: &gst::CapsRef,
) -> Result<gst_video::VideoFrameRef<&'a gst::BufferRef>, String> {
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
    gst_video::VideoFrameRef::from_buffer_ref_readable(buf.as_ref(), &info)
        .map_err(|e| e.to_string())
}

/// A labelled class the model has no output for is an error: scored, it would count as a wrong
/// answer on every such frame, without a word (a labels file for another class list).
pub fn check_class(class: usize, classes: usize, model: &Path) -> Result<(), String> {
    if class < classes {
        return Ok(());
    }
    Err(format!(
        "the labels name class index {class}, but {} has {classes} classes (0 to {}): are the \
         labels for this model's class list?",
        model.display(),
        classes.saturating_sub(1)
    ))
}

/// Runs the classifier over the labelled input and collects each frame's score row (logits; or
/// log-probabilities for probability-output models, as the element calibrates them) with the
/// output index of its true class.
pub fn gather(
    classifier: &mut Classifier,
    model: &Path,
    input: &InputArgs,
    progress: bool,
) -> Result<Dataset, String> {
    let mut data = Dataset::default();
    let classes = classifier.postprocessor().labels().len();
    for_each_labelled(input, progress, |buf, caps, class| {
        check_class(class, classes, model)?;
        let frame = map_frame(buf, caps)?;
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
        Ok(())
    })?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_the_model_lacks_is_an_error() {
        let model = Path::new("m.onnx");
        assert!(check_class(999, 1000, model).is_ok());
        let e = check_class(1000, 1000, model).unwrap_err();
        assert!(
            e.contains("class index 1000") && e.contains("m.onnx has 1000 classes (0 to 999)"),
            "{e}"
        );
    }

    #[test]
    fn label_tables_parse_and_bad_rows_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = dir.path().join("labels.tsv");
        std::fs::write(
            &tsv,
            "file\tclass_index\tsplit\na.jpg\t3\tdev\nb.jpg\t4\tquant\n",
        )
        .unwrap();
        let all = read_image_list(&tsv, None).unwrap();
        assert_eq!(
            all,
            vec![(dir.path().join("a.jpg"), 3), (dir.path().join("b.jpg"), 4)]
        );
        assert_eq!(read_image_list(&tsv, Some("dev")).unwrap().len(), 1);

        let csv = dir.path().join("clip.csv");
        std::fs::write(&csv, "frame,class_index\n0,7\n1,8\n").unwrap();
        assert_eq!(read_clip_labels(&csv).unwrap(), vec![7, 8]);
        std::fs::write(&csv, "frame,class_index\n0,7\n2,8\n").unwrap();
        assert!(
            read_clip_labels(&csv)
                .unwrap_err()
                .contains("line 3: frame 2 out of order")
        );
        std::fs::write(&csv, "frame,class_index\n0,4294968194\n").unwrap();
        assert!(
            read_clip_labels(&csv)
                .unwrap_err()
                .contains("larger than any model's")
        );
        std::fs::write(&csv, "frame,class_index\n0,seven\n").unwrap();
        assert!(
            read_clip_labels(&csv)
                .unwrap_err()
                .contains("line 2: 'seven'")
        );
        std::fs::write(&csv, "frame,label\n0,7\n").unwrap();
        assert!(
            read_clip_labels(&csv)
                .unwrap_err()
                .contains("no 'class_index' column")
        );
    }
}
