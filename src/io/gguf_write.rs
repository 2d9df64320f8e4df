//! Writing GGUF files (version 3, as llama.cpp's `gguf.py` writes them): the metadata, then
//! each tensor's name, shape, type and offset, then the data, every tensor aligned to 32
//! bytes. Tensors are produced one at a time while writing (a model is quantized a tensor at a
//! time, never held twice), and the file is written atomically: an error at any point leaves
//! no partial file behind.

use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use std::io::Write;
use std::path::Path;

const ALIGNMENT: usize = 32;

/// Metadata entries: key and value, in the order written.
pub type Metadata = Vec<(String, Value)>;

/// One tensor to write: its llama.cpp name, its shape in row-major order (`[rows, cols]`,
/// written innermost first as GGUF does), its type, and a function that makes its data.
pub struct TensorOut<'a> {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    pub data: Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>,
}

impl TensorOut<'_> {
    /// Bytes the data takes: whole blocks along the innermost dimension.
    pub fn size(&self) -> Result<usize> {
        let (bs, ts) = (self.dtype.block_size(), self.dtype.type_size());
        let cols = *self.dims.last().unwrap_or(&1);
        if !cols.is_multiple_of(bs) {
            return Err(Error::Config(format!(
                "tensor {}: {cols} columns are not a whole number of {:?} blocks of {bs}",
                self.name, self.dtype
            )));
        }
        Ok(self.dims.iter().product::<usize>() / bs * ts)
    }
}

/// ggml's number for a tensor type (`enum ggml_type`).
pub fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn put_str(w: &mut dyn Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// A value without its type (arrays: element type, count, elements).
fn put_value(w: &mut dyn Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => put_str(w, s),
        Value::Array(items) => {
            let t = items.first().map_or(type_id(&Value::U8(0)), type_id);
            if items.iter().any(|i| type_id(i) != t) {
                return Err(std::io::Error::other("an array mixes value types"));
            }
            w.write_all(&t.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|i| put_value(w, i))
        }
    }
}

fn pad(w: &mut dyn Write, written: usize) -> std::io::Result<usize> {
    let n = written.next_multiple_of(ALIGNMENT) - written;
    w.write_all(&vec![0u8; n])?;
    Ok(n)
}

/// Writes `metadata` and `tensors` to `path` as a GGUF file, atomically.
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: Vec<TensorOut>) -> Result<()> {
    let sizes = tensors
        .iter()
        .map(TensorOut::size)
        .collect::<Result<Vec<_>>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some(t) = tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
        return Err(Error::Config(format!("tensor {} is written twice", t.name)));
    }
    // The error a tensor's data function returned, kept whole (the writer sees io errors).
    let mut failed: Option<Error> = None;
    let result = crate::io::atomic::write_with(path, |w| {
        let mut head: Vec<u8> = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut head, k)?;
            head.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut head, v)?;
        }
        let mut offset = 0usize;
        for (t, &size) in tensors.iter().zip(&sizes) {
            put_str(&mut head, &t.name)?;
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in t.dims.iter().rev() {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
            head.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + size).next_multiple_of(ALIGNMENT);
        }
        w.write_all(&head)?;
        pad(w, head.len())?;
        for (t, &size) in tensors.into_iter().zip(&sizes) {
            let name = t.name.clone();
            let data = match (t.data)() {
                Ok(d) => d,
                Err(e) => {
                    failed = Some(e);
                    return Err(std::io::Error::other("a tensor could not be made"));
                }
            };
            if data.len() != size {
                return Err(std::io::Error::other(format!(
                    "tensor {name}: {} bytes of data, its shape and type take {size}",
                    data.len()
                )));
            }
            w.write_all(&data)?;
            pad(w, size)?;
        }
        Ok(())
    });
    match (result, failed) {
        (_, Some(e)) => Err(e),
        (r, None) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::Gguf;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// What we write, candle's reader reads back: metadata of every type, and tensors of
    /// several types and sizes (the offsets and padding between them).
    #[test]
    fn candle_reads_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 96.0, &dev)
            .unwrap()
            .reshape((3, 32))
            .unwrap();
        let b = Tensor::arange(0f32, 5.0, &dev).unwrap();
        let qa = QTensor::quantize(&a, GgmlDType::Q8_0).unwrap();
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("n".to_string(), Value::U32(7)),
            ("x".to_string(), Value::F64(0.5)),
            ("flag".to_string(), Value::Bool(true)),
            (
                "list".to_string(),
                Value::Array(vec![Value::String("a b".into()), Value::String("c".into())]),
            ),
            (
                "ids".to_string(),
                Value::Array(vec![Value::I32(1), Value::I32(-2)]),
            ),
        ];
        let data = qa.data().unwrap().to_vec();
        let tensors = vec![
            TensorOut {
                name: "a".into(),
                dims: vec![3, 32],
                dtype: GgmlDType::Q8_0,
                data: Box::new(move || Ok(data)),
            },
            TensorOut {
                name: "b".into(),
                dims: vec![5],
                dtype: GgmlDType::F32,
                data: Box::new(|| Ok((0..5).flat_map(|i| (i as f32).to_le_bytes()).collect())),
            },
        ];
        write(&path, &metadata, tensors).unwrap();
        let mut g = Gguf::open(&path).unwrap();
        assert_eq!(g.architecture().unwrap(), "llama");
        assert_eq!(g.usize("n").unwrap(), 7);
        assert_eq!(g.f64("x").unwrap(), Some(0.5));
        assert_eq!(g.bool("flag"), Some(true));
        assert_eq!(g.str_array("list").unwrap(), ["a b", "c"]);
        assert_eq!(g.int_array("ids").unwrap(), Some(vec![1, -2]));
        let ra = g.qtensor("a", &dev).unwrap();
        assert_eq!(ra.shape().dims(), [3, 32]);
        assert_eq!(ra.data().unwrap()[..], qa.data().unwrap()[..]);
        let rb = g.qtensor("b", &dev).unwrap().dequantize(&dev).unwrap();
        assert_eq!(rb.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    }

    /// A failing tensor leaves no file (and no temporary one) behind, and its error is the
    /// one reported; so do a shape a block type cannot hold and a repeated name.
    #[test]
    fn errors_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let bad = |name: &str, cols: usize, dtype| TensorOut {
            name: name.into(),
            dims: vec![1, cols],
            dtype,
            data: Box::new(|| Err(Error::Config("no data for you".into()))),
        };
        let e = write(&path, &[], vec![bad("w", 32, GgmlDType::Q8_0)]).unwrap_err();
        assert!(e.to_string().contains("no data for you"), "{e}");
        let e = write(&path, &[], vec![bad("w", 33, GgmlDType::Q4_0)]).unwrap_err();
        assert!(e.to_string().contains("33 columns"), "{e}");
        let e = write(
            &path,
            &[],
            vec![bad("w", 32, GgmlDType::F32), bad("w", 32, GgmlDType::F32)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("written twice"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
