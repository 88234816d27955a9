//! `cbo classify` and `cbo overlay` as a user runs them: bad option values are refused with a
//! message naming the option (never a panic), `--max-frames` stops at exactly that many frames,
//! and the summary's counts of what happened to the frames add up.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};

use common::bottle_clip;
use common::server::Server;

fn cbo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cbo"))
        .args(args)
        .output()
        .expect("cbo runs")
}

/// Asserts that `cbo args` failed the way a bad option should: exit status 1 (our error) or 2
/// (clap's), not 101 (a panic), with a message containing every one of `expected`. Returns the
/// message.
fn refused(args: &[&str], expected: &[&str]) -> String {
    let out = cbo(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        code == Some(1) || code == Some(2),
        "cbo {args:?}: exit {code:?}, {stderr}"
    );
    assert!(!stderr.contains("panicked"), "cbo {args:?}: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "cbo {args:?}: no '{e}' in {stderr}");
    }
    stderr
}

#[test]
fn out_of_range_and_unknown_values_are_refused_naming_the_option() {
    let clip = bottle_clip();
    let clip = clip.to_str().unwrap();
    // Nobody listens there, and the certificate is never read: the values are checked when the
    // pipeline is built, before anything connects.
    let server = [
        "--server",
        "127.0.0.1:9",
        "--server-cert",
        "/nonexistent/cert.pem",
    ];
    for (bad, expected) in [
        (
            &["--top-k", "0"][..],
            "--top-k: invalid value '0' for cbofilter's \"top-k\": must be from 1 to 1000",
        ),
        (&["--top-k", "1001"], "--top-k: invalid value '1001'"),
        (
            &["--threads", "999"],
            "--threads: invalid value '999' for cbofilter's \"threads\": must be from 0 to 256",
        ),
    ] {
        for tool in [
            &["classify", clip][..],
            &["overlay", clip, "/nonexistent/out.mp4"],
        ] {
            refused(&[tool, bad].concat(), &[expected]);
        }
    }
    for (bad, expected) in [
        (
            &["--threshold", "2"][..],
            "--threshold: invalid value '2' for cbofilter's \"threshold\": must be from 0 to 1",
        ),
        (&["--threshold", "NaN"], "--threshold: invalid value 'NaN'"),
        (
            &["--deadline", "0"],
            "--deadline: invalid value '0' for cbofilter's \"deadline\": must be from 1 to 60000",
        ),
        (
            &["--resolution", "5"],
            "--resolution: invalid value '5' for cbofilter's \"resolution\": must be from 16 to 4096",
        ),
        (
            &["--jpeg-quality", "0"],
            "--jpeg-quality: invalid value '0' for cbofilter's \"jpeg-quality\": must be from 1 to 100",
        ),
        (
            &["--max-in-flight", "0"],
            "--max-in-flight: invalid value '0' for cbofilter's \"max-in-flight\": must be from 1 to 1024",
        ),
    ] {
        for tool in [
            &["classify", clip][..],
            &["overlay", clip, "/nonexistent/out.mp4"],
        ] {
            refused(&[tool, &server, bad].concat(), &[expected]);
        }
    }
    // An unknown policy lists the ones the element knows (cbo and the baselines included).
    let message = refused(
        &[&["classify", clip][..], &server, &["--policy", "bogus"]].concat(),
        &[
            "--policy: invalid value 'bogus' for cbofilter's \"policy\": one of local, all, threshold, cbo, threshold-raw, fastva",
        ],
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    // Without a server the offloading options would do nothing; they are refused instead of
    // being ignored.
    for bad in [
        &["--policy", "all"][..],
        &["--threshold", "0.9"],
        &["--deadline", "500"],
    ] {
        refused(&[&["classify", clip][..], bad].concat(), &["--server"]);
    }
}

/// Every JSON line `cbo classify --json` printed on stdout, and its summary (the JSON line on
/// stderr).
fn classify_json(args: &[&str]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let clip = bottle_clip();
    let out = common::succeed(
        Command::new(env!("CARGO_BIN_EXE_cbo"))
            .arg("classify")
            .arg(&clip)
            .arg("--json")
            .args(args),
    );
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    (frames, summary)
}

#[test]
fn max_frames_stops_classify_at_exactly_that_many_frames() {
    let (frames, summary) = classify_json(&["--max-frames", "25"]);
    assert_eq!(frames.len(), 25);
    assert_eq!(summary["frames"], 25, "{summary}");
    let numbers: Vec<u64> = frames
        .iter()
        .map(|f| f["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..25).collect::<Vec<u64>>());

    let out = common::succeed(
        Command::new(env!("CARGO_BIN_EXE_cbo"))
            .arg("classify")
            .arg(bottle_clip())
            .args(["--max-frames", "7"]),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("frames: 7 "), "{printed}");
}

#[test]
fn max_frames_stops_overlay_at_exactly_that_many_frames() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("overlay.mp4");
    let out = common::succeed(
        Command::new(env!("CARGO_BIN_EXE_cbo"))
            .arg("overlay")
            .arg(bottle_clip())
            .arg(&mp4)
            .args(["--max-frames", "12"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(12 frames)"), "{stderr}");
    // The file itself holds exactly those frames (and is complete enough to decode).
    let written = gstcbo::tools::for_each_frame(&mp4, usize::MAX, |_, _| Ok(())).unwrap();
    assert_eq!(written, 12);
}

#[test]
fn classify_summary_counts_each_decision_once_and_they_add_up() {
    let server = Server::start(None);
    let cert = server.cert.to_str().unwrap();
    let calibration = common::repo().join("models/efficientnet-lite0-int8pt-224.calibration.json");
    let offload = [
        "--server",
        server.addr.as_str(),
        "--server-cert",
        cert,
        "--policy",
        "cbo",
        "--calibration",
        calibration.to_str().unwrap(),
        "--max-frames",
        "60",
    ];
    let (frames, summary) = classify_json(&offload);
    assert_eq!(frames.len(), 60);
    assert_eq!(summary["frames"], 60, "{summary}");

    // The summary's counts are exactly the per-frame results, counted.
    let mut by_decision: HashMap<String, u64> = HashMap::new();
    for f in &frames {
        *by_decision
            .entry(f["decision"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let decisions = summary["decisions"].as_object().expect("decisions");
    let kinds = gstcbo::meta::Decision::ALL.map(|d| d.as_str());
    assert_eq!(decisions.len(), kinds.len(), "{summary}");
    let mut total = 0;
    for kind in kinds {
        let n = decisions[kind].as_u64().unwrap();
        assert_eq!(
            n,
            by_decision.get(kind).copied().unwrap_or(0),
            "{kind}: {summary}"
        );
        total += n;
    }
    assert_eq!(total, 60, "{summary}");
    let count = |p: &dyn Fn(&serde_json::Value) -> bool| frames.iter().filter(|f| p(f)).count();
    let from_server = count(&|f| f["source"] == "server") as u64;
    assert_eq!(summary["from_server"], from_server, "{summary}");
    // Labels from the server are the answers that came in time and the reused ones, no more.
    assert_eq!(
        from_server,
        decisions["offload"].as_u64().unwrap() + decisions["reuse"].as_u64().unwrap(),
        "{summary}"
    );
    assert_eq!(
        summary["offloaded"],
        count(&|f| f["resolution"].as_i64() > Some(0)) as u64
    );
    assert_eq!(summary["late"], decisions["late"], "{summary}");
    // A frame that was sent ended in one of the decisions that follow a send.
    for f in frames.iter().filter(|f| f["resolution"].as_i64() > Some(0)) {
        let d = f["decision"].as_str().unwrap();
        assert!(
            ["offload", "overruled", "late", "failed"].contains(&d),
            "{f}"
        );
    }

    // The printed summary lists the same kinds, one line each, adding up to the frames.
    let out = common::succeed(
        Command::new(env!("CARGO_BIN_EXE_cbo"))
            .arg("classify")
            .arg(bottle_clip())
            .args(offload),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("frames: 60 "), "{printed}");
    let table: Vec<(&str, u64)> = printed
        .lines()
        .skip_while(|l| *l != "decisions:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let mut words = l.split_whitespace();
            (
                words.next().unwrap(),
                words.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert!(!table.is_empty(), "{printed}");
    assert!(
        table.iter().all(|(k, n)| kinds.contains(k) && *n > 0),
        "{printed}"
    );
    assert_eq!(table.iter().map(|(_, n)| n).sum::<u64>(), 60, "{printed}");
}

/// The calibration tools take photos or a clip: leaving both out names both, not just --images.
#[test]
fn calibrate_and_ece_without_input_name_both_kinds_of_input() {
    for args in [
        &["calibrate", "--out", "/nonexistent/cal.json"][..],
        &["ece", "--calibration", "/nonexistent/cal.json"],
    ] {
        refused(args, &["--images <IMAGES>|--video <VIDEO>"]);
    }
}
