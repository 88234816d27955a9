//! Running a model on several images at once: an `[N, ...]` input built from per-image tensors
//! and one `Session::run` for all of them. Modelled on [`crate::inference::run_session`], which
//! runs exactly one image; `cbo loadgen`'s bare baseline uses the same function as the server.

use ort::session::Session;

use crate::inference::InferenceError;
use crate::preprocess::{Tensor, TensorSpec};

/// Whether a model accepts more than one image per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchDim {
    /// The first input dimension is symbolic: any N.
    Dynamic,
    /// The model fixes N = 1 (e.g. the TFLite-converted MobileNets).
    One,
}

impl BatchDim {
    /// Reads the first input's batch dimension. [`crate::inference::ModelSession::load`] already
    /// refused fixed batches above 1.
    pub fn of(session: &Session) -> BatchDim {
        let dim = session
            .inputs()
            .first()
            .and_then(|i| i.dtype().tensor_shape().map(|s| s.iter().copied().next()))
            .flatten();
        match dim {
            Some(d) if d < 0 => BatchDim::Dynamic,
            _ => BatchDim::One,
        }
    }
}

/// An input tensor holding several images back to back, in the model's element type.
#[derive(Debug, Clone)]
pub struct BatchTensor {
    spec: TensorSpec,
    data: Tensor,
    n: usize,
}

/// Most bytes a server's batch tensor may take: it is allocated at start, so a product of
/// `--max-batch` and input size that no machine holds (256 × 3 × 4096² f32 is 51.5 GB) must fail
/// there, with the numbers, not later in the allocator.
pub const MAX_BATCH_TENSOR_BYTES: u64 = 4 << 30;

/// Refuses batches of `capacity` images of `spec`, `batches` of them held at once (one per model
/// thread, `--backend-concurrency`), whose tensors together would exceed
/// [`MAX_BATCH_TENSOR_BYTES`].
pub fn check_batch_size(spec: &TensorSpec, capacity: usize, batches: usize) -> Result<(), String> {
    let batches = batches.max(1) as u64;
    let image = spec.len() as u64 * spec.elem.bytes() as u64;
    let bytes = image * capacity as u64 * batches;
    if bytes <= MAX_BATCH_TENSOR_BYTES {
        return Ok(());
    }
    let most = MAX_BATCH_TENSOR_BYTES / image / batches;
    let what = if batches > 1 {
        format!("{batches} batches (--backend-concurrency) of {capacity} images")
    } else {
        format!("a batch of {capacity} images")
    };
    Err(format!(
        "{what} of {}x{} ({:?}) take {:.1} GB, more than the {} GiB allowed: \
         set --max-batch to at most {most}{}",
        spec.width,
        spec.height,
        spec.elem,
        bytes as f64 / 1e9,
        MAX_BATCH_TENSOR_BYTES >> 30,
        if most == 0 {
            " (none fits: a model, or --input-size, with a smaller input, or fewer batches at once)"
        } else {
            ""
        },
    ))
}

impl BatchTensor {
    pub fn new(spec: TensorSpec, capacity: usize) -> Self {
        let per = spec.len() * capacity;
        let data = match Tensor::zeros(&spec) {
            Tensor::F32(_) => Tensor::F32(Vec::with_capacity(per)),
            Tensor::F16(_) => Tensor::F16(Vec::with_capacity(per)),
            Tensor::U8(_) => Tensor::U8(Vec::with_capacity(per)),
            Tensor::I8(_) => Tensor::I8(Vec::with_capacity(per)),
        };
        Self { spec, data, n: 0 }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn clear(&mut self) {
        match &mut self.data {
            Tensor::F32(v) => v.clear(),
            Tensor::F16(v) => v.clear(),
            Tensor::U8(v) => v.clear(),
            Tensor::I8(v) => v.clear(),
        }
        self.n = 0;
    }

    /// Appends one image's tensor (as a [`crate::preprocess::Preprocessor`] for the same spec
    /// writes it).
    pub fn push(&mut self, image: &Tensor) -> Result<(), InferenceError> {
        let want = self.spec.len();
        let bad = |got: usize| {
            InferenceError::Run(format!(
                "image tensor of {got} values does not fit the model input of {want}"
            ))
        };
        match (&mut self.data, image) {
            (Tensor::F32(b), Tensor::F32(v)) if v.len() == want => b.extend_from_slice(v),
            (Tensor::F16(b), Tensor::F16(v)) if v.len() == want => b.extend_from_slice(v),
            (Tensor::U8(b), Tensor::U8(v)) if v.len() == want => b.extend_from_slice(v),
            (Tensor::I8(b), Tensor::I8(v)) if v.len() == want => b.extend_from_slice(v),
            (_, t) => {
                return Err(bad(match t {
                    Tensor::F32(v) => v.len(),
                    Tensor::F16(v) => v.len(),
                    Tensor::U8(v) => v.len(),
                    Tensor::I8(v) => v.len(),
                }));
            }
        }
        self.n += 1;
        Ok(())
    }

    /// `[N, ...]`: the model input shape with N images.
    pub fn shape(&self) -> [usize; 4] {
        let mut shape = self.spec.shape();
        shape[0] = self.n;
        shape
    }

    /// The images back to back, when the model input is f32 (what a gRPC backend is sent).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Tensor::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn spec(&self) -> TensorSpec {
        self.spec
    }
}

/// Runs the session once on all images of `batch`; `out` receives N rows of scores, back to back,
/// as f32. Returns the row width.
pub fn run_batch(
    session: &mut Session,
    input_name: &str,
    batch: &BatchTensor,
    out: &mut Vec<f32>,
) -> Result<usize, InferenceError> {
    if batch.is_empty() {
        return Err(InferenceError::Run("empty batch".into()));
    }
    crate::inference::run_tensor(session, input_name, batch.shape(), &batch.data, out)?;
    if out.is_empty() || !out.len().is_multiple_of(batch.n) {
        return Err(InferenceError::Run(format!(
            "{} scores for a batch of {}",
            out.len(),
            batch.n
        )));
    }
    Ok(out.len() / batch.n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{InputType, Layout};

    #[test]
    fn batch_tensor_stacks_images_of_the_model_input() {
        let spec = TensorSpec {
            layout: Layout::Nchw,
            width: 2,
            height: 2,
            elem: InputType::F32,
        };
        let mut b = BatchTensor::new(spec, 3);
        assert!(b.is_empty());
        b.push(&Tensor::F32(vec![1.0; 12])).unwrap();
        b.push(&Tensor::F32(vec![2.0; 12])).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.shape(), [2, 3, 2, 2]);
        let Tensor::F32(data) = &b.data else {
            panic!("f32 batch")
        };
        assert_eq!(&data[10..14], &[1.0, 1.0, 2.0, 2.0]);
        // Wrong size or element type is refused, not stacked.
        assert!(b.push(&Tensor::F32(vec![0.0; 11])).is_err());
        assert!(b.push(&Tensor::U8(vec![0; 12])).is_err());
        assert_eq!(b.len(), 2);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.shape(), [0, 3, 2, 2]);
    }

    #[test]
    fn batches_larger_than_the_limit_are_refused_with_the_largest_that_fits() {
        let spec = |side, elem| TensorSpec {
            layout: Layout::Nchw,
            width: side,
            height: side,
            elem,
        };
        // The server's default model at the largest --max-batch: 208 MB.
        assert!(check_batch_size(&spec(260, InputType::F32), 256, 1).is_ok());
        // 256 x 3 x 4096 x 4096 x 4 bytes = 51.5 GB.
        let e = check_batch_size(&spec(4096, InputType::F32), 256, 1).unwrap_err();
        assert!(e.contains("51.5 GB"), "{e}");
        // 4 GiB / (3 x 4096 x 4096 x 4) = 21.3: 21 fit, 22 do not.
        assert!(e.contains("--max-batch to at most 21"), "{e}");
        assert!(check_batch_size(&spec(4096, InputType::F32), 21, 1).is_ok());
        assert!(check_batch_size(&spec(4096, InputType::F32), 22, 1).is_err());
        // One byte per element: four times as many.
        assert!(check_batch_size(&spec(4096, InputType::U8), 85, 1).is_ok());
        assert!(check_batch_size(&spec(4096, InputType::U8), 86, 1).is_err());
        // Each model thread holds its own batch: 4 of them at 4096 px fit 5 images each.
        let e = check_batch_size(&spec(4096, InputType::F32), 21, 4).unwrap_err();
        assert!(
            e.contains("4 batches (--backend-concurrency) of 21 images"),
            "{e}"
        );
        assert!(e.contains("--max-batch to at most 5"), "{e}");
        assert!(check_batch_size(&spec(4096, InputType::F32), 5, 4).is_ok());
    }
}
