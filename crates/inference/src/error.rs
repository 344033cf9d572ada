//! The one error type of the crate.

use std::path::PathBuf;

/// What went wrong loading or running a model. Messages name the file or input involved.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The model file could not be read, parsed or prepared.
    #[error("cannot load model {}: {cause}", path.display())]
    Load { path: PathBuf, cause: String },
    /// An input tensor's shape does not fit the model's.
    #[error(
        "input '{input}' has shape {}, but the model expects {}",
        crate::tensor::fmt_shape(got),
        crate::tensor::fmt_dims(expected)
    )]
    Shape {
        input: String,
        expected: Vec<Option<usize>>,
        got: Vec<usize>,
    },
    /// The request's inputs are unusable (count, dtype, data length, image).
    #[error("{0}")]
    Input(String),
    /// The engine failed while running the model.
    #[error("inference failed: {0}")]
    Backend(String),
}
