//! Component store, version resolution and the durable deployment queue.
