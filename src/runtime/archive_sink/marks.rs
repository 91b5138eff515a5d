//! What the sink commits with an offset: the marks of the positions
//! already archived (repeats dropped) and the cut of a segment being
//! uploaded, as offset metadata; and the record ids rows carry.

use super::*;

/// Prefix of the sink's committed-offset metadata.
pub const META_PREFIX: &str = "smsvoice.archive=1";

/// The broker's default bound on offset metadata (`offset.metadata.max.bytes`).
pub(super) const META_MAX_BYTES: usize = 4096;

/// The highest position archived per stage partition ([`headers::AT`]):
/// topic, partition -> (offset, index in the record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks(BTreeMap<String, BTreeMap<i32, (i64, u32)>>);

/// A position of [`headers::AT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtPos<'a> {
    /// Topic the stage consumed.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Index among the records written to the same topic for it.
    pub n: u32,
}

impl<'a> AtPos<'a> {
    /// Parses `topic:partition:offset:n` (topics cannot contain `:`).
    pub fn parse(text: &'a str) -> Option<AtPos<'a>> {
        let mut it = text.rsplitn(4, ':');
        let n = it.next()?.parse().ok()?;
        let offset = it.next()?.parse().ok()?;
        let partition = it.next()?.parse().ok()?;
        let topic = it.next()?;
        (!topic.is_empty()).then_some(AtPos {
            topic,
            partition,
            offset,
            n,
        })
    }
}

impl Marks {
    /// True when `at` is past the highest position of its stage partition
    /// (it is then recorded as the new highest); false for a repeat.
    pub fn admit(&mut self, at: AtPos<'_>) -> bool {
        let pos = (at.offset, at.n);
        let parts = match self.0.get_mut(at.topic) {
            Some(p) => p,
            None => self.0.entry(at.topic.to_owned()).or_default(),
        };
        match parts.get_mut(&at.partition) {
            Some(high) if *high >= pos => false,
            Some(high) => {
                *high = pos;
                true
            }
            None => {
                parts.insert(at.partition, pos);
                true
            }
        }
    }

    /// Stage partitions tracked.
    pub fn len(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The committed-offset metadata of an output partition: the marks as of
/// the committed offset and, while a segment is being uploaded, its end:
/// `smsvoice.archive=1 cut=<end> m=<topic>/<p>:<offset>.<n>,<p>:...`.
pub fn encode_meta(marks: &Marks, cut: Option<i64>) -> String {
    let mut s = String::from(META_PREFIX);
    if let Some(c) = cut {
        s.push_str(&format!(" cut={c}"));
    }
    for (topic, parts) in &marks.0 {
        s.push_str(" m=");
        s.push_str(topic);
        s.push('/');
        let mut first = true;
        for (p, (o, n)) in parts {
            if !first {
                s.push(',');
            }
            first = false;
            s.push_str(&format!("{p}:{o}.{n}"));
        }
    }
    s
}

/// Reads [`encode_meta`]'s text; `None` for metadata that is not the
/// sink's (empty included).
pub fn decode_meta(text: &str) -> Option<(Marks, Option<i64>)> {
    let rest = text.strip_prefix(META_PREFIX)?;
    let mut marks = Marks::default();
    let mut cut = None;
    for tok in rest.split_whitespace() {
        if let Some(c) = tok.strip_prefix("cut=") {
            cut = Some(c.parse().ok()?);
        } else if let Some(m) = tok.strip_prefix("m=") {
            let (topic, list) = m.rsplit_once('/')?;
            let parts = marks.0.entry(topic.to_owned()).or_default();
            for e in list.split(',').filter(|e| !e.is_empty()) {
                let (p, pos) = e.split_once(':')?;
                let (o, n) = pos.split_once('.')?;
                parts.insert(p.parse().ok()?, (o.parse().ok()?, n.parse().ok()?));
            }
        } else {
            return None;
        }
    }
    Some((marks, cut))
}

/// Parses a record id `source:partition:offset:sub` (Kafka mode).
pub fn parse_record_id(id: &str) -> Option<Provenance> {
    let mut it = id.rsplitn(4, ':');
    let sub = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let source = it.next()?;
    Some(Provenance {
        source: Arc::from(source),
        partition: Some(partition),
        offset,
        sub,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_admit_only_new_positions() {
        let at = |t: &'static str, p, o, n| AtPos {
            topic: t,
            partition: p,
            offset: o,
            n,
        };
        let mut m = Marks::default();
        assert!(m.admit(at("a", 0, 10, 0)));
        assert!(m.admit(at("a", 0, 10, 1)));
        assert!(!m.admit(at("a", 0, 10, 1)));
        assert!(!m.admit(at("a", 0, 9, 5)));
        assert!(m.admit(at("a", 1, 3, 0)));
        assert!(m.admit(at("b.x-y", 0, 1, 0)));
        assert!(m.admit(at("a", 0, 11, 0)));
        let text = encode_meta(&m, Some(77));
        assert_eq!(decode_meta(&text), Some((m.clone(), Some(77))));
        assert_eq!(decode_meta(&encode_meta(&m, None)), Some((m, None)));
        assert_eq!(decode_meta(META_PREFIX), Some((Marks::default(), None)));
        assert_eq!(decode_meta(""), None);
        assert_eq!(decode_meta("smsvoice.archived=12"), None);
        assert_eq!(decode_meta("smsvoice.archive=1 x=1"), None);
    }

    #[test]
    fn positions_and_record_ids_parse() {
        assert_eq!(
            AtPos::parse("smsvoice.internal.events-by-message:3:120:0"),
            Some(AtPos {
                topic: "smsvoice.internal.events-by-message",
                partition: 3,
                offset: 120,
                n: 0
            })
        );
        assert_eq!(AtPos::parse("x:1:2"), None);
        assert_eq!(AtPos::parse(":1:2:3"), None);
        let p = parse_record_id("sms-events:2:41:1").expect("parses");
        assert_eq!(
            (&*p.source, p.partition, p.offset, p.sub),
            ("sms-events", Some(2), 41, 1)
        );
        assert!(parse_record_id("f.jsonl:7:0").is_none());
        assert_eq!(
            envelopes(b"sns,eventbridge"),
            Some(vec!["sns", "eventbridge"])
        );
        assert_eq!(envelopes(b""), Some(vec![]));
        assert_eq!(envelopes(b"zip"), None);
    }
}
