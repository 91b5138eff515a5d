//! Shared helpers of the integration tests.
pub mod duckdb;
pub mod kafka;
pub mod s3_server;
