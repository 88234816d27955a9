//! Finding and loading the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`: the library is `dlopen`ed at run time. Left to itself, `ort`
//! panics on first use when it cannot find one, and a panic must never reach a pipeline. So the
//! library is looked up here, explicitly, once per process, and every caller gets a `Result` with a
//! message that names the paths tried and the command that installs the library.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release the project installs and tests against.
pub const ORT_VERSION: &str = "1.31.1";
/// File name of that release's shared library, as shipped in the `onnxruntime` PyPI wheel.
pub const ORT_LIBRARY: &str = "libonnxruntime.so.1.31.1";
/// The release inside the `onnxruntime-openvino` PyPI wheel (ONNX Runtime with the OpenVINO
/// execution provider and OpenVINO's CPU, GPU and NPU plugins).
pub const OPENVINO_ORT_VERSION: &str = "1.24.1";
/// Environment variable that overrides the search.
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
/// Environment variable that picks which ONNX Runtime build is searched for: `default` or
/// `openvino` (ignored when `ORT_DYLIB_PATH` is set).
pub const ORT_BUILD_VAR: &str = "CBO_ORT_BUILD";
/// How to install the library; quoted in every "not found" error.
pub const INSTALL_HINT: &str = "run `make build` (or `scripts/setup.sh`) in the cbo source tree, \
     which fetches onnxruntime==1.31.1 from PyPI into .cache/onnxruntime/, or point ORT_DYLIB_PATH \
     at a libonnxruntime.so";
/// How to install the OpenVINO build.
pub const OPENVINO_INSTALL_HINT: &str = "run `make setup-openvino` (scripts/setup-openvino.sh) in \
     the cbo source tree, which fetches onnxruntime-openvino==1.24.1 from PyPI into \
     .cache/onnxruntime-openvino/, or point ORT_DYLIB_PATH at its libonnxruntime.so";

/// Project cache the setup script fills, baked in at compile time.
const PROJECT_CACHE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/onnxruntime/lib");
/// Where `scripts/setup-openvino.sh` puts the OpenVINO build.
const OPENVINO_CACHE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/.cache/onnxruntime-openvino/lib"
);

/// Which ONNX Runtime build a process loads. A process loads exactly one ONNX Runtime library,
/// the first time any model is loaded; every later session in the process uses that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrtBuild {
    /// The official `onnxruntime` wheel's library (CPU, plus whatever the platform build has).
    Default,
    /// The `onnxruntime-openvino` wheel's library: the OpenVINO execution provider.
    OpenVino,
}

impl OrtBuild {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::OpenVino => "openvino",
        }
    }

    /// File name of this build's shared library.
    pub fn library(self) -> &'static str {
        match self {
            Self::Default => ORT_LIBRARY,
            Self::OpenVino => "libonnxruntime.so.1.24.1",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Self::Default => ORT_VERSION,
            Self::OpenVino => OPENVINO_ORT_VERSION,
        }
    }

    fn project_cache(self) -> &'static str {
        match self {
            Self::Default => PROJECT_CACHE,
            Self::OpenVino => OPENVINO_CACHE,
        }
    }

    pub fn install_hint(self) -> &'static str {
        match self {
            Self::Default => INSTALL_HINT,
            Self::OpenVino => OPENVINO_INSTALL_HINT,
        }
    }
}

impl std::str::FromStr for OrtBuild {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(Self::Default),
            "openvino" => Ok(Self::OpenVino),
            other => Err(format!(
                "{ORT_BUILD_VAR}={other}: expected 'default' or 'openvino'"
            )),
        }
    }
}

/// Error from loading ONNX Runtime.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct OrtLoadError(pub String);

/// Directory of the shared object (plugin `.so`) or executable this code is part of.
fn own_directory() -> Option<PathBuf> {
    // SAFETY: dladdr only reads loader data for an address inside this object.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let addr = own_directory as *const libc::c_void;
        if libc::dladdr(addr, &mut info) != 0 && !info.dli_fname.is_null() {
            let path = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy();
            let path = std::fs::canonicalize(path.as_ref()).ok()?;
            return path.parent().map(Path::to_path_buf);
        }
    }
    None
}

/// Where `build`'s library is looked for, in order, when `ORT_DYLIB_PATH` is not set.
pub fn candidate_paths(build: OrtBuild) -> Vec<PathBuf> {
    let library = build.library();
    let mut out = Vec::new();
    if let Some(dir) = own_directory() {
        out.push(dir.join(library));
        // cargo puts test binaries one level below the plugin: target/debug/deps.
        if let Some(parent) = dir.parent() {
            out.push(parent.join(library));
        }
    }
    out.push(Path::new(build.project_cache()).join(library));
    for dir in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ] {
        out.push(Path::new(dir).join(library));
    }
    out.dedup();
    out
}

/// The build to search for: `CBO_ORT_BUILD` when set, else `preferred`.
pub fn chosen_build(preferred: OrtBuild) -> Result<OrtBuild, OrtLoadError> {
    match std::env::var(ORT_BUILD_VAR) {
        Ok(v) if !v.is_empty() => v.parse().map_err(OrtLoadError),
        _ => Ok(preferred),
    }
}

/// The path that will be loaded, or an error naming every path tried. `preferred` is the build
/// the first model asks for (the OpenVINO build for `execution-provider=openvino`); when it is
/// not installed, the default build is searched next (and then the provider is reported
/// missing, with the command that installs it).
pub fn locate(preferred: OrtBuild) -> Result<PathBuf, OrtLoadError> {
    if let Some(p) = std::env::var_os(ORT_DYLIB_PATH).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(OrtLoadError(format!(
            "ONNX Runtime library not found: {ORT_DYLIB_PATH}={} does not exist; {INSTALL_HINT}",
            p.display()
        )));
    }
    let build = chosen_build(preferred)?;
    let explicit = std::env::var(ORT_BUILD_VAR).is_ok_and(|v| !v.is_empty());
    let mut tried = candidate_paths(build);
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    if build != OrtBuild::Default && !explicit {
        let fallback = candidate_paths(OrtBuild::Default);
        if let Some(p) = fallback.iter().find(|p| p.is_file()) {
            return Ok(p.clone());
        }
        tried.extend(fallback);
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(OrtLoadError(format!(
        "ONNX Runtime {} library ({} build) not found; tried {}; {}",
        build.version(),
        build.as_str(),
        list.join(", "),
        build.install_hint()
    )))
}

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), OrtLoadError>> =
    OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the default build's library on first use.
pub fn environment() -> Result<&'static ort::environment::Environment, OrtLoadError> {
    environment_for(OrtBuild::Default)
}

/// The process-wide ONNX Runtime environment. The first call loads the library, searching for
/// `preferred` (see [`locate`]); later calls return that environment whatever they prefer: one
/// process loads one ONNX Runtime library.
pub fn environment_for(
    preferred: OrtBuild,
) -> Result<&'static ort::environment::Environment, OrtLoadError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = locate(preferred)?;
            // `ort` asserts in a few places while loading; keep any panic inside this function.
            let loaded = std::panic::catch_unwind(|| {
                ort::init_from(&path)
                    .map_err(|e| e.to_string())?
                    .with_name("cbo")
                    .with_telemetry(false)
                    .build()
                    .map_err(|e| e.to_string())
            });
            match loaded {
                Ok(Ok(env)) => Ok((env, path)),
                Ok(Err(e)) => Err(OrtLoadError(format!(
                    "cannot load ONNX Runtime from {}: {e}; {INSTALL_HINT}",
                    path.display()
                ))),
                Err(_) => Err(OrtLoadError(format!(
                    "loading ONNX Runtime from {} panicked; {INSTALL_HINT}",
                    path.display()
                ))),
            }
        })
        .as_ref()
        .map(|(env, _)| env)
        .map_err(Clone::clone)
}

/// Path of the loaded library, once [`environment`] succeeded.
pub fn loaded_path() -> Option<&'static Path> {
    ENVIRONMENT
        .get()
        .and_then(|r| r.as_ref().ok())
        .map(|(_, p)| p.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_name_their_library_and_cache() {
        assert_eq!("openvino".parse::<OrtBuild>(), Ok(OrtBuild::OpenVino));
        assert_eq!("default".parse::<OrtBuild>(), Ok(OrtBuild::Default));
        let e = "cuda".parse::<OrtBuild>().unwrap_err();
        assert!(e.contains(ORT_BUILD_VAR) && e.contains("'openvino'"), "{e}");
        let ov = candidate_paths(OrtBuild::OpenVino);
        assert!(ov.iter().all(|p| p.ends_with("libonnxruntime.so.1.24.1")));
        assert!(
            ov.iter()
                .any(|p| p.starts_with(OPENVINO_CACHE) && p.to_string_lossy().contains("openvino"))
        );
        let default = candidate_paths(OrtBuild::Default);
        assert!(default.iter().all(|p| p.ends_with(ORT_LIBRARY)));
    }
}
