//! In-process publish/subscribe with Greengrass local-topic semantics.
