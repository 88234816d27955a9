#!/usr/bin/python3
"""Print every frame's cbofilter result with PyGObject: one line per frame,
`frame<TAB>label<TAB>confidence<TAB>source`.

    examples/python/read_meta.py FILE-OR-URI [MAX_FRAMES]

Needs python3-gi and gir1.2-gstreamer-1.0 (Debian; hence Debian's /usr/bin/python3 above, since a
python3 of a venv or pyenv earlier on PATH usually lacks PyGObject), and the plugin on GST_PLUGIN_PATH
(`export GST_PLUGIN_PATH=$PWD/target/release` after `make build`). Runs the default device model.
The result is a GstCustomMeta named "CboMeta" whose GstStructure holds the fields listed in
docs/element.md (label, confidence, raw-confidence, source, decision, resolution, ...).
"""
import os
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    Gst.init(None)
    source = sys.argv[1]
    max_frames = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    uri = source if "://" in source else Gst.filename_to_uri(os.path.abspath(source))
    pipeline = Gst.parse_launch(
        f'uridecodebin uri="{uri}" ! cbofilter name=cbo ! fakesink sync=false'
    )
    # MAX_FRAMES: count the frames where they enter cbofilter, and after the last one end the
    # stream there (EOS into its sink pad, so what it holds drains and the pipeline ends as at
    # the end of the file). `identity eos-after=N` would let a few more through.
    entered = 0

    def limit(pad, _info):
        nonlocal entered
        entered += 1
        if entered <= max_frames:
            return Gst.PadProbeReturn.OK
        if entered == max_frames + 1:
            pad.send_event(Gst.Event.new_eos())
        return Gst.PadProbeReturn.DROP

    if max_frames > 0:
        pipeline.get_by_name("cbo").get_static_pad("sink").add_probe(
            Gst.PadProbeType.BUFFER, limit
        )

    def on_buffer(_pad, info):
        buf = info.get_buffer()
        meta = buf.get_custom_meta("CboMeta")
        if meta is None:
            print("frame without CboMeta", file=sys.stderr)
            return Gst.PadProbeReturn.OK
        s = meta.get_structure()
        print(
            "%d\t%s\t%.4f\t%s"
            % (
                s.get_value("frame"),
                s.get_string("label"),
                s.get_value("confidence"),
                s.get_string("source"),
            ),
            flush=True,
        )
        return Gst.PadProbeReturn.OK

    pipeline.get_by_name("cbo").get_static_pad("src").add_probe(
        Gst.PadProbeType.BUFFER, on_buffer
    )
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    msg = bus.timed_pop_filtered(
        Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR
    )
    status = 0
    if msg.type == Gst.MessageType.ERROR:
        err, debug = msg.parse_error()
        print(f"error: {err.message} ({debug})", file=sys.stderr)
        status = 1
    pipeline.set_state(Gst.State.NULL)
    return status


if __name__ == "__main__":
    sys.exit(main())
