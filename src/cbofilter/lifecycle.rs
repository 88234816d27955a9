//! Start and stop: what the element loads and starts at READY→PAUSED (the device model, its
//! calibration, the inference thread, and when offloading, the profile, the offload client and
//! the planner thread), and what it tears down at PAUSED→READY.
//!
//! Starting at READY→PAUSED (as gst-plugins-rs' `BaseTransform::start`) means every property
//! flagged changeable in NULL or READY takes effect at the next start, also when it was set in
//! READY.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::subclass::prelude::*;

use super::classify::{Inference, InferenceThread};
use super::imp::CboFilter;
use super::offload::{ElementEffects, Offload, client_events};
use super::settings::Settings;
use super::{CAT, Policy};
use crate::calibration::CalibrationFile;
use crate::inference::{Classifier, EpOptions, InferenceError, ModelConfig, Sharing};
use crate::jpeg::FrameEncoder;
use crate::offload::client::{ClientConfig, OffloadClient};
use crate::offload::clock::SystemClock;
use crate::offload::driver::{PolicyDriver, Window, input_channel, spawn};
use crate::offload::policy::{PolicyKind, PolicySpec};
use crate::preprocess::{Normalization, Preprocessor, TensorSpec};
use crate::profile::Profile;
use crate::shared_inference::Batching;
use crate::tls::Trust;

/// Uplink estimate policy=cbo / fastva start from before any answer has measured it.
const INITIAL_UPLINK_BPS: f64 = 1e6;
const INITIAL_RTT_MS: f64 = 40.0;

/// Streaming-thread state, set in start.
pub struct State {
    /// Frames in, model input out; the model itself is the inference thread's.
    pub preprocessor: Preprocessor,
    pub spec: TensorSpec,
    pub info: Option<gst_video::VideoInfo>,
    /// Frames pre-processed since start (the meta's `frame`, the planner's frame id).
    pub frame: u64,
    /// Upstream liveness, queried at the first buffer after start or a flush.
    pub live: Option<bool>,
    pub last_stats: Instant,
}

/// Maps a load failure onto the GStreamer error domain a user would look in.
fn load_error(e: InferenceError) -> gst::ErrorMessage {
    match &e {
        InferenceError::Runtime(_) => gst::error_msg!(gst::LibraryError::Init, ("{e}")),
        InferenceError::ModelMissing(_) => gst::error_msg!(gst::ResourceError::NotFound, ("{e}")),
        InferenceError::ModelLoad { .. } => {
            gst::error_msg!(gst::ResourceError::OpenRead, ("{e}"))
        }
        InferenceError::ProviderUnavailable { .. } => {
            gst::error_msg!(gst::LibraryError::Init, ("{e}"))
        }
        _ => gst::error_msg!(gst::LibraryError::Settings, ("{e}")),
    }
}

fn model_config(s: &Settings) -> Result<ModelConfig, gst::ErrorMessage> {
    let normalization = Normalization::parse(&s.input_mean, &s.input_std)
        .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?;
    Ok(ModelConfig {
        model: PathBuf::from(&s.model),
        labels: s.labels.as_ref().map(PathBuf::from),
        normalization,
        output_kind: s.output_kind.into(),
        top_k: s.top_k as usize,
        execution_provider: s.execution_provider.into(),
        ep_options: EpOptions::parse(&s.ep_options)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?,
        ep_fallback: s.ep_fallback,
        threads: s.threads as usize,
        input_size: s.input_size,
    })
}

impl CboFilter {
    /// The offload policy for these settings, or `None` (device only, with a warning saying why
    /// when the user asked for offloading but it cannot happen).
    fn offload_policy(&self, s: &Settings) -> Option<PolicySpec> {
        let kind = match s.policy {
            Policy::Local => {
                // A server with the default policy is almost always a forgotten `policy=`:
                // the element would connect and never send a frame.
                if !s.server.is_empty() {
                    gst::element_imp_warning!(
                        self,
                        gst::LibraryError::Settings,
                        (
                            "server={} is set but policy=local never offloads; set policy \
                             (cbo, threshold, all, ...) to offload",
                            s.server
                        )
                    );
                }
                return None;
            }
            Policy::All => PolicyKind::All,
            Policy::Threshold => PolicyKind::Threshold,
            Policy::Cbo => PolicyKind::Cbo,
            Policy::ThresholdRaw => PolicyKind::ThresholdRaw,
            Policy::FastVa => PolicyKind::FastVa,
        };
        if s.server.is_empty() {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "policy={} needs a server; every frame is classified on the device",
                    kind.name()
                )
            );
            return None;
        }
        Some(PolicySpec {
            kind,
            threshold: s.threshold,
            resolution: s.resolution,
            reuse_window_ms: (kind == PolicyKind::Cbo && s.reuse_window_ms > 0)
                .then_some(s.reuse_window_ms as f64),
        })
    }

    pub(super) fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let config = model_config(&settings)?;
        // The calibration is checked before the (slower) model load, and must have been fitted
        // for exactly this model file.
        let calibrator = match &settings.calibration {
            None => None,
            Some(path) => {
                let file = CalibrationFile::load(Path::new(path))
                    .and_then(|f| f.check_model(&config.model).map(|_| f))
                    .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?;
                gst::info!(
                    CAT,
                    imp = self,
                    "calibration {}: {:?}",
                    path,
                    file.calibrator
                );
                Some(file.calibrator)
            }
        };
        let mut policy = self.offload_policy(&settings);
        let profile = match policy {
            Some(p) if p.kind.needs_profile() => Some(
                Profile::load(Path::new(&settings.profile))
                    .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?,
            ),
            _ => None,
        };
        let trust = match (&settings.server_cert, &settings.server_fingerprint) {
            (Some(_), Some(_)) => {
                return Err(gst::error_msg!(
                    gst::LibraryError::Settings,
                    ("Set server-cert or server-fingerprint, not both")
                ));
            }
            (Some(pem), None) => Some(Trust::Pem(PathBuf::from(pem))),
            (None, Some(fp)) => Some(Trust::Fingerprint(fp.clone())),
            (None, None) => None,
        };
        if let (Some(_), Some(trust)) = (policy, &trust) {
            // A mistyped server, fingerprint or certificate path is the user's to fix, not a
            // connection to retry: an error now (before the model loads), as for a missing
            // model, instead of a stream labelled on the device behind a warning.
            crate::offload::client::check_settings(&settings.server, trust).map_err(|e| {
                let what = match (&e, trust) {
                    (crate::offload::client::ClientError::Address { .. }, _) => "server=",
                    (_, Trust::Pem(_)) => "server-cert: ",
                    (_, Trust::Fingerprint(_)) => "server-fingerprint: ",
                };
                let e = e.to_string();
                let e = e.strip_prefix("server ").unwrap_or(&e);
                gst::error_msg!(gst::LibraryError::Settings, ("{what}{e}"))
            })?;
        }
        gst::info!(CAT, imp = self, "loading model {}", config.model.display());
        let sharing = settings.shared_session.then(|| Sharing {
            instance_id: settings.model_instance_id.clone(),
            batching: Batching {
                max_batch: settings.max_batch,
                timeout: Duration::from_micros(settings.batch_timeout_us as u64),
            },
        });
        let classifier = Classifier::load_sharing(&config, sharing.as_ref()).map_err(load_error)?;
        if let Some(w) = classifier.fallback_warning() {
            gst::element_imp_warning!(self, gst::LibraryError::Init, ("{w}"));
        }
        if let Some(w) = classifier.labels_warning() {
            gst::element_imp_warning!(self, gst::LibraryError::Settings, ("labels: {w}"));
        }
        let spec = *classifier.spec();
        gst::info!(
            CAT,
            imp = self,
            "model input {}x{} {:?} {:?}, {} scores, output {:?}, on {}, session {} ({} stream(s))",
            spec.width,
            spec.height,
            spec.layout,
            spec.elem,
            classifier.postprocessor().width(),
            classifier.postprocessor().kind(),
            classifier.active_provider(),
            classifier.session_id(),
            classifier.sharing_streams()
        );
        *self.active_provider.lock().unwrap() = classifier.active_provider().to_string();
        *self.session.lock().unwrap() = (classifier.session_id(), classifier.sharing_group());
        if policy.is_some() && trust.is_none() {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Settings,
                (
                    "server={} is set but neither server-cert nor server-fingerprint: refusing to send frames to an unauthenticated server; classifying on the device",
                    settings.server
                )
            );
            policy = None;
        }
        if let (Some(p), Some(_)) = (&profile, policy) {
            self.check_profile(p, &config.model, &settings);
        }
        let offload = match (policy, trust) {
            (Some(spec), Some(trust)) => {
                match self.start_offload(&settings, spec, profile, trust) {
                    Ok(o) => Some(Arc::new(o)),
                    Err(e) => {
                        gst::element_imp_warning!(
                            self,
                            gst::ResourceError::Settings,
                            (
                                "Cannot offload to {}: {e}; classifying on the device",
                                settings.server
                            )
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        *self.started.lock().unwrap() = Some(super::imp::Started {
            settings: settings.clone(),
            offloading: offload.is_some(),
        });
        *self.offload.lock().unwrap() = offload.clone();
        self.hold.reset();
        let (preprocessor, model) = classifier.split();
        let inference = Inference {
            model,
            calibrator,
            log_scores: Vec::new(),
        };
        let thread = InferenceThread::spawn(&self.obj(), self.hold.clone(), inference, offload)
            .map_err(|e| {
                gst::error_msg!(
                    gst::CoreError::Thread,
                    ("Cannot start the inference thread: {e}")
                )
            })?;
        *self.inference.lock().unwrap() = Some(thread);
        *self.state.lock().unwrap() = Some(State {
            preprocessor,
            spec,
            info: None,
            frame: 0,
            live: None,
            last_stats: Instant::now(),
        });
        Ok(())
    }

    /// Starts the offload client and the planner thread.
    fn start_offload(
        &self,
        settings: &Settings,
        spec: PolicySpec,
        profile: Option<Profile>,
        trust: Trust,
    ) -> Result<Offload, String> {
        let clock = SystemClock::new();
        let (tx, rx) = input_channel();
        let heard_from_server = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = Arc::new(
            OffloadClient::start(
                ClientConfig {
                    server: settings.server.clone(),
                    trust,
                    token: settings.token.clone(),
                    jpeg_quality: settings.jpeg_quality,
                    top_k: settings.top_k.min(u8::MAX as u32) as u8,
                    shared_connection: settings.shared_connection,
                },
                client_events(
                    self.obj().downgrade(),
                    tx.clone(),
                    clock,
                    settings.server.clone(),
                    heard_from_server.clone(),
                ),
            )
            .map_err(|e| e.to_string())?,
        );
        // Planner, reuse and output all see the profile as this element merges answers: with
        // `merge=server` it keeps no merge model, and its gains count the server's labels.
        let profile = profile.map(|p| p.merged_by(settings.merge.into()));
        let planner = spec
            .planner(profile.as_ref(), INITIAL_UPLINK_BPS, INITIAL_RTT_MS)
            .ok_or_else(|| format!("policy {} needs a profile", spec.kind.name()))?;
        // cbo and fastva pace their sends by their own uplink estimate; the window is the
        // fixed rules'.
        let max_in_flight = if spec.kind.needs_profile() {
            usize::MAX
        } else {
            settings.max_in_flight as usize
        };
        let window = Window {
            max_in_flight,
            live: true,
        };
        let driver = PolicyDriver::new(planner, window, client.connected());
        let effects = ElementEffects {
            hold: self.hold.clone(),
            client: client.clone(),
            tx: tx.clone(),
            clock,
        };
        let driver = spawn(driver, clock, effects, tx, rx)
            .map_err(|e| format!("cannot start the planner thread: {e}"))?;
        let size_probe = match (spec.kind, &profile) {
            (PolicyKind::Cbo, Some(p)) => match (
                FrameEncoder::new(settings.jpeg_quality),
                p.resolutions.first(),
            ) {
                (Ok(e), Some(r)) => Some(Mutex::new((e, r.short_side))),
                (Err(e), _) => {
                    gst::warning!(CAT, imp = self, "no JPEG size probe: {e}");
                    None
                }
                _ => None,
            },
            _ => None,
        };
        Ok(Offload {
            server: settings.server.clone(),
            heard_from_server,
            client,
            driver,
            clock,
            deadline: Duration::from_millis(settings.deadline_ms as u64),
            max_in_flight,
            size_probe,
            // The policies that plan with the profile merge by its model (as `cbo eval` replays
            // them); the rules take the server's label.
            merge: profile.as_ref().and_then(|p| p.merge),
            reuse: spec.reuse_window_ms.zip(profile),
        })
    }

    /// Warns when the profile was measured for another device model or another kind of
    /// confidence than this element produces: its accuracies would not describe these frames.
    fn check_profile(&self, profile: &Profile, model: &Path, s: &Settings) {
        let model_sha = crate::calibration::sha256_file(model).unwrap_or_default();
        if profile.device_model.sha256 != model_sha {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "profile {} was measured for device model {}, not {}: policy=cbo will misjudge what offloading gains (run `cbo profile` for this model)",
                    s.profile,
                    profile.device_model.file,
                    model.display()
                )
            );
        }
        // The profile's bins are of the confidence it was measured with: calibrated by that
        // file, or raw. A frame binned by another scale is promised another bin's gain.
        match (&profile.calibration, &s.calibration) {
            (Some(c), None) => gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "profile {} bins frames by calibrated confidence ({}) but no calibration is set",
                    s.profile,
                    c.file
                )
            ),
            (None, Some(set)) => gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "profile {} bins frames by raw confidence, but calibration {set} is set: policy=cbo will misjudge what offloading gains (run `cbo profile` with this calibration)",
                    s.profile
                )
            ),
            (Some(c), Some(set)) => {
                let sha = crate::calibration::sha256_file(Path::new(set)).unwrap_or_default();
                if c.sha256 != sha {
                    gst::element_imp_warning!(
                        self,
                        gst::LibraryError::Settings,
                        (
                            "profile {} was measured with calibration {}, not {set}: policy=cbo will misjudge what offloading gains",
                            s.profile,
                            c.file
                        )
                    );
                }
            }
            (None, None) => {}
        }
    }

    /// Stops the inference thread (after the frame it is running, if any; the pads are
    /// deactivated, so nothing more comes), the planner thread (its decisions still queued are
    /// applied), then the client (closing the connection; completions still running find the
    /// queue empty and are ignored), and drops the state.
    pub(super) fn stop(&self) {
        let thread = self.inference.lock().unwrap().take();
        if let Some(thread) = thread {
            thread.stop(&self.hold);
        }
        let offload = self.offload.lock().unwrap().take();
        if let Some(offload) = offload {
            offload.driver.stop();
        }
        if let Some(state) = self.state.lock().unwrap().take() {
            gst::info!(CAT, imp = self, "stopped after {} frames", state.frame);
        }
        // The state (and with it the classifier's membership of a shared session) is gone.
        *self.session.lock().unwrap() = (0, None);
        *self.started.lock().unwrap() = None;
        self.hold.flush();
    }
}
