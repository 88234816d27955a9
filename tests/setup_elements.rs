//! Every GStreamer element that a pipeline in the project names is in `scripts/gst-elements.tsv`,
//! the list `scripts/setup.sh` installs and checks. Without this, an element added to a recipe
//! on a machine that happens to have its plugin passes here and fails on a user's fresh machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The project's own element, registered by the plugin under test, not by a package.
const OURS: &[&str] = &["cbofilter"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs" | "sh" | "py" | "c")
        ) {
            out.push(path);
        }
    }
}

/// A launch-string token with quotes, parentheses and line continuations stripped.
fn clean(token: &str) -> &str {
    token.trim_matches(|c: char| matches!(c, '"' | '\'' | '(' | ')' | '\\' | ','))
}

fn is_name(token: &str) -> bool {
    let mut chars = token.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Words in element position of a `gst-launch` description: the first word after each
/// free-standing `!`, and the last word before the first one that is not a `key=value`
/// property. Heuristic on purpose: the registry look-up in the test keeps only real elements.
fn element_words(line: &str) -> Vec<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") || trimmed.starts_with('#') || trimmed.starts_with("* ") {
        return Vec::new();
    }
    let padded = format!(" {line} ");
    let parts: Vec<&str> = padded.split(" ! ").collect();
    if parts.len() < 2 {
        return Vec::new();
    }
    let mut words = Vec::new();
    if let Some(last) = parts[0]
        .split_whitespace()
        .map(clean)
        .rfind(|t| !t.contains('='))
    {
        words.push(last.to_string());
    }
    for part in &parts[1..] {
        if let Some(first) = part.split_whitespace().next() {
            words.push(clean(first).to_string());
        }
    }
    words.retain(|w| is_name(w));
    words
}

#[test]
fn every_element_a_pipeline_names_is_in_the_setup_list() {
    gst::init().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed: Vec<&str> = gstcbo::gstelements::required().map(|(e, _)| e).collect();
    let mut paths = Vec::new();
    for dir in ["src", "tests", "examples", "pipelines", "scripts"] {
        files(&root.join(dir), &mut paths);
    }
    assert!(paths.len() > 30, "found only {} source files", paths.len());
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            for word in element_words(line) {
                seen.entry(word)
                    .or_insert_with(|| format!("{}:{}", path.display(), n + 1));
            }
        }
    }
    // The scan itself must see the pipelines it is meant to check.
    for known in [
        "filesrc",
        "decodebin",
        "textoverlay",
        "x264enc",
        "rtspsrc",
        "v4l2src",
    ] {
        assert!(
            seen.contains_key(known),
            "the scan missed {known}: {seen:?}"
        );
    }
    let unlisted: Vec<String> = seen
        .iter()
        .filter(|(word, _)| !OURS.contains(&word.as_str()) && !listed.contains(&word.as_str()))
        .filter(|(word, _)| gst::ElementFactory::find(word).is_some())
        .map(|(word, at)| format!("{word} (first at {at})"))
        .collect();
    assert!(
        unlisted.is_empty(),
        "elements used in pipelines but missing from scripts/gst-elements.tsv (add each with \
         the package that provides it): {unlisted:?}"
    );
}

#[test]
fn every_listed_element_is_installed() {
    // What setup.sh checks after installing; here it names the element if a test machine
    // lost a package since.
    gst::init().unwrap();
    let absent: Vec<String> = gstcbo::gstelements::required()
        .filter(|(e, _)| gst::ElementFactory::find(e).is_none())
        .map(|(e, p)| format!("{e} (package {p})"))
        .collect();
    assert!(absent.is_empty(), "missing: {absent:?}; run `make setup`");
}

#[test]
fn the_scan_finds_elements_in_launch_strings() {
    assert_eq!(
        element_words(
            "        \"filesrc location=\\\"{}\\\" ! decodebin ! identity eos-after=4 ! fakesink\","
        ),
        ["filesrc", "decodebin", "identity", "fakesink"]
    );
    assert_eq!(
        element_words("    v4l2src device=\"$device\" ! videoconvert ! \\"),
        ["v4l2src", "videoconvert"]
    );
    assert_eq!(
        element_words(
            "\"( videotestsrc is-live=true ! video/x-raw,width=320 ! x264enc name=enc ! \\"
        ),
        ["videotestsrc", "x264enc"]
    );
    assert!(element_words("//! a comment ! with bangs").is_empty());
    assert!(element_words("if !path.is_file() {").is_empty());
}
