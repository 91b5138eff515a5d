//! What the ledger keeps of one tracked message, packed.
//!
//! An [`Entry`] is held in memory as the very bytes of its changelog value
//! (version 1 of the entry layout, [`super::codec`]): a flags byte
//! (channel, whether a `messageRequestTimestamp` and a priced event were
//! seen), the attribution month, the smallest eventTimestamp (the base of
//! the other timestamps), the smallest `messageRequestTimestamp`, the
//! `(eventType id, eventTimestamp)` pairs seen, the source positions
//! applied (8 bytes each) and the latest priced event. A message of three
//! events takes about 60 bytes this way, against about 200 as a struct of
//! vectors; exporting an entry to the changelog is a copy, and restoring
//! one is a check of its bytes (a strict read, [`validate`]) and a copy.
//!
//! Applying an event reads the entry ([`Entry::view`]) and writes a new one
//! ([`Entry::updated`]): the seen pairs and positions are copied as bytes,
//! re-encoded only when the base timestamp moves. Bytes in memory were
//! either written here or validated by [`validate`], so the in-memory
//! reader ([`Cursor`]) does not check them again; it never panics, and on
//! bytes it did not expect it would read zeros.

use super::codec::{channel_code, channel_of, corrupt, Reader, Writer};
use super::snapshot::SnapshotError;
use super::Priced;
use crate::model::Channel;
use crate::money::Usd;
use crate::spend::MonthKey;

/// Flag: the entry holds a smallest `messageRequestTimestamp`.
const HAS_REQUEST: u8 = 1 << 2;
/// Flag: the entry holds a latest priced event.
const HAS_BEST: u8 = 1 << 3;
/// The channel's bits of the flags byte.
const CHANNEL_BITS: u8 = 0b11;

/// One tracked message: its changelog value. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry(Box<[u8]>);

/// The fixed fields of an entry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fields {
    pub(super) channel: Channel,
    pub(super) month: MonthKey,
    pub(super) min_event_ts: i64,
    pub(super) min_request_ts: Option<i64>,
    /// The latest priced event, whose cost is the counted cost.
    pub(super) best: Option<Priced>,
}

impl Fields {
    /// The message's counted cost.
    pub(super) fn counted(&self) -> Usd {
        self.best.map_or(Usd::ZERO, |b| b.cost)
    }
}

/// An entry read: its fixed fields and its two lists, still encoded.
#[derive(Clone, Copy, Debug)]
pub(super) struct View<'a> {
    pub(super) fields: Fields,
    n_seen: usize,
    /// The encoded `(eventType id, eventTimestamp - base)` pairs.
    seen: &'a [u8],
    /// The position hashes, 8 bytes each.
    positions: &'a [u8],
}

impl<'a> View<'a> {
    /// The `(eventType id, eventTimestamp)` pairs seen, in the order seen.
    pub(super) fn seen(&self) -> impl Iterator<Item = (u32, i64)> + 'a {
        let base = self.fields.min_event_ts;
        let mut c = Cursor::new(self.seen);
        (0..self.n_seen).map(move |_| {
            let ty = c.u32();
            (ty, base.wrapping_add(c.i64()))
        })
    }

    /// Whether the pair `(ty, ts)` was seen.
    pub(super) fn has_seen(&self, ty: u32, ts: i64) -> bool {
        self.seen().any(|p| p == (ty, ts))
    }

    /// Whether the source position `p` was applied.
    pub(super) fn has_position(&self, p: u64) -> bool {
        let p = p.to_le_bytes();
        self.positions.chunks_exact(8).any(|c| c == p)
    }
}

impl Entry {
    /// The entry of a message's first event.
    pub(super) fn new(fields: &Fields, seen: (u32, i64), position: Option<u64>) -> Entry {
        let mut w = Writer {
            buf: Vec::with_capacity(48),
        };
        write_head(&mut w, fields);
        w.len(1);
        write_seen(&mut w, fields.min_event_ts, seen);
        match position {
            Some(p) => {
                w.len(1);
                w.fixed_u64(p);
            }
            None => w.len(0),
        }
        write_best(&mut w, fields);
        Entry(w.buf.into_boxed_slice())
    }

    /// The entry `view` becomes with `fields`, one more seen pair and one
    /// more position (each when given).
    pub(super) fn updated(
        view: &View<'_>,
        fields: &Fields,
        seen: Option<(u32, i64)>,
        position: Option<u64>,
    ) -> Entry {
        let mut w = Writer {
            buf: Vec::with_capacity(view.seen.len() + view.positions.len() + 64),
        };
        write_head(&mut w, fields);
        let base = fields.min_event_ts;
        w.len(view.n_seen + usize::from(seen.is_some()));
        if base == view.fields.min_event_ts {
            w.buf.extend_from_slice(view.seen);
        } else {
            for pair in view.seen() {
                write_seen(&mut w, base, pair);
            }
        }
        if let Some(pair) = seen {
            write_seen(&mut w, base, pair);
        }
        w.len(view.positions.len() / 8 + usize::from(position.is_some()));
        w.buf.extend_from_slice(view.positions);
        if let Some(p) = position {
            w.fixed_u64(p);
        }
        write_best(&mut w, fields);
        Entry(w.buf.into_boxed_slice())
    }

    /// An entry from a changelog value that [`validate`] accepted.
    pub(super) fn from_valid(bytes: &[u8]) -> Entry {
        Entry(bytes.into())
    }

    /// The changelog value.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The attribution month (read without the rest).
    pub(super) fn month(&self) -> MonthKey {
        let mut c = Cursor::new(&self.0);
        c.u8();
        c.month()
    }

    /// The entry read.
    pub(super) fn view(&self) -> View<'_> {
        let mut c = Cursor::new(&self.0);
        let flags = c.u8();
        let channel = channel_of(flags & CHANNEL_BITS);
        let month = c.month();
        let base = c.i64();
        let min_request_ts = (flags & HAS_REQUEST != 0).then(|| base.wrapping_add(c.i64()));
        let n_seen = c.len();
        let start = c.at;
        for _ in 0..n_seen {
            c.skip_varint();
            c.skip_varint();
        }
        let seen = c.slice(start);
        let n_positions = c.len();
        let start = c.at;
        c.at = c.at.saturating_add(n_positions.saturating_mul(8));
        let positions = c.slice(start);
        let best = (flags & HAS_BEST != 0).then(|| {
            let ty = c.u32();
            let ts = base.wrapping_add(c.i64());
            Priced {
                ts,
                ty,
                cost: Usd::from_units(c.i128()),
            }
        });
        View {
            fields: Fields {
                channel,
                month,
                min_event_ts: base,
                min_request_ts,
                best,
            },
            n_seen,
            seen,
            positions,
        }
    }
}

fn write_head(w: &mut Writer, f: &Fields) {
    let mut flags = channel_code(f.channel);
    if f.min_request_ts.is_some() {
        flags |= HAS_REQUEST;
    }
    if f.best.is_some() {
        flags |= HAS_BEST;
    }
    w.u8(flags);
    w.month(f.month);
    w.i64(f.min_event_ts);
    if let Some(t) = f.min_request_ts {
        w.i64(t.wrapping_sub(f.min_event_ts));
    }
}

fn write_seen(w: &mut Writer, base: i64, (ty, ts): (u32, i64)) {
    w.u64(u64::from(ty));
    w.i64(ts.wrapping_sub(base));
}

fn write_best(w: &mut Writer, f: &Fields) {
    if let Some(b) = f.best {
        w.u64(u64::from(b.ty));
        w.i64(b.ts.wrapping_sub(f.min_event_ts));
        w.i128(b.cost.units());
    }
}

/// Checks a changelog value strictly: everything [`Entry::view`] reads is
/// there and well formed, and nothing follows. (Whether the eventType ids it
/// refers to are in the ledger state's list is checked once everything is
/// restored, by [`super::SpendLedger::finish_restore`].)
pub(super) fn validate(v: &[u8]) -> Result<(), SnapshotError> {
    let mut r = Reader::new(v, "entry");
    let flags = r.u8()?;
    if flags & !(CHANNEL_BITS | HAS_REQUEST | HAS_BEST) != 0 {
        return Err(corrupt("entry", format!("flags {flags:#x}")));
    }
    r.month()?;
    r.i64()?;
    if flags & HAS_REQUEST != 0 {
        r.i64()?;
    }
    for _ in 0..r.len()? {
        r.u32()?;
        r.i64()?;
    }
    for _ in 0..r.len()? {
        r.fixed_u64()?;
    }
    if flags & HAS_BEST != 0 {
        r.u32()?;
        r.i64()?;
        r.i128()?;
    }
    r.end()
}

/// A reader of bytes known to be well formed (see the module documentation).
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Cursor<'a> {
        Cursor { b, at: 0 }
    }
    fn u8(&mut self) -> u8 {
        let v = self.b.get(self.at).copied().unwrap_or(0);
        self.at = self.at.saturating_add(1);
        v
    }
    fn u128(&mut self) -> u128 {
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let b = self.u8();
            v |= u128::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }
    fn skip_varint(&mut self) {
        while self.u8() & 0x80 != 0 && self.at < self.b.len() {}
    }
    fn u64(&mut self) -> u64 {
        self.u128() as u64
    }
    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }
    fn len(&mut self) -> usize {
        usize::try_from(self.u64()).unwrap_or(0)
    }
    fn i64(&mut self) -> i64 {
        let u = self.u64();
        ((u >> 1) as i64) ^ -((u & 1) as i64)
    }
    fn i128(&mut self) -> i128 {
        let u = self.u128();
        ((u >> 1) as i128) ^ -((u & 1) as i128)
    }
    fn month(&mut self) -> MonthKey {
        let y = self.i64();
        let m = self.u8();
        MonthKey::from_checked_parts(y, m)
    }
    /// The bytes from `start` to the cursor.
    fn slice(&self, start: usize) -> &'a [u8] {
        self.b.get(start..self.at).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn month(y: i32, m: u32) -> MonthKey {
        MonthKey::new(y, m).expect("month")
    }

    /// The layout written out by hand: flags (MMS = 1, request, best),
    /// year 2025 zigzag (4050 = 0xd2 0x1f), month 10, base 1000 (2000 =
    /// 0xd0 0x0f), request delta -10 (19), 2 pairs (type 0 at +0, type 1 at
    /// +5 = 10), 1 position (8 bytes LE), best: type 1, +5, cost 7 (14).
    #[test]
    fn the_layout_is_version_1_of_the_changelog_entry() {
        let f = Fields {
            channel: Channel::Mms,
            month: month(2025, 10),
            min_event_ts: 1000,
            min_request_ts: Some(990),
            best: Some(Priced {
                ts: 1005,
                ty: 1,
                cost: Usd::from_units(7),
            }),
        };
        let first = Entry::new(
            &Fields { best: None, ..f },
            (0, 1000),
            Some(0x0102_0304_0506_0708),
        );
        let e = Entry::updated(&first.view(), &f, Some((1, 1005)), None);
        let want: &[u8] = &[
            1 | HAS_REQUEST | HAS_BEST,
            0xd2,
            0x1f,
            10,
            0xd0,
            0x0f,
            19,
            2,
            0,
            0,
            1,
            10,
            1,
            8,
            7,
            6,
            5,
            4,
            3,
            2,
            1,
            1,
            10,
            14,
        ];
        assert_eq!(e.bytes(), want);
        assert!(validate(e.bytes()).is_ok());
    }

    /// What the packed entry replaced: the fields and two vectors.
    #[derive(Clone, Debug, PartialEq)]
    struct Plain {
        channel: Channel,
        month: MonthKey,
        min_event_ts: i64,
        min_request_ts: Option<i64>,
        best: Option<(i64, u32, i128)>,
        seen: Vec<(u32, i64)>,
        positions: Vec<u64>,
    }

    fn plain_of(e: &Entry) -> Plain {
        let v = e.view();
        Plain {
            channel: v.fields.channel,
            month: v.fields.month,
            min_event_ts: v.fields.min_event_ts,
            min_request_ts: v.fields.min_request_ts,
            best: v.fields.best.map(|b| (b.ts, b.ty, b.cost.units())),
            seen: v.seen().collect(),
            positions: v
                .positions
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    u64::from_le_bytes(b)
                })
                .collect(),
        }
    }

    #[derive(Clone, Debug)]
    struct Step {
        channel: u8,
        ts: i64,
        request: Option<i64>,
        ty: u32,
        position: Option<u64>,
        cost: Option<i128>,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0u8..4,
            prop_oneof![-5_000i64..5_000, any::<i64>()],
            proptest::option::of(prop_oneof![-5_000i64..5_000, any::<i64>()]),
            prop_oneof![0u32..8, any::<u32>()],
            proptest::option::of(any::<u64>()),
            proptest::option::of(prop_oneof![0i128..1_000_000, any::<i128>()]),
        )
            .prop_map(|(channel, ts, request, ty, position, cost)| Step {
                channel,
                ts,
                request,
                ty,
                position,
                cost,
            })
    }

    proptest! {
        /// A sequence of updates read back gives what the plain struct
        /// holds after the same updates, every value of every type
        /// included (timestamps far apart, huge costs, ids past 2^28), and
        /// every entry passes the strict check.
        #[test]
        fn packed_entries_read_back_as_the_plain_fields(steps in proptest::collection::vec(step(), 1..8)) {
            let mut plain: Option<Plain> = None;
            let mut packed: Option<Entry> = None;
            for s in steps {
                let cost = s.cost.map(Usd::from_units);
                let m = MonthKey::from_epoch_ms_saturating(s.ts);
                let next = match &plain {
                    None => Plain {
                        channel: channel_of(s.channel),
                        month: m,
                        min_event_ts: s.ts,
                        min_request_ts: s.request,
                        best: cost.map(|c| (s.ts, s.ty, c.units())),
                        seen: vec![(s.ty, s.ts)],
                        positions: s.position.into_iter().collect(),
                    },
                    Some(p) => {
                        let mut p = p.clone();
                        p.month = m;
                        p.min_event_ts = p.min_event_ts.min(s.ts);
                        p.min_request_ts = match (p.min_request_ts, s.request) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        if let Some(c) = cost {
                            p.best = Some((s.ts, s.ty, c.units()));
                        }
                        if !p.seen.contains(&(s.ty, s.ts)) {
                            p.seen.push((s.ty, s.ts));
                        }
                        p.positions.extend(s.position);
                        p
                    }
                };
                let fields = Fields {
                    channel: next.channel,
                    month: next.month,
                    min_event_ts: next.min_event_ts,
                    min_request_ts: next.min_request_ts,
                    best: next.best.map(|(ts, ty, c)| Priced { ts, ty, cost: Usd::from_units(c) }),
                };
                let e = match &packed {
                    None => Entry::new(&fields, (s.ty, s.ts), s.position),
                    Some(old) => {
                        let v = old.view();
                        let seen = (!v.has_seen(s.ty, s.ts)).then_some((s.ty, s.ts));
                        Entry::updated(&v, &fields, seen, s.position)
                    }
                };
                prop_assert!(validate(e.bytes()).is_ok());
                prop_assert_eq!(e.month(), next.month);
                prop_assert_eq!(&plain_of(&e), &next);
                for &p in &next.positions {
                    prop_assert!(e.view().has_position(p));
                }
                plain = Some(next);
                packed = Some(e);
            }
        }

        /// The strict check accepts no truncation of a valid entry.
        #[test]
        fn a_truncated_entry_is_refused(steps in proptest::collection::vec(step(), 1..4), cut in 0usize..64) {
            let s = &steps[0];
            let fields = Fields {
                channel: channel_of(s.channel),
                month: MonthKey::from_epoch_ms_saturating(s.ts),
                min_event_ts: s.ts,
                min_request_ts: s.request,
                best: s.cost.map(|c| Priced { ts: s.ts, ty: s.ty, cost: Usd::from_units(c) }),
            };
            let e = Entry::new(&fields, (s.ty, s.ts), s.position);
            let cut = cut % e.bytes().len();
            prop_assert!(validate(&e.bytes()[..cut]).is_err());
        }
    }
}
