//! One module per top-level command.

pub mod broker;
pub mod core;
pub mod recipe;
pub mod streams;
