//! One collected property value, in the shape SiteWise takes it.

/// Data quality of one property value (SiteWise's `GOOD` / `BAD` / `UNCERTAIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Quality {
    Good,
    Bad,
    Uncertain,
}

/// A property value (SiteWise's `Variant`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    Double(f64),
    Integer(i64),
    String(String),
    Boolean(bool),
}

/// One property value as SiteWise takes it: `value` is None only with `Quality::Bad`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub alias: String,
    pub value: Option<Value>,
    pub quality: Quality,
    pub timestamp_ns: i64,
}

/// Where sources send their samples.
pub type SampleSender = tokio::sync::mpsc::Sender<Sample>;
