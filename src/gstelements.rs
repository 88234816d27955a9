//! The GStreamer elements cbo builds by name, and which distribution package provides each.
//!
//! The list is `scripts/gst-elements.tsv`, read here at build time, so the set-up script (which
//! installs and checks those packages), the tools' error messages and `tests/setup_elements.rs`
//! (which fails when a pipeline uses an element missing from the list) all share one list.

/// `scripts/gst-elements.tsv`: `element<TAB>package<TAB>used by`, `#` comments.
const ELEMENTS_TSV: &str = include_str!("../scripts/gst-elements.tsv");

/// The required elements and their packages, in the file's order.
pub fn required() -> impl Iterator<Item = (&'static str, &'static str)> {
    ELEMENTS_TSV
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split('\t');
            Some((fields.next()?.trim(), fields.next()?.trim()))
        })
}

/// The Debian 12 / Ubuntu 24.04 package that provides `element`, if cbo uses it.
pub fn providing_package(element: &str) -> Option<&'static str> {
    required().find(|(e, _)| *e == element).map(|(_, p)| p)
}

/// What to tell a user whose GStreamer lacks `element`.
pub fn missing_element_message(element: &str) -> String {
    match providing_package(element) {
        Some(package) => format!(
            "GStreamer element \"{element}\" is missing: install the package '{package}' \
             (apt-get install {package}; `make setup` installs everything cbo needs)"
        ),
        None => format!(
            "GStreamer element \"{element}\" is missing (no plugin on this system provides it; \
             `gst-inspect-1.0 {element}` confirms)"
        ),
    }
}

/// `gst::parse::launch` for a pipeline description, with an error that names the package of
/// a missing element instead of GStreamer's bare `no element "X"`.
pub fn launch_pipeline(desc: &str) -> Result<gst::Pipeline, String> {
    use gst::prelude::Cast;
    let element = gst::parse::launch(desc).map_err(|e| {
        let text = e.to_string();
        match missing_element_name(&text) {
            Some(name) => format!(
                "cannot build the pipeline: {}",
                missing_element_message(name)
            ),
            None => format!("cannot build the pipeline: {text}"),
        }
    })?;
    element
        .downcast::<gst::Pipeline>()
        .map_err(|_| format!("cannot build the pipeline: '{desc}' is a single element"))
}

/// The element named in GStreamer's parse error `no element "NAME"`.
fn missing_element_name(error: &str) -> Option<&str> {
    let rest = &error[error.find("no element \"")? + "no element \"".len()..];
    Some(&rest[..rest.find('"')?])
}

/// A hint for a pipeline error that means a decoder or demuxer is missing (decodebin posts
/// "Your GStreamer installation is missing a plug-in"): the packages that provide the decoders
/// cbo's clips and streams need. `None` for other errors.
pub fn missing_plugin_hint(error: &str) -> Option<String> {
    if !error.contains("missing a plug-in") && !error.contains("No decoder available") {
        return None;
    }
    let packages: Vec<&str> = ["avdec_h264", "h264parse", "qtdemux"]
        .iter()
        .filter_map(|e| providing_package(e))
        .collect();
    Some(format!(
        "a decoder is missing: H.264 clips and RTSP streams need the packages {} \
         (`make setup` installs them)",
        packages.join(", ")
    ))
}

/// A pipeline error message's text, followed by the package hint when it means a missing decoder.
pub fn describe_error(error: &gst::message::Error) -> String {
    let text = error.error().to_string();
    match missing_plugin_hint(&text) {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

/// Sets the pipeline playing; when it refuses, the error an element posted on the bus (a file
/// that cannot be opened, a missing decoder), not just that it refused.
pub fn play(pipeline: &gst::Pipeline) -> Result<(), String> {
    use gst::prelude::ElementExt;
    pipeline
        .set_state(gst::State::Playing)
        .map(|_| ())
        .map_err(|_| {
            let posted = pipeline.bus().and_then(|bus| {
                bus.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])
            });
            match posted.as_ref().map(|m| m.view()) {
                Some(gst::MessageView::Error(e)) => describe_error(e),
                _ => "cannot start the pipeline".into(),
            }
        })
}

/// Blocks until the pipeline's bus posts end-of-stream (`Ok`) or an error (its text, with the
/// packages to install when it means a missing decoder); warnings go to stderr on the way.
pub fn wait_for_eos(pipeline: &gst::Pipeline) -> Result<(), String> {
    use gst::prelude::ElementExt;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(()),
            gst::MessageView::Error(e) => return Err(describe_error(e)),
            gst::MessageView::Warning(w) => eprintln!("warning: {}", w.error()),
            _ => {}
        }
    }
    Err("the pipeline's bus closed before end-of-stream".into())
}

/// Sets `obj`'s property `name` from its text form, as `gst-launch-1.0` would, or says why it
/// cannot: no such property, a read-only one, text that does not parse as the property's type
/// (for an enum, with the accepted nicks), or a number outside the property's range.
/// gstreamer-rs's own `set_property_from_str` panics in all these cases, and command-line
/// values reach here unchecked.
pub fn set_property_from_str(
    obj: &impl gst::prelude::IsA<gst::glib::Object>,
    name: &str,
    value: &str,
) -> Result<(), String> {
    use gst::glib;
    use gst::prelude::*;
    let obj = obj.upcast_ref::<glib::Object>();
    let owner = obj
        .downcast_ref::<gst::Element>()
        .and_then(|e| e.factory())
        .map(|f| f.name().to_string())
        .unwrap_or_else(|| obj.type_().name().to_string());
    let pspec = obj
        .find_property(name)
        .ok_or_else(|| format!("{owner} has no property \"{name}\""))?;
    let flags = pspec.flags();
    if !flags.contains(glib::ParamFlags::WRITABLE)
        || flags.contains(glib::ParamFlags::CONSTRUCT_ONLY)
    {
        return Err(format!("{owner}'s \"{name}\" cannot be set"));
    }
    let invalid = |why: String| format!("invalid value '{value}' for {owner}'s \"{name}\": {why}");
    let parsed = glib::Value::deserialize_with_pspec(value, &pspec).map_err(|_| {
        invalid(match pspec.downcast_ref::<glib::ParamSpecEnum>() {
            Some(e) => {
                let nicks: Vec<&str> = e.enum_class().values().iter().map(|v| v.nick()).collect();
                format!("one of {}", nicks.join(", "))
            }
            None => format!("expected {}", kind_of_value(pspec.value_type())),
        })
    })?;
    numeric_range_check(&pspec, &parsed).map_err(invalid)?;
    obj.set_property_from_value(name, &parsed);
    Ok(())
}

/// What a value of type `t` looks like, in words, for an error message.
fn kind_of_value(t: gst::glib::Type) -> String {
    use gst::glib::Type;
    match t {
        Type::BOOL => "true or false".into(),
        Type::I8 | Type::I32 | Type::I_LONG | Type::I64 => "an integer".into(),
        Type::U8 | Type::U32 | Type::U_LONG | Type::U64 => "a non-negative integer".into(),
        Type::F32 | Type::F64 => "a number".into(),
        other => format!("a {}", other.name()),
    }
}

/// `Err("must be from MIN to MAX")` when `value` lies outside a numeric `pspec`'s range (GLib
/// would refuse it, and glib-rs panics on a refused value); `Ok` for every other kind of pspec.
fn numeric_range_check(
    pspec: &gst::glib::ParamSpec,
    value: &gst::glib::Value,
) -> Result<(), String> {
    use gst::glib;
    fn within<T>(v: Option<T>, min: T, max: T) -> Result<(), String>
    where
        T: PartialOrd + std::fmt::Display,
    {
        match v {
            // Written so that NaN, which compares false with everything, is refused too.
            Some(v) if !(min <= v && v <= max) => Err(format!("must be from {min} to {max}")),
            _ => Ok(()),
        }
    }
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecDouble>() {
        within(value.get::<f64>().ok(), p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecFloat>() {
        within(value.get::<f32>().ok(), p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecInt>() {
        within(value.get::<i32>().ok(), p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt>() {
        within(value.get::<u32>().ok(), p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecChar>() {
        within(value.get::<i8>().ok(), p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUChar>() {
        within(value.get::<u8>().ok(), p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecLong>() {
        within(
            value.get::<glib::ILong>().ok().map(|v| v.0),
            p.minimum(),
            p.maximum(),
        )
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecULong>() {
        within(
            value.get::<glib::ULong>().ok().map(|v| v.0),
            p.minimum(),
            p.maximum(),
        )
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecInt64>() {
        within(value.get::<i64>().ok(), p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt64>() {
        within(value.get::<u64>().ok(), p.minimum(), p.maximum())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_names_a_package_for_every_element() {
        let all: Vec<_> = required().collect();
        assert!(all.len() > 20, "{all:?}");
        for (element, package) in &all {
            assert!(
                !element.is_empty() && !package.is_empty(),
                "{element}: {package}"
            );
            assert!(!element.contains(' ') && !package.contains(' '));
        }
        assert_eq!(providing_package("textoverlay"), Some("gstreamer1.0-x"));
        assert_eq!(
            providing_package("x264enc"),
            Some("gstreamer1.0-plugins-ugly")
        );
        assert_eq!(providing_package("cbofilter"), None);
    }

    #[test]
    fn a_parse_error_names_the_element_and_its_package() {
        assert_eq!(
            missing_element_name("no element \"textoverlay\""),
            Some("textoverlay")
        );
        assert_eq!(missing_element_name("syntax error"), None);
        let m = missing_element_message("textoverlay");
        assert!(
            m.contains("textoverlay") && m.contains("gstreamer1.0-x"),
            "{m}"
        );
        let m = missing_element_message("nosuchthing");
        assert!(m.contains("nosuchthing") && m.contains("no plugin"), "{m}");
    }

    #[test]
    fn properties_set_from_text_are_checked_instead_of_panicking() {
        use gst::prelude::*;
        gst::init().unwrap();
        let identity = gst::ElementFactory::make("identity").build().unwrap();
        set_property_from_str(&identity, "drop-probability", "0.25").unwrap();
        assert_eq!(identity.property::<f32>("drop-probability"), 0.25);
        let err = set_property_from_str(&identity, "drop-probability", "2").unwrap_err();
        assert_eq!(
            err,
            "invalid value '2' for identity's \"drop-probability\": must be from 0 to 1"
        );
        assert_eq!(identity.property::<f32>("drop-probability"), 0.25);
        let err = set_property_from_str(&identity, "drop-probability", "NaN").unwrap_err();
        assert!(err.contains("must be from 0 to 1"), "{err}");
        let err = set_property_from_str(&identity, "sleep-time", "soon").unwrap_err();
        assert_eq!(
            err,
            "invalid value 'soon' for identity's \"sleep-time\": expected a non-negative integer"
        );
        let err = set_property_from_str(&identity, "no-such-property", "1").unwrap_err();
        assert_eq!(err, "identity has no property \"no-such-property\"");

        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        set_property_from_str(&sink, "state-error", "ready-to-paused").unwrap();
        let err = set_property_from_str(&sink, "state-error", "bogus").unwrap_err();
        assert!(
            err.starts_with("invalid value 'bogus' for fakesink's \"state-error\": one of none, ")
                && err.contains("ready-to-paused"),
            "{err}"
        );
        let err = set_property_from_str(&sink, "last-sample", "x").unwrap_err();
        assert_eq!(err, "fakesink's \"last-sample\" cannot be set");
    }

    #[test]
    fn launching_with_an_unknown_element_names_it() {
        gst::init().unwrap();
        let err =
            launch_pipeline("videotestsrc ! cbo-surely-not-an-element ! fakesink").unwrap_err();
        assert!(err.contains("cbo-surely-not-an-element"), "{err}");
        let hint =
            missing_plugin_hint("Your GStreamer installation is missing a plug-in.").unwrap();
        assert!(hint.contains("gstreamer1.0-libav"), "{hint}");
        assert!(missing_plugin_hint("Internal data stream error.").is_none());
    }
}
