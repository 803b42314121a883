//! Typed client over the Unix socket (being written).
