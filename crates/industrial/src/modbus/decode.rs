//! Register decoding, scaling and deadband: pure functions over what a Modbus read returns.

use crate::sample::Value;
use serde::Deserialize;

/// How the registers of one point are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Float32,
    Float64,
    /// Two ASCII bytes per register, high byte first; trailing NULs and spaces trimmed.
    String,
    /// A coil or discrete input, or bit `bit` of a register.
    Boolean,
}

impl DataType {
    /// Registers the type spans (strings take their `count`).
    pub fn registers(self) -> Option<u16> {
        match self {
            DataType::Int16 | DataType::Uint16 | DataType::Boolean => Some(1),
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => Some(2),
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => Some(4),
            DataType::String => None,
        }
    }

    /// The SiteWise null-value type letter for this data type (`D`, `I`, `S`, `B`).
    pub fn null_type(self) -> &'static str {
        match self {
            DataType::String => "S",
            DataType::Boolean => "B",
            _ => "D",
        }
    }
}

/// Order of the 16-bit words of a multi-register value. Modbus itself is big-endian within a
/// register; devices disagree on the word order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// Most significant word first (ABCD).
    #[default]
    Big,
    /// Least significant word first (CDAB).
    Little,
}

/// Decodes registers into a raw number (or string / boolean), before scaling.
pub fn decode_registers(
    words: &[u16],
    data_type: DataType,
    order: WordOrder,
    bit: Option<u8>,
) -> Result<Value, String> {
    if let Some(need) = data_type.registers()
        && words.len() < need as usize
    {
        return Err(format!(
            "{data_type:?} needs {need} registers, the device returned {}",
            words.len()
        ));
    }
    // Words most significant first.
    let msw_first = |n: usize| -> Vec<u16> {
        let mut w = words[..n].to_vec();
        if order == WordOrder::Little {
            w.reverse();
        }
        w
    };
    let wide = |n: usize| -> u64 {
        msw_first(n)
            .iter()
            .fold(0u64, |acc, w| (acc << 16) | *w as u64)
    };
    Ok(match data_type {
        DataType::Int16 => Value::Integer(words[0] as i16 as i64),
        DataType::Uint16 => Value::Integer(words[0] as i64),
        DataType::Int32 => Value::Integer(wide(2) as u32 as i32 as i64),
        DataType::Uint32 => Value::Integer(wide(2) as i64),
        DataType::Int64 => Value::Integer(wide(4) as i64),
        DataType::Uint64 => {
            let v = wide(4);
            i64::try_from(v)
                .map(Value::Integer)
                .unwrap_or(Value::Double(v as f64))
        }
        DataType::Float32 => Value::Double(f32::from_bits(wide(2) as u32) as f64),
        DataType::Float64 => Value::Double(f64::from_bits(wide(4))),
        DataType::Boolean => Value::Boolean(match bit {
            Some(b) => words[0] >> b & 1 == 1,
            None => words[0] != 0,
        }),
        DataType::String => {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let text = String::from_utf8_lossy(&bytes);
            Value::String(text.trim_end_matches(['\0', ' ']).to_string())
        }
    })
}

/// `raw * scale + offset`. Numbers become doubles when scaled; booleans and strings pass.
pub fn scale(raw: Value, scale: Option<f64>, offset: Option<f64>) -> Value {
    if scale.is_none() && offset.is_none() {
        return raw;
    }
    let (s, o) = (scale.unwrap_or(1.0), offset.unwrap_or(0.0));
    match raw {
        Value::Integer(i) => Value::Double(i as f64 * s + o),
        Value::Double(d) => Value::Double(d * s + o),
        other => other,
    }
}

/// SiteWise's deadband: a new value is sent only when it differs from the last one sent by more
/// than `value` (ABSOLUTE) or `value` percent of `eguMax - eguMin` (PERCENT); with
/// `timeoutMilliseconds` it is sent anyway once that long has passed since the last one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deadband {
    #[serde(rename = "type", default)]
    pub kind: DeadbandKind,
    pub value: f64,
    #[serde(default)]
    pub egu_min: Option<f64>,
    #[serde(default)]
    pub egu_max: Option<f64>,
    #[serde(default)]
    pub timeout_milliseconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeadbandKind {
    #[default]
    Absolute,
    Percent,
}

impl Deadband {
    /// The absolute width of the band; PERCENT needs both EGU limits.
    pub fn width(&self) -> Result<f64, String> {
        match self.kind {
            DeadbandKind::Absolute => Ok(self.value),
            DeadbandKind::Percent => match (self.egu_min, self.egu_max) {
                (Some(lo), Some(hi)) if hi > lo => Ok(self.value / 100.0 * (hi - lo)),
                _ => Err("a PERCENT deadband needs eguMin < eguMax".into()),
            },
        }
    }
}

/// The last value sent for one point, to apply its deadband.
#[derive(Debug, Default)]
pub struct DeadbandState {
    last: Option<(Value, i64)>,
}

impl DeadbandState {
    /// Whether `value` at `now_ns` passes the band (and, if so, becomes the last value sent).
    /// A value after a Bad one always passes: the state is reset by [`DeadbandState::reset`].
    pub fn admit(&mut self, band: Option<(&Deadband, f64)>, value: &Value, now_ns: i64) -> bool {
        let pass = match (&self.last, band) {
            (None, _) | (_, None) => true,
            (Some((last, at)), Some((db, width))) => {
                let timed_out = db
                    .timeout_milliseconds
                    .is_some_and(|t| now_ns - at >= t as i64 * 1_000_000);
                timed_out
                    || match (as_f64(last), as_f64(value)) {
                        (Some(a), Some(b)) => (b - a).abs() > width || b.is_nan() != a.is_nan(),
                        _ => last != value,
                    }
            }
        };
        if pass {
            self.last = Some((value.clone(), now_ns));
        }
        pass
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

pub(crate) fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        Value::Integer(i) => Some(*i as f64),
        Value::Boolean(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_of_each_width_and_sign() {
        let d = |w: &[u16], t| decode_registers(w, t, WordOrder::Big, None).unwrap();
        assert_eq!(d(&[0xFFFF], DataType::Int16), Value::Integer(-1));
        assert_eq!(d(&[0xFFFF], DataType::Uint16), Value::Integer(65535));
        assert_eq!(d(&[0xFFFF, 0xFFFE], DataType::Int32), Value::Integer(-2));
        assert_eq!(
            d(&[0x0001, 0x0000], DataType::Uint32),
            Value::Integer(65536)
        );
        assert_eq!(
            d(&[0, 0, 0x0001, 0x0002], DataType::Int64),
            Value::Integer(0x1_0002)
        );
        assert_eq!(
            d(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], DataType::Uint64),
            Value::Double(u64::MAX as f64)
        );
    }

    #[test]
    fn floats_in_both_word_orders() {
        let bits = 21.5f32.to_bits();
        let (hi, lo) = ((bits >> 16) as u16, bits as u16);
        assert_eq!(
            decode_registers(&[hi, lo], DataType::Float32, WordOrder::Big, None).unwrap(),
            Value::Double(21.5)
        );
        assert_eq!(
            decode_registers(&[lo, hi], DataType::Float32, WordOrder::Little, None).unwrap(),
            Value::Double(21.5)
        );
        let b = (-1234.25f64).to_bits();
        let w = [
            (b >> 48) as u16,
            (b >> 32) as u16,
            (b >> 16) as u16,
            b as u16,
        ];
        assert_eq!(
            decode_registers(&w, DataType::Float64, WordOrder::Big, None).unwrap(),
            Value::Double(-1234.25)
        );
    }

    #[test]
    fn strings_bits_and_short_reads() {
        let w = [u16::from_be_bytes(*b"OK"), u16::from_be_bytes(*b"!\0")];
        assert_eq!(
            decode_registers(&w, DataType::String, WordOrder::Big, None).unwrap(),
            Value::String("OK!".into())
        );
        assert_eq!(
            decode_registers(&[0b100], DataType::Boolean, WordOrder::Big, Some(2)).unwrap(),
            Value::Boolean(true)
        );
        let e = decode_registers(&[1], DataType::Float32, WordOrder::Big, None).unwrap_err();
        assert!(e.contains("needs 2 registers"), "{e}");
    }

    #[test]
    fn scaling_turns_numbers_into_doubles() {
        assert_eq!(
            scale(Value::Integer(215), Some(0.1), Some(-1.5)),
            Value::Double(20.0)
        );
        assert_eq!(scale(Value::Integer(3), None, None), Value::Integer(3));
        assert_eq!(
            scale(Value::Boolean(true), Some(2.0), None),
            Value::Boolean(true)
        );
    }

    #[test]
    fn deadband_absolute_percent_and_timeout() {
        let db = Deadband {
            kind: DeadbandKind::Absolute,
            value: 0.5,
            egu_min: None,
            egu_max: None,
            timeout_milliseconds: Some(1000),
        };
        let w = db.width().unwrap();
        let mut s = DeadbandState::default();
        let ms = 1_000_000;
        assert!(s.admit(Some((&db, w)), &Value::Double(10.0), 0));
        assert!(!s.admit(Some((&db, w)), &Value::Double(10.4), 100 * ms));
        assert!(!s.admit(Some((&db, w)), &Value::Double(9.6), 200 * ms));
        assert!(s.admit(Some((&db, w)), &Value::Double(10.6), 300 * ms));
        // Unchanged, but the timeout since the last value sent has passed.
        assert!(!s.admit(Some((&db, w)), &Value::Double(10.6), 1200 * ms));
        assert!(s.admit(Some((&db, w)), &Value::Double(10.6), 1300 * ms));
        s.reset();
        assert!(s.admit(Some((&db, w)), &Value::Double(10.6), 1400 * ms));
        let pct = Deadband {
            kind: DeadbandKind::Percent,
            value: 10.0,
            egu_min: Some(0.0),
            egu_max: Some(200.0),
            timeout_milliseconds: None,
        };
        assert_eq!(pct.width().unwrap(), 20.0);
        assert!(
            Deadband {
                egu_max: None,
                ..pct
            }
            .width()
            .is_err()
        );
    }
}
