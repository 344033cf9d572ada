//! The audit log, newest first, filtered by who, operation and resource.

use crate::ConsoleState;
use crate::layout;
use crate::session::{Authed, blocking};
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use lichen_fleet_registry::{AuditEntry, Registry, RegistryError};
use maud::html;

/// Entries shown at most.
const SHOWN: usize = 200;
/// Entries scanned at most for one page (the log is read oldest first in batches).
const SCAN: usize = 200_000;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new().route("/audit", get(page))
}

#[derive(serde::Deserialize, Default, Clone)]
pub(crate) struct Filter {
    #[serde(default)]
    who: String,
    #[serde(default)]
    what: String,
    #[serde(default)]
    resource: String,
}

impl Filter {
    fn matches(&self, e: &AuditEntry) -> bool {
        let has = |field: &str, needle: &str| {
            needle.is_empty() || field.to_lowercase().contains(&needle.trim().to_lowercase())
        };
        has(&e.who, &self.who) && has(&e.operation, &self.what) && has(&e.resource, &self.resource)
    }
}

/// The newest `SHOWN` entries that match, newest first.
pub(crate) fn newest(r: &Registry, f: &Filter) -> Result<(Vec<AuditEntry>, usize), RegistryError> {
    let mut kept: std::collections::VecDeque<AuditEntry> = Default::default();
    let mut after = 0;
    let mut scanned = 0;
    loop {
        let batch = r.audit_log(after, 1000, None)?;
        let n = batch.len();
        scanned += n;
        if let Some(last) = batch.last() {
            after = last.seq;
        }
        for e in batch {
            if f.matches(&e) {
                if kept.len() == SHOWN {
                    kept.pop_front();
                }
                kept.push_back(e);
            }
        }
        if n < 1000 || scanned >= SCAN {
            break;
        }
    }
    Ok((kept.into_iter().rev().collect(), scanned))
}

async fn page(
    user: Authed,
    State(state): State<ConsoleState>,
    Query(f): Query<Filter>,
) -> Response {
    let f2 = f.clone();
    let (entries, scanned) = match blocking(&state, move |r| newest(r, &f2)).await {
        Ok(v) => v,
        Err(e) => return layout::registry_error(&user, e),
    };
    let body = html! {
        form.inline method="get" action="/console/audit" role="search" aria-label="Filter the audit log" {
            div { label for="who" { "Who" } input #who type="search" name="who" value=(f.who); }
            div { label for="what" { "Operation" } input #what type="search" name="what" value=(f.what); }
            div { label for="resource" { "Resource" } input #resource type="search" name="resource" value=(f.resource); }
            button type="submit" { "Filter" }
        }
        p.muted { "Newest " (entries.len()) " matching entries of " (scanned) " scanned. Who is an access key id, "
            code { "console:<user>" } " for changes made here, or " code { "lichen" } " for the fleet itself." }
        @if !entries.is_empty() {
            table data-testid="audit-table" {
                thead { tr { th { "#" } th { "When" } th { "Who" } th { "Operation" } th { "Resource" } } }
                tbody {
                    @for e in &entries {
                        tr {
                            td data-label="#" .num { (e.seq) }
                            td data-label="When" { (layout::when(e.at_ms)) }
                            td data-label="Who" { (e.who) }
                            td data-label="Operation" { (e.operation) }
                            td data-label="Resource" { code { (e.resource) } }
                        }
                    }
                }
            }
        }
    };
    layout::page(&user, "Audit log", "/console/audit", body)
}
