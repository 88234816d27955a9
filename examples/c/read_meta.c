/* Print every frame's cbofilter result from C: one line per frame,
 * frame<TAB>label<TAB>confidence<TAB>source.
 *
 * From the repository root, after `make build`:
 *   cc examples/c/read_meta.c -o read_meta $(pkg-config --cflags --libs gstreamer-1.0)
 *   GST_PLUGIN_PATH=$PWD/target/release ./read_meta VIDEO [MAX_FRAMES]
 *
 * The result is a GstCustomMeta named "CboMeta" (GStreamer >= 1.20): get it with
 * gst_buffer_get_custom_meta (buf, "CboMeta") and read its GstStructure with
 * gst_custom_meta_get_structure; the fields are listed in docs/element.md. */
#include <gst/gst.h>
#include <stdlib.h>

static GstPadProbeReturn
on_buffer (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER (info);
  GstCustomMeta *meta = gst_buffer_get_custom_meta (buf, "CboMeta");
  const GstStructure *s;
  guint64 frame = 0;
  gdouble confidence = 0.0;

  if (meta == NULL) {
    g_printerr ("frame without CboMeta\n");
    return GST_PAD_PROBE_OK;
  }
  s = gst_custom_meta_get_structure (meta);
  gst_structure_get_uint64 (s, "frame", &frame);
  gst_structure_get_double (s, "confidence", &confidence);
  g_print ("%" G_GUINT64_FORMAT "\t%s\t%.4f\t%s\n", frame,
      gst_structure_get_string (s, "label"), confidence,
      gst_structure_get_string (s, "source"));
  return GST_PAD_PROBE_OK;
}

/* MAX_FRAMES: frames are counted where they enter cbofilter, and after the last one the stream
 * ends there (EOS into its sink pad, so what it holds drains and the pipeline ends as at the end
 * of the file). `identity eos-after=N` would let a few more through. */
static GstPadProbeReturn
limit_frames (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  static guint64 entered = 0;
  guint64 max_frames = GPOINTER_TO_SIZE (user_data);

  entered++;
  if (entered <= max_frames)
    return GST_PAD_PROBE_OK;
  if (entered == max_frames + 1)
    gst_pad_send_event (pad, gst_event_new_eos ());
  return GST_PAD_PROBE_DROP;
}

int
main (int argc, char **argv)
{
  GstElement *pipeline, *cbo;
  GstPad *pad;
  GstBus *bus;
  GstMessage *msg;
  GError *error = NULL;
  gchar *desc;
  int status = 0;

  gst_init (&argc, &argv);
  if (argc < 2) {
    g_printerr ("usage: %s VIDEO [MAX_FRAMES]\n", argv[0]);
    return 2;
  }
  desc = g_strdup_printf ("filesrc location=\"%s\" ! decodebin ! "
      "cbofilter name=cbo ! fakesink sync=false", argv[1]);
  pipeline = gst_parse_launch (desc, &error);
  g_free (desc);
  /* A missing element (no cbofilter on GST_PLUGIN_PATH) is a "recoverable" error: a pipeline
   * comes back without it, and would fail later with a misleading not-linked error. */
  if (pipeline == NULL || error != NULL) {
    g_printerr ("cannot build the pipeline: %s\n",
        error ? error->message : "unknown error");
    g_clear_error (&error);
    if (pipeline)
      gst_object_unref (pipeline);
    return 1;
  }
  cbo = gst_bin_get_by_name (GST_BIN (pipeline), "cbo");
  if (argc > 2 && atoi (argv[2]) > 0) {
    pad = gst_element_get_static_pad (cbo, "sink");
    gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, limit_frames,
        GSIZE_TO_POINTER ((gsize) atoi (argv[2])), NULL);
    gst_object_unref (pad);
  }
  pad = gst_element_get_static_pad (cbo, "src");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, on_buffer, NULL, NULL);
  gst_object_unref (pad);
  gst_object_unref (cbo);

  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  bus = gst_element_get_bus (pipeline);
  msg = gst_bus_timed_pop_filtered (bus, GST_CLOCK_TIME_NONE,
      GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    gchar *debug = NULL;
    gst_message_parse_error (msg, &error, &debug);
    g_printerr ("error: %s (%s)\n", error->message, debug ? debug : "");
    g_clear_error (&error);
    g_free (debug);
    status = 1;
  }
  gst_message_unref (msg);
  gst_object_unref (bus);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (pipeline);
  return status;
}
