//! OPC UA data values into SiteWise property values: status code → quality, variant → value,
//! source timestamp → nanoseconds, browse path → alias.

use std::time::{SystemTime, UNIX_EPOCH};

use ::opcua::types::{DataValue, DateTime, StatusCode, Variant};

use crate::sample::{Quality, Sample, Value};

/// OPC UA status severity (the top two bits) as SiteWise quality: 00 Good, 01 Uncertain,
/// 10/11 Bad.
pub fn quality_of(status: StatusCode) -> Quality {
    if status.is_good() {
        Quality::Good
    } else if status.is_uncertain() {
        Quality::Uncertain
    } else {
        Quality::Bad
    }
}

/// A variant as a SiteWise value. Numbers that fit an i64 stay integers; arrays become a
/// JSON array string (SiteWise's `JsonArray` conversion) and date-times ISO 8601 strings;
/// empty values, NaN/infinite numbers and types SiteWise cannot hold are `None`.
pub fn value_of(variant: &Variant) -> Option<Value> {
    Some(match variant {
        Variant::Empty => return None,
        Variant::Boolean(b) => Value::Boolean(*b),
        Variant::SByte(v) => Value::Integer(i64::from(*v)),
        Variant::Byte(v) => Value::Integer(i64::from(*v)),
        Variant::Int16(v) => Value::Integer(i64::from(*v)),
        Variant::UInt16(v) => Value::Integer(i64::from(*v)),
        Variant::Int32(v) => Value::Integer(i64::from(*v)),
        Variant::UInt32(v) => Value::Integer(i64::from(*v)),
        Variant::Int64(v) => Value::Integer(*v),
        Variant::UInt64(v) => match i64::try_from(*v) {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::Double(*v as f64),
        },
        Variant::Float(v) if v.is_finite() => Value::Double(f64::from(*v)),
        Variant::Double(v) if v.is_finite() => Value::Double(*v),
        Variant::Float(_) | Variant::Double(_) => return None,
        Variant::String(s) => Value::String(s.value().clone().unwrap_or_default()),
        Variant::LocalizedText(t) => Value::String(t.text.value().clone().unwrap_or_default()),
        Variant::DateTime(d) => Value::String(d.to_rfc3339()),
        Variant::Array(a) => {
            let items: Vec<serde_json::Value> = a
                .values
                .iter()
                .map(|v| match value_of(v) {
                    Some(Value::Double(d)) => serde_json::json!(d),
                    Some(Value::Integer(i)) => serde_json::json!(i),
                    Some(Value::Boolean(b)) => serde_json::json!(b),
                    Some(Value::String(s)) => serde_json::json!(s),
                    None => serde_json::Value::Null,
                })
                .collect();
            Value::String(serde_json::Value::Array(items).to_string())
        }
        _ => return None,
    })
}

/// Nanoseconds since the Unix epoch of an OPC UA date-time (None for the null date).
pub fn unix_nanos(t: &DateTime) -> Option<i64> {
    if t.is_null() {
        return None;
    }
    t.as_chrono().timestamp_nanos_opt()
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The sample for one data value: the source timestamp (else the server's, else now) and a
/// quality that is Bad whenever there is no usable value, so `value: None` only goes with Bad.
pub fn sample_of(alias: &str, dv: &DataValue) -> Sample {
    let status = dv.status.unwrap_or(StatusCode::Good);
    let value = dv.value.as_ref().and_then(value_of);
    let quality = if value.is_none() {
        Quality::Bad
    } else {
        quality_of(status)
    };
    let timestamp_ns = dv
        .source_timestamp
        .as_ref()
        .and_then(unix_nanos)
        .or_else(|| dv.server_timestamp.as_ref().and_then(unix_nanos))
        .unwrap_or_else(now_nanos);
    Sample {
        alias: alias.to_string(),
        value,
        quality,
        timestamp_ns,
    }
}

/// SiteWise Edge's alias for a node: the source's prefix followed by the node's browse path.
pub fn alias_of(prefix: &str, path: &[String]) -> String {
    let mut alias = prefix.trim_end_matches('/').to_string();
    for name in path {
        alias.push('/');
        alias.push_str(name);
    }
    alias
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::opcua::types::{Array, LocalizedText, UAString, VariantScalarTypeId};

    #[test]
    fn status_severity_maps_to_quality() {
        assert_eq!(quality_of(StatusCode::Good), Quality::Good);
        assert_eq!(quality_of(StatusCode::GoodClamped), Quality::Good);
        assert_eq!(
            quality_of(StatusCode::UncertainLastUsableValue),
            Quality::Uncertain
        );
        assert_eq!(
            quality_of(StatusCode::UncertainSensorNotAccurate),
            Quality::Uncertain
        );
        assert_eq!(quality_of(StatusCode::BadCommunicationError), Quality::Bad);
        assert_eq!(quality_of(StatusCode::BadNodeIdUnknown), Quality::Bad);
        assert_eq!(
            quality_of(StatusCode::BadWaitingForInitialData),
            Quality::Bad
        );
    }

    #[test]
    fn variants_become_sitewise_values() {
        assert_eq!(value_of(&Variant::Int32(-7)), Some(Value::Integer(-7)));
        assert_eq!(
            value_of(&Variant::UInt64(u64::MAX)),
            Some(Value::Double(u64::MAX as f64))
        );
        assert_eq!(value_of(&Variant::Float(1.5)), Some(Value::Double(1.5)));
        assert_eq!(value_of(&Variant::Double(f64::NAN)), None);
        assert_eq!(
            value_of(&Variant::Boolean(true)),
            Some(Value::Boolean(true))
        );
        assert_eq!(
            value_of(&Variant::String(UAString::from("on"))),
            Some(Value::String("on".into()))
        );
        assert_eq!(
            value_of(&Variant::LocalizedText(Box::new(LocalizedText::new(
                "en", "hot"
            )))),
            Some(Value::String("hot".into()))
        );
        assert_eq!(value_of(&Variant::Empty), None);
        let arr = Array::new(
            VariantScalarTypeId::Int32,
            vec![Variant::Int32(1), Variant::Int32(2)],
        )
        .unwrap();
        assert_eq!(
            value_of(&Variant::Array(Box::new(arr))),
            Some(Value::String("[1,2]".into()))
        );
    }

    #[test]
    fn samples_carry_source_time_and_never_a_good_empty_value() {
        let t = DateTime::ymd_hms(2024, 1, 2, 3, 4, 5);
        let dv = DataValue {
            value: Some(Variant::Double(2.5)),
            status: Some(StatusCode::UncertainLastUsableValue),
            source_timestamp: Some(t),
            ..Default::default()
        };
        let s = sample_of("/p/x", &dv);
        assert_eq!(s.quality, Quality::Uncertain);
        assert_eq!(s.value, Some(Value::Double(2.5)));
        assert_eq!(s.timestamp_ns, 1_704_164_645_000_000_000);
        let empty = DataValue {
            value: None,
            status: Some(StatusCode::Good),
            ..Default::default()
        };
        let s = sample_of("/p/x", &empty);
        assert_eq!((s.value, s.quality), (None, Quality::Bad));
    }

    #[test]
    fn alias_is_prefix_plus_browse_path() {
        let path = vec![
            "Plant".to_string(),
            "Line1".to_string(),
            "Temperature".to_string(),
        ];
        assert_eq!(alias_of("", &path), "/Plant/Line1/Temperature");
        assert_eq!(
            alias_of("/Factory", &path),
            "/Factory/Plant/Line1/Temperature"
        );
        assert_eq!(
            alias_of("Factory/", &path),
            "Factory/Plant/Line1/Temperature"
        );
    }
}
