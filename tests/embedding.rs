//! Reading the CboMeta from C and Python: the examples in examples/c and examples/python are
//! built and run against the plugin this test run built, and must report for every frame the
//! same label the typed Rust API reads.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{bottle_clip, plugin_dir, repo, run_pipeline};
use gst::prelude::*;

const FRAMES: usize = 40;

/// Frame → label from the Rust API on the same frames.
fn rust_labels() -> HashMap<u64, String> {
    let run = run_pipeline(&format!(
        "filesrc location=\"{}\" ! decodebin ! identity eos-after={FRAMES} ! cbofilter name=cbo ! fakesink",
        bottle_clip().display()
    ));
    assert!(run.error.is_none(), "{:?}", run.error);
    run.results
        .into_iter()
        .map(|r| (r.frame, r.label))
        .collect()
}

/// Parses `frame<TAB>label<TAB>confidence<TAB>source` lines and checks them against `expected`.
fn check_output(who: &str, out: &std::process::Output, expected: &HashMap<u64, String>) {
    assert!(
        out.status.success(),
        "{who} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // MAX_FRAMES is exact: one line per frame, no more.
    assert_eq!(lines.len(), FRAMES, "{who}: {} lines", lines.len());
    let (mut same, mut compared) = (0, 0);
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "{who}: '{line}'");
        let frame: u64 = f[0].parse().unwrap();
        let confidence: f64 = f[2].parse().unwrap();
        assert!((0.0..=1.0).contains(&confidence));
        assert_eq!(f[3], "device");
        if let Some(label) = expected.get(&frame) {
            compared += 1;
            same += usize::from(f[1] == label);
        }
    }
    // Same frames, same model: the same labels, but for the rare frame whose top two classes
    // are within ONNX Runtime's run-to-run rounding of each other.
    assert!(compared >= FRAMES, "{who}: {compared} frames compared");
    assert!(
        same * 100 >= compared * 95,
        "{who}: {same} of {compared} labels agree with the Rust API"
    );
}

fn child_env(cmd: &mut Command, plugins: &std::path::Path, registry: &std::path::Path) {
    cmd.env("GST_PLUGIN_PATH", plugins)
        .env("GST_REGISTRY", registry)
        .env_remove("GST_PLUGIN_SYSTEM_PATH_1_0");
}

#[test]
fn c_example_reads_the_meta() {
    let expected = rust_labels();
    let plugins = plugin_dir();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("read_meta");
    let build = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cc \"{}\" -o \"{}\" $(pkg-config --cflags --libs gstreamer-1.0)",
            repo().join("examples/c/read_meta.c").display(),
            exe.display()
        ))
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "the C example does not build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let mut cmd = Command::new(&exe);
    cmd.arg(bottle_clip()).arg(FRAMES.to_string());
    child_env(&mut cmd, plugins.path(), &dir.path().join("registry.bin"));
    check_output("C", &cmd.output().unwrap(), &expected);

    // Without the plugin: one line naming the missing element, no GStreamer criticals from a
    // half-built pipeline.
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&exe);
    cmd.arg(bottle_clip());
    child_env(
        &mut cmd,
        empty.path(),
        &dir.path().join("registry-empty.bin"),
    );
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot build the pipeline") && stderr.contains("cbofilter"),
        "{stderr}"
    );
    assert!(!stderr.contains("CRITICAL"), "{stderr}");
}

#[test]
fn python_example_reads_the_meta() {
    let expected = rust_labels();
    let plugins = plugin_dir();
    let dir = tempfile::tempdir().unwrap();
    // Debian's interpreter has PyGObject (python3-gi, installed by `make setup`); a python3
    // earlier on PATH (pyenv, venv) may not.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import gi"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a python3 with PyGObject (python3-gi)");
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("examples/python/read_meta.py"))
        .arg(bottle_clip())
        .arg(FRAMES.to_string());
    child_env(&mut cmd, plugins.path(), &dir.path().join("registry.bin"));
    check_output("Python", &cmd.output().unwrap(), &expected);
}

/// The Rust embedding example (examples/embed.rs, built by `make test` with `cargo build --examples`;
/// `cargo test` alone builds examples only as empty test harnesses).
fn embed_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples/embed");
    assert!(
        path.is_file(),
        "{} missing: build it first with `cargo build --examples` (make test does)",
        path.display()
    );
    path
}

#[test]
fn rust_example_prints_json_lines_and_reports_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(embed_example())
        .arg(bottle_clip())
        .arg("25")
        .env("GST_REGISTRY", dir.path().join("registry.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 25, "{} lines", lines.len());
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["frame"].as_u64(), Some(i as u64));
        assert_eq!(v["source"], "device");
        assert!(!v["label"].as_str().unwrap().is_empty());
        assert!(v["confidence"].as_f64().unwrap() > 0.0);
    }
    let missing = Command::new(embed_example())
        .arg(dir.path().join("no-such-video.mp4"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-video.mp4"));
    // A local file that is no video fails once: a restart would not help (it retried every
    // 10 s for ever).
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"not a video at all").unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg(embed_example())
        .arg(&junk)
        .env("GST_REGISTRY", dir.path().join("registry.bin"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("restarting"), "{stderr}");
}

/// The meta travels with the buffer through the elements applications put after cbofilter.
#[test]
fn meta_survives_queue_tee_videoconvert_videoscale() {
    let counted = std::sync::Arc::new(std::sync::Mutex::new((0usize, 0usize)));
    let c = counted.clone();
    let run = common::run_with(
        "videotestsrc num-buffers=8 ! video/x-raw,width=320,height=240 ! cbofilter name=cbo ! \
         queue ! tee name=t ! queue ! videoconvert ! videoscale ! \
         video/x-raw,format=RGB,width=160,height=120 ! fakesink name=end  t. ! queue ! fakesink",
        move |p| {
            let end = p.by_name("end").unwrap();
            end.static_pad("sink")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    if let Some(buf) = info.buffer() {
                        let mut c = c.lock().unwrap();
                        c.0 += 1;
                        if gstcbo::CboResult::from_buffer(buf).is_some_and(|r| r.is_ok()) {
                            c.1 += 1;
                        }
                    }
                    gst::PadProbeReturn::Ok
                });
        },
    );
    assert!(run.error.is_none(), "{:?}", run.error);
    let (buffers, with_meta) = *counted.lock().unwrap();
    assert_eq!(buffers, 8);
    assert_eq!(
        with_meta, 8,
        "every converted and scaled buffer still carries CboMeta"
    );
}
