//! The jobs service's public shapes. Configuration structs (rollout, abort, timeout) serialize
//! in the iot API's own camelCase member names, so the control plane reads and writes them as is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `targetSelection`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TargetSelection {
    /// The targets' things when the job was created.
    #[default]
    Snapshot,
    /// Also things added to a target group later.
    Continuous,
}

impl TargetSelection {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSelection::Snapshot => "SNAPSHOT",
            TargetSelection::Continuous => "CONTINUOUS",
        }
    }
}

/// `jobExecutionsRolloutConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_rate: Option<ExponentialRate>,
}

/// `exponentialRate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExponentialRate {
    pub base_rate_per_minute: u32,
    pub increment_factor: f64,
    pub rate_increase_criteria: RateIncreaseCriteria,
}

/// `rateIncreaseCriteria`: one of the two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateIncreaseCriteria {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_notified_things: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_succeeded_things: Option<u32>,
}

/// `abortConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortConfig {
    pub criteria_list: Vec<AbortCriteria>,
}

/// One abort criterion: `failureType` FAILED, REJECTED, TIMED_OUT or ALL; `action` CANCEL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortCriteria {
    pub failure_type: String,
    pub action: String,
    pub threshold_percentage: f64,
    pub min_number_of_executed_things: u32,
}

/// `timeoutConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress_timeout_in_minutes: Option<i64>,
}

/// A CreateJob request (the iot operation's members; `namespace_id` is Greengrass's
/// `aws-gg-deployment` for deployments).
#[derive(Debug, Clone, Default)]
pub struct CreateJob {
    pub job_id: String,
    /// Thing ARNs and thing-group ARNs.
    pub targets: Vec<String>,
    /// The job document, a JSON text.
    pub document: String,
    pub description: Option<String>,
    pub target_selection: TargetSelection,
    pub rollout: Option<RolloutConfig>,
    pub abort: Option<AbortConfig>,
    pub timeout: Option<TimeoutConfig>,
    pub namespace_id: Option<String>,
}

/// CreateJob / CancelJob's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    pub job_id: String,
    pub job_arn: String,
    pub description: Option<String>,
}

/// A job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    InProgress,
    Canceled,
    DeletionInProgress,
    Completed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Canceled => "CANCELED",
            JobStatus::DeletionInProgress => "DELETION_IN_PROGRESS",
            JobStatus::Completed => "COMPLETED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "IN_PROGRESS" => JobStatus::InProgress,
            "CANCELED" => JobStatus::Canceled,
            "DELETION_IN_PROGRESS" => JobStatus::DeletionInProgress,
            "COMPLETED" => JobStatus::Completed,
            _ => return None,
        })
    }
}

/// A job execution's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecutionStatus {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Removed,
    Canceled,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 8] = [
        ExecutionStatus::Queued,
        ExecutionStatus::InProgress,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Rejected,
        ExecutionStatus::Removed,
        ExecutionStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "QUEUED",
            ExecutionStatus::InProgress => "IN_PROGRESS",
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
            ExecutionStatus::Rejected => "REJECTED",
            ExecutionStatus::Removed => "REMOVED",
            ExecutionStatus::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ExecutionStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// No further change is possible.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecutionStatus::Queued | ExecutionStatus::InProgress)
    }
}

/// jobProcessDetails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessDetails {
    /// Targets still being resolved into executions (the rollout has things left to notify).
    pub processing_targets: Vec<String>,
    pub queued: u64,
    pub in_progress: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub rejected: u64,
    pub timed_out: u64,
    pub removed: u64,
    pub canceled: u64,
}

impl ProcessDetails {
    pub(crate) fn count(&mut self, s: ExecutionStatus) {
        let c = match s {
            ExecutionStatus::Queued => &mut self.queued,
            ExecutionStatus::InProgress => &mut self.in_progress,
            ExecutionStatus::Succeeded => &mut self.succeeded,
            ExecutionStatus::Failed => &mut self.failed,
            ExecutionStatus::TimedOut => &mut self.timed_out,
            ExecutionStatus::Rejected => &mut self.rejected,
            ExecutionStatus::Removed => &mut self.removed,
            ExecutionStatus::Canceled => &mut self.canceled,
        };
        *c += 1;
    }
}

/// A job as DescribeJob shows it. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub job_id: String,
    pub job_arn: String,
    pub status: JobStatus,
    pub target_selection: TargetSelection,
    pub targets: Vec<String>,
    pub document: String,
    pub description: Option<String>,
    pub namespace_id: Option<String>,
    pub rollout: Option<RolloutConfig>,
    pub abort: Option<AbortConfig>,
    pub timeout: Option<TimeoutConfig>,
    pub force_canceled: bool,
    pub reason_code: Option<String>,
    pub comment: Option<String>,
    pub created_at: i64,
    pub last_updated_at: i64,
    pub completed_at: Option<i64>,
    pub process: ProcessDetails,
}

/// One thing's execution of a job. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct JobExecution {
    pub job_id: String,
    pub thing_name: String,
    pub namespace_id: Option<String>,
    pub status: ExecutionStatus,
    pub status_details: BTreeMap<String, String>,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub last_updated_at: i64,
    pub version_number: i64,
    pub execution_number: i64,
    pub force_canceled: bool,
    /// When an IN_PROGRESS execution times out, if it has a timeout.
    pub timeout_at: Option<i64>,
}

/// What the service announces after each commit ([`crate::JobsService::subscribe`]).
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// An execution was created (QUEUED, visible to its device) or changed status or details.
    ExecutionChanged {
        job_id: String,
        thing: String,
        status: ExecutionStatus,
        status_details: BTreeMap<String, String>,
    },
    /// The job reached COMPLETED, or was canceled.
    JobCompleted { job_id: String, status: JobStatus },
    /// Abort criteria tripped: the job is CANCELED with `reason_code`; `succeeded_things` had
    /// already SUCCEEDED (a deployment rolls them back).
    JobAborted {
        job_id: String,
        reason_code: String,
        succeeded_things: Vec<String>,
    },
}
