//! Object names: deterministic from the input, never from the clock.
//!
//! ```text
//! <table>/<partition>=<value>/.../<source-tag>+<partition>+<first-offset>.parquet
//! delivery_events/event_date=2025-10-30/channel=SMS/events+3+00000000000000042117.parquet
//! inbound_messages/receive_date=2025-10-30/in.jsonl-5d1e0c7a+0+00000000000000000012.parquet
//! ```
//!
//! `first-offset` (zero-padded to 20 digits, Kafka Connect style) is the
//! source offset of the file's first row; `partition` the Kafka partition (0
//! in file mode). The source tag is the topic, or in file mode the input
//! file's name plus a short stable hash of its full path (two inputs named
//! alike in different directories do not collide). Tags only contain
//! `[A-Za-z0-9._-]` and never start with `.` or `_` (query engines skip such
//! "hidden" files), so `+` separates the parts unambiguously.

use chrono::DateTime;

use crate::model::Channel;

use super::schema::Table;

/// FNV-1a 64-bit: a small hash whose value is fixed by its definition, so
/// names stay the same across builds and Rust versions.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Eight hex digits of [`fnv1a64`] (both halves folded).
pub fn short_hash(text: &str) -> String {
    let h = fnv1a64(text.as_bytes());
    format!("{:08x}", (h ^ (h >> 32)) as u32)
}

/// Keeps `[A-Za-z0-9._-]`, replaces anything else with `_`, caps the length
/// at 100 bytes. Returns the cleaned text and whether it changed.
fn clean(text: &str) -> (String, bool) {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if out.is_empty() || out.starts_with(['.', '_']) {
        out.insert(0, 'x');
    }
    let changed = out != text;
    (out, changed)
}

/// Source tag of a Kafka topic: the topic itself, or, when it has to be
/// changed to be a safe file name (a leading `_` or `.`), the cleaned name
/// plus `-` and [`short_hash`] of the topic.
pub fn topic_tag(topic: &str) -> String {
    match clean(topic) {
        (t, false) => t,
        (t, true) => format!("{t}-{}", short_hash(topic)),
    }
}

/// Source tag of an input file: its cleaned file name, `-`, and
/// [`short_hash`] of `full_path` (the canonical path where there is one).
pub fn file_tag(file_name: &str, full_path: &str) -> String {
    let (t, _) = clean(file_name);
    format!("{t}-{}", short_hash(full_path))
}

/// Name of an archive file: `<tag>+<partition>+<first offset, 20 digits>.parquet`.
pub fn file_name(tag: &str, partition: i32, first_offset: i64) -> String {
    format!("{tag}+{partition}+{first_offset:020}.parquet")
}

/// The UTC date `YYYY-MM-DD` of an instant (epoch ms); instants outside the
/// calendar range clamp to its ends.
pub fn utc_date(ms: i64) -> String {
    let t = DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<chrono::Utc>::MIN_UTC
    } else {
        DateTime::<chrono::Utc>::MAX_UTC
    });
    t.format("%Y-%m-%d").to_string()
}

/// The partition directory of a row, relative to the archive root:
/// `delivery_events/event_date=2025-10-30/channel=SMS`.
pub fn partition_dir(table: Table, date_ms: i64, channel: Option<Channel>) -> String {
    let date = utc_date(date_ms);
    match (table, channel) {
        (Table::DeliveryEvents, Some(c)) => {
            format!("{}/event_date={date}/channel={}", table.name(), c.as_str())
        }
        (Table::DeliveryEvents, None) => format!("{}/event_date={date}", table.name()),
        (t, _) => format!("{}/receive_date={date}", t.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            file_name("events", 3, 42),
            "events+3+00000000000000000042.parquet"
        );
        assert_eq!(topic_tag("sms-events.v1"), "sms-events.v1");
        assert!(topic_tag("_schemas").starts_with("x_schemas-"));
        let a = file_tag("in put.jsonl", "/a/in put.jsonl");
        let b = file_tag("in put.jsonl", "/b/in put.jsonl");
        assert!(a.starts_with("in_put.jsonl-"), "{a}");
        assert_ne!(a, b);
        assert!(!file_tag(".hidden", "/x/.hidden").starts_with('.'));
        // fixed by definition: must never change between versions
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            short_hash("a"),
            format!("{:08x}", 0xaf63_dc4c_u32 ^ 0x8601_ec8c)
        );
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_date(1_761_782_400_000), "2025-10-30");
        assert_eq!(utc_date(1_761_868_799_999), "2025-10-30");
        assert_eq!(utc_date(1_761_868_800_000), "2025-10-31");
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(
            partition_dir(Table::DeliveryEvents, 0, Some(Channel::Voice)),
            "delivery_events/event_date=1970-01-01/channel=VOICE"
        );
        assert_eq!(
            partition_dir(Table::DeadLetters, 0, None),
            "dead_letters/receive_date=1970-01-01"
        );
    }
}
