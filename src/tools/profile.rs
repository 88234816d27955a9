//! `cbo profile`: measures, on a labelled clip or photo set, what offloading a frame at each
//! resolution costs (JPEG bytes, encode/decode/inference time) and gains (server accuracy per
//! bin of the device's calibrated confidence), and writes the profile the offload policy reads.
//!
//! Every frame goes through the element's own code: decoded by `decodebin`, classified by the
//! device [`Classifier`] and calibrated by the same function as `cbofilter`, rescaled and encoded
//! by the offload path's [`FrameEncoder`], decoded and classified as `cboserver` does.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gst_video::prelude::*;

use crate::calibration::{CalibrationFile, Calibrator, sha256_file};
use crate::inference::{self, Classifier, ExecutionProvider, ModelConfig};
use crate::jpeg::{FrameDecoder, FrameEncoder, scaled_size};
use crate::postprocess::OutputKind;
use crate::preprocess::Normalization;
use crate::profile::{
    ConfidenceBin, FittedOn, FrameObservation, ModelInput, ModelRef, Profile, ProfileInputs,
    ServerObservation,
};
use crate::tools::dataset::{InputArgs, check_class, for_each_labelled, map_frame};

#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// Device model (default: the bundled device model)
    #[arg(long)]
    pub device_model: Option<PathBuf>,
    /// Device model per-channel mean (one value or R,G,B)
    #[arg(long, default_value = "127")]
    pub device_input_mean: String,
    /// Device model per-channel std
    #[arg(long, default_value = "128")]
    pub device_input_std: String,
    /// auto | logits | probabilities
    #[arg(long, default_value = "auto")]
    pub device_output_kind: OutputKind,
    /// Device model's image side when its image size is dynamic (0 = the model's own)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub device_input_size: u32,
    /// Calibration of the device model (default: `<model>.calibration.json` beside the model when
    /// it exists, as shipped in models/)
    #[arg(long, conflicts_with = "raw_confidence")]
    pub calibration: Option<PathBuf>,
    /// Bin frames by the raw confidence instead of a calibrated one
    #[arg(long)]
    pub raw_confidence: bool,
    /// Server model (default: the bundled server model)
    #[arg(long)]
    pub server_model: Option<PathBuf>,
    #[arg(long, default_value = "127")]
    pub server_input_mean: String,
    #[arg(long, default_value = "128")]
    pub server_input_std: String,
    #[arg(long, default_value = "auto")]
    pub server_output_kind: OutputKind,
    /// Server model's image side when its image size is dynamic (0 = the model's own)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub server_input_size: u32,
    #[command(flatten)]
    pub input: InputArgs,
    /// Short sides to profile, in pixels (16 to 4096, each once)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "96,128,160,192,224,260,320"
    )]
    pub resolutions: Vec<u32>,
    /// JPEG quality of the offloaded frames (the element's `jpeg-quality`)
    #[arg(long, default_value_t = 80)]
    pub jpeg_quality: u32,
    /// auto | cpu | cuda | ... for both models
    #[arg(long, default_value = "auto")]
    pub execution_provider: ExecutionProvider,
    /// ONNX Runtime intra-op threads (0 = its default)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Profile file to write
    #[arg(long)]
    pub out: PathBuf,
    /// Print the profile as JSON on stdout instead of a table
    #[arg(long)]
    pub json: bool,
}

/// The calibration file shipped beside a model: `<model stem>.calibration.json`.
pub fn default_calibration_for(model: &Path) -> Option<PathBuf> {
    let stem = model.file_stem()?.to_str()?;
    let path = model.with_file_name(format!("{stem}.calibration.json"));
    path.is_file().then_some(path)
}

fn model_ref(path: &Path) -> Result<ModelRef, String> {
    Ok(ModelRef {
        file: path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: sha256_file(path).map_err(|e| e.to_string())?,
        input: None,
    })
}

/// [`model_ref`] of a model with how it was fed, recorded where it is not the default (so a
/// profile of the default pair reads as it always has).
fn model_ref_fed(
    path: &Path,
    mean: &str,
    std: &str,
    kind: OutputKind,
    input_size: u32,
) -> Result<ModelRef, String> {
    let input = ModelInput {
        input_mean: mean.to_string(),
        input_std: std.to_string(),
        output_kind: kind.as_str().to_string(),
        input_size,
    };
    Ok(ModelRef {
        input: (input != ModelInput::default()).then_some(input),
        ..model_ref(path)?
    })
}

fn config(
    model: PathBuf,
    mean: &str,
    std: &str,
    kind: OutputKind,
    input_size: u32,
    args: &ProfileArgs,
) -> Result<ModelConfig, String> {
    Ok(ModelConfig {
        model,
        labels: None,
        normalization: Normalization::parse(mean, std)?,
        output_kind: kind,
        top_k: 1,
        execution_provider: args.execution_provider,
        ep_options: Default::default(),
        ep_fallback: true,
        threads: args.threads,
        input_size,
    })
}

pub fn run(args: &ProfileArgs) -> Result<Profile, String> {
    let (inputs, observations) = measure(args)?;
    let profile = Profile::build(inputs, &observations).map_err(|e| e.to_string())?;
    profile.save(&args.out).map_err(|e| e.to_string())?;
    Ok(profile)
}

/// Runs both models over the labelled input at every resolution: one observation per frame
/// (what `cbo profile` aggregates and `cbo eval` replays).
pub fn measure(args: &ProfileArgs) -> Result<(ProfileInputs, Vec<FrameObservation>), String> {
    super::init_gstreamer()?;
    if args.resolutions.is_empty() {
        return Err("--resolutions needs one or more short sides".into());
    }
    // The element's `resolution` range: a profile row the element can never send is no use,
    // and a repeated one would be measured (and weighed by the planner) twice.
    if let Some(bad) = args.resolutions.iter().find(|r| !(16..=4096).contains(*r)) {
        return Err(format!(
            "--resolutions {bad}: a short side from 16 to 4096 pixels (as the element's `resolution`)"
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = args.resolutions.iter().find(|r| !seen.insert(**r)) {
        return Err(format!("--resolutions {dup} is given twice"));
    }
    if !(1..=100).contains(&args.jpeg_quality) {
        return Err("--jpeg-quality must be 1..100".into());
    }
    let device_path = args
        .device_model
        .clone()
        .unwrap_or_else(|| inference::models_dir().join(inference::DEFAULT_DEVICE_MODEL));
    let server_path = args
        .server_model
        .clone()
        .unwrap_or_else(|| inference::models_dir().join(inference::DEFAULT_SERVER_MODEL));
    let calibration_path = if args.raw_confidence {
        None
    } else {
        args.calibration
            .clone()
            .or_else(|| default_calibration_for(&device_path))
    };
    let calibrator: Option<Calibrator> = match &calibration_path {
        None => None,
        Some(p) => {
            let file = CalibrationFile::load(p).map_err(|e| e.to_string())?;
            file.check_model(&device_path).map_err(|e| e.to_string())?;
            Some(file.calibrator)
        }
    };
    let mut device = Classifier::load(&config(
        device_path.clone(),
        &args.device_input_mean,
        &args.device_input_std,
        args.device_output_kind,
        args.device_input_size,
        args,
    )?)
    .map_err(|e| e.to_string())?;
    let mut server = Classifier::load(&config(
        server_path.clone(),
        &args.server_input_mean,
        &args.server_input_std,
        args.server_output_kind,
        args.server_input_size,
        args,
    )?)
    .map_err(|e| e.to_string())?;
    let device_probs = device.postprocessor().kind() == OutputKind::Probabilities;
    let mut encoder = FrameEncoder::new(args.jpeg_quality).map_err(|e| e.to_string())?;
    let mut decoder = FrameDecoder::new().map_err(|e| e.to_string())?;
    let mut scratch = Vec::new();
    let mut observations = Vec::new();
    let mut frame_size = (0, 0);
    eprintln!(
        "profiling {} (device) and {} (server) at {:?} px, JPEG quality {}, over {}",
        device_path.display(),
        server_path.display(),
        args.resolutions,
        args.jpeg_quality,
        args.input.describe()
    );
    let (device_classes, server_classes) = (
        device.postprocessor().labels().len(),
        server.postprocessor().labels().len(),
    );
    let n = for_each_labelled(&args.input, true, |buf, caps, class| {
        check_class(class, device_classes, &device_path)?;
        check_class(class, server_classes, &server_path)?;
        let frame = map_frame(buf, caps)?;
        frame_size = (frame.info().width(), frame.info().height());
        let (result, _) = device.classify_frame(&frame).map_err(|e| e.to_string())?;
        let confidence = match &calibrator {
            Some(cal) => cal.apply_to_output(
                result.confidence,
                device.last_output(),
                device_probs,
                &mut scratch,
            ),
            None => result.confidence,
        };
        let mut server_obs = Vec::with_capacity(args.resolutions.len());
        for &r in &args.resolutions {
            let t0 = Instant::now();
            let jpeg = encoder.encode(&frame, r).map_err(|e| e.to_string())?;
            let t1 = Instant::now();
            let decoded = decoder.decode(&jpeg.bytes).map_err(|e| e.to_string())?;
            let t2 = Instant::now();
            let (answer, timing) = server
                .classify_frame(&decoded.frame().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            server_obs.push(ServerObservation {
                jpeg_bytes: jpeg.bytes.len() as u32,
                server_correct: answer.class_id == class as i32,
                server_class: answer.class_id,
                server_score: answer.confidence as f32,
                encode_us: (t1 - t0).as_micros() as u32,
                decode_us: (t2 - t1).as_micros() as u32,
                inference_us: timing.inference_us as u32,
            });
        }
        observations.push(FrameObservation {
            device_confidence: confidence,
            raw_confidence: result.confidence,
            device_correct: result.class_id == class as i32,
            device_class: result.class_id,
            truth: class as i32,
            server: server_obs,
        });
        Ok(())
    })?;
    let (fw, fh) = frame_size;
    let inputs = ProfileInputs {
        device_model: model_ref_fed(
            &device_path,
            &args.device_input_mean,
            &args.device_input_std,
            args.device_output_kind,
            args.device_input_size,
        )?,
        server_model: model_ref_fed(
            &server_path,
            &args.server_input_mean,
            &args.server_input_std,
            args.server_output_kind,
            args.server_input_size,
        )?,
        calibration: calibration_path.as_deref().map(model_ref).transpose()?,
        jpeg_quality: args.jpeg_quality,
        encoder: "libjpeg-turbo (TurboJPEG), RGB 4:2:0".into(),
        fitted_on: FittedOn {
            source: args.input.describe(),
            n,
            frame_width: fw,
            frame_height: fh,
        },
        resolutions: args
            .resolutions
            .iter()
            .map(|&r| {
                let (w, h) = scaled_size(fw, fh, r);
                (r, w, h)
            })
            .collect(),
    };
    Ok((inputs, observations))
}

pub fn print_table(p: &Profile) {
    println!(
        "{} frames of {}x{} ({}); device {} accuracy {:.3}; server {}",
        p.fitted_on.n,
        p.fitted_on.frame_width,
        p.fitted_on.frame_height,
        p.fitted_on.source,
        p.device_model.file,
        p.device_accuracy,
        p.server_model.file
    );
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "short", "size", "bytes", "p50", "p90", "enc ms", "srv ms", "srv acc"
    );
    for r in &p.resolutions {
        println!(
            "{:>6} {:>9} {:>9.0} {:>9.0} {:>9.0} {:>9.2} {:>9.1} {:>8.3}",
            r.short_side,
            format!("{}x{}", r.width, r.height),
            r.bytes_mean,
            r.bytes_p50,
            r.bytes_p90,
            r.encode_ms_mean,
            r.server_inference_ms_mean,
            r.server_accuracy
        );
    }
    println!("server accuracy per device-confidence bin:");
    print_bins(p, |b| Some(&b.server_accuracy));
    if let Some(m) = &p.merge {
        println!(
            "merge model (on {} disagreements): P(server's label right) = σ({:.2} {:+.2}·logit p {:+.2}·logit q {:+.2}·ln(r/224))",
            m.n, m.intercept, m.device_logit, m.server_logit, m.log_resolution
        );
        println!("accuracy of the label the merge leaves, per device-confidence bin:");
        print_bins(p, |b| b.merged_accuracy.as_ref());
    }
}

/// One row per confidence bin: its frames, the device's accuracy and `per_resolution` of it.
fn print_bins(p: &Profile, per_resolution: impl Fn(&ConfidenceBin) -> Option<&Vec<f64>>) {
    print!("{:>11} {:>5} {:>7}", "confidence", "n", "device");
    for r in &p.resolutions {
        print!(" {:>6}", format!("@{}", r.short_side));
    }
    println!();
    for b in &p.bins {
        print!(
            "{:>11} {:>5} {:>7.3}",
            format!("{:.1}-{:.1}", b.lo, b.hi),
            b.n,
            b.device_accuracy
        );
        for a in per_resolution(b).into_iter().flatten() {
            print!(" {a:>6.3}");
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model fed other than by default is recorded with how (for `cbo eval` to replay it so);
    /// the default pair's entries stay as they were, with no `input`.
    #[test]
    fn a_model_fed_otherwise_records_how() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"model").unwrap();
        let plain = model_ref_fed(&path, "127", "128", OutputKind::Auto, 0).unwrap();
        assert_eq!(plain.input, None);
        assert!(!serde_json::to_string(&plain).unwrap().contains("input"));
        let fed =
            model_ref_fed(&path, "123.7,116.3,103.5", "58.4", OutputKind::Logits, 384).unwrap();
        let input = fed.input.clone().expect("recorded");
        assert_eq!(input.input_mean, "123.7,116.3,103.5");
        assert_eq!(input.input_std, "58.4");
        assert_eq!(input.output_kind, "logits");
        assert_eq!(input.input_size, 384);
        let text = serde_json::to_string(&fed).unwrap();
        assert_eq!(serde_json::from_str::<ModelRef>(&text).unwrap(), fed);
        // A profile written before `input` existed reads as the defaults.
        let old: ModelRef = serde_json::from_str(r#"{"file":"m.onnx","sha256":"00"}"#).unwrap();
        assert_eq!(old.input, None);
    }
}
