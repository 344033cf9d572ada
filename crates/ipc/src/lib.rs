//! Greengrass IPC: eventstream RPC over a Unix socket, tokens, authorization, operations.
