//! Component lifecycle states as Greengrass names them (`LifecycleState` over IPC).

use serde::{Deserialize, Serialize};

/// A component's lifecycle state (spec §1.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    New,
    Installed,
    Starting,
    Running,
    Stopping,
    Errored,
    Broken,
    Finished,
}

impl State {
    /// Every state, in the order classic stores them (after its internal `STATELESS`).
    pub const ALL: [State; 8] = [
        State::New,
        State::Installed,
        State::Starting,
        State::Running,
        State::Stopping,
        State::Errored,
        State::Broken,
        State::Finished,
    ];

    /// The wire name: `"NEW"`, `"INSTALLED"`, …
    pub fn as_str(&self) -> &'static str {
        match self {
            State::New => "NEW",
            State::Installed => "INSTALLED",
            State::Starting => "STARTING",
            State::Running => "RUNNING",
            State::Stopping => "STOPPING",
            State::Errored => "ERRORED",
            State::Broken => "BROKEN",
            State::Finished => "FINISHED",
        }
    }

    /// Parses a wire name; case-insensitive because IPC clients differ in what they send.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether a HARD dependency in this state lets its dependents start (spec §1.3).
    pub(crate) fn is_dependency_ready(&self) -> bool {
        matches!(self, State::Running | State::Finished | State::Stopping)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in State::ALL {
            assert_eq!(State::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(State::parse("running"), Some(State::Running));
        assert_eq!(State::parse("STATELESS"), None);
        assert_eq!(
            serde_json::to_string(&State::Installed).unwrap(),
            "\"INSTALLED\""
        );
    }
}
