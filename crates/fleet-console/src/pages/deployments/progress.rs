//! A deployment's rollout, device by device: the job execution each device has (QUEUED,
//! IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, …, with the status details it sent) and what the
//! fleet shows for it (which stays IN_PROGRESS while a reported success waits out a bake time),
//! counted, listed, and drawn over time. This is the live part of the deployment page.

use super::chart::{self, Timeline};
use crate::layout::{self, badge, now_ms};
use lichen_fleet_registry::{Deployment, EffectiveDeployment, ExecutionRow, PageRequest, Registry};
use maud::{Markup, html};
use serde_json::Value;
use std::collections::BTreeMap;

/// Statuses after which a device's execution changes no more.
pub(crate) const TERMINAL: &[&str] = &[
    "SUCCEEDED",
    "FAILED",
    "TIMED_OUT",
    "REJECTED",
    "CANCELED",
    "REMOVED",
];

/// One device's part in the rollout.
#[derive(Debug, Clone)]
pub(crate) struct DeviceProgress {
    pub thing: String,
    /// Its job execution (thing-group deployments).
    pub execution: Option<ExecutionRow>,
    /// What the device reported and the fleet shows (once it reported).
    pub effective: Option<EffectiveDeployment>,
}

impl DeviceProgress {
    /// What the fleet shows for this device: its deployment status once it reported, else its
    /// job execution's.
    pub(crate) fn status(&self) -> &str {
        match (&self.effective, &self.execution) {
            (Some(e), _) => &e.execution_status,
            (None, Some(x)) => &x.status,
            (None, None) => "UNKNOWN",
        }
    }

    /// The transitions the fleet recorded, for the chart.
    fn timeline(&self) -> Timeline {
        let mut events = Vec::new();
        if let Some(x) = &self.execution {
            events.push((x.queued_at, "QUEUED".to_string()));
            if let Some(s) = x.started_at {
                events.push((s, "IN_PROGRESS".to_string()));
            }
            if self.effective.is_none() && TERMINAL.contains(&x.status.as_str()) {
                events.push((x.updated_at, x.status.clone()));
            }
        }
        if let Some(e) = &self.effective {
            if self.execution.is_none() {
                events.push((e.created_ms, "IN_PROGRESS".to_string()));
            }
            events.push((e.modified_ms, e.execution_status.clone()));
        }
        Timeline { events }
    }
}

/// A deployment and its devices.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub deployment: Deployment,
    pub devices: Vec<DeviceProgress>,
    /// Things the target holds now (a group's members, recursively; 1 for a thing).
    pub targets: usize,
}

impl Progress {
    /// Devices per shown status.
    pub(crate) fn counts(&self) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for d in &self.devices {
            *c.entry(d.status().to_string()).or_default() += 1;
        }
        c
    }

    pub(crate) fn finished(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| TERMINAL.contains(&d.status()))
            .count()
    }

    /// Whether the page should keep refreshing (the deployment is still under way).
    pub(crate) fn live(&self) -> bool {
        self.deployment.status == "ACTIVE"
            && (self.devices.is_empty() || self.finished() < self.devices.len().max(self.targets))
    }
}

/// Reads a deployment with its executions and device rows in consistent order.
pub(crate) fn load(r: &Registry, id: &str) -> lichen_fleet_registry::Result<Progress> {
    let deployment = r.get_deployment(id)?;
    let effective = r.effective_deployments_of(id)?;
    let executions = match &deployment.job_id {
        Some(job) => r.jobs_read(|tx| tx.executions_for_job(job))?,
        None => Vec::new(),
    };
    let targets = match deployment.target_arn.rsplit_once(":thinggroup/") {
        Some((_, group)) => {
            let mut n = 0;
            let mut page = PageRequest::default();
            loop {
                let p = r.list_things_in_group(group, true, &page)?;
                n += p.items.len();
                match p.next_token {
                    Some(t) => page.token = Some(t),
                    None => break n,
                }
            }
        }
        None => 1,
    };
    let mut by_thing: BTreeMap<String, DeviceProgress> = BTreeMap::new();
    let blank = |thing: &str| DeviceProgress {
        thing: thing.to_string(),
        execution: None,
        effective: None,
    };
    for x in executions {
        let thing = x.thing_name.clone();
        by_thing
            .entry(thing.clone())
            .or_insert_with(|| blank(&thing))
            .execution = Some(x);
    }
    for e in effective {
        let thing = e.thing_name.clone();
        by_thing
            .entry(thing.clone())
            .or_insert_with(|| blank(&thing))
            .effective = Some(e);
    }
    Ok(Progress {
        deployment,
        devices: by_thing.into_values().collect(),
        targets,
    })
}

/// An execution's `statusDetails` (a JSON object of strings) as `key: value` pairs.
fn details(x: &ExecutionRow) -> Vec<(String, String)> {
    match serde_json::from_str::<Value>(&x.status_details) {
        Ok(Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The error stack a device sent with a failure (`errorStack` in the stored details).
fn error_stack(e: &EffectiveDeployment) -> Vec<String> {
    serde_json::from_str::<Value>(&e.status_details)
        .ok()
        .and_then(|v| v.get("errorStack").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The live fragment: summary, per-device table, chart.
pub(crate) fn render(p: &Progress) -> Markup {
    let counts = p.counts();
    let total = p.devices.len().max(p.targets);
    let succeeded = counts.get("SUCCEEDED").copied().unwrap_or(0);
    let failed: usize = ["FAILED", "TIMED_OUT", "REJECTED"]
        .iter()
        .map(|s| counts.get(*s).copied().unwrap_or(0))
        .sum();
    let timelines: Vec<Timeline> = p.devices.iter().map(DeviceProgress::timeline).collect();
    let points = chart::series(p.deployment.created_ms, now_ms(), &timelines);
    html! {
        div.cards data-testid="rollout-summary" {
            div.card { span.n { (badge(&p.deployment.status)) } span.l { "deployment" } }
            div.card { span.n data-testid="count-succeeded" { (succeeded) " / " (total) } span.l { "devices succeeded" } }
            div.card { span.n data-testid="count-failed" { (failed) } span.l { "failed or timed out" } }
            div.card { span.n data-testid="count-finished" { (p.finished()) } span.l { "finished" } }
        }
        p {
            progress value=(succeeded) max=(total.max(1))
                aria-label={"succeeded on " (succeeded) " of " (total) " devices"} {}
            " "
            @for (status, n) in &counts {
                (badge(status)) " " (n) " "
            }
            @if !p.live() { span.muted data-testid="rollout-settled" { "— no device is still working on it" } }
        }
        @if p.devices.is_empty() {
            p.muted data-testid="rollout-empty" { "No device has this deployment yet." }
        } @else {
            table data-testid="rollout-table" {
                thead { tr {
                    th { "Device" } th { "Status" } th { "Job execution" } th { "Details" } th { "Updated" }
                } }
                tbody {
                    @for d in &p.devices {
                        tr data-thing=(d.thing) data-status=(d.status()) {
                            td data-label="Device" { a href={"/console/devices/" (d.thing)} { (d.thing) } }
                            td data-label="Status" data-testid="device-status" {
                                (badge(d.status()))
                                @if let Some(e) = &d.effective {
                                    @if e.device_status != e.execution_status {
                                        " " span.muted { "device reported " (e.device_status) " (bake time)" }
                                    }
                                }
                            }
                            td data-label="Job execution" {
                                @match &d.execution {
                                    Some(x) => {
                                        (badge(&x.status))
                                        @if !x.released && x.status == "QUEUED" { " " span.muted { "waiting for the rollout rate" } }
                                        " " span.muted { "#" (x.execution_number) ", v" (x.version) }
                                    },
                                    None => span.muted { "— (thing deployment: shadow)" },
                                }
                            }
                            td data-label="Details" {
                                @if let Some(e) = &d.effective {
                                    @if let Some(r) = &e.reason { div { (r) } }
                                    @for s in error_stack(e) { code { (s) } " " }
                                }
                                @if let Some(x) = &d.execution {
                                    @let det = details(x);
                                    @if !det.is_empty() {
                                        details {
                                            summary { "status details (" (det.len()) ")" }
                                            dl.facts {
                                                @for (k, v) in &det { dt { (k) } dd { (v) } }
                                            }
                                        }
                                    }
                                }
                            }
                            td data-label="Updated" {
                                @let at = d.effective.as_ref().map(|e| e.modified_ms)
                                    .or(d.execution.as_ref().map(|x| x.updated_at)).unwrap_or(0);
                                (layout::when(at))
                            }
                        }
                    }
                }
            }
        }
        (chart::figure(&points, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(
        thing: &str,
        status: &str,
        queued: i64,
        started: Option<i64>,
        updated: i64,
    ) -> ExecutionRow {
        ExecutionRow {
            job_id: "j".into(),
            thing_name: thing.into(),
            status: status.into(),
            status_details: r#"{"detailed-deployment-status":"SUCCESSFUL"}"#.into(),
            version: 2,
            execution_number: 1,
            queued_at: queued,
            started_at: started,
            updated_at: updated,
            released: true,
            timeout_at: None,
            force_canceled: false,
        }
    }

    #[test]
    fn a_held_success_shows_in_progress_and_its_timeline_ends_there() {
        let d = DeviceProgress {
            thing: "a".into(),
            execution: Some(exec("a", "SUCCEEDED", 10, Some(20), 30)),
            effective: Some(EffectiveDeployment {
                thing_name: "a".into(),
                deployment_id: "d".into(),
                deployment_name: None,
                target_arn: "arn:aws:iot:r:1:thinggroup/g".into(),
                job_id: Some("j".into()),
                execution_status: "IN_PROGRESS".into(),
                device_status: "SUCCEEDED".into(),
                reason: None,
                status_details: "{}".into(),
                created_ms: 20,
                modified_ms: 30,
                device_succeeded_ms: Some(30),
            }),
        };
        assert_eq!(d.status(), "IN_PROGRESS");
        let t = d.timeline();
        assert_eq!(t.events.last().unwrap(), &(30, "IN_PROGRESS".to_string()));
        assert_eq!(details(d.execution.as_ref().unwrap())[0].1, "SUCCESSFUL");
    }

    #[test]
    fn an_execution_alone_gives_the_status_and_timeline() {
        let d = DeviceProgress {
            thing: "b".into(),
            execution: Some(exec("b", "FAILED", 10, Some(20), 40)),
            effective: None,
        };
        assert_eq!(d.status(), "FAILED");
        assert_eq!(
            d.timeline().events,
            vec![
                (10, "QUEUED".to_string()),
                (20, "IN_PROGRESS".to_string()),
                (40, "FAILED".to_string())
            ]
        );
    }
}
