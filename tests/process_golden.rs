//! `smsvoice process` on large generated files, before and after the
//! performance work on the core (decode, enrichment): the outputs must stay
//! byte for byte what they were.
//!
//! Three inputs, written into a fresh directory and passed by relative path
//! (record ids name the path):
//!
//! - `mixed.jsonl`: a generated stream in every envelope (SNS, EventBridge,
//!   Firehose, concatenated payloads), one record a line;
//! - `raw.jsonl`: a generated stream of raw payloads;
//! - `variants.json`: generated payloads rewritten in the ways real inputs
//!   differ from the generator's (pretty-printed, escapes in keys and
//!   values, non-ASCII text, enrichment-named keys, duplicate keys, wrong
//!   types, nulls, exponents, extra nested fields, CRLF, whitespace between
//!   tokens, unparseable lines), so both the common path and every fallback
//!   are exercised.
//!
//! Checked: the counts and the spend and opt-out tables against the
//! generator's own truth (an independent computation), and every output
//! file against the checksum (length + FNV-1a 64) of the file written by the
//! version before the fast path (commit 4afef7b, plain serde decoding and
//! serde enrichment), so any change of a byte fails. When an output change
//! is intended, rerun with `PROCESS_GOLDEN_PRINT=1` and update `GOLDEN`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use smsvoice::generate::{generate, Workload};

/// (file, bytes, FNV-1a 64) of the outputs of commit 4afef7b on these inputs.
const GOLDEN: &[(&str, u64, u64)] = &[
    ("alarms.jsonl", 1568, 0x474e6fa5c529de71),
    ("dead-letters.jsonl", 12397766, 0x41bfbcfb6d39b22c),
    ("enriched-events.jsonl", 133572229, 0x70ce51fde7af2c01),
    ("enriched-inbound.jsonl", 239160, 0x1ffd5b4cd45285ef),
    ("optouts.json", 8860, 0x08c1e0981c6abc6b),
    ("replies.jsonl", 58269, 0xe8d50d2be24ecb52),
    ("spend.json", 831, 0x3c2a0c754554e2e1),
];

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn lines(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r);
        out.push(b'\n');
    }
    out
}

/// Deterministic rewrites of raw generated payloads (see the module doc).
fn variants(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let s = String::from_utf8_lossy(r).into_owned();
        let is_event = s.starts_with(r#"{"eventType""#);
        let v: String = if !is_event {
            s
        } else {
            match i % 24 {
                0 => match serde_json::from_str::<Value>(&s) {
                    Ok(v) => serde_json::to_string_pretty(&v).unwrap_or(s),
                    Err(_) => s,
                },
                1 => s.replacen('{', r#"{"channel":"X","recordId":null,"#, 1),
                2 => s
                    .replace(r#""isoCountryCode":"US""#, r#""isoCountryCode":"U\u0053""#)
                    .replace(r#""carrierName":"T-Mobile USA""#, r#""carrierName":"T\/Mobile \"USA\"\t\u00e9""#),
                3 => s.replace(r#""mcc""#, r#""m\u0063c""#),
                4 => s
                    .replace("T-Mobile USA", "T-Mobile \u{dc}berall \u{2603} \u{1f600}")
                    .replace("Verizon Wireless", "Verizon \u{e9}\u{e8}"),
                5 => s.replace(r#"":"#, r#"" :  "#).replace(",\"", " ,\r\n\t\""),
                6 => s
                    .replace(r#""totalMessagePrice":0.0"#, r#""totalMessagePrice":0.0e0,"x":0.0"#)
                    .replace(r#""totalCarrierFee":"#, r#""totalCarrierFee":null,"y":"#),
                7 => format!(r#"{},"mnc":"999"}}"#, &s[..s.len() - 1]),
                8 => s.replace(r#""isFinal":true"#, r#""isFinal":"true""#),
                9 => s.replace(
                    r#""context":{"tenant":"#,
                    r#""context":{"z":"1","a":"\u0032","z":"3","tenant":"#,
                ),
                10 => format!(
                    r#"{},"extra":{{"a":[1,2,{{"b":null}},[],{{}}],"c":-0.0e+3,"d":"\ud83d\ude00","e":[true,false]}}}}"#,
                    &s[..s.len() - 1]
                ),
                11 => s.replace(r#""messageRequestTimestamp":"#, r#""messageRequestTimestamp":null,"q":"#),
                12 => s.replace(r#""eventVersion":"1.0""#, r#""eventVersion":"1.0","context":null"#),
                13 => s.replace(r#""totalMessageParts":1"#, r#""totalMessageParts":1.0"#),
                14 => s.replace(r#""eventTimestamp":"#, r#""eventTimestamp":-"#),
                15 => s.replace(r#""carrierName":"#, r#""carrierName":"\ud800","c2":"#),
                16 => s.replace(r#""isoCountryCode":"US""#, "\"isoCountryCode\":\"U\tS\""),
                17 => s.replace(
                    r#""eventVersion":"1.0""#,
                    r#""eventVersion":"1.0","protectConfiguration":{"protectConfigurationId":"pc-1","protectStatus":"ALLOW","other":[1]}"#,
                ),
                18 => format!("{s}\r"),
                19 => format!("  {s}  {s}"),
                20 => s.replace(r#""messageId":"#, r#""messageId":"\u0000"#),
                21 => s[..s.len() / 2].to_owned(),
                22 => s.replace(r#""isFinal":true"#, r#""isFinal":true,"duplicate":{"a":[]},"lateReceipt":1"#),
                _ => s.replace(r#""totalMessageParts":1"#, r#""totalMessageParts":01"#),
            }
        };
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
        if i % 97 == 0 {
            out.extend_from_slice(b"   \n\n");
        }
    }
    out
}

fn process(dir: &Path, inputs: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut args = vec!["process", "--no-archive", "--out", "out"];
    for i in inputs {
        args.push("--input");
        args.push(i);
    }
    let o = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("run smsvoice");
    assert!(
        o.status.success(),
        "smsvoice process failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("out")).expect("out dir") {
        let e = e.expect("entry");
        if e.path().is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            files.insert(name, std::fs::read(e.path()).expect("read output"));
        }
    }
    files
}

fn count_lines(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

#[test]
fn process_outputs_are_unchanged() {
    let mixed = generate(&Workload {
        seed: 11,
        messages: 40_000,
        envelopes: true,
        ..Workload::default()
    });
    let raw = generate(&Workload {
        seed: 12,
        messages: 15_000,
        envelopes: false,
        malformed_per_mille: 0,
        inbound_per_mille: 0,
        ..Workload::default()
    });
    // PROCESS_GOLDEN_DIR=DIR keeps the inputs and outputs there (to diff them).
    let tmp = tempfile::tempdir().expect("tempdir");
    let kept = std::env::var_os("PROCESS_GOLDEN_DIR").map(std::path::PathBuf::from);
    let dir = kept.as_deref().unwrap_or(tmp.path());
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("mixed.jsonl"), lines(&mixed.records)).expect("write");
    std::fs::write(dir.join("raw.jsonl"), lines(&raw.records)).expect("write");
    std::fs::write(dir.join("variants.json"), variants(&raw.records)).expect("write");

    // The generated stream alone, against the generator's truth.
    let files = process(dir, &["mixed.jsonl"]);
    let get = |f: &BTreeMap<String, Vec<u8>>, n: &str| f.get(n).cloned().unwrap_or_default();
    assert_eq!(
        count_lines(&get(&files, "enriched-events.jsonl")),
        mixed.truth.events
    );
    assert_eq!(
        count_lines(&get(&files, "enriched-inbound.jsonl")),
        mixed.truth.inbound
    );
    assert_eq!(
        count_lines(&get(&files, "dead-letters.jsonl")),
        mixed.truth.malformed
    );
    let spend: Vec<Value> = serde_json::from_slice(&get(&files, "spend.json")).expect("spend.json");
    let mut units = BTreeMap::new();
    let mut messages = BTreeMap::new();
    for s in &spend {
        let key = (
            s["month"].as_str().unwrap_or_default().to_owned(),
            s["channel"].as_str().unwrap_or_default().to_owned(),
        );
        let text = s["spendUsd"].as_str().unwrap_or_default();
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let u: i128 = format!("{int}{frac:0<10}").parse().expect("decimal");
        units.insert(key.clone(), u);
        messages.insert(key, s["messages"].as_u64().unwrap_or_default());
    }
    assert_eq!(
        units, mixed.truth.spend_units,
        "spend against the generator"
    );
    assert_eq!(
        messages, mixed.truth.messages,
        "messages against the generator"
    );
    let optouts: Vec<Value> =
        serde_json::from_slice(&get(&files, "optouts.json")).expect("optouts.json");
    let table: BTreeMap<(String, String), bool> = optouts
        .iter()
        .map(|o| {
            (
                (
                    o["optOutList"].as_str().unwrap_or_default().to_owned(),
                    o["number"].as_str().unwrap_or_default().to_owned(),
                ),
                o["optedOut"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    for (k, v) in &mixed.truth.optouts {
        assert_eq!(table.get(k), Some(v), "opt-out state of {k:?}");
    }

    // All three inputs in one run, against the outputs of the version before.
    let files = process(dir, &["mixed.jsonl", "raw.jsonl", "variants.json"]);
    let got: Vec<(String, u64, u64)> = files
        .iter()
        .map(|(n, b)| (n.clone(), b.len() as u64, fnv1a(b)))
        .collect();
    if std::env::var_os("PROCESS_GOLDEN_PRINT").is_some() {
        for (n, len, h) in &got {
            println!("    (\"{n}\", {len}, 0x{h:016x}),");
        }
    }
    let want: Vec<(String, u64, u64)> = GOLDEN
        .iter()
        .map(|(n, l, h)| ((*n).to_owned(), *l, *h))
        .collect();
    assert_eq!(
        got, want,
        "outputs differ from the version before the fast path"
    );
}
