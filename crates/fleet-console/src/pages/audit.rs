//! (being written)

use crate::ConsoleState;
use axum::Router;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
}
