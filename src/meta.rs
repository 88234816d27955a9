//! The per-frame result attached to every buffer: a `GstCustomMeta` named `CboMeta`.
//!
//! A custom meta carries a `GstStructure`, so C (`gst_buffer_get_custom_meta (buf, "CboMeta")` +
//! `gst_custom_meta_get_structure`) and Python read it without bindings of ours. [`CboResult`] is
//! the typed Rust view of the same structure; the element message `cbo-result` carries it too.

use gst::glib;

/// Name the meta is registered under.
pub const META_NAME: &str = "CboMeta";
/// Name of the structure inside the meta, and of the per-frame element message.
pub const STRUCTURE_NAME: &str = "cbo-result";

/// Registers `CboMeta`; idempotent, called from `plugin_init`.
pub fn register() {
    if !gst::meta::CustomMeta::is_registered(META_NAME) {
        // No tags: elements that keep untagged metas across transformations (queue, tee,
        // videoconvert, videoscale) keep ours; the default transform copies the structure.
        gst::meta::CustomMeta::register(META_NAME, &[]);
    }
}

/// Where the label of a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
    Device,
    Server,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Device => "device",
            Source::Server => "server",
        }
    }
}

/// What happened to a frame, as the `decision` field of the meta spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Decision {
    /// The policy kept the device result (`device`).
    #[default]
    Device,
    /// Sent to the server, and the server's answer is the label (`offload`).
    Offload,
    /// The policy wanted to offload but `max-in-flight` requests were outstanding (`busy`).
    Busy,
    /// The policy wanted to offload but no server connection was up (`offline`).
    Offline,
    /// Sent (or still undecided) when its deadline passed: it left with its device label
    /// (`late`).
    Late,
    /// The request failed, or the answer carried no class (`failed`).
    Failed,
    /// Labelled with an earlier frame's server answer (`reuse`): kept on the device, or sent
    /// and not answered in time (late or failed), where a recent frame the device labelled the
    /// same was answered (`reuse-window`).
    Reuse,
    /// Sent and answered, but the answer named another class and the profile's merge model
    /// found the device's label the likelier right: it left with its device label
    /// (`overruled`; `merge=confidence`).
    Overruled,
}

impl Decision {
    pub const ALL: [Decision; 8] = [
        Decision::Device,
        Decision::Offload,
        Decision::Busy,
        Decision::Offline,
        Decision::Late,
        Decision::Failed,
        Decision::Reuse,
        Decision::Overruled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Device => "device",
            Decision::Offload => "offload",
            Decision::Busy => "busy",
            Decision::Offline => "offline",
            Decision::Late => "late",
            Decision::Failed => "failed",
            Decision::Reuse => "reuse",
            Decision::Overruled => "overruled",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Decision {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Decision {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// One frame's result, as stored in the `CboMeta` structure.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CboResult {
    /// Index of the frame since the element started.
    pub frame: u64,
    pub class_id: i32,
    pub label: String,
    /// Calibrated confidence when a calibration is loaded, else equal to `raw_confidence`.
    pub confidence: f64,
    /// Top softmax probability of the model that produced the label.
    pub raw_confidence: f64,
    pub source: Source,
    /// What the offloading policy decided for this frame ([`Decision::Device`] when nothing was
    /// offloaded).
    pub decision: Decision,
    /// Short side the frame was offloaded at; 0 when it was not.
    pub resolution: i32,
    /// Time the model run took on the device.
    pub inference_us: u64,
    /// Time scaling/conversion into the model input took.
    pub preprocess_us: u64,
    pub top_classes: Vec<i32>,
    pub top_scores: Vec<f64>,
    /// The device model's own top class and calibrated confidence (equal to `class-id` and
    /// `confidence` when the label came from the device).
    pub device_class_id: i32,
    pub device_confidence: f64,
    /// Time from sending the frame to the server's answer; 0 when the server did not answer.
    pub server_latency_us: u64,
}

/// A structure field had the wrong type or was missing.
#[derive(Debug, thiserror::Error)]
#[error("CboMeta field '{field}': {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl CboResult {
    pub fn to_structure(&self) -> gst::Structure {
        let mut s = gst::Structure::new_empty(STRUCTURE_NAME);
        self.write_into(&mut s);
        s
    }

    /// Writes every field into `s` (overwriting fields of the same name).
    pub fn write_into(&self, s: &mut gst::StructureRef) {
        s.set("frame", self.frame);
        s.set("class-id", self.class_id);
        s.set("label", self.label.as_str());
        s.set("confidence", self.confidence);
        s.set("raw-confidence", self.raw_confidence);
        s.set("source", self.source.as_str());
        s.set("decision", self.decision.as_str());
        s.set("resolution", self.resolution);
        s.set("inference-us", self.inference_us);
        s.set("preprocess-us", self.preprocess_us);
        s.set(
            "top-classes",
            gst::Array::new(self.top_classes.iter().copied()),
        );
        s.set(
            "top-scores",
            gst::Array::new(self.top_scores.iter().copied()),
        );
        s.set("device-class-id", self.device_class_id);
        s.set("device-confidence", self.device_confidence);
        s.set("server-latency-us", self.server_latency_us);
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<Self, FieldError> {
        fn get<'a, T: glib::value::FromValue<'a>>(
            s: &'a gst::StructureRef,
            field: &'static str,
        ) -> Result<T, FieldError> {
            s.get::<T>(field).map_err(|e| FieldError {
                field,
                reason: e.to_string(),
            })
        }
        let array = |field: &'static str| -> Result<gst::Array, FieldError> { get(s, field) };
        let source = match get::<&str>(s, "source")? {
            "device" => Source::Device,
            "server" => Source::Server,
            other => {
                return Err(FieldError {
                    field: "source",
                    reason: format!("unknown source '{other}'"),
                });
            }
        };
        let decision = get::<&str>(s, "decision")?;
        let decision = Decision::parse(decision).ok_or_else(|| FieldError {
            field: "decision",
            reason: format!("unknown decision '{decision}'"),
        })?;
        let top_classes = array("top-classes")?
            .iter()
            .map(|v| v.get::<i32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FieldError {
                field: "top-classes",
                reason: e.to_string(),
            })?;
        let top_scores = array("top-scores")?
            .iter()
            .map(|v| v.get::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FieldError {
                field: "top-scores",
                reason: e.to_string(),
            })?;
        Ok(Self {
            frame: get(s, "frame")?,
            class_id: get(s, "class-id")?,
            label: get::<&str>(s, "label")?.to_string(),
            confidence: get(s, "confidence")?,
            raw_confidence: get(s, "raw-confidence")?,
            source,
            decision,
            resolution: get(s, "resolution")?,
            inference_us: get(s, "inference-us")?,
            preprocess_us: s.get("preprocess-us").unwrap_or(0),
            top_classes,
            top_scores,
            device_class_id: get(s, "device-class-id")?,
            device_confidence: get(s, "device-confidence")?,
            server_latency_us: get(s, "server-latency-us")?,
        })
    }

    /// Reads the `CboMeta` of `buffer`; `None` when it has none.
    pub fn from_buffer(buffer: &gst::BufferRef) -> Option<Result<Self, FieldError>> {
        let meta = gst::meta::CustomMeta::from_buffer(buffer, META_NAME).ok()?;
        Some(Self::from_structure(meta.structure()))
    }

    /// Attaches (or overwrites) the `CboMeta` of `buffer`.
    pub fn attach(&self, buffer: &mut gst::BufferRef) -> Result<(), glib::BoolError> {
        if let Ok(mut meta) = gst::meta::CustomMeta::from_mut_buffer(buffer, META_NAME) {
            self.write_into(meta.mut_structure());
            return Ok(());
        }
        let mut meta = gst::meta::CustomMeta::add(buffer, META_NAME)?;
        let s = meta.mut_structure();
        s.set_name(STRUCTURE_NAME);
        self.write_into(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_buffer_meta() {
        gst::init().unwrap();
        register();
        let r = CboResult {
            frame: 7,
            class_id: 898,
            label: "water_bottle".into(),
            confidence: 0.7,
            raw_confidence: 0.6,
            source: Source::Device,
            decision: Decision::Device,
            resolution: 0,
            inference_us: 1234,
            preprocess_us: 56,
            top_classes: vec![898, 440],
            top_scores: vec![0.6, 0.2],
            device_class_id: 3,
            device_confidence: 0.55,
            server_latency_us: 0,
        };
        let mut buf = gst::Buffer::with_size(4).unwrap();
        r.attach(buf.get_mut().unwrap()).unwrap();
        let back = CboResult::from_buffer(&buf).unwrap().unwrap();
        assert_eq!(back, r);
        // Attaching twice overwrites instead of stacking a second meta.
        let r2 = CboResult { frame: 8, ..r };
        r2.attach(buf.get_mut().unwrap()).unwrap();
        assert_eq!(CboResult::from_buffer(&buf).unwrap().unwrap().frame, 8);
        // A copied buffer keeps the meta.
        let copy = buf.copy();
        assert_eq!(CboResult::from_buffer(&copy).unwrap().unwrap().frame, 8);
        assert!(CboResult::from_buffer(&gst::Buffer::new()).is_none());
    }

    #[test]
    fn decisions_spell_as_the_meta_always_did() {
        let names: Vec<&str> = Decision::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            names,
            [
                "device",
                "offload",
                "busy",
                "offline",
                "late",
                "failed",
                "reuse",
                "overruled"
            ]
        );
        for d in Decision::ALL {
            assert_eq!(Decision::parse(d.as_str()), Some(d));
        }
        assert_eq!(Decision::parse("wait"), None);
        let mut s = CboResult::default().to_structure();
        s.set("decision", "maybe");
        let e = CboResult::from_structure(&s).unwrap_err();
        assert_eq!(e.field, "decision");
    }
}
