//! The pure rules: which status changes a device may make, how many executions a rollout
//! releases, and when abort criteria trip. No I/O, no clock: callers pass the time.

use crate::model::{AbortCriteria, ExecutionStatus, RolloutConfig};

/// Why a device's status change is refused (the MQTT `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The execution is already terminal: `TerminalStateReached`.
    Terminal,
    /// A status a device may not set, or a change the state machine does not allow:
    /// `InvalidStateTransition`.
    InvalidTransition,
}

/// Whether a device may move an execution from `from` to `to` (UpdateJobExecution).
/// Devices set IN_PROGRESS, SUCCEEDED, FAILED or REJECTED; IN_PROGRESS → IN_PROGRESS updates the
/// details.
pub fn device_transition(from: ExecutionStatus, to: ExecutionStatus) -> Result<(), Refusal> {
    use ExecutionStatus::*;
    if from.is_terminal() {
        return Err(Refusal::Terminal);
    }
    match to {
        InProgress | Succeeded | Failed | Rejected => Ok(()),
        Queued if from == Queued => Ok(()),
        _ => Err(Refusal::InvalidTransition),
    }
}

/// The rollout's rate (executions per minute) once `notified` things were notified and
/// `succeeded` succeeded; `None` means no limit. An exponential rate starts at its base and is
/// multiplied by its factor each time the criterion's count is reached again; the maximum
/// (`maximumPerMinute`, else 1000 as AWS caps it) bounds it.
pub fn rate_per_minute(cfg: Option<&RolloutConfig>, notified: u64, succeeded: u64) -> Option<u64> {
    let cfg = cfg?;
    let max = cfg.maximum_per_minute.map(u64::from);
    let Some(exp) = &cfg.exponential_rate else {
        return max;
    };
    let crit = &exp.rate_increase_criteria;
    let steps = match (
        crit.number_of_notified_things,
        crit.number_of_succeeded_things,
    ) {
        (Some(n), _) if n > 0 => notified / u64::from(n),
        (_, Some(n)) if n > 0 => succeeded / u64::from(n),
        _ => 0,
    };
    let cap = max.unwrap_or(1000) as f64;
    let mut rate = f64::from(exp.base_rate_per_minute.max(1));
    for _ in 0..steps.min(64) {
        rate *= exp.increment_factor.max(1.0);
        if rate >= cap {
            break;
        }
    }
    Some(rate.min(cap).floor().max(1.0) as u64)
}

/// A rollout's window: when the current minute began and how many it released in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub start_ms: i64,
    pub released: u64,
}

/// How many more executions may be released at `now_ms` at `rate` per minute, and the window
/// after releasing them. A window lasts one minute from its first release.
pub fn releasable(rate: Option<u64>, window: Window, now_ms: i64, waiting: u64) -> (u64, Window) {
    let Some(rate) = rate else {
        return (
            waiting,
            Window {
                start_ms: now_ms,
                released: 0,
            },
        );
    };
    let mut w = window;
    if now_ms - w.start_ms >= 60_000 || now_ms < w.start_ms {
        w = Window {
            start_ms: now_ms,
            released: 0,
        };
    }
    let n = rate.saturating_sub(w.released).min(waiting);
    w.released += n;
    (n, w)
}

/// Terminal counts an abort decision reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub succeeded: u64,
    pub failed: u64,
    pub rejected: u64,
    pub timed_out: u64,
}

impl Outcomes {
    /// Things whose execution finished (succeeded or failed in any way).
    pub fn executed(&self) -> u64 {
        self.succeeded + self.failed + self.rejected + self.timed_out
    }

    fn failures(&self, failure_type: &str) -> u64 {
        match failure_type {
            "FAILED" => self.failed,
            "REJECTED" => self.rejected,
            "TIMED_OUT" => self.timed_out,
            _ => self.failed + self.rejected + self.timed_out,
        }
    }
}

/// The first criterion that trips: at least `minNumberOfExecutedThings` executions finished, and
/// the failures of its type are at least `thresholdPercentage` of them.
pub fn abort_tripped<'a>(criteria: &'a [AbortCriteria], o: &Outcomes) -> Option<&'a AbortCriteria> {
    let executed = o.executed();
    criteria.iter().find(|c| {
        executed > 0
            && executed >= u64::from(c.min_number_of_executed_things)
            && (o.failures(&c.failure_type) as f64) * 100.0
                >= c.threshold_percentage * executed as f64
    })
}

/// The reason code a tripped criterion leaves on the job (ReasonCode is `[A-Z0-9_]+`).
pub fn abort_reason(c: &AbortCriteria) -> String {
    format!("{}_THRESHOLD_EXCEEDED", c.failure_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExponentialRate, RateIncreaseCriteria};
    use ExecutionStatus::*;
    use proptest::prelude::*;

    #[test]
    fn device_transitions() {
        assert_eq!(device_transition(Queued, InProgress), Ok(()));
        assert_eq!(device_transition(Queued, Succeeded), Ok(()));
        assert_eq!(device_transition(InProgress, InProgress), Ok(()));
        assert_eq!(device_transition(InProgress, Failed), Ok(()));
        assert_eq!(device_transition(InProgress, Rejected), Ok(()));
        assert_eq!(
            device_transition(InProgress, Canceled),
            Err(Refusal::InvalidTransition)
        );
        assert_eq!(
            device_transition(InProgress, Queued),
            Err(Refusal::InvalidTransition)
        );
        assert_eq!(
            device_transition(Queued, TimedOut),
            Err(Refusal::InvalidTransition)
        );
        for t in [Succeeded, Failed, TimedOut, Rejected, Removed, Canceled] {
            assert_eq!(device_transition(t, InProgress), Err(Refusal::Terminal));
        }
    }

    proptest! {
        #[test]
        fn terminal_states_never_change(from in 0usize..8, to in 0usize..8) {
            let (from, to) = (ExecutionStatus::ALL[from], ExecutionStatus::ALL[to]);
            let r = device_transition(from, to);
            if from.is_terminal() {
                prop_assert_eq!(r, Err(Refusal::Terminal));
            }
            if r.is_ok() {
                prop_assert!(!from.is_terminal());
                prop_assert!(matches!(to, Queued | InProgress | Succeeded | Failed | Rejected));
            }
        }

        #[test]
        fn a_window_never_releases_more_than_the_rate(
            rate in 1u64..50, steps in proptest::collection::vec((0i64..30_000, 0u64..100), 1..40)
        ) {
            let mut w = Window::default();
            let mut now = 0;
            let mut in_minute: Vec<(i64, u64)> = vec![];
            for (dt, waiting) in steps {
                now += dt;
                let (n, w2) = releasable(Some(rate), w, now, waiting);
                prop_assert!(n <= waiting);
                w = w2;
                in_minute.push((now, n));
                // Releases within any window of one minute from its start stay within the rate.
                let total: u64 = in_minute.iter().filter(|(t, _)| *t >= w.start_ms).map(|(_, n)| n).sum();
                prop_assert!(total <= rate);
            }
        }

        #[test]
        fn exponential_rate_grows_monotonically_and_stays_capped(
            base in 1u32..100, factor in 1.1f64..5.0, every in 1u32..20, max in 1u32..1000,
            a in 0u64..500, b in 0u64..500
        ) {
            let cfg = RolloutConfig {
                maximum_per_minute: Some(max),
                exponential_rate: Some(ExponentialRate {
                    base_rate_per_minute: base,
                    increment_factor: factor,
                    rate_increase_criteria: RateIncreaseCriteria {
                        number_of_notified_things: Some(every),
                        number_of_succeeded_things: None,
                    },
                }),
            };
            let (lo, hi) = (a.min(b), a.max(b));
            let r1 = rate_per_minute(Some(&cfg), lo, 0).unwrap();
            let r2 = rate_per_minute(Some(&cfg), hi, 0).unwrap();
            prop_assert!(r1 <= r2);
            prop_assert!(r2 <= u64::from(max.max(1)));
        }
    }

    #[test]
    fn exponential_rate_steps() {
        let cfg = RolloutConfig {
            maximum_per_minute: None,
            exponential_rate: Some(ExponentialRate {
                base_rate_per_minute: 10,
                increment_factor: 2.0,
                rate_increase_criteria: RateIncreaseCriteria {
                    number_of_notified_things: None,
                    number_of_succeeded_things: Some(5),
                },
            }),
        };
        assert_eq!(rate_per_minute(Some(&cfg), 100, 0), Some(10));
        assert_eq!(rate_per_minute(Some(&cfg), 100, 5), Some(20));
        assert_eq!(rate_per_minute(Some(&cfg), 100, 12), Some(40));
        assert_eq!(rate_per_minute(Some(&cfg), 100, 5000), Some(1000));
        assert_eq!(rate_per_minute(None, 0, 0), None);
    }

    #[test]
    fn releases_per_window() {
        let (n, w) = releasable(Some(2), Window::default(), 1_000, 5);
        assert_eq!((n, w.released), (2, 2));
        let (n, w) = releasable(Some(2), w, 30_000, 3);
        assert_eq!(n, 0);
        let (n, w) = releasable(Some(2), w, 61_000, 3);
        assert_eq!((n, w.start_ms), (2, 61_000));
        assert_eq!(releasable(None, w, 61_001, 7).0, 7);
    }

    fn crit(failure_type: &str, pct: f64, min: u32) -> AbortCriteria {
        AbortCriteria {
            failure_type: failure_type.into(),
            action: "CANCEL".into(),
            threshold_percentage: pct,
            min_number_of_executed_things: min,
        }
    }

    #[test]
    fn abort_criteria() {
        let c = [crit("FAILED", 50.0, 2)];
        let one_failure = Outcomes {
            failed: 1,
            ..Default::default()
        };
        // Below the minimum of executed things.
        assert!(abort_tripped(&c, &one_failure).is_none());
        let half = Outcomes {
            failed: 1,
            succeeded: 1,
            ..Default::default()
        };
        assert!(abort_tripped(&c, &half).is_some());
        let third = Outcomes {
            failed: 1,
            succeeded: 2,
            ..Default::default()
        };
        assert!(abort_tripped(&c, &third).is_none());
        let rejected = Outcomes {
            rejected: 2,
            ..Default::default()
        };
        assert!(abort_tripped(&c, &rejected).is_none());
        assert!(abort_tripped(&[crit("ALL", 100.0, 2)], &rejected).is_some());
        assert!(abort_tripped(&[crit("REJECTED", 100.0, 2)], &rejected).is_some());
        assert_eq!(
            abort_reason(&crit("TIMED_OUT", 1.0, 1)),
            "TIMED_OUT_THRESHOLD_EXCEEDED"
        );
    }
}
