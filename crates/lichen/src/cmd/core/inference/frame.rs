//! The frames between the core and its `lichen-inference` worker, over the worker's stdin and
//! stdout: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! JSON because requests arrive from local pub/sub as JSON already and answers go back as JSON:
//! the core forwards them without decoding tensors, and a frame reads plainly in a trace. The
//! length prefix lets either side read whole frames without scanning for delimiters.
//! Shared by the core (`cmd/core/inference`) and the worker (`inference_main.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

/// Largest frame either side accepts: an image or a tensor of a few million values fits, a
/// corrupt length prefix cannot make the reader allocate gigabytes.
pub const MAX_FRAME: usize = 64 << 20;

/// What the core asks of the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ToWorker {
    /// Loads these models (replacing any loaded before); answered by [`FromWorker::Loaded`].
    Load {
        seq: u64,
        models: BTreeMap<String, ModelSpec>,
    },
    /// Runs one request (the JSON published on the model's request topic); answered by
    /// [`FromWorker::Answer`].
    Run {
        seq: u64,
        model: String,
        request: Value,
    },
}

/// One model as the worker loads it: the file, already resolved by the core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    pub path: PathBuf,
    /// Threads of one run; 0 = the device's cores.
    #[serde(default)]
    pub threads: usize,
    /// `tract` (default) or `onnxruntime`.
    #[serde(default)]
    pub backend: Option<String>,
    /// Image pre-processing (the engine's `image::Preprocess`, as configured).
    #[serde(default)]
    pub preprocess: Option<Value>,
}

/// What the worker answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FromWorker {
    Loaded {
        seq: u64,
        models: BTreeMap<String, LoadOutcome>,
    },
    /// The answer to publish as is: `{"id", "model", "outputs", "durationMs"}` or
    /// `{"id", "model", "error": {"code", "message"}}`.
    Answer { seq: u64, response: Value },
}

/// How loading one model went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadOutcome {
    /// Loaded: its inputs and outputs as `name dtype [dims]` text, for the log.
    Ok {
        inputs: Vec<String>,
        outputs: Vec<String>,
    },
    /// Not loaded: the engine's message (it names the file).
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame is not valid JSON for this protocol: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pipe: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes one frame and flushes it.
pub fn write<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames).
pub fn read<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let body = read_body(r, u32::from_be_bytes(len) as usize)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

fn read_body(r: &mut impl Read, len: usize) -> Result<Vec<u8>, FrameError> {
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// The async reader the core uses on the worker's stdout.
pub async fn read_async<T: for<'de> Deserialize<'de>>(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<T>, FrameError> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_round_trip_back_to_back() {
        let load = ToWorker::Load {
            seq: 1,
            models: [(
                "cls".to_string(),
                ModelSpec {
                    path: "/m/model.onnx".into(),
                    threads: 2,
                    backend: None,
                    preprocess: Some(json!({"width": 192})),
                },
            )]
            .into(),
        };
        let run = ToWorker::Run {
            seq: 2,
            model: "cls".into(),
            request: json!({"id": "a", "inputs": []}),
        };
        let mut buf = encode(&load).unwrap();
        buf.extend(encode(&run).unwrap());
        let mut r = &buf[..];
        assert_eq!(read::<ToWorker>(&mut r).unwrap(), Some(load));
        assert_eq!(read::<ToWorker>(&mut r).unwrap(), Some(run));
        assert!(read::<ToWorker>(&mut r).unwrap().is_none());
    }

    #[test]
    fn the_length_prefix_is_big_endian_and_counts_the_json_body() {
        let answer = FromWorker::Answer {
            seq: 7,
            response: json!({"id": "x"}),
        };
        let buf = encode(&answer).unwrap();
        let body = &buf[4..];
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            body.len()
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            v,
            json!({"type": "answer", "seq": 7, "response": {"id": "x"}})
        );
        let loaded = FromWorker::Loaded {
            seq: 1,
            models: [("m".to_string(), LoadOutcome::Error("bad".into()))].into(),
        };
        let v: Value = serde_json::from_slice(&encode(&loaded).unwrap()[4..]).unwrap();
        assert_eq!(
            v,
            json!({"type": "loaded", "seq": 1, "models": {"m": {"error": "bad"}}})
        );
    }

    #[test]
    fn oversized_truncated_and_garbage_frames_are_errors_not_panics() {
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend([0u8; 16]);
        assert!(matches!(
            read::<ToWorker>(&mut &huge[..]),
            Err(FrameError::TooLarge(_))
        ));
        // Length says 10, only 3 bytes follow: the stream ended inside a frame.
        let mut short = 10u32.to_be_bytes().to_vec();
        short.extend(b"{\"a");
        assert!(matches!(
            read::<ToWorker>(&mut &short[..]),
            Err(FrameError::Io(_))
        ));
        let mut junk = 5u32.to_be_bytes().to_vec();
        junk.extend(b"hello");
        assert!(matches!(
            read::<ToWorker>(&mut &junk[..]),
            Err(FrameError::Json(_))
        ));
        // A frame of the wrong kind is rejected, not misread.
        let wrong = encode(&json!({"type": "explode", "seq": 1})).unwrap();
        assert!(read::<ToWorker>(&mut &wrong[..]).is_err());
    }
}
