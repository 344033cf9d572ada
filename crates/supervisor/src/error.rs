use std::time::Duration;

/// What went wrong while supervising components.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("component {0:?} is not supervised: deploy it first or check the name")]
    NotFound(String),
    #[error(
        "component {0:?} is BROKEN: only a redeployment (reinstall) revives it; see its log for the errors"
    )]
    Broken(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error(
        "component {component:?} step {step} exited with code {code}: see <logs>/{component}.log for its output"
    )]
    StepFailed {
        component: String,
        step: String,
        code: i32,
    },
    #[error("component {component:?} step {step} could not start: {reason}")]
    Spawn {
        component: String,
        step: String,
        reason: String,
    },
    #[error("component dependencies form a cycle through {0:?}: remove one of the dependencies")]
    DependencyCycle(Vec<String>),
    #[error("component {component:?} was given twice in one reconcile: give each component once")]
    Duplicate { component: String },
    #[error("component {0:?} stopped being supervised while the request was pending")]
    Gone(String),
}
