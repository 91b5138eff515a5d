//! `smsvoice`: opt-out lists, exact monthly spend, spend alarms, enriched
//! events and a Parquet archive for AWS End User Messaging SMS, MMS and voice
//! events.
//!
//! The crate is a pure **core** inside an I/O **shell**:
//!
//! * core (no I/O, deterministic): [`decode`] -> [`classify`] ->
//!   [`optout`] / [`spend`] state transitions -> [`enrich`] records, composed
//!   by [`core::Core`];
//! * shell: [`file_mode`] (files in, JSON lines out).
#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod archive;
pub mod classify;
pub mod config;
pub mod core;
pub mod dead_letter;
pub mod decode;
pub mod demo;
pub mod enrich;
pub mod file_mode;
pub mod generate;
pub mod http;
pub mod kafka;
pub mod limits;
pub mod log;
pub mod model;
pub mod money;
pub mod optout;
pub mod runtime;
pub mod spend;
pub mod stages;
pub mod uuid_text;
