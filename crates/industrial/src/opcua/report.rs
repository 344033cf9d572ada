//! What reaches the stream: a property group's data-quality filter and deadband, applied to
//! each sample before it is sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::config::{DataQuality, Deadband};
use crate::sample::{Quality, Sample, Value};

/// Per-group settings that decide whether a sample is reported.
#[derive(Debug, Clone)]
pub struct ReportRules {
    pub quality: DataQuality,
    pub deadband: Option<Deadband>,
}

impl ReportRules {
    fn allows(&self, q: Quality) -> bool {
        match q {
            Quality::Good => self.quality.allow_good_quality,
            Quality::Bad => self.quality.allow_bad_quality,
            Quality::Uncertain => self.quality.allow_uncertain_quality,
        }
    }
}

struct Last {
    quality: Quality,
    number: Option<f64>,
    at: Instant,
}

/// Remembers what was last reported per alias, for the deadband.
#[derive(Default)]
pub struct Reporter {
    last: HashMap<String, Last>,
}

fn number(v: &Option<Value>) -> Option<f64> {
    match v {
        Some(Value::Double(d)) => Some(*d),
        Some(Value::Integer(i)) => Some(*i as f64),
        _ => None,
    }
}

impl Reporter {
    /// Whether `sample` goes out under `rules`; records it when it does.
    pub fn admit(&mut self, sample: &Sample, rules: &ReportRules, now: Instant) -> bool {
        if !rules.allows(sample.quality) {
            return false;
        }
        let n = number(&sample.value);
        if let (Some(db), Some(v), Some(last)) = (&rules.deadband, n, self.last.get(&sample.alias))
            && let Some(prev) = last.number
            && last.quality == sample.quality
        {
            let timed_out = db
                .timeout_milliseconds
                .is_some_and(|ms| now.duration_since(last.at) >= Duration::from_millis(ms));
            if (v - prev).abs() <= db.threshold() && !timed_out {
                return false;
            }
        }
        self.last.insert(
            sample.alias.clone(),
            Last {
                quality: sample.quality,
                number: n,
                at: now,
            },
        );
        true
    }

    /// After an outage the first value must be reported whatever the deadband says.
    pub fn forget(&mut self) {
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opcua::config::DeadbandType;

    fn s(v: f64, q: Quality) -> Sample {
        Sample {
            alias: "/a".into(),
            value: Some(Value::Double(v)),
            quality: q,
            timestamp_ns: 0,
        }
    }

    fn rules(kind: DeadbandType, value: f64, timeout: Option<u64>) -> ReportRules {
        ReportRules {
            quality: DataQuality::default(),
            deadband: Some(Deadband {
                kind,
                value,
                egu_min: Some(0.0),
                egu_max: Some(200.0),
                timeout_milliseconds: timeout,
            }),
        }
    }

    #[test]
    fn absolute_deadband_drops_small_changes() {
        let r = rules(DeadbandType::Absolute, 1.0, None);
        let mut rep = Reporter::default();
        let t = Instant::now();
        assert!(rep.admit(&s(10.0, Quality::Good), &r, t));
        assert!(!rep.admit(&s(10.5, Quality::Good), &r, t));
        assert!(!rep.admit(&s(11.0, Quality::Good), &r, t));
        assert!(rep.admit(&s(11.5, Quality::Good), &r, t));
        // A change of quality is always news.
        assert!(rep.admit(&s(11.6, Quality::Uncertain), &r, t));
    }

    #[test]
    fn percent_deadband_is_a_share_of_the_egu_range() {
        // 5 % of 0..200 = 10.
        let r = rules(DeadbandType::Percent, 5.0, None);
        let mut rep = Reporter::default();
        let t = Instant::now();
        assert!(rep.admit(&s(100.0, Quality::Good), &r, t));
        assert!(!rep.admit(&s(109.0, Quality::Good), &r, t));
        assert!(rep.admit(&s(111.0, Quality::Good), &r, t));
    }

    #[test]
    fn deadband_timeout_reports_an_unchanged_value() {
        let r = rules(DeadbandType::Absolute, 1.0, Some(1000));
        let mut rep = Reporter::default();
        let t = Instant::now();
        assert!(rep.admit(&s(10.0, Quality::Good), &r, t));
        assert!(!rep.admit(&s(10.0, Quality::Good), &r, t + Duration::from_millis(500)));
        assert!(rep.admit(&s(10.0, Quality::Good), &r, t + Duration::from_millis(1000)));
    }

    #[test]
    fn quality_filter_and_forget() {
        let mut r = rules(DeadbandType::Absolute, 1.0, None);
        r.quality.allow_uncertain_quality = false;
        let mut rep = Reporter::default();
        let t = Instant::now();
        assert!(!rep.admit(&s(1.0, Quality::Uncertain), &r, t));
        assert!(rep.admit(&s(1.0, Quality::Good), &r, t));
        rep.forget();
        assert!(rep.admit(&s(1.0, Quality::Good), &r, t));
    }
}
