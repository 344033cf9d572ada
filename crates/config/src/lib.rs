//! The configuration tree with timestamps, merge/reset and a durable transaction log.
