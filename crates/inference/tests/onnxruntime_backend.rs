//! The optional onnxruntime backend (`--features onnxruntime`) on a tiny model, against tract.
//! onnxruntime comes from `ORT_DYLIB_PATH`, else from the repository's venv (the Python wheel).
#![cfg(feature = "onnxruntime")]

mod support;

use lichen_inference::{Backend, InferenceError, Model, ModelOptions, Tensor, TensorData};

fn library() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return p.into();
    }
    let capi = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.venv/lib/python3.11/site-packages/onnxruntime/capi");
    let found = std::fs::read_dir(&capi).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so."))
        })
    });
    let lib = found.unwrap_or_else(|| {
        panic!(
            "set ORT_DYLIB_PATH: no libonnxruntime.so.* in {}",
            capi.display()
        )
    });
    // SAFETY: set before any thread of this test binary reads the environment (the backend
    // reads it once, below).
    unsafe { std::env::set_var("ORT_DYLIB_PATH", &lib) };
    lib
}

#[test]
fn onnxruntime_backend_agrees_with_tract_and_checks_inputs() {
    library();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linear.onnx");
    std::fs::write(&path, support::linear()).unwrap();
    let ort = Model::load(
        &path,
        &ModelOptions {
            backend: Backend::OnnxRuntime,
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ort.backend(), Backend::OnnxRuntime);
    assert_eq!(ort.inputs()[0].shape, vec![None, Some(3)]);
    let tract = Model::load(
        &path,
        &ModelOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let x = Tensor::new(
        vec![2, 3],
        TensorData::F32(vec![1.0, -2.0, 0.5, 3.0, 0.0, -1.0]),
    )
    .unwrap();
    let a = ort.run(vec![x.clone()]).unwrap();
    let b = tract.run(vec![x.clone()]).unwrap();
    assert_eq!(a, b);
    let TensorData::F32(v) = &a[0].data else {
        panic!()
    };
    let TensorData::F32(xs) = &x.data else {
        panic!()
    };
    assert_eq!(v, &support::linear_expected(xs));
    let bad = Tensor::new(vec![2, 2], TensorData::F32(vec![0.0; 4])).unwrap();
    assert!(matches!(
        ort.run(vec![bad]),
        Err(InferenceError::Shape { .. })
    ));
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &support::linear()[..40]).unwrap();
    let opts = ModelOptions {
        backend: Backend::OnnxRuntime,
        ..Default::default()
    };
    let e = Model::load(&truncated, &opts).unwrap_err().to_string();
    assert!(e.contains("truncated.onnx"), "{e}");
}
