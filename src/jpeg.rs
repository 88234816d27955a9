//! The offload image path: a video frame rescaled to a short side and JPEG-encoded (client), and a
//! JPEG decoded back into a frame the classifier reads (server).
//!
//! Rescaling reuses the element's own sampler ([`Preprocessor`] writing packed 8-bit RGB), so an
//! offloaded frame is scaled the way the device model's input is. Encoding and decoding use
//! libjpeg-turbo (TurboJPEG API, SIMD) with 4:2:0 chroma, what a phone's hardware encoder would
//! produce. `cbo profile`, the element's offload client and `cboserver` all go through here, so
//! the sizes and accuracies the profile records are the ones the offload path gets.

use gst_video::prelude::*;

use crate::preprocess::{InputType, Layout, Normalization, Preprocessor, Tensor, TensorSpec};

/// Largest JPEG side the decoder accepts: a bound on what a request can make the server allocate.
pub const MAX_DECODED_SIDE: usize = 4096;

/// Most scans a JPEG may have to be decoded: a bound on the time one request can take. Baseline
/// JPEGs (what the element sends) have one scan, or one per colour component; progressive ones
/// from common encoders about 10 (libjpeg's and mozjpeg's default scripts). libjpeg decodes every
/// scan over the whole image, so a "scan bomb" (a 0.5 MB progressive 4096x4096 JPEG of 13 000
/// near-empty scans) took 35 s of a decode thread, during which the server answered no one.
/// At this limit the worst image takes a few hundred ms.
pub const MAX_SCANS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum JpegError {
    #[error("JPEG encoder: {0}")]
    Encode(String),
    #[error("not a decodable JPEG: {0}")]
    Decode(String),
    #[error("JPEG of {width}x{height} exceeds the {MAX_DECODED_SIDE}-pixel side limit")]
    TooLarge { width: usize, height: usize },
    #[error("JPEG of more than {MAX_SCANS} scans")]
    TooManyScans,
    #[error("cannot rescale the frame: {0}")]
    Rescale(String),
}

/// Output size for a frame of `width`x`height` rescaled so its short side is `short_side`, aspect
/// ratio kept (rounded to even sizes for 4:2:0). Never upscales: a short side at or above the
/// frame's keeps the frame's size. Never exceeds [`MAX_DECODED_SIDE`] on either side either (a
/// frame of extreme aspect ratio then gets a shorter short side): a larger JPEG is one every
/// server refuses.
pub fn scaled_size(width: u32, height: u32, short_side: u32) -> (u32, u32) {
    let (w, h) = scaled_to_short_side(width, height, short_side);
    let long = w.max(h);
    let max = MAX_DECODED_SIDE as u32;
    if long <= max {
        return (w, h);
    }
    let fit = |v: u32| ((v as f64 * max as f64 / long as f64).round() as u32).clamp(1, max);
    (fit(w), fit(h))
}

fn scaled_to_short_side(width: u32, height: u32, short_side: u32) -> (u32, u32) {
    let short = width.min(height).max(1);
    if short_side == 0 || short_side >= short {
        return (width, height);
    }
    // Nearest even size, so 4:2:0 chroma covers whole pixel pairs.
    let scale = |v: u32| {
        let exact = v as f64 * short_side as f64 / short as f64;
        (((exact / 2.0).round() as u32) * 2).max(2)
    };
    if width <= height {
        (short_side, scale(height))
    } else {
        (scale(width), short_side)
    }
}

/// One encoded offload image.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Rescales frames and JPEG-encodes them; keeps its scratch buffers between frames.
pub struct FrameEncoder {
    compressor: turbojpeg::Compressor,
    quality: i32,
    /// Rescaler for the current output size.
    scaler: Option<Preprocessor>,
}

impl FrameEncoder {
    /// `quality` is the JPEG quality, 1..=100.
    pub fn new(quality: u32) -> Result<Self, JpegError> {
        let mut compressor =
            turbojpeg::Compressor::new().map_err(|e| JpegError::Encode(e.to_string()))?;
        let quality = quality.clamp(1, 100) as i32;
        compressor.set_quality(quality);
        compressor.set_subsamp(turbojpeg::Subsamp::Sub2x2);
        Ok(Self {
            compressor,
            quality,
            scaler: None,
        })
    }

    pub fn quality(&self) -> u32 {
        self.quality as u32
    }

    /// Rescales `frame` to short side `short_side` (see [`scaled_size`]) and encodes it.
    pub fn encode<T>(
        &mut self,
        frame: &gst_video::VideoFrameRef<T>,
        short_side: u32,
    ) -> Result<EncodedFrame, JpegError> {
        let (width, height) = scaled_size(frame.info().width(), frame.info().height(), short_side);
        let spec = TensorSpec {
            layout: Layout::Nhwc,
            width,
            height,
            elem: InputType::U8,
        };
        if self.scaler.as_ref().map(|s| *s.spec()) != Some(spec) {
            self.scaler = Some(
                Preprocessor::new(spec, Normalization::default())
                    .map_err(|e| JpegError::Rescale(e.to_string()))?,
            );
        }
        let scaler = self.scaler.as_mut().expect("scaler was just set");
        let Tensor::U8(rgb) = scaler
            .process(frame)
            .map_err(|e| JpegError::Rescale(e.to_string()))?
        else {
            unreachable!("a U8 tensor spec gives a U8 tensor")
        };
        let bytes = self
            .compressor
            .compress_to_vec(turbojpeg::Image {
                pixels: rgb.as_slice(),
                width: width as usize,
                pitch: width as usize * 3,
                height: height as usize,
                format: turbojpeg::PixelFormat::RGB,
            })
            .map_err(|e| JpegError::Encode(e.to_string()))?;
        Ok(EncodedFrame {
            bytes,
            width,
            height,
        })
    }
}

/// Decodes JPEGs into RGB video frames (GStreamer's RGB layout, rows padded to 4 bytes) that the
/// element's pre-processing reads like any other frame.
pub struct FrameDecoder {
    decompressor: turbojpeg::Decompressor,
}

/// A decoded image as a GStreamer buffer and its video info.
pub struct DecodedFrame {
    pub buffer: gst::Buffer,
    pub info: gst_video::VideoInfo,
}

impl DecodedFrame {
    pub fn frame(&self) -> Result<gst_video::VideoFrameRef<&gst::BufferRef>, JpegError> {
        gst_video::VideoFrameRef::from_buffer_ref_readable(self.buffer.as_ref(), &self.info)
            .map_err(|e| JpegError::Decode(e.to_string()))
    }
}

impl FrameDecoder {
    pub fn new() -> Result<Self, JpegError> {
        Ok(Self {
            decompressor: turbojpeg::Decompressor::new()
                .map_err(|e| JpegError::Decode(e.to_string()))?,
        })
    }

    /// Decodes `jpeg`, refusing anything that is not a JPEG, is larger than [`MAX_DECODED_SIDE`]
    /// or has more than [`MAX_SCANS`] scans before allocating for it. Requires `gst::init()`.
    pub fn decode(&mut self, jpeg: &[u8]) -> Result<DecodedFrame, JpegError> {
        let result = self.decode_with(jpeg);
        if result.is_err() {
            // libjpeg-turbo 2.1's TurboJPEG leaves its decompressor in the state an error
            // interrupted (a header with a 65535-pixel side, or of height 0): every later image
            // then failed with "two SOI markers", so a few bad requests made a server decode
            // thread refuse every frame until restarted. A fresh one costs microseconds.
            if let Ok(fresh) = turbojpeg::Decompressor::new() {
                self.decompressor = fresh;
            }
        }
        result
    }

    fn decode_with(&mut self, jpeg: &[u8]) -> Result<DecodedFrame, JpegError> {
        if scan_count(jpeg, MAX_SCANS) > MAX_SCANS {
            return Err(JpegError::TooManyScans);
        }
        let header = self
            .decompressor
            .read_header(jpeg)
            .map_err(|e| JpegError::Decode(e.to_string()))?;
        let (w, h) = (header.width, header.height);
        if w == 0 || h == 0 {
            return Err(JpegError::Decode(format!("image of {w}x{h} pixels")));
        }
        if w > MAX_DECODED_SIDE || h > MAX_DECODED_SIDE {
            return Err(JpegError::TooLarge {
                width: w,
                height: h,
            });
        }
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w as u32, h as u32)
            .build()
            .map_err(|e| JpegError::Decode(e.to_string()))?;
        let mut buffer =
            gst::Buffer::with_size(info.size()).map_err(|e| JpegError::Decode(e.to_string()))?;
        {
            let buf = buffer.get_mut().expect("a new buffer is writable");
            let mut map = buf
                .map_writable()
                .map_err(|e| JpegError::Decode(e.to_string()))?;
            self.decompressor
                .decompress(
                    jpeg,
                    turbojpeg::Image {
                        pixels: map.as_mut_slice(),
                        width: w,
                        pitch: info.stride()[0] as usize,
                        height: h,
                        format: turbojpeg::PixelFormat::RGB,
                    },
                )
                .map_err(|e| JpegError::Decode(e.to_string()))?;
        }
        Ok(DecodedFrame { buffer, info })
    }
}

/// The number of scans (SOS segments) in `jpeg`, counted up to one more than `limit`: a walk over
/// the marker segments and the entropy-coded data between them, linear in the size, that reads
/// nothing else. What is not a well-formed JPEG ends the count where it stops making sense (the
/// decoder then refuses it).
pub fn scan_count(jpeg: &[u8], limit: usize) -> usize {
    let n = jpeg.len();
    let mut scans = 0;
    // After SOI (whether there is one is the decoder's to say).
    let mut i = 2;
    while i + 1 < n {
        if jpeg[i] != 0xFF {
            // Garbage between segments: libjpeg skips it with a warning.
            i += 1;
            continue;
        }
        let marker = jpeg[i + 1];
        match marker {
            // Fill byte before a marker.
            0xFF => {
                i += 1;
                continue;
            }
            // EOI.
            0xD9 => break,
            // Markers without a length: TEM, RSTn, SOI (and a stuffed 0 out of place), and the
            // reserved 0x02-0xBF. Between scans libjpeg refuses those; within one that has a
            // restart interval it skips such a marker and searches on byte by byte for the next
            // (`jpeg_resync_to_restart`), so must the walk: reading two "length" bytes after
            // one let a crafted JPEG hide 45 000 scans behind lengths of 0xFFDA (counted 1).
            0x00..=0xBF | 0xD0..=0xD8 => {
                i += 2;
                continue;
            }
            _ => {}
        }
        if i + 3 >= n {
            break;
        }
        // The length counts its own two bytes; the walk always moves on by at least the marker.
        let length = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        i += 2 + length;
        if marker != 0xDA {
            continue;
        }
        scans += 1;
        if scans > limit {
            break;
        }
        // The scan's entropy-coded data runs to the next marker that is neither a stuffed 0xFF00
        // nor a restart marker.
        while i + 1 < n {
            if jpeg[i] == 0xFF {
                match jpeg[i + 1] {
                    0x00 | 0xD0..=0xD7 => i += 2,
                    0xFF => i += 1,
                    _ => break,
                }
            } else {
                i += 1;
            }
        }
    }
    scans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_size_keeps_aspect_and_never_upscales() {
        assert_eq!(scaled_size(480, 360, 224), (298, 224));
        assert_eq!(scaled_size(360, 480, 224), (224, 298));
        assert_eq!(scaled_size(640, 360, 96), (170, 96));
        assert_eq!(scaled_size(480, 360, 360), (480, 360));
        assert_eq!(scaled_size(480, 360, 1000), (480, 360));
        assert_eq!(scaled_size(480, 360, 0), (480, 360));
        // Extreme aspect ratios stay within what a server decodes.
        assert_eq!(scaled_size(1, 7000, 224), (1, 4096));
        assert_eq!(scaled_size(8000, 100, 224), (4096, 51));
        assert_eq!(scaled_size(20000, 400, 224), (4096, 82));
        assert_eq!(scaled_size(4096, 4096, 4096), (4096, 4096));
    }

    /// A small real JPEG from the encoder (baseline, one interleaved scan).
    fn small_jpeg() -> Vec<u8> {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 64, 48)
            .build()
            .unwrap();
        let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
        buffer.get_mut().unwrap().map_writable().unwrap().fill(90);
        let frame =
            gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).unwrap();
        FrameEncoder::new(80)
            .unwrap()
            .encode(&frame, 48)
            .unwrap()
            .bytes
    }

    /// A header error must not leave the decoder refusing every later image: with TurboJPEG's
    /// decompressor reused as it was, every good JPEG after this one failed ("two SOI markers").
    #[test]
    fn a_bad_header_does_not_break_the_decoder_for_the_next_image() {
        let good = small_jpeg();
        let sof = good.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let mut huge = good.clone();
        // SOF: marker, length (2), precision (1), height (2), width (2).
        huge[sof + 5..sof + 9].copy_from_slice(&[0xFF; 4]);
        let mut zero_height = good.clone();
        zero_height[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
        let mut dec = FrameDecoder::new().unwrap();
        for bad in [&huge, &zero_height, &huge] {
            assert!(dec.decode(bad).is_err());
            let decoded = dec.decode(&good).expect("a good JPEG after a bad one");
            assert_eq!((decoded.info.width(), decoded.info.height()), (64, 48));
        }
    }

    /// Scans are counted through the entropy-coded data (stuffed bytes, restart markers), and a
    /// JPEG with more than [`MAX_SCANS`] is refused before libjpeg decodes any of them.
    #[test]
    fn scans_are_counted_and_a_scan_bomb_is_refused() {
        let good = small_jpeg();
        assert_eq!(scan_count(&good, MAX_SCANS), 1);
        // A synthetic progressive stream: SOI, SOF2, then scans whose data holds a stuffed
        // 0xFF00 and a restart marker (neither ends the scan), then EOI.
        let bomb = |scans: usize| {
            let mut j = vec![0xFF, 0xD8];
            j.extend_from_slice(&[0xFF, 0xC2, 0, 11, 8, 0, 16, 0, 16, 1, 1, 0x11, 0]);
            for _ in 0..scans {
                j.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
                j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xFF]);
            }
            j.extend_from_slice(&[0xFF, 0xD9]);
            j
        };
        assert_eq!(scan_count(&bomb(10), MAX_SCANS), 10);
        assert_eq!(scan_count(&bomb(MAX_SCANS), MAX_SCANS), MAX_SCANS);
        assert_eq!(scan_count(&bomb(10_000), MAX_SCANS), MAX_SCANS + 1);
        // A reserved marker inside a scan (with a restart interval, libjpeg skips it and
        // searches on for the next marker) whose would-be "length" is the next SOS marker.
        let hidden = |scans: usize| {
            let mut j = vec![0xFF, 0xD8];
            j.extend_from_slice(&[0xFF, 0xDD, 0, 4, 0, 1]); // DRI: a restart every MCU
            j.extend_from_slice(&[0xFF, 0xC2, 0, 11, 8, 16, 0, 16, 0, 1, 1, 0x11, 0]);
            for _ in 0..scans {
                j.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
                j.extend_from_slice(&[0x12, 0xFF, 0x02]);
            }
            j.extend_from_slice(&[0xFF, 0xD9]);
            j
        };
        assert_eq!(scan_count(&hidden(1000), MAX_SCANS), MAX_SCANS + 1);
        assert_eq!(scan_count(&hidden(5), MAX_SCANS), 5);
        let mut dec = FrameDecoder::new().unwrap();
        assert!(matches!(
            dec.decode(&bomb(MAX_SCANS + 1)),
            Err(JpegError::TooManyScans)
        ));
        // Nothing that is no JPEG makes the walk loop or panic.
        for junk in [
            &[][..],
            &[0xFF],
            &[0xFF, 0xD8, 0xFF],
            &[0xFF, 0xD8, 0xFF, 0xDA, 0, 0],
        ] {
            assert_eq!(scan_count(junk, MAX_SCANS), usize::from(junk.len() == 6));
        }
        assert!(dec.decode(&good).is_ok());
    }

    /// A smooth synthetic I420 frame survives encode → decode at a reduced size with small error.
    #[test]
    fn encode_decode_round_trip() {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 320, 240)
            .build()
            .unwrap();
        let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
        {
            let buf = buffer.get_mut().unwrap();
            let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).unwrap();
            let stride = frame.plane_stride()[0] as usize;
            let y = frame.plane_data_mut(0).unwrap();
            for row in 0..240 {
                for col in 0..320 {
                    y[row * stride + col] = (16 + (col * 200) / 320) as u8;
                }
            }
            for p in 1..3 {
                frame.plane_data_mut(p).unwrap().fill(128);
            }
        }
        let frame =
            gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).unwrap();
        let mut enc = FrameEncoder::new(90).unwrap();
        let out = enc.encode(&frame, 120).unwrap();
        assert_eq!((out.width, out.height), (160, 120));
        assert_eq!(&out.bytes[..2], &[0xFF, 0xD8], "JPEG SOI marker");
        let mut dec = FrameDecoder::new().unwrap();
        let decoded = dec.decode(&out.bytes).unwrap();
        let f = decoded.frame().unwrap();
        assert_eq!((f.width(), f.height()), (160, 120));
        let stride = f.plane_stride()[0] as usize;
        let data = f.plane_data(0).unwrap();
        // Limited-range luma 16 + 200 * x → full-range grey ramp, left dark, right bright.
        let left = data[60 * stride + 3] as i32;
        let right = data[60 * stride + 156 * 3] as i32;
        assert!(left < 20 && right > 220, "left {left} right {right}");
        assert!(dec.decode(b"not a jpeg").is_err());
        // A truncated JPEG decodes with libjpeg's grey fill or fails; either way no panic.
        let _ = dec.decode(&out.bytes[..out.bytes.len() / 2]);
    }
}
