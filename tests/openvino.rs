//! The OpenVINO execution provider, from the `onnxruntime-openvino` build that
//! `scripts/setup-openvino.sh` (`make setup-openvino`, run by `make test`) puts in
//! `.cache/onnxruntime-openvino/lib`.
//!
//! One process loads one ONNX Runtime library, when its first model loads. Every in-process test
//! here asks for `execution-provider=openvino` so that whichever runs first loads the OpenVINO
//! build; the CPU reference and `auto` run in their own `cbo` processes.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{accuracy, assets, bottle_clip, clip_labels, run_pipeline};

/// beer, pill, pop, water, wine bottles and the two jugs: what a bottle clip may fairly be called.
const BOTTLE_LIKE: [i32; 7] = [440, 720, 737, 898, 899, 901, 907];

fn decode(path: &std::path::Path) -> String {
    format!("filesrc location=\"{}\" ! decodebin", path.display())
}

/// `cbo classify --json` in its own process: frame → class id, and the summary line.
fn classify_in_process(
    clip: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (HashMap<u64, i32>, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbo"));
    cmd.arg("classify")
        .arg(clip)
        .arg("--json")
        .args(args)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("CBO_ORT_BUILD")
        .env_remove("LD_LIBRARY_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cbo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cbo classify {args:?}: {stderr}");
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["frame"].as_u64().unwrap(),
                v["class_id"].as_i64().unwrap() as i32,
            )
        })
        .collect();
    let summary = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("no summary line in {stderr}"));
    (frames, summary)
}

/// The provider is active in a real pipeline, found with no LD_LIBRARY_PATH (the wheel's
/// libraries find each other by RPATH $ORIGIN), and the library loaded is the OpenVINO build.
#[test]
fn openvino_ep_is_active_in_a_pipeline() {
    assert!(
        !std::env::var("LD_LIBRARY_PATH").is_ok_and(|p| p.contains("onnxruntime-openvino")),
        "the test must not rely on LD_LIBRARY_PATH"
    );
    let run = run_pipeline(&format!(
        "{} ! cbofilter name=cbo execution-provider=openvino ep-options=device_type=CPU ! fakesink",
        decode(&bottle_clip())
    ));
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.provider, "openvino");
    assert_eq!(run.results.len(), run.frames_in);
    assert!(run.results.len() > 1000);
    let loaded = gstcbo::ortlib::loaded_path().expect("ONNX Runtime loaded");
    assert!(
        loaded.ends_with(gstcbo::ortlib::OrtBuild::OpenVino.library())
            && loaded.to_string_lossy().contains("onnxruntime-openvino"),
        "{}",
        loaded.display()
    );
    // As on the CPU EP (tests/element.rs): a bottle class on most frames.
    let bottles = run
        .results
        .iter()
        .filter(|r| BOTTLE_LIKE.contains(&r.class_id))
        .count();
    assert!(
        bottles as f64 >= 0.7 * run.results.len() as f64,
        "bottle-like labels on {bottles} of {} frames",
        run.results.len()
    );
}

/// Options reach the provider: an unknown key and a bad device are errors that name the entry;
/// known ones (precision, cache_dir) work.
#[test]
fn ep_options_reach_the_provider_and_bad_ones_are_named() {
    let pipeline = |options: &str| {
        format!(
            "videotestsrc num-buffers=3 ! cbofilter name=cbo execution-provider=openvino ep-options=\"{options}\" ! fakesink"
        )
    };
    let (err, _) = run_pipeline(&pipeline("device_type=CPU,no_such_option=1"))
        .error
        .expect("an error for an unknown key");
    assert!(err.message().contains("no_such_option=1"), "{err}");
    assert!(err.message().contains("openvino"), "{err}");

    let (err, _) = run_pipeline(&pipeline("device_type=NO_SUCH_DEVICE"))
        .error
        .expect("an error for an unknown device");
    assert!(
        err.message().contains("device_type=NO_SUCH_DEVICE"),
        "{err}"
    );

    let cache = tempfile::tempdir().unwrap();
    let run = run_pipeline(&pipeline(&format!(
        "device_type=CPU,precision=FP32,cache_dir={}",
        cache.path().display()
    )));
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.provider, "openvino");
    assert_eq!(run.results.len(), 3);
    // OpenVINO wrote its compiled model to the cache directory it was given.
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_some(),
        "cache_dir stayed empty"
    );
}

/// OpenVINO on CPU labels the dev slideshow like the CPU EP (run in its own process, on the
/// default build): top-1 agreement >= 97 %, accuracy within 0.5 points.
#[test]
fn openvino_agrees_with_the_cpu_ep_on_the_dev_slideshow() {
    let clip = assets().join("video/dev-slideshow.mp4");
    let labels = clip_labels(&assets().join("video/dev-slideshow.labels.csv"));
    let run = run_pipeline(&format!(
        "{} ! cbofilter name=cbo execution-provider=openvino ! fakesink",
        decode(&clip)
    ));
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.provider, "openvino");
    assert_eq!(run.results.len(), labels.len());
    let (cpu, summary) = classify_in_process(&clip, &["--execution-provider", "cpu"], &[]);
    assert_eq!(summary["execution_provider"], "cpu");
    assert_eq!(cpu.len(), labels.len());
    let agree = run
        .results
        .iter()
        .filter(|r| cpu.get(&r.frame) == Some(&r.class_id))
        .count() as f64
        / labels.len() as f64;
    let openvino_acc = accuracy(&run.results, &labels);
    let cpu_acc = cpu
        .iter()
        .filter(|(f, c)| labels.get(**f as usize) == Some(*c))
        .count() as f64
        / labels.len() as f64;
    eprintln!("openvino vs cpu: agreement {agree:.3}, accuracy {openvino_acc:.3} vs {cpu_acc:.3}");
    assert!(agree >= 0.97, "top-1 agreement {agree:.3} < 0.97");
    assert!(
        (openvino_acc - cpu_acc).abs() <= 0.005,
        "accuracy {openvino_acc:.3} vs {cpu_acc:.3}"
    );
}

/// `auto` picks OpenVINO when the loaded runtime offers it (CBO_ORT_BUILD=openvino), and CPU on
/// the default build.
#[test]
fn auto_picks_openvino_when_the_runtime_offers_it() {
    let clip = bottle_clip();
    let (frames, summary) = classify_in_process(
        &clip,
        &["--execution-provider", "auto", "--max-frames", "5"],
        &[("CBO_ORT_BUILD", "openvino")],
    );
    assert_eq!(summary["execution_provider"], "openvino", "{summary}");
    assert!(frames.len() >= 5);
    let (_, summary) = classify_in_process(
        &clip,
        &["--execution-provider", "auto", "--max-frames", "5"],
        &[],
    );
    assert_eq!(summary["execution_provider"], "cpu", "{summary}");
}
