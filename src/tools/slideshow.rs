//! `cbo slideshow`: a labelled clip made from labelled photos, for checking a decision on content
//! that nothing was fitted or tuned on.
//!
//! The dev clips show 250 of the 600 dev photos; the profile and the calibration are fitted on
//! one of them. A clip made from photos that none of them shows (`--exclude` their label files)
//! is content the whole project has never seen, made the way the dev slideshows are: each photo
//! for `--seconds`, a slow zoom and pan inside the largest box of the clip's aspect ratio, H.264
//! at a low bit rate (compression artefacts on purpose), 10 fps. Which photos, and each scene's
//! zoom and pan, follow from `--seed` alone; `--skip` takes a later part of the same shuffle, so
//! clips with the same seed and non-overlapping `--skip`/`--photos` ranges share no photo.
//!
//! The frames are rendered here (pure: [`select_photos`], [`ScenePath`], [`render`]) and
//! encoded by GStreamer (`appsrc ! videoconvert ! x264enc ! mp4mux`) with one encoder thread,
//! so the same arguments give the same H.264 stream, the same decoded frames and the same
//! numbers (the MP4 header carries the time it was written, so `cbo eval --cache` recomputes
//! a rewritten clip's model results, to the same values).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use gst::prelude::*;
use gst_video::prelude::*;

use crate::jpeg::FrameDecoder;
use crate::tools::dataset::{read_clip_labels, read_image_list};

#[derive(Debug, clap::Args)]
pub struct SlideshowArgs {
    /// Photo list: TSV with columns `file` (relative to the TSV) and `class_index`
    #[arg(long)]
    pub images: PathBuf,
    /// Only the TSV rows whose `split` column has this value (e.g. dev)
    #[arg(long)]
    pub split: Option<String>,
    /// Leave out every class in these label files (clip CSVs with `frame`, `class_index`,
    /// comma-separated): the photos other clips already show
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<PathBuf>,
    /// Photos in the clip
    #[arg(long, default_value_t = 100)]
    pub photos: usize,
    /// Skip this many photos of the shuffled list first
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Seconds each photo is shown
    #[arg(long, default_value_t = 1.5)]
    pub seconds: f64,
    /// Frames per second
    #[arg(long, default_value_t = 10)]
    pub fps: u32,
    #[arg(long, default_value_t = 480)]
    pub width: u32,
    #[arg(long, default_value_t = 360)]
    pub height: u32,
    /// H.264 bit rate, kbit/s (the dev slideshows: 400)
    #[arg(long, default_value_t = 400)]
    pub bitrate: u32,
    /// Seed of the photo shuffle and of each scene's zoom and pan
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// MP4 to write; its labels go beside it, `.mp4` replaced by `.labels.csv`
    pub output: PathBuf,
}

/// SplitMix64: a small, fixed pseudo-random sequence, so a seed gives the same clip everywhere.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The photos of the clip, in the order shown: `photos` sorted by file (so the TSV's row order
/// does not matter), without the classes in `exclude`, shuffled by `seed` (Fisher–Yates), then
/// `skip` of them skipped and `count` taken.
pub fn select_photos(
    mut photos: Vec<(PathBuf, usize)>,
    exclude: &HashSet<usize>,
    seed: u64,
    skip: usize,
    count: usize,
) -> Vec<(PathBuf, usize)> {
    photos.retain(|(_, class)| !exclude.contains(class));
    photos.sort();
    let mut rng = SplitMix64::new(seed);
    for i in (1..photos.len()).rev() {
        let j = rng.below(i + 1);
        photos.swap(i, j);
    }
    photos.into_iter().skip(skip).take(count).collect()
}

/// One scene's camera: it zooms from the whole box to `1/zoom` of it while its centre drifts
/// towards (`pan_x`, `pan_y`) (each in −1..1, a share of the room the zoom leaves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScenePath {
    pub zoom: f64,
    pub pan_x: f64,
    pub pan_y: f64,
}

impl ScenePath {
    pub fn draw(rng: &mut SplitMix64) -> Self {
        Self {
            zoom: rng.uniform(1.1, 1.25),
            pan_x: rng.uniform(-1.0, 1.0),
            pan_y: rng.uniform(-1.0, 1.0),
        }
    }

    /// The source rectangle (x0, y0, width, height) at time `t` (0 at the scene's first frame,
    /// 1 at its last) in a photo of `w`×`h` pixels, for an output of aspect `aspect` (w/h):
    /// always inside the photo.
    pub fn crop(&self, t: f64, w: f64, h: f64, aspect: f64) -> (f64, f64, f64, f64) {
        let t = t.clamp(0.0, 1.0);
        let (bw, bh) = if w / h > aspect {
            (h * aspect, h)
        } else {
            (w, w / aspect)
        };
        let z = 1.0 + (self.zoom - 1.0) * t;
        let (cw, ch) = (bw / z, bh / z);
        let cx = w / 2.0 + self.pan_x * t * (bw - cw) / 2.0;
        let cy = h / 2.0 + self.pan_y * t * (bh - ch) / 2.0;
        (cx - cw / 2.0, cy - ch / 2.0, cw, ch)
    }
}

/// A packed RGB image (rows `stride` bytes apart).
#[derive(Debug, Clone, Copy)]
pub struct RgbView<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    pub width: usize,
    pub height: usize,
}

/// GStreamer's row stride of a packed RGB image `width` pixels wide (rows padded to 4 bytes).
pub fn rgb_stride(width: usize) -> usize {
    (width * 3 + 3) & !3
}

/// Bilinear resampling of the rectangle `crop` (x0, y0, width, height) of `src` into `out`, a
/// packed RGB image of `size` (width, height) with GStreamer's row stride ([`rgb_stride`]).
pub fn render(src: RgbView, crop: (f64, f64, f64, f64), out: &mut [u8], size: (usize, usize)) {
    let (x0, y0, cw, ch) = crop;
    let (ow, oh) = size;
    let out_stride = rgb_stride(ow);
    let (sw, sh) = (src.width, src.height);
    let pixel = |x: usize, y: usize, c: usize| f64::from(src.data[y * src.stride + x * 3 + c]);
    for oy in 0..oh {
        let sy = (y0 + (oy as f64 + 0.5) * ch / oh as f64 - 0.5).clamp(0.0, (sh - 1) as f64);
        let (y_lo, fy) = (sy.floor() as usize, sy.fract());
        let y_hi = (y_lo + 1).min(sh - 1);
        for ox in 0..ow {
            let sx = (x0 + (ox as f64 + 0.5) * cw / ow as f64 - 0.5).clamp(0.0, (sw - 1) as f64);
            let (x_lo, fx) = (sx.floor() as usize, sx.fract());
            let x_hi = (x_lo + 1).min(sw - 1);
            for c in 0..3 {
                let top = pixel(x_lo, y_lo, c) * (1.0 - fx) + pixel(x_hi, y_lo, c) * fx;
                let bottom = pixel(x_lo, y_hi, c) * (1.0 - fx) + pixel(x_hi, y_hi, c) * fx;
                out[oy * out_stride + ox * 3 + c] = (top * (1.0 - fy) + bottom * fy).round() as u8;
            }
        }
    }
}

/// Where the labels of `output` go: `.mp4` replaced by `.labels.csv`.
pub fn labels_path(output: &Path) -> PathBuf {
    output.with_extension("labels.csv")
}

/// Writes the clip and its labels; returns the number of frames.
pub fn run(args: &SlideshowArgs) -> Result<usize, String> {
    if args.photos == 0 || args.fps == 0 {
        return Err("--photos and --fps must be positive".into());
    }
    // H.264 at 4:2:0 needs even sides.
    if args.width < 16 || args.height < 16 || args.width % 2 == 1 || args.height % 2 == 1 {
        return Err(format!(
            "--width {} --height {}: even numbers of pixels, at least 16",
            args.width, args.height
        ));
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(format!("--seconds {}: must be positive", args.seconds));
    }
    let per_scene = (args.seconds * f64::from(args.fps)).round().max(1.0) as usize;
    let mut exclude = HashSet::new();
    for csv in &args.exclude {
        exclude.extend(read_clip_labels(csv)?);
    }
    let listed = read_image_list(&args.images, args.split.as_deref())?;
    let available = listed.iter().filter(|(_, c)| !exclude.contains(c)).count();
    let photos = select_photos(listed, &exclude, args.seed, args.skip, args.photos);
    if photos.len() < args.photos {
        return Err(format!(
            "{} photos asked for after skipping {}, but only {available} are left once the \
             excluded classes are removed",
            args.photos, args.skip
        ));
    }
    super::init_gstreamer()?;
    let (w, h) = (args.width as usize, args.height as usize);
    let desc = format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width={w},height={h},\
         framerate={fps}/1 ! videoconvert ! x264enc bitrate={b} speed-preset=medium threads=1 \
         key-int-max={gop} ! video/x-h264,profile=main ! h264parse ! mp4mux ! \
         filesink location=\"{out}\"",
        fps = args.fps,
        b = args.bitrate,
        gop = 3 * args.fps,
        out = args.output.display().to_string().replace('"', "\\\"")
    );
    let pipeline = crate::gstelements::launch_pipeline(&desc)?;
    let src = pipeline
        .by_name("src")
        .expect("named in the description")
        .downcast::<gst_app::AppSrc>()
        .expect("appsrc");
    src.set_max_bytes((8 * w * h * 3) as u64);
    src.set_block(true);
    crate::gstelements::play(&pipeline)?;
    let mut labels = String::from("frame,pts_s,class_index\n");
    let mut rng = SplitMix64::new(args.seed ^ 0x5eed_5eed);
    let mut decoder = FrameDecoder::new().map_err(|e| e.to_string())?;
    let frame_ns = 1_000_000_000 / u64::from(args.fps);
    let mut frame = 0usize;
    let pushed = (|| -> Result<(), String> {
        for (file, class) in &photos {
            let jpeg = std::fs::read(file)
                .map_err(|e| format!("cannot read '{}': {e}", file.display()))?;
            let image = decoder
                .decode(&jpeg)
                .map_err(|e| format!("'{}': {e}", file.display()))?;
            let view = image.frame().map_err(|e| e.to_string())?;
            let photo = RgbView {
                data: view.plane_data(0).map_err(|e| e.to_string())?,
                stride: view.plane_stride()[0] as usize,
                width: view.width() as usize,
                height: view.height() as usize,
            };
            let path = ScenePath::draw(&mut rng);
            for k in 0..per_scene {
                let t = k as f64 / (per_scene.max(2) - 1) as f64;
                let crop = path.crop(
                    t,
                    photo.width as f64,
                    photo.height as f64,
                    w as f64 / h as f64,
                );
                let mut out = vec![0u8; rgb_stride(w) * h];
                render(photo, crop, &mut out, (w, h));
                let mut buffer = gst::Buffer::from_mut_slice(out);
                {
                    let b = buffer.get_mut().expect("a new buffer is writable");
                    b.set_pts(gst::ClockTime::from_nseconds(frame as u64 * frame_ns));
                    b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
                }
                src.push_buffer(buffer)
                    .map_err(|e| format!("the encoder refused a frame: {e:?}"))?;
                labels.push_str(&format!(
                    "{frame},{:.3},{class}\n",
                    frame as f64 / f64::from(args.fps)
                ));
                frame += 1;
            }
        }
        Ok(())
    })();
    let _ = src.end_of_stream();
    let finished = crate::gstelements::wait_for_eos(&pipeline);
    let _ = pipeline.set_state(gst::State::Null);
    // The pipeline's own error says more than the refused push it caused.
    finished.and(pushed)?;
    let labels_file = labels_path(&args.output);
    std::fs::File::create(&labels_file)
        .and_then(|mut f| f.write_all(labels.as_bytes()))
        .map_err(|e| format!("cannot write '{}': {e}", labels_file.display()))?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photos(n: usize) -> Vec<(PathBuf, usize)> {
        (0..n)
            .map(|i| (PathBuf::from(format!("p{i:03}.jpg")), i))
            .collect()
    }

    #[test]
    fn photo_choice_follows_the_seed_and_skips_excluded_classes() {
        let exclude: HashSet<usize> = [3, 5, 7].into();
        let a = select_photos(photos(50), &exclude, 9, 0, 20);
        // The same seed gives the same clip whatever the list's order.
        let mut reversed = photos(50);
        reversed.reverse();
        assert_eq!(a, select_photos(reversed, &exclude, 9, 0, 20));
        assert_eq!(a.len(), 20);
        assert!(a.iter().all(|(_, c)| !exclude.contains(c)));
        // Another seed, another clip; the order is shuffled, not the list's.
        assert_ne!(a, select_photos(photos(50), &exclude, 10, 0, 20));
        let sorted: Vec<_> = photos(50)
            .into_iter()
            .filter(|(_, c)| !exclude.contains(c))
            .take(20)
            .collect();
        assert_ne!(a, sorted);
        // A later part of the same shuffle shares no photo with the first.
        let b = select_photos(photos(50), &exclude, 9, 20, 20);
        assert_eq!(b.len(), 20);
        assert!(b.iter().all(|p| !a.contains(p)));
        // Only what is left: 47 photos, 40 skipped.
        assert_eq!(select_photos(photos(50), &exclude, 9, 40, 20).len(), 7);
    }

    #[test]
    fn the_camera_stays_inside_the_photo_and_zooms_in() {
        let mut rng = SplitMix64::new(4);
        for _ in 0..200 {
            let path = ScenePath::draw(&mut rng);
            for (w, h) in [
                (389.0, 292.0),
                (292.0, 438.0),
                (292.0, 292.0),
                (640.0, 292.0),
            ] {
                let (x0, y0, cw, ch) = path.crop(0.0, w, h, 4.0 / 3.0);
                // The first frame: the largest 4:3 box, centred.
                assert!((cw / ch - 4.0 / 3.0).abs() < 1e-9);
                assert!((cw - w).abs() < 1e-9 || (ch - h).abs() < 1e-9);
                assert!((x0 + cw / 2.0 - w / 2.0).abs() < 1e-9);
                assert!((y0 + ch / 2.0 - h / 2.0).abs() < 1e-9);
                for k in 0..=14 {
                    let (x, y, cw2, ch2) = path.crop(k as f64 / 14.0, w, h, 4.0 / 3.0);
                    assert!(x >= -1e-9 && y >= -1e-9 && x + cw2 <= w + 1e-9 && y + ch2 <= h + 1e-9);
                    assert!(cw2 <= cw + 1e-9);
                }
                let (_, _, last, _) = path.crop(1.0, w, h, 4.0 / 3.0);
                assert!((cw / last - path.zoom).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn resampling_keeps_a_flat_image_flat_and_a_ramp_a_ramp() {
        // 8x4 RGB, rows padded to 28 bytes: red is the column, green the row, blue constant.
        let (sw, sh, stride) = (8usize, 4usize, 28usize);
        let mut src = vec![0u8; stride * sh];
        for y in 0..sh {
            for x in 0..sw {
                src[y * stride + x * 3] = (x * 30) as u8;
                src[y * stride + x * 3 + 1] = (y * 60) as u8;
                src[y * stride + x * 3 + 2] = 77;
            }
        }
        // 18 pixels: rows of 54 bytes padded to 56, as GStreamer lays out RGB.
        let (ow, oh) = (18usize, 8usize);
        let out_stride = rgb_stride(ow);
        assert_eq!(out_stride, 56);
        let mut out = vec![0u8; out_stride * oh];
        let view = RgbView {
            data: &src,
            stride,
            width: sw,
            height: sh,
        };
        render(view, (0.0, 0.0, 8.0, 4.0), &mut out, (ow, oh));
        let at = |x: usize, y: usize, c: usize| out[y * out_stride + x * 3 + c];
        assert!((0..oh).all(|y| (0..ow).all(|x| at(x, y, 2) == 77)));
        // Red rises along each row, green down each column; the corners keep the source's; the
        // padding is left alone.
        for oy in 0..oh {
            let row: Vec<u8> = (0..ow).map(|ox| at(ox, oy, 0)).collect();
            assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
            assert_eq!((row[0], row[ow - 1]), (0, 210));
            assert_eq!(
                &out[oy * out_stride + ow * 3..(oy + 1) * out_stride],
                &[0, 0]
            );
        }
        assert_eq!((at(0, 0, 1), at(0, oh - 1, 1)), (0, 180));
    }

    #[test]
    fn labels_go_beside_the_clip() {
        assert_eq!(
            labels_path(Path::new("/tmp/held-out.mp4")),
            PathBuf::from("/tmp/held-out.labels.csv")
        );
    }
}
