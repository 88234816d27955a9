//! `cbo calibrate` (fit a calibration file) and `cbo ece` (measure one).

use std::path::PathBuf;

use crate::calibration::{
    CalibrationFile, Calibrator, Dataset, FittedOn, Method, Metrics, cross_validated_metrics,
};
use crate::cli::ModelArgs;
use crate::inference::Classifier;
use crate::tools::dataset::{InputArgs, gather};
use crate::tools::plot;

#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// auto | temperature | platt | histogram-binning | isotonic
    #[arg(long, default_value = "auto")]
    pub method: Method,
    /// Calibration file to write
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a reliability diagram (raw vs calibrated, in-sample) as PNG
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct EceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Calibration file fitted for --model
    #[arg(long)]
    pub calibration: PathBuf,
    /// Also write a reliability diagram (raw vs calibrated) as PNG
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print one JSON object (the only output format for now)
    #[arg(long, default_value_t = true)]
    pub json: bool,
}

/// One method's 5-fold cross-validated metrics on the fitting data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MethodReport {
    pub method: &'static str,
    pub cross_validated: Metrics,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CalibrateReport {
    pub out: String,
    pub chosen: String,
    pub calibrator: Calibrator,
    pub raw: Metrics,
    /// In-sample metrics of the chosen calibration (what the file records).
    pub calibrated: Metrics,
    pub methods: Vec<MethodReport>,
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn load(model: &ModelArgs) -> Result<(Classifier, PathBuf), String> {
    super::init_gstreamer()?;
    let config = model.to_config()?;
    let classifier = Classifier::load(&config).map_err(|e| e.to_string())?;
    Ok((classifier, config.model))
}

pub fn calibrate(args: &CalibrateArgs) -> Result<CalibrateReport, String> {
    let (mut classifier, model_path) = load(&args.model)?;
    eprintln!(
        "running {} over {}",
        model_path.display(),
        args.input.describe()
    );
    let data: Dataset = gather(&mut classifier, &model_path, &args.input, true)?;
    let calibrator = Calibrator::fit(args.method, &data).map_err(|e| e.to_string())?;
    let raw = Metrics::of(&data.top_label());
    let calibrated = Metrics::of(&calibrator.top_label(&data));
    let mut methods = Vec::new();
    for m in [
        Method::Temperature,
        Method::Platt,
        Method::HistogramBinning,
        Method::Isotonic,
    ] {
        let cv = cross_validated_metrics(m, &data, 5).map_err(|e| e.to_string())?;
        let name = Calibrator::fit(m, &data)
            .map_err(|e| e.to_string())?
            .method_name();
        methods.push(MethodReport {
            method: name,
            cross_validated: cv,
        });
    }
    let file = CalibrationFile::new(
        calibrator.clone(),
        &model_path,
        FittedOn {
            source: args.input.describe(),
            n: data.len(),
        },
        raw,
        calibrated,
    )
    .map_err(|e| e.to_string())?;
    file.save(&args.out).map_err(|e| e.to_string())?;
    if let Some(png) = &args.plot {
        plot::reliability_diagram(
            png,
            &format!(
                "{} on {} ({}, in-sample)",
                file_name(&model_path),
                args.input.short_name(),
                calibrator.method_name()
            ),
            &data.top_label(),
            &calibrator.top_label(&data),
        )?;
    }
    Ok(CalibrateReport {
        out: args.out.display().to_string(),
        chosen: calibrator.method_name().to_string(),
        calibrator,
        raw,
        calibrated,
        methods,
    })
}

pub fn print_calibrate(r: &CalibrateReport) {
    println!("wrote {} ({})", r.out, r.chosen);
    println!(
        "{:<28} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "n", "acc", "ECE", "adaECE", "NLL", "Brier"
    );
    let row = |name: &str, m: &Metrics| {
        println!(
            "{name:<28} {:>6} {:>8.3} {:>8.4} {:>8.4} {:>8.4} {:>8.4}",
            m.n, m.accuracy, m.ece, m.adaptive_ece, m.nll, m.brier
        )
    };
    row("raw", &r.raw);
    row(&format!("{} (in-sample)", r.chosen), &r.calibrated);
    for m in &r.methods {
        row(&format!("{} (5-fold CV)", m.method), &m.cross_validated);
    }
}

/// `cbo ece`: raw vs calibrated metrics of a calibration file on labelled data.
pub fn ece(args: &EceArgs) -> Result<serde_json::Value, String> {
    let file = CalibrationFile::load(&args.calibration).map_err(|e| e.to_string())?;
    let (mut classifier, model_path) = load(&args.model)?;
    file.check_model(&model_path).map_err(|e| e.to_string())?;
    let data = gather(&mut classifier, &model_path, &args.input, true)?;
    let raw = Metrics::of(&data.top_label());
    let cal = Metrics::of(&file.calibrator.top_label(&data));
    if let Some(png) = &args.plot {
        plot::reliability_diagram(
            png,
            &format!(
                "{} on {} ({} from {})",
                file_name(&model_path),
                args.input.short_name(),
                file.calibrator.method_name(),
                file_name(&args.calibration)
            ),
            &data.top_label(),
            &file.calibrator.top_label(&data),
        )?;
    }
    Ok(serde_json::json!({
        "n": raw.n,
        "accuracy": raw.accuracy,
        "method": file.calibrator.method_name(),
        "ece_raw": raw.ece,
        "ece_calibrated": cal.ece,
        "adaptive_ece_raw": raw.adaptive_ece,
        "adaptive_ece_calibrated": cal.adaptive_ece,
        "mce_raw": raw.mce,
        "mce_calibrated": cal.mce,
        "nll_raw": raw.nll,
        "nll_calibrated": cal.nll,
        "brier_raw": raw.brier,
        "brier_calibrated": cal.brier,
        "mean_confidence_raw": raw.mean_confidence,
        "mean_confidence_calibrated": cal.mean_confidence,
    }))
}
