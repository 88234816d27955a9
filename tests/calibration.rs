//! Calibration on real data: fitted on half of the dev photos, checked on the other half; and
//! the `cbo calibrate` / `cbo ece` command lines end to end.

mod common;

use std::path::Path;
use std::process::Command;

use gstcbo::calibration::{Calibrator, Dataset, Method, Metrics};
use gstcbo::cli::ModelArgs;
use gstcbo::inference::Classifier;
use gstcbo::tools::dataset::{InputArgs, gather};

fn default_model_args() -> ModelArgs {
    ModelArgs {
        model: None,
        model_labels: None,
        input_mean: "127".into(),
        input_std: "128".into(),
        output_kind: Default::default(),
        top_k: 5,
        execution_provider: Default::default(),
        ep_options: String::new(),
        ep_fallback: false,
        threads: 0,
        input_size: 0,
    }
}

fn split(data: &Dataset, keep_even: bool) -> Dataset {
    let mut out = Dataset::default();
    for (i, (row, t)) in data.rows.iter().zip(&data.targets).enumerate() {
        if (i % 2 == 0) == keep_even {
            out.push(row.clone(), *t);
        }
    }
    out
}

#[test]
fn calibration_fitted_on_half_the_dev_photos_holds_on_the_other_half() {
    common::init();
    let config = default_model_args().to_config().unwrap();
    let mut classifier = Classifier::load(&config).unwrap();
    let input = InputArgs {
        images: Some(common::assets().join("images/labels.tsv")),
        split: Some("dev".into()),
        video: None,
        labels: None,
        max_samples: 0,
    };
    let data = gather(&mut classifier, &config.model, &input, false).unwrap();
    assert_eq!(data.len(), 600);
    // Fit on one half, check on the other, both ways round, and score all 600 held-out
    // predictions together: 300 samples alone put ECE's own sampling noise near 0.05 (15 bins of
    // ~20-40 samples), which is the bound under test.
    let mut held_out = Vec::new();
    let mut chosen = Vec::new();
    for (fit_even, check_even) in [(true, false), (false, true)] {
        let cal = Calibrator::fit(Method::Auto, &split(&data, fit_even)).unwrap();
        cal.validate().unwrap();
        chosen.push(cal.method_name());
        held_out.extend(cal.top_label(&split(&data, check_even)));
    }
    let raw = Metrics::of(&data.top_label());
    let after = Metrics::of(&held_out);
    eprintln!(
        "dev photos, held-out halves ({chosen:?}): ECE {:.4} -> {:.4}, NLL {:.4} -> {:.4}",
        raw.ece, after.ece, raw.nll, after.nll
    );
    assert!(after.ece <= 0.05, "calibrated ECE {:.4}", after.ece);
    assert!(
        after.ece <= 0.6 * raw.ece,
        "ECE {:.4} -> {:.4}",
        raw.ece,
        after.ece
    );
    assert!(after.nll < raw.nll);
    // Calibration never changes which class is on top.
    assert_eq!(after.accuracy, raw.accuracy);
}

#[test]
fn cbo_calibrate_and_cbo_ece_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cal.json");
    let tsv = common::assets().join("images/labels.tsv");
    let calibrate = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .args([
            "calibrate",
            "--method",
            "temperature",
            "--split",
            "dev",
            "--max-samples",
            "120",
        ])
        .arg("--images")
        .arg(&tsv)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        calibrate.status.success(),
        "{}",
        String::from_utf8_lossy(&calibrate.stderr)
    );
    let text = String::from_utf8_lossy(&calibrate.stdout);
    assert!(text.contains("temperature (5-fold CV)"), "{text}");
    let file = gstcbo::calibration::CalibrationFile::load(&out).unwrap();
    assert_eq!(file.fitted_on.n, 120);
    assert_eq!(file.model_file, "efficientnet-lite0-int8pt-224.onnx");

    let ece = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .args(["ece", "--split", "dev", "--max-samples", "60"])
        .arg("--images")
        .arg(&tsv)
        .arg("--calibration")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ece.status.success(),
        "{}",
        String::from_utf8_lossy(&ece.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ece.stdout).unwrap();
    for key in [
        "n",
        "accuracy",
        "ece_raw",
        "ece_calibrated",
        "nll_raw",
        "nll_calibrated",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["n"], 60);

    // A calibration for another model is refused with the reason.
    let other = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .args(["ece", "--split", "dev", "--max-samples", "5"])
        .arg("--model")
        .arg(common::assets().join("models/mobilenet-v2-1.0-int8-224.onnx"))
        .arg("--images")
        .arg(&tsv)
        .arg("--calibration")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("fitted for model"));
}

/// The calibration shipped for the default model is valid, belongs to it, and was fitted on the
/// dev clip with a better-calibrated result than raw.
#[test]
fn shipped_calibration_matches_the_default_model() {
    let models = common::repo().join("models");
    let file = gstcbo::calibration::CalibrationFile::load(
        &models.join("efficientnet-lite0-int8pt-224.calibration.json"),
    )
    .unwrap();
    file.check_model(&models.join("efficientnet-lite0-int8pt-224.onnx"))
        .unwrap();
    assert!(file.fitted_on.source.contains("dev-slideshow"));
    assert!(file.metrics_calibrated.ece < file.metrics_raw.ece);
}

#[test]
fn cbo_profile_measures_bytes_and_server_accuracy_per_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.json");
    let png = dir.path().join("reliability.png");
    let a = common::assets();
    let status = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .args(["profile", "--video"])
        .arg(a.join("video/dev-slideshow.mp4"))
        .arg("--labels")
        .arg(a.join("video/dev-slideshow.labels.csv"))
        .args(["--max-samples", "120", "--resolutions", "96,224", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let p = gstcbo::profile::Profile::load(&out).unwrap();
    assert_eq!(p.fitted_on.n, 120);
    assert_eq!(
        (p.fitted_on.frame_width, p.fitted_on.frame_height),
        (480, 360)
    );
    assert_eq!(p.resolutions.len(), 2);
    let (small, large) = (&p.resolutions[0], &p.resolutions[1]);
    assert_eq!((small.width, small.height), (128, 96));
    assert_eq!((large.width, large.height), (298, 224));
    // A 224 px JPEG of a 480x360 photo is a few to tens of kB, several times a 96 px one.
    assert!(large.bytes_mean > 2.0 * small.bytes_mean);
    assert!(
        (3_000.0..60_000.0).contains(&large.bytes_mean),
        "{}",
        large.bytes_mean
    );
    assert!(small.bytes_p50 <= small.bytes_p90);
    assert!(large.server_inference_ms_mean > 0.0);
    // The calibration shipped beside the default device model was used.
    assert!(p.calibration.is_some());
    assert_eq!(p.bins.iter().map(|b| b.n).sum::<usize>(), 120);
    // Device accuracy per bin is consistent with the overall accuracy.
    let weighted: f64 = p
        .bins
        .iter()
        .map(|b| b.device_accuracy * b.n as f64)
        .sum::<f64>()
        / 120.0;
    assert!((weighted - p.device_accuracy).abs() < 1e-9);
    assert!(large.server_accuracy >= 0.5, "{}", large.server_accuracy);
    // The merge model is fitted on the answers that disagree with the device where one of the
    // two is right (120 frames at two resolutions: some dozens).
    let m = p.merge.expect("a merge model");
    assert!(m.n >= 10 && m.n <= 240, "{m:?}");
    // ...and with it, how often the label the merge leaves is right, per bin and resolution,
    // which `cbo profile` also prints.
    assert!(
        p.bins
            .iter()
            .all(|b| b.merged_accuracy.as_ref().is_some_and(|m| m.len() == 2)),
        "{:?}",
        p.bins
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains("accuracy of the label the merge leaves"),
        "{stdout}"
    );

    // cbo ece --plot writes a reliability diagram.
    let ece = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .args(["ece", "--calibration"])
        .arg(common::repo().join("models/efficientnet-lite0-int8pt-224.calibration.json"))
        .arg("--video")
        .arg(a.join("video/dev-slideshow.mp4"))
        .arg("--labels")
        .arg(a.join("video/dev-slideshow.labels.csv"))
        .args(["--max-samples", "40", "--plot"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        ece.status.success(),
        "{}",
        String::from_utf8_lossy(&ece.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}

#[test]
fn shipped_profile_matches_the_default_models() {
    let models = common::repo().join("models");
    let p =
        gstcbo::profile::Profile::load(&models.join("efficientnet-lite0-to-lite2.profile.json"))
            .unwrap();
    let sha = |f: &str| gstcbo::calibration::sha256_file(&models.join(f)).unwrap();
    assert_eq!(
        p.device_model.sha256,
        sha("efficientnet-lite0-int8pt-224.onnx")
    );
    assert_eq!(
        p.server_model.sha256,
        sha("efficientnet-lite2-fp32-260.onnx")
    );
    assert_eq!(
        p.calibration.as_ref().unwrap().sha256,
        sha("efficientnet-lite0-int8pt-224.calibration.json")
    );
    assert!(p.fitted_on.source.contains("dev-slideshow"));
    // Offloading low-confidence frames pays: the server beats the device in the lowest bins.
    let r224 = p.resolution_index(224).unwrap();
    assert!(p.server_accuracy(0.15, r224) > p.bins[1].device_accuracy + 0.1);
    // And the server gains little on frames the device is sure of.
    assert!(p.server_accuracy(0.95, r224) - p.bins[9].device_accuracy < 0.05);
    // The merge model: of two disagreeing labels the server's is the likelier the surer the
    // server and the larger the image, the device's the surer the device.
    let m = p.merge.expect("a merge model");
    assert!(
        m.server_logit > 0.0 && m.log_resolution > 0.0 && m.device_logit < 0.0,
        "{m:?}"
    );
    assert!(m.server_probability(0.9, 0.3, 96) < 0.5);
    assert!(m.server_probability(0.3, 0.9, 320) > 0.5);
}

#[test]
fn cbo_eval_replays_every_policy_against_a_real_trace() {
    let a = common::assets();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("eval.png");
    let out = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .args(["eval", "--video"])
        .arg(a.join("video/dev-slideshow.mp4"))
        .arg("--labels")
        .arg(a.join("video/dev-slideshow.labels.csv"))
        .arg("--trace")
        .arg(a.join("traces/Verizon-LTE-short.up"))
        .args([
            "--deadline-ms",
            "500",
            "--max-frames",
            "40",
            "--json",
            "--plot",
        ])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The server is another machine: its times are the profile's unless `--timing` says so.
    assert_eq!(v["timing"], "profile", "{v}");
    let p = &v["policies"];
    let acc = |name: &str| p[name]["accuracy"].as_f64().unwrap();
    for name in [
        "local",
        "all",
        "threshold",
        "threshold-raw",
        "fastva",
        "cbo",
        "clairvoyant",
    ] {
        let s = &p[name];
        for field in [
            "accuracy",
            "deadline_miss_rate",
            "offload_ratio",
            "mean_resolution",
            "bytes",
            "latency_p50_ms",
            "latency_p99_ms",
        ] {
            assert!(
                !s[field].is_null() || field.starts_with("latency"),
                "{name}.{field}"
            );
        }
        // The clairvoyant schedule is an upper bound on every policy.
        assert!(acc("clairvoyant") >= acc(name), "{name}");
    }
    assert_eq!(p["local"]["offload_ratio"].as_f64().unwrap(), 0.0);
    assert_eq!(p["all"]["offload_ratio"].as_f64().unwrap(), 1.0);
    assert_eq!(p["all"]["mean_resolution"].as_f64().unwrap(), 224.0);
    // Frames leave within the deadline under every policy.
    assert!(p["cbo"]["latency_p99_ms"].as_f64().unwrap() <= 501.0);
    // The reuse variants ran too, bounded by their own clairvoyant bound (which is at least the
    // plain one), and reuse answers only where a run of equal device labels allows.
    for name in ["cbo+reuse", "clairvoyant+reuse"] {
        assert!(!p[name]["accuracy"].is_null(), "{name}");
    }
    assert!(acc("clairvoyant+reuse") >= acc("cbo+reuse"));
    assert!(acc("clairvoyant+reuse") >= acc("clairvoyant"));
    assert_eq!(p["cbo"]["reuse_ratio"].as_f64().unwrap(), 0.0);
    assert!(p["cbo+reuse"]["reuse_ratio"].as_f64().unwrap() > 0.0);
    for f in [png.clone(), dir.path().join("eval.Verizon-LTE-short.png")] {
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{}", f.display());
    }
}

#[test]
fn cbo_eval_caches_model_results_by_content_not_by_path() {
    // The same clip under two paths: the second run reads the first run's model results.
    let a = common::assets();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let media = common::repo().join("examples/media");
    let run = |clip_dir: &str| {
        let d = dir.path().join(clip_dir);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["bottle-detection.mp4", "bottle-detection.labels.csv"] {
            std::fs::copy(media.join(f), d.join(f)).unwrap();
        }
        let out = common::succeed(
            Command::new(env!("CARGO_BIN_EXE_cbo"))
                .args(["eval", "--video"])
                .arg(d.join("bottle-detection.mp4"))
                .arg("--labels")
                .arg(d.join("bottle-detection.labels.csv"))
                .arg("--trace")
                .arg(a.join("traces/Verizon-LTE-short.up"))
                .args(["--max-frames", "12", "--policies", "local,all", "--json"])
                .arg("--cache")
                .arg(&cache),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            v["policies"].clone(),
        )
    };
    let (first, p1) = run("a");
    assert!(!first.contains("using cached model results"), "{first}");
    let (second, p2) = run("b");
    assert!(second.contains("using cached model results"), "{second}");
    assert_eq!(p1, p2);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
}

#[test]
fn cbo_eval_summarises_a_grid_of_clips_traces_deadlines_and_rtts_and_cross_validates() {
    let a = common::assets();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("grid.png");
    let video = |n: &str| a.join(format!("video/{n}.mp4"));
    let labels = |n: &str| a.join(format!("video/{n}.labels.csv"));
    let list = |p: [std::path::PathBuf; 2]| format!("{},{}", p[0].display(), p[1].display());
    let out = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .arg("eval")
        .arg("--video")
        .arg(list([video("dev-slideshow"), video("dev-slideshow-fast")]))
        .arg("--labels")
        .arg(list([
            labels("dev-slideshow"),
            labels("dev-slideshow-fast"),
        ]))
        // A directory: every *.up in it (the three beside the corpus).
        .arg("--trace")
        .arg(a.join("traces"))
        .args([
            "--deadline-ms",
            "200,1000",
            "--rtt-ms",
            "40,100",
            "--max-frames",
            "40",
            "--cv",
            "--cv-miss-price",
            "0.5,1",
            "--cv-gain-z",
            "0,0.5",
            "--json",
            "--plot",
        ])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 2 clips × 3 traces × 2 deadlines × 2 RTTs.
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 24);
    assert_eq!(v["rtt_ms"], serde_json::json!([40.0, 100.0]));
    // Each RTT is replayed as its own setting: the device alone does not care, but a longer
    // RTT leaves less of a 200 ms deadline for the upload, so sending every frame misses more.
    let at = |rtt: f64, deadline: f64| {
        runs.iter()
            .filter(move |r| r["rtt_ms"] == rtt && r["deadline_ms"] == deadline)
            .collect::<Vec<_>>()
    };
    assert_eq!(at(40.0, 200.0).len(), 6);
    let (short, long) = (at(40.0, 200.0), at(100.0, 200.0));
    let sum = |runs: &[&serde_json::Value], policy: &str, field: &str| -> f64 {
        runs.iter()
            .map(|r| r["policies"][policy][field].as_f64().unwrap())
            .sum()
    };
    assert_eq!(
        sum(&short, "local", "accuracy"),
        sum(&long, "local", "accuracy")
    );
    assert!(
        sum(&long, "all", "deadline_miss_rate") > sum(&short, "all", "deadline_miss_rate"),
        "all misses {} at RTT 100 vs {} at RTT 40",
        sum(&long, "all", "deadline_miss_rate"),
        sum(&short, "all", "deadline_miss_rate")
    );
    let sources: std::collections::BTreeSet<&str> =
        runs.iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert_eq!(sources.len(), 3, "{sources:?}");
    for r in runs {
        let p = &r["policies"];
        let acc = |n: &str| p[n]["accuracy"].as_f64().unwrap();
        // The bounds bound: the link oracle knows more than cbo only about the link, the
        // clairvoyant schedule knows everything.
        assert!(acc("clairvoyant") >= acc("link-oracle") - 1e-9, "{r}");
        assert!(acc("clairvoyant+reuse") >= acc("cbo+reuse") - 1e-9, "{r}");
        // The estimated-link planners report each send's planned arrival probability against
        // what happened: one send per offloaded frame, and every one that did not arrive in
        // time a deadline miss. Rules and bounds plan with no such probability.
        for policy in ["cbo", "cbo+reuse"] {
            let (s, a) = (&p[policy], &p[policy]["arrival"]);
            let frames = 40.0;
            let sends = a["sends"].as_f64().unwrap();
            assert_eq!(
                sends,
                (s["offload_ratio"].as_f64().unwrap() * frames).round()
            );
            let late = sends * (1.0 - a["arrived_share"].as_f64().unwrap());
            let missed = s["deadline_miss_rate"].as_f64().unwrap() * frames;
            assert!((late - missed).abs() < 1e-6, "{policy}: {a} vs {s}");
            let binned: f64 = a["bins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["sends"].as_f64().unwrap())
                .sum();
            assert_eq!(binned, sends);
        }
        for policy in ["local", "threshold", "fastva", "link-oracle", "clairvoyant"] {
            assert!(
                p[policy].get("arrival").is_none(),
                "{policy}: {}",
                p[policy]
            );
        }
    }
    // The summary's diagram is every setting's added up.
    let sends: f64 = runs
        .iter()
        .map(|r| {
            r["policies"]["cbo+reuse"]["arrival"]["sends"]
                .as_f64()
                .unwrap()
        })
        .sum();
    let diagram = &v["summary"]["cbo+reuse"]["arrival_reliability"];
    assert_eq!(diagram["sends"].as_f64().unwrap(), sends);
    assert!(sends > 0.0, "cbo+reuse sent nothing in 24 settings");
    // Per RTT, each summary is over its half of the settings, and (the halves being equal)
    // their mean accuracies average to the whole grid's.
    for report in [&v, &v["cv"]] {
        let by_rtt = report["summary_by_rtt"].as_array().unwrap();
        let rtts: Vec<f64> = by_rtt
            .iter()
            .map(|r| r["rtt_ms"].as_f64().unwrap())
            .collect();
        assert_eq!(rtts, [40.0, 100.0]);
        for policy in ["cbo+reuse", "all", "local"] {
            let mean = |s: &serde_json::Value| s[policy]["mean_accuracy"].as_f64().unwrap();
            let halves: Vec<f64> = by_rtt.iter().map(|r| mean(&r["summary"])).collect();
            assert!(
                by_rtt
                    .iter()
                    .all(|r| r["summary"][policy]["settings"] == 12)
            );
            assert!(
                ((halves[0] + halves[1]) / 2.0 - mean(&report["summary"])).abs() < 1e-9,
                "{policy}: {halves:?} vs {}",
                report["summary"]
            );
        }
    }
    for (name, summary) in [("summary", &v["summary"]), ("cv", &v["cv"]["summary"])] {
        for policy in ["cbo", "cbo+reuse", "link-oracle", "threshold", "local"] {
            let s = &summary[policy];
            for field in [
                "mean_accuracy",
                "mean_regret",
                "worst_regret",
                "best_share",
                "below_local_share",
                "mean_miss_rate",
            ] {
                assert!(s[field].is_number(), "{name}.{policy}.{field}: {s}");
            }
        }
        // A baseline's regret against the best baseline is never negative.
        assert!(summary["threshold"]["mean_regret"].as_f64().unwrap() >= 0.0);
        assert_eq!(summary["local"]["below_local_share"].as_f64().unwrap(), 0.0);
    }
    // One fold per (clip, source) cell, each trained without its clip and its source (at
    // every RTT): 1 clip × 2 sources × 2 deadlines × 2 RTTs = 8 settings.
    let folds = v["cv"]["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 6);
    assert!(folds.iter().all(|f| f["trained_on"].as_u64() == Some(8)));
    let bytes = std::fs::read(dir.path().join("grid.regret.png")).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}

#[test]
fn cbo_eval_e2e_runs_the_real_element_and_replays_the_trace_from_where_it_started() {
    // A few seconds of the bottle clip through the real element, relay and server.
    let a = common::assets();
    let media = common::repo().join("examples/media");
    let out = common::succeed(
        Command::new(env!("CARGO_BIN_EXE_cbo"))
            .args(["eval", "--video"])
            .arg(media.join("bottle-detection.mp4"))
            .arg("--labels")
            .arg(media.join("bottle-detection.labels.csv"))
            .arg("--trace")
            .arg(a.join("traces/Verizon-LTE-short.up"))
            .args([
                "--max-frames",
                "30",
                "--deadline-ms",
                "500",
                "--policies",
                "local,cbo+reuse",
                "--e2e",
                "--json",
            ]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acc = |p: &serde_json::Value| p["accuracy"].as_f64().unwrap();
    let (sim, real, aligned) = (&v["policies"], &v["e2e"], &v["e2e_simulated"]);
    // The real run's server is this machine, so the replay it is compared with takes this
    // machine's measured times unless `--timing` says otherwise.
    assert_eq!(v["timing"], "measured", "{v}");
    for name in ["local", "cbo+reuse"] {
        assert!(real[name].is_object(), "{name}: {v}");
        // The clip starts once the element is connected, after the relay's trace clock.
        assert!(
            aligned[name]["trace_offset_ms"].as_u64().unwrap() > 0,
            "{v}"
        );
    }
    // Keeping every device label does not depend on the link: all three agree.
    assert_eq!(acc(&real["local"]), acc(&sim["local"]));
    assert_eq!(acc(&aligned["local"]), acc(&sim["local"]));
    // On this clip the server is right where the device is not, and the link is fast.
    assert!(
        real["cbo+reuse"]["offload_ratio"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert!(acc(&real["cbo+reuse"]) > acc(&real["local"]), "{v}");
    assert!(acc(&aligned["cbo+reuse"]) > acc(&sim["local"]), "{v}");
}

/// `cbo slideshow` makes a clip from photos no dev clip shows, which `cbo eval` takes as it
/// takes the dev clips: the held-out content check of docs/evaluation.md.
#[test]
fn cbo_slideshow_makes_a_labelled_clip_of_photos_no_dev_clip_shows() {
    let a = common::assets();
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("unseen.mp4");
    let shown = a.join("video/dev-slideshow.labels.csv");
    let make = |skip: &str, out: &Path| {
        common::succeed(
            Command::new(env!("CARGO_BIN_EXE_cbo"))
                .arg("slideshow")
                .arg("--images")
                .arg(a.join("images/labels.tsv"))
                .args(["--split", "dev", "--exclude"])
                .arg(&shown)
                .args(["--photos", "4", "--seconds", "0.5", "--skip", skip])
                .arg(out),
        )
    };
    make("0", &clip);
    let labels = clip.with_extension("labels.csv");
    let classes = common::clip_labels(&labels);
    // 4 photos, 5 frames each, each photo's class for its scene, none of them the fitting clip's.
    assert_eq!(classes.len(), 20);
    let scenes: Vec<i32> = classes.chunks(5).map(|c| c[0]).collect();
    assert!(classes.chunks(5).all(|c| c.iter().all(|&x| x == c[0])));
    let fitting: std::collections::HashSet<i32> = common::clip_labels(&shown).into_iter().collect();
    assert!(scenes.iter().all(|c| !fitting.contains(c)), "{scenes:?}");
    let dev: std::collections::HashSet<i32> =
        gstcbo::tools::dataset::read_image_list(&a.join("images/labels.tsv"), Some("dev"))
            .unwrap()
            .into_iter()
            .map(|(_, c)| c as i32)
            .collect();
    assert!(scenes.iter().all(|c| dev.contains(c)));
    // The same seed again gives the same photos; a later part of the shuffle, others.
    let again = dir.path().join("again.mp4");
    make("0", &again);
    assert_eq!(
        common::clip_labels(&again.with_extension("labels.csv")),
        classes
    );
    let later = dir.path().join("later.mp4");
    make("4", &later);
    let later_classes = common::clip_labels(&later.with_extension("labels.csv"));
    assert!(later_classes.iter().all(|c| !scenes.contains(c)));
    // The clip decodes to its 20 frames at 480x360, the same frames each time it is made, and
    // `cbo eval` replays on it.
    common::init();
    let (frames, caps) = gstcbo::tools::decode_frames(&clip, 1000).unwrap();
    assert_eq!(frames.len(), 20);
    let (again_frames, _) = gstcbo::tools::decode_frames(&again, 1000).unwrap();
    let bytes = |b: &gst::Buffer| b.map_readable().unwrap().as_slice().to_vec();
    assert!(
        frames
            .iter()
            .zip(&again_frames)
            .all(|(a, b)| bytes(a) == bytes(b))
    );
    let s = caps.structure(0).unwrap();
    assert_eq!(
        (
            s.get::<i32>("width").unwrap(),
            s.get::<i32>("height").unwrap()
        ),
        (480, 360)
    );
    let out = common::succeed(
        Command::new(env!("CARGO_BIN_EXE_cbo"))
            .args(["eval", "--video"])
            .arg(&clip)
            .arg("--labels")
            .arg(&labels)
            .arg("--trace")
            .arg(a.join("traces/TMobile-LTE-short.up"))
            .args(["--deadline-ms", "500", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = v["policies"]["all"]["accuracy"].as_f64().unwrap();
    let local = v["policies"]["local"]["accuracy"].as_f64().unwrap();
    // Accuracies over the clip's 20 frames.
    for acc in [all, local] {
        assert!((0.0..=1.0).contains(&acc));
        assert!((acc * 20.0 - (acc * 20.0).round()).abs() < 1e-9, "{acc}");
    }
    assert_eq!(v["clip"], "unseen.mp4");
    // Bad input is a clear error: an output nowhere to be written, an odd width.
    let nowhere = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .arg("slideshow")
        .arg("--images")
        .arg(a.join("images/labels.tsv"))
        .args(["--photos", "1", "--seconds", "0.2"])
        .arg(dir.path().join("missing/unseen.mp4"))
        .output()
        .unwrap();
    assert!(!nowhere.status.success());
    let err = String::from_utf8_lossy(&nowhere.stderr);
    assert!(err.contains("for writing"), "{err}");
    let odd = Command::new(env!("CARGO_BIN_EXE_cbo"))
        .arg("slideshow")
        .arg("--images")
        .arg(a.join("images/labels.tsv"))
        .args(["--width", "321"])
        .arg(dir.path().join("odd.mp4"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&odd.stderr).contains("even numbers of pixels"));
}
