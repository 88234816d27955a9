//! The fast pre-processing path (see the parent module's docs): the formats decoders and cameras
//! produce are sampled straight at the model size (`Sampler`), converted from YUV with the
//! frame's own matrix and range (`YuvToRgb`) and normalised in the same pass (`emit_row`, with
//! AVX2/FMA where the CPU has them).

use gst_video::prelude::*;

use super::{InputType, Layout, Normalization, PreprocessError, Preprocessor, Tensor, fill_tensor};

impl Preprocessor {
    /// Samples `frame` at the model size and writes the tensor (see [`FastPath`]).
    pub(super) fn process_fast<T>(
        &mut self,
        fast: FastPath,
        luma: &mut Sampler,
        chroma: &mut Sampler,
        frame: &gst_video::VideoFrameRef<T>,
    ) -> Result<(), PreprocessError> {
        let (w, h) = (self.spec.width as usize, self.spec.height as usize);
        let plane = |i: u32| -> Result<(&[u8], usize), PreprocessError> {
            Ok((
                frame
                    .plane_data(i)
                    .map_err(|e| PreprocessError::Map(e.to_string()))?,
                frame.plane_stride()[i as usize] as usize,
            ))
        };
        let direct = self.spec.layout == Layout::Nchw && self.spec.elem == InputType::F32;
        let rows = &mut self.rows;
        match fast {
            FastPath::Yuv420 {
                semi_planar,
                v_first,
                matrix,
            } => {
                // Chroma rows are sampled once per chroma row (every other output row).
                let (y_plane, y_stride) = plane(0)?;
                let (c0, s0) = plane(1)?;
                let (c1, s1) = if semi_planar { (c0, s0) } else { plane(2)? };
                for oy in 0..h {
                    luma.sample_rows(y_plane, y_stride, 1, [0], oy, [&mut rows.y]);
                    if oy % 2 == 0 {
                        let (cu, cv) = (&mut rows.u, &mut rows.v);
                        match (semi_planar, v_first) {
                            (true, false) => {
                                chroma.sample_rows(c0, s0, 2, [0, 1], oy / 2, [cu, cv])
                            }
                            (true, true) => chroma.sample_rows(c0, s0, 2, [1, 0], oy / 2, [cu, cv]),
                            (false, false) => {
                                chroma.sample_rows(c0, s0, 1, [0], oy / 2, [cu]);
                                chroma.sample_rows(c1, s1, 1, [0], oy / 2, [cv]);
                            }
                            (false, true) => {
                                chroma.sample_rows(c1, s1, 1, [0], oy / 2, [cu]);
                                chroma.sample_rows(c0, s0, 1, [0], oy / 2, [cv]);
                            }
                        }
                    }
                    let out = if direct {
                        None
                    } else {
                        Some(&mut self.rgb_small[oy * 3 * w..(oy + 1) * 3 * w])
                    };
                    emit_row(&matrix, &self.norm, rows, oy, w, h, out, &mut self.tensor);
                }
            }
            FastPath::Packed { bytes, r, g, b } => {
                let (data, stride) = plane(0)?;
                for oy in 0..h {
                    luma.sample_rows(
                        data,
                        stride,
                        bytes as usize,
                        [r, g, b],
                        oy,
                        [&mut rows.y, &mut rows.u, &mut rows.v],
                    );
                    let out = if direct {
                        None
                    } else {
                        Some(&mut self.rgb_small[oy * 3 * w..(oy + 1) * 3 * w])
                    };
                    emit_row(
                        &RGB_IDENTITY,
                        &self.norm,
                        rows,
                        oy,
                        w,
                        h,
                        out,
                        &mut self.tensor,
                    );
                }
            }
        }
        if !direct {
            fill_tensor(
                &self.spec,
                &self.lut,
                &self.rgb_small,
                3 * w,
                &mut self.tensor,
            );
        }
        Ok(())
    }
}

/// One output row's sampled channels (Y/U/V, or R/G/B for packed RGB input).
#[derive(Debug, Clone, Default)]
pub(super) struct RowScratch {
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

/// Formats with a hand-written path (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FastPath {
    /// 4:2:0 YUV, planar (I420/YV12) or semi-planar (NV12/NV21).
    Yuv420 {
        semi_planar: bool,
        v_first: bool,
        matrix: YuvToRgb,
    },
    /// Packed 8-bit RGB with 3 or 4 bytes per pixel; r/g/b are byte offsets.
    Packed {
        bytes: u8,
        r: usize,
        g: usize,
        b: usize,
    },
}

impl FastPath {
    pub(super) fn for_info(info: &gst_video::VideoInfo) -> Option<Self> {
        use gst_video::VideoFormat as F;
        if info.is_interlaced() {
            return None;
        }
        let yuv = |semi_planar, v_first| {
            YuvToRgb::for_colorimetry(&info.colorimetry()).map(|matrix| FastPath::Yuv420 {
                semi_planar,
                v_first,
                matrix,
            })
        };
        let packed = |bytes, r, g, b| Some(FastPath::Packed { bytes, r, g, b });
        match info.format() {
            F::I420 => yuv(false, false),
            F::Yv12 => yuv(false, true),
            F::Nv12 => yuv(true, false),
            F::Nv21 => yuv(true, true),
            F::Rgb => packed(3, 0, 1, 2),
            F::Bgr => packed(3, 2, 1, 0),
            F::Rgba | F::Rgbx => packed(4, 0, 1, 2),
            F::Bgra | F::Bgrx => packed(4, 2, 1, 0),
            F::Argb | F::Xrgb => packed(4, 1, 2, 3),
            F::Abgr | F::Xbgr => packed(4, 3, 2, 1),
            _ => None,
        }
    }
}

/// Where each output pixel reads the source: one tap (nearest) where the scale factor is under
/// 1.5, else the average of two neighbours (a 2-tap box), per axis. For the 2-3x reductions
/// cameras need (640x360 or 1280x720 to 224) this removes most aliasing at a fraction of the cost
/// of a full convolution: on dev-slideshow it scores within 0.002 top-1 of an antialiased bilinear
/// resize, at ~0.1 ms a 640x360 frame (docs/evaluation.md, "Cheaper pre-processing").
///
/// Rows are done in passes over contiguous bytes, which the compiler turns into SIMD byte
/// averages: the two source rows are averaged over their whole width, then (2-tap columns) each
/// byte with its right-hand neighbour pixel; each output pixel is then one load from that row.
/// The two taps of a column are always adjacent (see [`Self::axis`]), so this equals averaging
/// each output pixel's four source bytes, rounding as before: ((a + b + 1) >> 1) per step.
#[derive(Debug, Clone)]
pub(super) struct Sampler {
    /// Per output row: first and second source row (equal for one tap).
    ys: Vec<(u32, u32)>,
    /// Per output column of the row written, its source column (the first tap); a sampler for
    /// 4:2:0 chroma writes every chroma sample twice, as wide as the luma row.
    gather: Vec<u32>,
    /// Columns average two taps (the source pixel and its right-hand neighbour).
    two_tap_x: bool,
    src_w: usize,
    /// Vertically averaged source row.
    vrow: Vec<u8>,
    /// `vrow` averaged with its right-hand neighbour pixel (2-tap columns).
    hrow: Vec<u8>,
}

impl Sampler {
    /// The taps of each of `dst` outputs over `src` inputs: the second is the first's right-hand
    /// neighbour (2-tap, clamped at the edge) or the first itself (one tap).
    pub(super) fn axis(src: usize, dst: usize) -> Vec<(u32, u32)> {
        let scale = src as f64 / dst as f64;
        let last = src.saturating_sub(1) as i64;
        (0..dst)
            .map(|i| {
                let centre = (i as f64 + 0.5) * scale;
                if scale >= 1.5 {
                    let a = ((centre - 0.5).floor() as i64).clamp(0, last);
                    (a as u32, (a + 1).min(last) as u32)
                } else {
                    let a = (centre.floor() as i64).clamp(0, last);
                    (a as u32, a as u32)
                }
            })
            .collect()
    }

    /// Samples a `src_w` x `src_h` plane at `dst_w` x `dst_h`, writing rows `repeat * dst_w`
    /// wide (truncated to `width`): each sample `repeat` times.
    pub(super) fn new(
        src_w: usize,
        src_h: usize,
        dst_w: usize,
        dst_h: usize,
        repeat: usize,
        width: usize,
    ) -> Self {
        let xs = Self::axis(src_w, dst_w);
        Self {
            ys: Self::axis(src_h, dst_h),
            two_tap_x: xs.iter().any(|&(a, b)| a != b),
            gather: xs
                .iter()
                .flat_map(|&(a, _)| std::iter::repeat_n(a, repeat))
                .take(width)
                .collect(),
            src_w,
            vrow: Vec::new(),
            hrow: Vec::new(),
        }
    }

    /// Samples output row `oy` of the channels at byte `offsets` of pixels `bpp` bytes wide, one
    /// output row per offset.
    pub(super) fn sample_rows<const N: usize>(
        &mut self,
        data: &[u8],
        stride: usize,
        bpp: usize,
        offsets: [usize; N],
        oy: usize,
        outs: [&mut Vec<u8>; N],
    ) {
        let (r0, r1) = self.ys[oy];
        let len = self.src_w * bpp;
        let row0 = &data[r0 as usize * stride..r0 as usize * stride + len];
        let row1 = &data[r1 as usize * stride..r1 as usize * stride + len];
        let avg = |(&a, &b): (&u8, &u8)| ((a as u16 + b as u16 + 1) >> 1) as u8;
        let vrow: &[u8] = if r0 == r1 {
            row0
        } else {
            self.vrow.clear();
            self.vrow.extend(row0.iter().zip(row1).map(avg));
            &self.vrow
        };
        let row: &[u8] = if self.two_tap_x {
            // The last pixel's neighbour is itself (the clamp in `axis`).
            self.hrow.clear();
            self.hrow
                .extend(vrow[..len - bpp].iter().zip(&vrow[bpp..]).map(avg));
            self.hrow.extend_from_slice(&vrow[len - bpp..]);
            &self.hrow
        } else {
            vrow
        };
        for (out, offset) in outs.into_iter().zip(offsets) {
            debug_assert!(offset < bpp);
            out.clear();
            out.extend(self.gather.iter().map(|&x| {
                let i = x as usize * bpp + offset;
                // SAFETY: x < src_w (see `axis`) and offset < bpp, so i < len = row.len().
                unsafe { *row.get_unchecked(i) }
            }));
        }
    }
}

/// YUV → RGB for one matrix and range, in f32 (vectorises; see [`emit_row`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct YuvToRgb {
    y_offset: f32,
    y_scale: f32,
    c_scale: f32,
    rv: f32,
    gu: f32,
    gv: f32,
    bu: f32,
}

/// Identity "matrix" for packed RGB input: channels pass straight through.
const RGB_IDENTITY: YuvToRgb = YuvToRgb {
    y_offset: 0.0,
    y_scale: 1.0,
    c_scale: 0.0,
    rv: 0.0,
    gu: 0.0,
    gv: 0.0,
    bu: 0.0,
};

impl YuvToRgb {
    fn for_colorimetry(c: &gst_video::VideoColorimetry) -> Option<Self> {
        use gst_video::VideoColorMatrix as M;
        let (kr, kb) = match c.matrix() {
            M::Bt709 | M::Unknown => (0.2126, 0.0722),
            M::Bt601 => (0.299, 0.114),
            M::Bt2020 => (0.2627, 0.0593),
            M::Smpte240m => (0.212, 0.087),
            _ => return None,
        };
        let full = c.range() == gst_video::VideoColorRange::Range0_255;
        Some(Self::new(kr, kb, full))
    }

    fn new(kr: f32, kb: f32, full_range: bool) -> Self {
        let kg = 1.0 - kr - kb;
        let (y_offset, y_scale, c_scale) = if full_range {
            (0.0, 1.0, 1.0)
        } else {
            (16.0, 255.0 / 219.0, 255.0 / 224.0)
        };
        Self {
            y_offset,
            y_scale,
            c_scale,
            rv: 2.0 * (1.0 - kr),
            bu: 2.0 * (1.0 - kb),
            gu: -2.0 * kb * (1.0 - kb) / kg,
            gv: -2.0 * kr * (1.0 - kr) / kg,
        }
    }
}

/// Converts one sampled row to RGB and writes it: straight into an NCHW f32 tensor (normalised),
/// or as packed RGB bytes into `packed` for the generic tensor writer.
///
/// The three functions repeat one signature (runtime dispatch to the AVX2/FMA build of the same
/// body). The arguments stay flat on purpose: bundled into a struct passed by reference, the
/// row loop ran at 187 instead of 55–60 µs a 640x360 frame (same tensors; the vectoriser lost it).
#[allow(clippy::too_many_arguments)]
fn emit_row(
    m: &YuvToRgb,
    norm: &Normalization,
    rows: &RowScratch,
    oy: usize,
    w: usize,
    h: usize,
    packed: Option<&mut [u8]>,
    tensor: &mut Tensor,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { emit_row_avx2(m, norm, rows, oy, w, h, packed, tensor) };
        return;
    }
    emit_row_generic(m, norm, rows, oy, w, h, packed, tensor);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn emit_row_avx2(
    m: &YuvToRgb,
    norm: &Normalization,
    rows: &RowScratch,
    oy: usize,
    w: usize,
    h: usize,
    packed: Option<&mut [u8]>,
    tensor: &mut Tensor,
) {
    emit_row_generic(m, norm, rows, oy, w, h, packed, tensor)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit_row_generic(
    m: &YuvToRgb,
    norm: &Normalization,
    rows: &RowScratch,
    oy: usize,
    w: usize,
    h: usize,
    packed: Option<&mut [u8]>,
    tensor: &mut Tensor,
) {
    let (ys, us, vs) = (&rows.y[..w], &rows.u[..w], &rows.v[..w]);
    let rgb = |y: u8, u: u8, v: u8| {
        if m.c_scale == 0.0 {
            // Packed RGB input: the three rows are R, G, B (loop-invariant, hoisted).
            return (y as f32, u as f32, v as f32);
        }
        let yy = (y as f32 - m.y_offset) * m.y_scale;
        let (uu, vv) = (
            (u as f32 - 128.0) * m.c_scale,
            (v as f32 - 128.0) * m.c_scale,
        );
        (
            (yy + m.rv * vv).clamp(0.0, 255.0),
            (yy + m.gu * uu + m.gv * vv).clamp(0.0, 255.0),
            (yy + m.bu * uu).clamp(0.0, 255.0),
        )
    };
    match (packed, tensor) {
        (Some(out), _) => {
            for (((o, &y), &u), &v) in out.chunks_exact_mut(3).zip(ys).zip(us).zip(vs) {
                let (r, g, b) = rgb(y, u, v);
                o[0] = (r + 0.5) as u8;
                o[1] = (g + 0.5) as u8;
                o[2] = (b + 0.5) as u8;
            }
        }
        (None, Tensor::F32(t)) => {
            let plane = w * h;
            let (tr, rest) = t.split_at_mut(plane);
            let (tg, tb) = rest.split_at_mut(plane);
            let range = oy * w..(oy + 1) * w;
            let (tr, tg, tb) = (
                &mut tr[range.clone()],
                &mut tg[range.clone()],
                &mut tb[range],
            );
            let inv = [1.0 / norm.std[0], 1.0 / norm.std[1], 1.0 / norm.std[2]];
            for i in 0..w {
                let (r, g, b) = rgb(ys[i], us[i], vs[i]);
                tr[i] = (r - norm.mean[0]) * inv[0];
                tg[i] = (g - norm.mean[1]) * inv[1];
                tb[i] = (b - norm.mean[2]) * inv[2];
            }
        }
        (None, _) => unreachable!("direct writes are only used for NCHW f32 tensors"),
    }
}
