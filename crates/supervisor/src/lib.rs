//! Runs component lifecycle steps as processes and drives the component state machine.
