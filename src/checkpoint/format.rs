//! The safetensors bytes: tensors encoded bit for bit, a header written in a fixed order so
//! that the same tensors always give the same file, and tensors decoded from a file.
//!
//! The format (safetensors' own): an 8-byte little-endian header length, a JSON header
//! mapping each tensor's name to its dtype, shape and byte range (plus `__metadata__`), padded
//! with spaces to a multiple of 8, then the tensors' bytes, back to back. Reading goes through
//! the `safetensors` crate, which validates all of it. Writing is ours, because
//! `safetensors::serialize` writes the metadata in `HashMap` order: the same checkpoint saved
//! twice gave two different files.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{Map, Value, json};

use crate::float::Float;

/// The dtype tapegrad writes for `A`.
pub(crate) fn dtype_of<A: Float>() -> Dtype {
    if A::DTYPE == "float32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

/// A tensor as a file holds it: its dtype, shape and bytes.
pub(crate) struct Decoded {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<u8>,
}

impl Decoded {
    /// An array of `A` and its shape, ready to be written.
    pub(crate) fn encode<A: Float>(array: &ArrayD<A>) -> Decoded {
        let mut data = Vec::with_capacity(array.len() * std::mem::size_of::<A>());
        for &x in array.iter() {
            x.write_le(&mut data);
        }
        Decoded {
            dtype: dtype_of::<A>(),
            shape: array.shape().to_vec(),
            data,
        }
    }

    /// The values as `A`: bit for bit when the file's dtype is `A`'s, otherwise converted
    /// (an `f64` file into an `f32` model, PyTorch's `int64` counters); `None` for a dtype
    /// tapegrad does not read.
    pub(crate) fn values<A: Float>(&self) -> Option<Vec<A>> {
        if self.dtype == dtype_of::<A>() {
            let size = std::mem::size_of::<A>();
            return Some(self.data.chunks_exact(size).map(A::read_le).collect());
        }
        let widened: Vec<f64> = match self.dtype {
            Dtype::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::read_le(c).as_f64())
                .collect(),
            Dtype::F64 => self.data.chunks_exact(8).map(f64::read_le).collect(),
            Dtype::I64 => self
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect(),
            _ => return None,
        };
        Some(widened.into_iter().map(A::of).collect())
    }

    /// The values as an array of `A` of the tensor's shape, if its dtype is one tapegrad
    /// reads and its bytes fill the shape.
    pub(crate) fn array<A: Float>(&self) -> Option<ArrayD<A>> {
        ArrayD::from_shape_vec(self.shape.clone(), self.values()?).ok()
    }

    /// The size of one element, for the dtypes tapegrad reads.
    fn element_size(&self) -> Option<usize> {
        match self.dtype {
            Dtype::F32 => Some(4),
            Dtype::F64 | Dtype::I64 => Some(8),
            _ => None,
        }
    }

    /// The transpose of a 2-D tensor (PyTorch's `(out, in)` weight into a `(in, out)`
    /// kernel). See [`Decoded::permuted`].
    pub(crate) fn transposed(self) -> Decoded {
        self.permuted(&[1, 0])
    }

    /// The tensor with its axes reordered, output axis `i` being input axis `axes[i]`
    /// (PyTorch's `(out, in, kh, kw)` convolution weight into an `(kh, kw, in, out)` kernel
    /// is `[2, 3, 1, 0]`), moving bytes. Anything else, including a shape whose size does
    /// not match the bytes, is returned as it is, for the checks to report. The work is
    /// bounded by the data, never by dimensions taken from the file (`[0, 2^63]` is empty).
    pub(crate) fn permuted(self, axes: &[usize]) -> Decoded {
        let Some(size) = self.element_size() else {
            return self;
        };
        let fits = self
            .shape
            .iter()
            .try_fold(size, |n, &d| n.checked_mul(d))
            .is_some_and(|n| n == self.data.len());
        if self.shape.len() != axes.len() || !fits {
            return self;
        }
        // Elements as opaque words of their size, permuted by ndarray.
        let words = |chunk: &[u8]| -> u64 {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(word)
        };
        let elements: Vec<u64> = self.data.chunks_exact(size).map(words).collect();
        let Ok(array) = ndarray::ArrayD::from_shape_vec(self.shape.clone(), elements) else {
            return self;
        };
        let permuted = array.permuted_axes(ndarray::IxDyn(axes));
        let shape = permuted.shape().to_vec();
        let data = permuted
            .as_standard_layout()
            .iter()
            .flat_map(|w| w.to_le_bytes()[..size].to_vec())
            .collect();
        Decoded {
            dtype: self.dtype,
            shape,
            data,
        }
    }
}

/// A file's tensors by name, and its metadata (sorted by key).
pub(crate) struct FileContents {
    pub(crate) tensors: BTreeMap<String, Decoded>,
    pub(crate) metadata: BTreeMap<String, String>,
}

/// Parses safetensors bytes, validating them.
pub(crate) fn parse(bytes: &[u8]) -> Result<FileContents, String> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let tensors = file
        .iter()
        .map(|(name, view): (&str, TensorView<'_>)| {
            let decoded = Decoded {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            (name.to_string(), decoded)
        })
        .collect();
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(FileContents { tensors, metadata })
}

/// Safetensors bytes for `tensors` and `metadata`: tensors in name order, the header's keys
/// sorted. The same input gives the same bytes.
pub(crate) fn serialize(
    tensors: &BTreeMap<String, Decoded>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    // serde_json's map keeps its keys sorted (no `preserve_order` feature).
    let mut header = Map::new();
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        let end = offset + tensor.data.len();
        header.insert(
            name.clone(),
            json!({
                "dtype": dtype_name(tensor.dtype),
                "shape": tensor.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let metadata: Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    header.insert("__metadata__".to_string(), Value::Object(metadata));
    let mut header = Value::Object(header).to_string().into_bytes();
    // Padded with spaces so that the tensors start 8-byte aligned, as safetensors does.
    header.resize(header.len().next_multiple_of(8), b' ');

    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for tensor in tensors.values() {
        bytes.extend_from_slice(&tensor.data);
    }
    bytes
}

fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "F32",
        Dtype::I64 => "I64",
        _ => "F64",
    }
}
