//! State restore of the message owners for 1M tracked messages: the CPU part.
//!
//! ```sh
//! cargo bench --bench restore            # RESTORE_MESSAGES=1000000 by default
//! ```
//!
//! A restoring message owner reads its `events-by-message` partition from
//! offset 0 to the committed offset and feeds every record to
//! `MessageOwner::process` with outputs discarded. This bench builds those
//! partitions in memory exactly as the router does (generated records ->
//! `stages::router::route` -> forwarded records -> partition by messageId
//! hash, 4 partitions) and times the replay of all of them on one thread,
//! as one stage thread restores its partitions one after the other. The
//! Kafka read is not included: add the time to read the same number of
//! records (the bare consumer bench gives 160-260k records/s on tansu).

use std::sync::Arc;
use std::time::Instant;

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::decode::RecordSource;
use smsvoice::generate::{generate, Workload};
use smsvoice::model::Provenance;
use smsvoice::runtime::records::partition_of;
use smsvoice::stages::message_owner::{MessageOwner, OwnerOutputs};
use smsvoice::stages::router::{route, Routed};
use smsvoice::stages::view::View;

const PARTITIONS: i32 = 4;

fn main() {
    let messages: usize = std::env::var("RESTORE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let g = generate(&Workload {
        messages,
        ..Workload::default()
    });
    let mut parts: Vec<Vec<Vec<u8>>> = vec![Vec::new(); PARTITIONS as usize];
    let source: Arc<str> = Arc::from("sms-events");
    let mut routed = Vec::new();
    for (i, r) in g.records.iter().enumerate() {
        let src = RecordSource {
            source: source.clone(),
            partition: Some((i % 4) as i32),
            offset: (i / 4) as i64,
            timestamp_ms: None,
        };
        route(r, &src, &mut routed);
        for x in routed.drain(..) {
            if let Routed::Event { message_id, record } = x {
                parts[partition_of(&message_id, PARTITIONS) as usize].push(record);
            }
        }
    }
    drop(g);
    let forwarded: usize = parts.iter().map(Vec::len).sum();
    println!(
        "restore: {messages} messages, {forwarded} forwarded events in {PARTITIONS} partitions (prepared in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let view = View::new(&cfg.optout);
    let topic: Arc<str> = Arc::from("smsvoice.internal.events-by-message");
    let mut out = OwnerOutputs::default();
    let mut tracked = 0usize;
    let start = Instant::now();
    for (p, records) in parts.iter().enumerate() {
        let mut owner = MessageOwner::new(&cfg.spend, p as i32);
        for (o, r) in records.iter().enumerate() {
            let at = Provenance {
                source: topic.clone(),
                partition: Some(p as i32),
                offset: o as i64,
                sub: 0,
            };
            owner.process(r, &at, &view, &mut out);
            out.clear();
        }
        tracked += owner.ledger().tracked_messages();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "replay through the ledger: {secs:.2} s, {:.0} records/s, {tracked} messages tracked at the end (the rest in closed months)",
        forwarded as f64 / secs
    );
}
