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
/// Environment variable that overrides the search.
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
/// How to install the library; quoted in every "not found" error.
pub const INSTALL_HINT: &str = "run `make build` (or `scripts/setup.sh`) in the cbo source tree, \
     which fetches onnxruntime==1.31.1 from PyPI into .cache/onnxruntime/, or point ORT_DYLIB_PATH \
     at a libonnxruntime.so";

/// Project cache the setup script fills, baked in at compile time.
const PROJECT_CACHE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/onnxruntime/lib");

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

/// Where the library is looked for, in order, when `ORT_DYLIB_PATH` is not set.
pub fn candidate_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = own_directory() {
        out.push(dir.join(ORT_LIBRARY));
        // cargo puts test binaries one level below the plugin: target/debug/deps.
        if let Some(parent) = dir.parent() {
            out.push(parent.join(ORT_LIBRARY));
        }
    }
    out.push(Path::new(PROJECT_CACHE).join(ORT_LIBRARY));
    for dir in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ] {
        out.push(Path::new(dir).join(ORT_LIBRARY));
    }
    out.dedup();
    out
}

/// The path that will be loaded, or an error naming every path tried.
pub fn locate() -> Result<PathBuf, OrtLoadError> {
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
    let tried = candidate_paths();
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(OrtLoadError(format!(
        "ONNX Runtime {ORT_VERSION} library not found; tried {}; {INSTALL_HINT}",
        list.join(", ")
    )))
}

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), OrtLoadError>> =
    OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static ort::environment::Environment, OrtLoadError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = locate()?;
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
