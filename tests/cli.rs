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
    // A frame that was sent ended in one of the decisions that follow a send: its own answer
    // (kept or overruled), none in time (late, failed), or, none in time, a recent frame's
    // answer (reuse; seen on a slow machine where the server refused frames as past deadline).
    for f in frames.iter().filter(|f| f["resolution"].as_i64() > Some(0)) {
        let d = f["decision"].as_str().unwrap();
        assert!(
            ["offload", "overruled", "late", "failed", "reuse"].contains(&d),
            "{f}"
        );
        if d == "reuse" {
            assert_eq!(f["source"], "server", "{f}");
            assert_eq!(f["server_latency_us"], 0, "its own answer never came: {f}");
        }
    }
    // A frame never sent never carries a server latency.
    for f in frames
        .iter()
        .filter(|f| f["resolution"].as_i64() == Some(0))
    {
        assert_eq!(f["server_latency_us"], 0, "{f}");
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

/// A file GStreamer cannot decode fails the tools that read frames, naming the file, where they
/// used to wait for a first frame for ever (`timeout` ends a regression instead of the suite).
#[test]
fn tools_reading_frames_fail_on_a_file_that_is_no_video_instead_of_hanging() {
    let a = common::assets();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"not a video").unwrap();
    let photo = dir.path().join("photo.jpg");
    std::fs::write(&photo, b"not a photo either").unwrap();
    let list = dir.path().join("photos.tsv");
    std::fs::write(&list, "file\tclass_index\nphoto.jpg\t1\n").unwrap();
    let labels = a.join("video/dev-slideshow-fast.labels.csv");
    let trace = a.join("traces/Verizon-LTE-short.up");
    let cal = common::repo().join("models/efficientnet-lite0-int8pt-224.calibration.json");
    let os = |parts: &[&dyn AsRef<std::ffi::OsStr>]| -> Vec<std::ffi::OsString> {
        parts.iter().map(|p| p.as_ref().to_os_string()).collect()
    };
    let runs = [
        (
            os(&[
                &"eval",
                &"--video",
                &junk,
                &"--labels",
                &labels,
                &"--trace",
                &trace,
            ]),
            &junk,
        ),
        (
            os(&[
                &"calibrate",
                &"--images",
                &list,
                &"--out",
                &dir.path().join("cal.json"),
            ]),
            &photo,
        ),
        (
            os(&[
                &"ece",
                &"--calibration",
                &cal,
                &"--video",
                &junk,
                &"--labels",
                &labels,
            ]),
            &junk,
        ),
    ];
    for (args, bad) in runs {
        let out = Command::new("timeout")
            .arg("120")
            .arg(env!("CARGO_BIN_EXE_cbo"))
            .args(&args)
            .output()
            .expect("timeout runs cbo");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "cbo {args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("decoding '{}' failed", bad.display())),
            "cbo {args:?}: {stderr}"
        );
    }
}

/// `cbo eval` refuses values it cannot replay, naming the option, before it decodes anything: a
/// deadline of 1e9 ms once ran it out of memory, `inf` panicked, `nan` and `--fps 0` hung; and a
/// profile whose model files are not the ones it names.
#[test]
fn cbo_eval_refuses_values_it_cannot_replay() {
    let a = common::assets();
    let video = a.join("video/dev-slideshow-fast.mp4");
    let labels = a.join("video/dev-slideshow-fast.labels.csv");
    let trace = a.join("traces/Verizon-LTE-short.up");
    let base = [
        "eval",
        "--video",
        video.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
        "--max-frames",
        "20",
    ];
    for (bad, expected) in [
        (
            &["--deadline-ms=1e9"][..],
            "--deadline-ms 1000000000: a deadline in ms from 1 to 60000",
        ),
        (&["--deadline-ms=inf"], "--deadline-ms inf"),
        (&["--deadline-ms=200,NaN"], "--deadline-ms NaN"),
        (&["--deadline-ms=0"], "--deadline-ms 0"),
        (&["--fps=0"], "--fps 0: frames per second"),
        (&["--fps=NaN"], "--fps NaN"),
        (
            &["--threshold=2"],
            "--threshold 2: a confidence from 0 to 1",
        ),
        (&["--initial-uplink-mbps=0"], "--initial-uplink-mbps 0"),
        (&["--reuse-window-ms=-1"], "--reuse-window-ms -1"),
        (
            &["--send-window-bytes=0"],
            "--send-window-bytes 0: at least one packet",
        ),
        (
            &["--resolution=100"],
            "--resolution 100: the replay has model results at the profile's resolutions only (96, 128",
        ),
    ] {
        refused(&[&base[..], bad].concat(), &[expected]);
    }
    // A model file that is not the one the profile was measured with (by hash): the replay would
    // measure it, or serve its cache, as if it were.
    let dir = tempfile::tempdir().unwrap();
    let shipped = gstcbo::inference::models_dir().join("efficientnet-lite0-to-lite2.profile.json");
    let mut profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shipped).unwrap()).unwrap();
    profile["device_model"]["sha256"] = serde_json::Value::from("00".repeat(32));
    let path = dir.path().join("other.profile.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    refused(
        &[&base[..], &["--profile", path.to_str().unwrap()]].concat(),
        &["efficientnet-lite0-int8pt-224.onnx is not the file the profile was measured with"],
    );
}

/// Labels that are not the clip's (here: the first 10 of its 700) are refused, naming both
/// files, where they used to be scored against the clip's first 10 frames without a word;
/// `--max-frames` within the labels still takes a prefix.
#[test]
fn labels_that_do_not_cover_the_clip_are_refused() {
    let a = common::assets();
    let dir = tempfile::tempdir().unwrap();
    let video = a.join("video/dev-slideshow-fast.mp4");
    let all = std::fs::read_to_string(a.join("video/dev-slideshow-fast.labels.csv")).unwrap();
    let short = dir.path().join("short.csv");
    std::fs::write(&short, all.lines().take(11).collect::<Vec<_>>().join("\n")).unwrap();
    let trace = a.join("traces/Verizon-LTE-short.up");
    let eval = |extra: &[&str]| {
        [
            &[
                "eval",
                "--video",
                video.to_str().unwrap(),
                "--labels",
                short.to_str().unwrap(),
                "--trace",
                trace.to_str().unwrap(),
                "--policies",
                "local",
            ][..],
            extra,
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    };
    let args = eval(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(
        &args,
        &[&format!(
            "'{}' has more frames than '{}' has labels (10)",
            video.display(),
            short.display()
        )],
    );
    // A byte-order mark before the header (a spreadsheet's CSV) is read past; it read "no
    // 'frame' column".
    std::fs::write(
        &short,
        format!("\u{feff}{}", std::fs::read_to_string(&short).unwrap()),
    )
    .unwrap();
    let args = eval(&["--max-frames", "10", "--json"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cbo(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A class the models cannot answer is refused, where its frames were scored wrong.
    let mut rows: Vec<String> = all.lines().take(11).map(str::to_string).collect();
    let mut cols: Vec<&str> = rows[3].split(',').collect();
    assert_eq!(
        all.lines().next().unwrap().split(',').nth(2),
        Some("class_index")
    );
    cols[2] = "1500";
    rows[3] = cols.join(",");
    std::fs::write(&short, rows.join("\n")).unwrap();
    refused(
        &args,
        &["the labels name class index 1500, but", "has 1000 classes"],
    );
}

/// `cbo profile` measures only sizes the element can send, each once.
#[test]
fn cbo_profile_refuses_resolutions_the_element_cannot_send() {
    let a = common::assets();
    let video = a.join("video/dev-slideshow-fast.mp4");
    let labels = a.join("video/dev-slideshow-fast.labels.csv");
    for (bad, expected) in [
        ("8", "--resolutions 8: a short side from 16 to 4096 pixels"),
        (
            "100000",
            "--resolutions 100000: a short side from 16 to 4096",
        ),
        ("224,160,224", "--resolutions 224 is given twice"),
    ] {
        refused(
            &[
                "profile",
                "--video",
                video.to_str().unwrap(),
                "--labels",
                labels.to_str().unwrap(),
                "--out",
                "/nonexistent/profile.json",
                "--resolutions",
                bad,
            ],
            &[expected],
        );
    }
}

/// `cbo loadgen` refuses out-of-range values naming the option and its range, instead of
/// quietly running with another value (0 clients as 1, 0 s as 0.1 s) or ignoring one (0 px
/// sending full-size frames). Nothing listens at the server address and the certificate is
/// never read: the values are checked first.
#[test]
fn loadgen_refuses_out_of_range_values_naming_the_option() {
    let base = [
        "loadgen",
        "--server",
        "127.0.0.1:9",
        "--server-cert",
        "/nonexistent/cert.pem",
    ];
    for (bad, expected) in [
        (
            &["--clients", "0"][..],
            "'--clients <CLIENTS>': 0 is not in 1..=1024",
        ),
        (
            &["--clients", "1025"],
            "'--clients <CLIENTS>': 1025 is not in 1..=1024",
        ),
        (
            &["--seconds", "0"],
            "'--seconds <SECONDS>': must be more than 0 and at most 86400",
        ),
        (
            &["--seconds=-1"],
            "'--seconds <SECONDS>': must be more than 0 and at most 86400",
        ),
        (
            &["--seconds", "inf"],
            "'--seconds <SECONDS>': must be more than 0 and at most 86400",
        ),
        (
            &["--seconds", "NaN"],
            "'--seconds <SECONDS>': must be more than 0 and at most 86400",
        ),
        (
            &["--baseline-seconds", "0"],
            "'--baseline-seconds <BASELINE_SECONDS>': must be more than 0",
        ),
        (
            &["--frames", "0"],
            "'--frames <FRAMES>': must be a whole number of at least 1",
        ),
        (
            &["--resolution", "0"],
            "'--resolution <RESOLUTION>': 0 is not in 16..=4096",
        ),
        (
            &["--resolution", "5000"],
            "'--resolution <RESOLUTION>': 5000 is not in 16..=4096",
        ),
        (
            &["--jpeg-quality", "0"],
            "'--jpeg-quality <JPEG_QUALITY>': 0 is not in 1..=100",
        ),
        (
            &["--jpeg-quality", "101"],
            "'--jpeg-quality <JPEG_QUALITY>': 101 is not in 1..=100",
        ),
        (&["--top-k", "0"], "'--top-k <TOP_K>': 0 is not in 1..=255"),
        (
            &["--top-k", "1000"],
            "'--top-k <TOP_K>': 1000 is not in 1..=255",
        ),
        (&["--batch", "0"], "'--batch <BATCH>': 0 is not in 1..=256"),
        (
            &["--threads", "1000"],
            "'--threads <THREADS>': 1000 is not in 0..=256",
        ),
    ] {
        refused(&[&base[..], bad].concat(), &[expected]);
    }
    // Either way of trusting the server is named when neither is given.
    refused(
        &["loadgen", "--server", "127.0.0.1:9"],
        &["--server-cert <SERVER_CERT>|--server-fingerprint <SERVER_FINGERPRINT>"],
    );

    // The library entry point checks the same ranges before it decodes or connects.
    let args = |edit: fn(&mut gstcbo::tools::loadgen::LoadgenArgs)| {
        let mut a = gstcbo::tools::loadgen::LoadgenArgs {
            frames: 1,
            ..common::loadgen_args("127.0.0.1:9", &"00".repeat(32))
        };
        edit(&mut a);
        a
    };
    for (edit, expected) in [
        (
            (|a| a.clients = 0) as fn(&mut gstcbo::tools::loadgen::LoadgenArgs),
            "'--clients': 0 is not in 1..=1024",
        ),
        (|a| a.seconds = -1.0, "'--seconds': must be more than 0"),
        (
            |a| a.seconds = f64::INFINITY,
            "'--seconds': must be more than 0",
        ),
        (
            |a| a.frames = 0,
            "'--frames': must be a whole number of at least 1",
        ),
        (
            |a| a.resolution = 0,
            "'--resolution': 0 is not in 16..=4096",
        ),
        (
            |a| a.jpeg_quality = 0,
            "'--jpeg-quality': 0 is not in 1..=100",
        ),
        (|a| a.top_k = 0, "'--top-k': 0 is not in 1..=255"),
        (
            |a| a.server_fingerprint = None,
            "give --server-cert FILE or --server-fingerprint HEX",
        ),
    ] {
        let error = gstcbo::tools::loadgen::run(&args(edit)).unwrap_err();
        assert!(error.contains(expected), "no '{expected}' in {error}");
    }
}

/// A --top-k over the server's --max-top-k (20 by default) is answered with 20 classes; loadgen
/// says so instead of reporting the shorter answers as what it asked for. A --resolution over
/// the clip's size is reported as the size actually sent.
#[test]
fn loadgen_reports_a_top_k_the_server_caps_and_the_resolution_sent() {
    let server = Server::start(None);
    let out = common::succeed(Command::new(env!("CARGO_BIN_EXE_cbo")).args([
        "loadgen",
        "--server",
        server.addr.as_str(),
        "--server-cert",
        server.cert.to_str().unwrap(),
        "--top-k",
        "100",
        "--resolution",
        "4096",
        "--clients",
        "1",
        "--seconds",
        "0.5",
        "--frames",
        "4",
        "--no-baseline",
        "--json",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the server answers 20 classes per frame, not --top-k 100"),
        "{stderr}"
    );
    assert!(
        stderr.contains("frames are 360 px on their short side") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resolution"], 360, "{report}");
    assert!(report["answers"].as_u64() > Some(0), "{report}");
}

/// A server whose --max-request-bytes no frame fits: loadgen stops before its run with the
/// server's refusal, instead of timing a run of nothing but `too-large` errors.
#[test]
fn loadgen_reports_a_request_the_server_refuses_before_the_run() {
    let server = Server::start_with(&["--max-request-bytes", "1024"]);
    let message = loadgen_refused(
        &server,
        "30",
        &["the server refused the first request (too-large): request larger than 1024 bytes"],
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

/// A run in which not one request was answered is a failure, not a report of zeros: here the
/// server's gRPC backend is unreachable, so it answers every request `overloaded`.
#[test]
fn loadgen_fails_a_run_without_answers() {
    let server = Server::start_with(&["--backend", "grpc://127.0.0.1:9", "--backend-model", "m"]);
    let message = loadgen_refused(&server, "1", &["no answer in 1 s from", "overloaded"]);
    // The first request's warning names a frame as the run's requests do.
    assert!(!message.contains("18446744073709551615"), "{message}");
}

/// `cbo loadgen` against `server` for `seconds`, two frames, no baseline: refused with each of
/// `expected`; returns its stderr.
fn loadgen_refused(server: &Server, seconds: &str, expected: &[&str]) -> String {
    refused(
        &[
            "loadgen",
            "--server",
            &server.addr,
            "--server-cert",
            server.cert.to_str().unwrap(),
            "--frames",
            "2",
            "--seconds",
            seconds,
            "--no-baseline",
        ],
        expected,
    )
}
