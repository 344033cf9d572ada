//! Tensors as requests carry them, the models' input/output descriptions, and input checking.

use crate::InferenceError;

/// A tensor's elements, row-major. Serialized as `{"dtype": "f32", "data": [...]}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "dtype", content = "data", rename_all = "lowercase")]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

impl TensorData {
    /// The dtype's name as [`TensorSpec::dtype`] spells it.
    pub fn dtype(&self) -> &'static str {
        match self {
            TensorData::F32(_) => "f32",
            TensorData::I64(_) => "i64",
            TensorData::I32(_) => "i32",
            TensorData::U8(_) => "u8",
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An n-dimensional tensor: `{"shape": [1, 2], "dtype": "f32", "data": [0.5, 1.5]}`.
/// A rank-0 (scalar) tensor has `shape: []` and one element.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    #[serde(flatten)]
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that `data` has as many elements as `shape` says.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, InferenceError> {
        let t = Tensor { shape, data };
        t.check_len("tensor")?;
        Ok(t)
    }

    fn check_len(&self, what: &str) -> Result<(), InferenceError> {
        let want = self.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        match want {
            Some(n) if n == self.data.len() => Ok(()),
            _ => Err(InferenceError::Input(format!(
                "{what} has shape {} ({} elements) but carries {} values",
                fmt_shape(&self.shape),
                want.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                self.data.len()
            ))),
        }
    }
}

/// One input or output of a model: its name, dtype (`"f32"`, `"i64"`, `"i32"`, `"u8"`, or
/// another ONNX type's short name such as `"f16"` or `"bool"`), and shape, where `None` is a
/// dimension the model leaves open (a batch size, a sequence length).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<Option<usize>>,
}

/// `[1, 3, 224, 224]`
pub(crate) fn fmt_shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// `[?, 3, 224, 224]`
pub(crate) fn fmt_dims(s: &[Option<usize>]) -> String {
    let parts: Vec<String> = s
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Checks `inputs` against the model's `specs` (count, dtype, element count, rank, fixed
/// dimensions) and returns them ready for a backend (a `[1]` tensor for a scalar input becomes
/// rank 0).
pub(crate) fn check_inputs(
    specs: &[TensorSpec],
    mut inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, InferenceError> {
    if inputs.len() != specs.len() {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(InferenceError::Input(format!(
            "the model takes {} input(s) ({}) but the request has {}",
            specs.len(),
            names.join(", "),
            inputs.len()
        )));
    }
    for (spec, t) in specs.iter().zip(inputs.iter_mut()) {
        t.check_len(&format!("input '{}'", spec.name))?;
        if t.data.dtype() != spec.dtype {
            return Err(InferenceError::Input(format!(
                "input '{}' has dtype {}, but the model expects {}",
                spec.name,
                t.data.dtype(),
                spec.dtype
            )));
        }
        if spec.shape.is_empty() && t.shape == [1] {
            t.shape.clear();
        }
        let fits = t.shape.len() == spec.shape.len()
            && spec
                .shape
                .iter()
                .zip(&t.shape)
                .all(|(want, got)| want.is_none_or(|w| w == *got));
        if !fits {
            return Err(InferenceError::Shape {
                input: spec.name.clone(),
                expected: spec.shape.clone(),
                got: t.shape.clone(),
            });
        }
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &'static str, shape: Vec<Option<usize>>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    #[test]
    fn json_shape_matches_the_wire_format() {
        let t = Tensor {
            shape: vec![2],
            data: TensorData::I64(vec![1, 2]),
        };
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, r#"{"shape":[2],"dtype":"i64","data":[1,2]}"#);
        let back: Tensor = serde_json::from_str(&j).unwrap();
        assert_eq!(back, t);
        let f: Tensor =
            serde_json::from_str(r#"{"shape":[],"dtype":"f32","data":[0.25]}"#).unwrap();
        assert_eq!(f.data, TensorData::F32(vec![0.25]));
    }

    #[test]
    fn shape_mismatch_names_input_expected_and_got() {
        let specs = [spec("x", "f32", vec![None, Some(3), Some(4)])];
        let bad = Tensor {
            shape: vec![1, 4, 3],
            data: TensorData::F32(vec![0.0; 12]),
        };
        let err = check_inputs(&specs, vec![bad]).unwrap_err();
        assert!(matches!(&err, InferenceError::Shape { input, .. } if input == "x"));
        assert_eq!(
            err.to_string(),
            "input 'x' has shape [1, 4, 3], but the model expects [?, 3, 4]"
        );
        let good = Tensor {
            shape: vec![5, 3, 4],
            data: TensorData::F32(vec![0.0; 60]),
        };
        assert!(check_inputs(&specs, vec![good]).is_ok());
    }

    #[test]
    fn dtype_count_and_length_are_checked() {
        let specs = [spec("sr", "i64", vec![])];
        let e = check_inputs(&specs, vec![]).unwrap_err().to_string();
        assert!(e.contains("1 input(s) (sr)"), "{e}");
        let f = Tensor {
            shape: vec![],
            data: TensorData::F32(vec![1.0]),
        };
        let e = check_inputs(&specs, vec![f]).unwrap_err().to_string();
        assert_eq!(e, "input 'sr' has dtype f32, but the model expects i64");
        let short = Tensor {
            shape: vec![2, 2],
            data: TensorData::I64(vec![1]),
        };
        let e = check_inputs(&specs, vec![short]).unwrap_err().to_string();
        assert!(
            e.contains("input 'sr' has shape [2, 2] (4 elements) but carries 1"),
            "{e}"
        );
    }

    #[test]
    fn one_element_vector_fits_a_scalar_input() {
        let specs = [spec("sr", "i64", vec![])];
        let t = Tensor {
            shape: vec![1],
            data: TensorData::I64(vec![16000]),
        };
        let out = check_inputs(&specs, vec![t]).unwrap();
        assert!(out[0].shape.is_empty());
    }
}
