//! The core against independent oracles: generated streams with known truth,
//! arbitrary and mutated bytes, and random event sets whose spend is computed
//! by a plain reference calculation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::decode::RecordSource;
use smsvoice::enrich::Outputs;
use smsvoice::generate::{generate, Workload};

fn config() -> Config {
    Config::from_toml(EMBEDDED_DEFAULT, "embedded").expect("embedded config")
}

fn src(i: usize) -> RecordSource {
    RecordSource {
        source: Arc::from("test"),
        partition: Some(0),
        offset: i as i64,
        timestamp_ms: None,
    }
}

/// Runs records through a fresh core; returns the core and, per record, the
/// number of outputs (accepted + dead-lettered) it produced.
fn run(records: &[Vec<u8>]) -> (Core, Vec<usize>, Outputs) {
    let mut core = Core::new(&config());
    let mut all = Outputs::default();
    let mut per_record = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let mut out = Outputs::default();
        core.process(r, &src(i), &mut out);
        per_record.push(out.events.len() + out.inbound.len() + out.dead_letters.len());
        all.events.extend(out.events);
        all.inbound.extend(out.inbound);
        all.dead_letters.extend(out.dead_letters);
        all.alarms.extend(out.alarms);
    }
    (core, per_record, all)
}

fn check_against_truth(w: &Workload) {
    let g = generate(w);
    let (core, per_record, out) = run(&g.records);
    assert!(
        per_record.iter().all(|&n| n >= 1),
        "a record produced nothing"
    );
    assert_eq!(out.events.len(), g.truth.events, "accepted delivery events");
    assert_eq!(
        out.inbound.len(),
        g.truth.inbound,
        "accepted inbound messages"
    );
    assert_eq!(
        out.dead_letters.len(),
        g.truth.malformed,
        "dead letters: {:?}",
        out.dead_letters
            .iter()
            .map(|d| d.reason.code())
            .collect::<Vec<_>>()
    );
    let spend: BTreeMap<(String, String), i128> = core
        .spend_totals()
        .into_iter()
        .map(|s| {
            (
                (s.month.to_string(), s.channel.to_string()),
                s.spend_usd.units(),
            )
        })
        .collect();
    assert_eq!(spend, g.truth.spend_units, "spend per (month, channel)");
    let messages: BTreeMap<(String, String), u64> = core
        .spend_totals()
        .into_iter()
        .map(|s| ((s.month.to_string(), s.channel.to_string()), s.messages))
        .collect();
    assert_eq!(messages, g.truth.messages, "distinct messages");
    let optouts: BTreeMap<(String, String), bool> = core
        .optout_table()
        .into_iter()
        .map(|o| ((o.opt_out_list, o.number), o.opted_out))
        .collect();
    assert_eq!(optouts, g.truth.optouts, "opt-out table");
    // Every record id is unique.
    let mut ids: Vec<&str> = out
        .events
        .iter()
        .map(|e| e.enrichment.record_id.as_str())
        .chain(out.inbound.iter().map(|i| i.enrichment.record_id.as_str()))
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "record ids are unique");
}

#[test]
fn generated_stream_matches_truth_raw() {
    check_against_truth(&Workload {
        messages: 3_000,
        envelopes: false,
        ..Workload::default()
    });
}

#[test]
fn generated_stream_matches_truth_with_envelopes() {
    for seed in [1, 2, 3] {
        check_against_truth(&Workload {
            seed,
            messages: 3_000,
            ..Workload::default()
        });
    }
}

#[test]
fn enriched_json_is_the_original_plus_enrichment() {
    let g = generate(&Workload {
        messages: 300,
        envelopes: false,
        duplicate_pct: 0,
        malformed_per_mille: 0,
        inbound_per_mille: 0,
        ..Workload::default()
    });
    let (_, _, out) = run(&g.records);
    assert_eq!(out.events.len(), g.records.len());
    for (rec, e) in g.records.iter().zip(&out.events) {
        let original: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(rec).expect("generated json");
        let enriched: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&e.json).expect("enriched json");
        for (k, v) in &original {
            assert_eq!(enriched.get(k), Some(v), "field {k} kept");
        }
        // The original text is a prefix of the enriched text, byte for byte.
        assert_eq!(&e.json[..rec.len() - 1], &rec[..rec.len() - 1]);
        for k in smsvoice::enrich::EVENT_KEYS {
            assert!(enriched.contains_key(k), "enrichment key {k}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic and always end accepted or dead-lettered,
    /// and a dead letter carries bytes of the input.
    #[test]
    fn arbitrary_bytes_end_somewhere(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (_, per_record, out) = run(std::slice::from_ref(&bytes));
        prop_assert!(per_record[0] >= 1);
        for d in &out.dead_letters {
            prop_assert!(bytes.windows(d.payload.len().max(1)).any(|w| w == &d.payload[..]) || d.payload.is_empty());
        }
    }

    /// Valid payloads with random byte edits never panic and always end somewhere.
    #[test]
    fn mutated_payloads_end_somewhere(
        which in 0usize..9,
        edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/samples"))
            .expect("samples dir");
        let mut paths: Vec<_> = files.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        let mut bytes = std::fs::read(&paths[which % paths.len()]).expect("sample");
        for (pos, byte, op) in edits {
            if bytes.is_empty() { break; }
            let p = usize::from(pos) % bytes.len();
            match op {
                0 => bytes[p] = byte,
                1 => { bytes.remove(p); }
                _ => bytes.insert(p, byte),
            }
        }
        let (_, per_record, _) = run(std::slice::from_ref(&bytes));
        prop_assert!(per_record[0] >= 1);
    }

    /// Random events of a few messages, in any order, with redeliveries and
    /// price corrections: total spend per month equals a reference
    /// computation over distinct messages (latest priced event by
    /// (eventTimestamp, eventType, cost)), in plain integers.
    #[test]
    fn spend_equals_reference(
        events in proptest::collection::vec(
            (0u8..6, 0u8..4, 0i64..200_000, 0usize..3, proptest::option::of(0i64..100_000), proptest::option::of(0i64..5_000), any::<bool>()),
            1..40),
        order in any::<u64>(),
    ) {
        // messageId m{id}; channel fixed per message; request time per message
        // near a month boundary (2025-10-31T23:59:00Z + id minutes).
        const TYPES: [&str; 3] = ["SUCCESSFUL", "DELIVERED", "PENDING"];
        let prefix = |id: u8| ["TEXT_", "MEDIA_", "VOICE_", "RCS_"][usize::from(id % 4)];
        // (bytes, message id, eventTimestamp, status, cost)
        type Rec = (Vec<u8>, u8, i64, &'static str, Option<i128>);
        let mut recs: Vec<Rec> = Vec::new();
        for (id, _, dt, ty, price, fee, dup) in &events {
            let request = 1_761_955_140_000i64 + i64::from(*id) * 60_000;
            let ts = request + dt;
            let et = format!("{}{}", prefix(*id), TYPES[*ty]);
            let mut json = format!(
                r#"{{"eventType":"{et}","eventTimestamp":{ts},"messageId":"m{id}","messageRequestTimestamp":{request}"#
            );
            if let Some(p) = price { json.push_str(&format!(r#","totalMessagePrice":{}.{:05}"#, p / 100_000, p % 100_000)); }
            if let Some(f) = fee { json.push_str(&format!(r#","totalCarrierFee":{}.{:05}"#, f / 100_000, f % 100_000)); }
            json.push('}');
            let cost = if price.is_some() || fee.is_some() {
                Some(i128::from(price.unwrap_or(0) + fee.unwrap_or(0)) * 100_000)
            } else { None };
            recs.push((json.clone().into_bytes(), *id, ts, TYPES[*ty], cost));
            if *dup { recs.push((json.into_bytes(), *id, ts, TYPES[*ty], cost)); }
        }
        // Shuffle deterministically from `order`.
        let mut state = order | 1;
        for i in (1..recs.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            recs.swap(i, (state % (i as u64 + 1)) as usize);
        }
        // Reference: per message, the priced event with the greatest
        // (eventTimestamp, eventType, cost); month of its request time.
        let mut best: HashMap<u8, (i64, String, i128)> = HashMap::new();
        for (_, id, ts, ty, cost) in &recs {
            if let Some(c) = cost {
                let full = format!("{}{}", prefix(*id), ty);
                let cand = (*ts, full, *c);
                let e = best.entry(*id).or_insert_with(|| cand.clone());
                if cand > *e { *e = cand; }
            }
        }
        let mut expected: BTreeMap<String, i128> = BTreeMap::new();
        for (id, (_, _, c)) in &best {
            let request = 1_761_955_140_000i64 + i64::from(*id) * 60_000;
            let month = if request < 1_761_955_200_000 { "2025-10" } else { "2025-11" };
            *expected.entry(month.to_owned()).or_default() += c;
        }
        let bytes: Vec<Vec<u8>> = recs.into_iter().map(|r| r.0).collect();
        let (core, per_record, _) = run(&bytes);
        prop_assert!(per_record.iter().all(|&n| n == 1));
        let mut got: BTreeMap<String, i128> = BTreeMap::new();
        for s in core.spend_totals() {
            if s.spend_usd.units() != 0 {
                *got.entry(s.month.to_string()).or_default() += s.spend_usd.units();
            }
        }
        expected.retain(|_, v| *v != 0);
        prop_assert_eq!(got, expected);
    }
}
