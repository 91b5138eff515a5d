//! Reading the pipeline's output topics back in tests, and the generator's
//! truth in the same form.
#![allow(dead_code)]

use std::collections::BTreeMap;

use smsvoice::generate::{generate, Generated, Workload};
use smsvoice::money::Usd;

use super::kafka::Consumed;

/// Spend per (`YYYY-MM`, channel): (exact decimal, messages).
pub type Spend = BTreeMap<(String, String), (String, u64)>;

/// Latest value per key of a keyed topic (records in log order per
/// partition, as `consume_all` returns them).
pub fn latest(records: &[Consumed]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut sorted: Vec<&Consumed> = records.iter().collect();
    sorted.sort_by_key(|r| (r.0, r.1));
    let mut m = BTreeMap::new();
    for r in sorted {
        if let Some(k) = &r.2 {
            m.insert(k.clone(), r.3.clone());
        }
    }
    m
}

/// The opt-out table of the opt-out changelog's records: (list, number) ->
/// opted out, from the latest value of each key.
pub fn optout_table(records: &[Consumed]) -> BTreeMap<(String, String), bool> {
    latest(records)
        .into_values()
        .map(|v| {
            let j: serde_json::Value = serde_json::from_slice(&v).expect("change JSON");
            (
                (
                    j["optOutList"].as_str().unwrap_or_default().to_owned(),
                    j["number"].as_str().unwrap_or_default().to_owned(),
                ),
                j["optedOut"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// The spend topic's latest totals with at least one message.
pub fn spend_of(records: &[Consumed]) -> Spend {
    latest(records)
        .into_values()
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
        .filter(|v| v["messages"].as_u64().unwrap_or(0) > 0)
        .map(|v| {
            (
                (
                    v["month"].as_str().unwrap_or_default().to_owned(),
                    v["channel"].as_str().unwrap_or_default().to_owned(),
                ),
                (
                    v["spendUsd"].as_str().unwrap_or_default().to_owned(),
                    v["messages"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// The generator's spend truth in the form of [`spend_of`].
pub fn expected_spend(g: &Generated) -> Spend {
    g.truth
        .spend_units
        .iter()
        .map(|(k, units)| {
            let msgs = g.truth.messages.get(k).copied().unwrap_or(0);
            (k.clone(), (Usd::from_units(*units).to_string(), msgs))
        })
        .collect()
}

/// A generated stream ready to produce: the generator's output, its spend
/// truth ([`expected_spend`]) and its records unkeyed (as the bridge writes
/// them), for `produce_all`.
pub struct Stream {
    /// What the generator made, truth included.
    pub g: Generated,
    /// The spend truth.
    pub want: Spend,
    /// The records, without keys.
    pub records: Vec<(Option<Vec<u8>>, Vec<u8>)>,
}

/// The default workload's stream of `messages` messages from `seed`.
pub fn stream(seed: u64, messages: usize) -> Stream {
    let g = generate(&Workload {
        seed,
        messages,
        ..Workload::default()
    });
    let want = expected_spend(&g);
    let records = g.records.iter().map(|r| (None, r.clone())).collect();
    Stream { g, want, records }
}
