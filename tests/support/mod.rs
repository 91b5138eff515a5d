//! Shared helpers of the integration tests.
pub mod duckdb;
pub mod http;
pub mod kafka;
pub mod outage_proxy;
pub mod outputs;
pub mod s3_server;
