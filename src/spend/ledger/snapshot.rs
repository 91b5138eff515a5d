//! Export and import of a [`SpendLedger`]'s state, for a compacted state
//! changelog (the message owners' `message-state` topic).
//!
//! The state is split in two kinds of record:
//!
//! * one **entry** per tracked message (key: its messageId), written when the
//!   entry changed since the last export, and a **tombstone** (no value) when
//!   it was dropped (its month was sealed);
//! * one **ledger state** holding everything else: watermark, router and
//!   running clocks, every source (progress, pending buckets, idle state),
//!   totals per (month, channel), sealed months, and the eventType names the
//!   entries refer to by id.
//!
//! A ledger rebuilt from the latest record of every key ([`restore_entry`],
//! [`restore_state`], then [`finish_restore`]) is the same ledger: it makes
//! the same decisions on any continuation of the stream (tested against a
//! ledger that never stopped, `tests` below and in
//! `crate::stages::message_owner`).
//!
//! The encoding is a compact binary one (LEB128 varints, zigzag for signed
//! values, timestamps of an entry relative to its smallest eventTimestamp,
//! position hashes as 8 bytes), version 1 of both layouts; the runtime
//! carries the version in the record's `smsvoice.format` header. A value
//! that does not decode is an error ([`SnapshotError`]), never skipped.
//!
//! [`restore_entry`]: SpendLedger::restore_entry
//! [`restore_state`]: SpendLedger::restore_state
//! [`finish_restore`]: SpendLedger::finish_restore

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{Entry, Idle, Interner, Priced, Source, SpendLedger, Totals};
use crate::model::Channel;
use crate::money::Usd;
use crate::spend::MonthKey;

/// What changed in a ledger since the last [`SpendLedger::snapshot_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerChanges {
    /// Per changed entry: its messageId and its encoded value, or `None` when
    /// it was dropped (a tombstone). Sorted by messageId.
    pub entries: Vec<(Box<str>, Option<Vec<u8>>)>,
    /// The encoded ledger state (always complete).
    pub state: Vec<u8>,
}

/// A snapshot value that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes end early or hold an impossible value.
    #[error("{what}: {detail}")]
    Corrupt {
        /// What was being read (`"entry"`, `"ledger state"`).
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn corrupt(what: &'static str, detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt {
        what,
        detail: detail.into(),
    }
}

impl SpendLedger {
    /// Starts recording which entries change, for
    /// [`snapshot_changes`](Self::snapshot_changes). Off by default (file
    /// mode and the core never export and should not keep the record).
    pub fn track_changes(&mut self) {
        if self.dirty.is_none() {
            self.dirty = Some(HashSet::new());
        }
    }

    /// Marks every entry changed: the next export holds all of them (after a
    /// restore by replay, when the changelog does not hold the state yet).
    pub fn mark_all_changed(&mut self) {
        let keys: HashSet<Box<str>> = self.entries.keys().cloned().collect();
        self.dirty.get_or_insert_with(HashSet::new).extend(keys);
    }

    /// True when an entry changed since the last export.
    pub fn has_changes(&self) -> bool {
        self.dirty.as_ref().is_some_and(|d| !d.is_empty())
    }

    /// The entries changed (or dropped) since the last call, and the whole
    /// ledger state; starts tracking changes if it was not.
    pub fn snapshot_changes(&mut self) -> LedgerChanges {
        let dirty = self.dirty.replace(HashSet::new()).unwrap_or_default();
        let mut keys: Vec<Box<str>> = dirty.into_iter().collect();
        keys.sort_unstable();
        let entries = keys
            .into_iter()
            .map(|k| {
                let v = self.entries.get(&k).map(encode_entry);
                (k, v)
            })
            .collect();
        LedgerChanges {
            entries,
            state: self.encode_state(),
        }
    }

    /// The whole ledger as records: every entry and the state (what a
    /// compacted changelog holds once every key's latest record is kept).
    pub fn snapshot_all(&self) -> LedgerChanges {
        let mut entries: Vec<(Box<str>, Option<Vec<u8>>)> = self
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), Some(encode_entry(e))))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        LedgerChanges {
            entries,
            state: self.encode_state(),
        }
    }

    /// Restores one entry record: `Some(value)` sets it, `None` (a
    /// tombstone) removes it. Records are applied in log order; call
    /// [`finish_restore`](Self::finish_restore) after the last.
    pub fn restore_entry(
        &mut self,
        message_id: &str,
        value: Option<&[u8]>,
    ) -> Result<(), SnapshotError> {
        match value {
            Some(v) => {
                let e = decode_entry(v)?;
                match self.entries.get_mut(message_id) {
                    Some(old) => *old = e,
                    None => {
                        self.entries.insert(message_id.into(), e);
                    }
                }
            }
            None => {
                self.entries.remove(message_id);
            }
        }
        Ok(())
    }

    /// Restores the ledger state record (the latest one wins).
    pub fn restore_state(&mut self, value: &[u8]) -> Result<(), SnapshotError> {
        let mut r = Reader::new(value, "ledger state");
        let watermark = r.opt_i64()?;
        let router_clock = r.opt_i64()?;
        let running = r.i64()?;
        let n = r.len()?;
        let mut sources = std::collections::HashMap::with_capacity(n);
        for _ in 0..n {
            let id = r.fixed_u64()?;
            let released = r.i64()?;
            let np = r.len()?;
            let mut pending = BTreeMap::new();
            for _ in 0..np {
                let edge = r.i64()?;
                let ts = r.i64()?;
                pending.insert(edge, ts);
            }
            let idle = match r.u8()? {
                0 => None,
                1 => Some(Idle {
                    at: None,
                    run: r.i64()?,
                }),
                2 => {
                    let at = Some(r.i64()?);
                    Some(Idle { at, run: r.i64()? })
                }
                t => return Err(corrupt("ledger state", format!("idle tag {t}"))),
            };
            sources.insert(
                id,
                Source {
                    released,
                    pending,
                    idle,
                },
            );
        }
        let n = r.len()?;
        let mut totals = BTreeMap::new();
        for _ in 0..n {
            let month = r.month()?;
            let channel = r.channel()?;
            let spend = Usd::from_units(r.i128()?);
            let messages = r.u64()?;
            totals.insert((month, channel), Totals { spend, messages });
        }
        let n = r.len()?;
        let mut sealed = BTreeSet::new();
        for _ in 0..n {
            sealed.insert(r.month()?);
        }
        let n = r.len()?;
        let mut types = Interner::default();
        for _ in 0..n {
            let name = r.str()?;
            let id = types.intern(name);
            if usize::try_from(id).ok() != Some(types.names.len() - 1) {
                return Err(corrupt("ledger state", format!("eventType {name:?} twice")));
            }
        }
        r.end()?;
        self.watermark = watermark;
        self.router_clock = router_clock;
        self.running = running;
        self.sources = sources;
        self.totals = totals;
        self.sealed = sealed;
        self.types = types;
        Ok(())
    }

    /// Ends a restore: rebuilds the per-month index of the entries and checks
    /// that every eventType id an entry uses is known to the state.
    pub fn finish_restore(&mut self) -> Result<(), SnapshotError> {
        let known = self.types.names.len();
        let mut open: BTreeMap<MonthKey, usize> = BTreeMap::new();
        for (k, e) in &self.entries {
            let bad = e
                .seen
                .iter()
                .map(|s| s.0)
                .chain(e.best.map(|b| b.ty))
                .any(|ty| usize::try_from(ty).map_or(true, |t| t >= known));
            if bad {
                return Err(corrupt(
                    "entry",
                    format!("{k:?} refers to an eventType the ledger state does not list"),
                ));
            }
            *open.entry(e.month).or_insert(0) += 1;
        }
        self.open_entries = open;
        Ok(())
    }

    fn encode_state(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.opt_i64(self.watermark);
        w.opt_i64(self.router_clock);
        w.i64(self.running);
        let mut ids: Vec<&u64> = self.sources.keys().collect();
        ids.sort_unstable();
        w.len(ids.len());
        for id in ids {
            let Some(s) = self.sources.get(id) else {
                continue;
            };
            w.fixed_u64(*id);
            w.i64(s.released);
            w.len(s.pending.len());
            for (&edge, &ts) in &s.pending {
                w.i64(edge);
                w.i64(ts);
            }
            match s.idle {
                None => w.u8(0),
                Some(Idle { at: None, run }) => {
                    w.u8(1);
                    w.i64(run);
                }
                Some(Idle { at: Some(at), run }) => {
                    w.u8(2);
                    w.i64(at);
                    w.i64(run);
                }
            }
        }
        w.len(self.totals.len());
        for (&(m, c), t) in &self.totals {
            w.month(m);
            w.channel(c);
            w.i128(t.spend.units());
            w.u64(t.messages);
        }
        w.len(self.sealed.len());
        for &m in &self.sealed {
            w.month(m);
        }
        w.len(self.types.names.len());
        for n in &self.types.names {
            w.str(n);
        }
        w.buf
    }
}

const HAS_REQUEST: u8 = 1 << 2;
const HAS_BEST: u8 = 1 << 3;

fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut w = Writer::default();
    let mut flags = channel_code(e.channel);
    if e.min_request_ts.is_some() {
        flags |= HAS_REQUEST;
    }
    if e.best.is_some() {
        flags |= HAS_BEST;
    }
    w.u8(flags);
    w.month(e.month);
    let base = e.min_event_ts;
    w.i64(base);
    if let Some(t) = e.min_request_ts {
        w.i64(t.wrapping_sub(base));
    }
    w.len(e.seen.len());
    for &(ty, ts) in &e.seen {
        w.u64(u64::from(ty));
        w.i64(ts.wrapping_sub(base));
    }
    w.len(e.positions.len());
    for &p in &e.positions {
        w.fixed_u64(p);
    }
    if let Some(b) = e.best {
        w.u64(u64::from(b.ty));
        w.i64(b.ts.wrapping_sub(base));
        w.i128(b.cost.units());
    }
    w.buf
}

fn decode_entry(v: &[u8]) -> Result<Entry, SnapshotError> {
    let mut r = Reader::new(v, "entry");
    let flags = r.u8()?;
    if flags & !(0b11 | HAS_REQUEST | HAS_BEST) != 0 {
        return Err(corrupt("entry", format!("flags {flags:#x}")));
    }
    let channel = channel_of(flags & 0b11);
    let month = r.month()?;
    let base = r.i64()?;
    let min_request_ts = if flags & HAS_REQUEST != 0 {
        Some(base.wrapping_add(r.i64()?))
    } else {
        None
    };
    let n = r.len()?;
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let ty = r.u32()?;
        seen.push((ty, base.wrapping_add(r.i64()?)));
    }
    let n = r.len()?;
    let mut positions = Vec::with_capacity(n);
    for _ in 0..n {
        positions.push(r.fixed_u64()?);
    }
    let best = if flags & HAS_BEST != 0 {
        let ty = r.u32()?;
        let ts = base.wrapping_add(r.i64()?);
        let cost = Usd::from_units(r.i128()?);
        Some(Priced { ts, ty, cost })
    } else {
        None
    };
    r.end()?;
    Ok(Entry {
        channel,
        month,
        min_request_ts,
        min_event_ts: base,
        seen,
        positions,
        best,
    })
}

fn channel_code(c: Channel) -> u8 {
    match c {
        Channel::Sms => 0,
        Channel::Mms => 1,
        Channel::Voice => 2,
        Channel::Rcs => 3,
    }
}

fn channel_of(code: u8) -> Channel {
    match code & 0b11 {
        0 => Channel::Sms,
        1 => Channel::Mms,
        2 => Channel::Voice,
        _ => Channel::Rcs,
    }
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, b: u8) {
        self.buf.push(b);
    }
    fn u128(&mut self, mut v: u128) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return;
            }
            self.buf.push(b | 0x80);
        }
    }
    fn u64(&mut self, v: u64) {
        self.u128(u128::from(v));
    }
    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }
    fn i128(&mut self, v: i128) {
        self.u128(((v << 1) ^ (v >> 127)) as u128);
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.i64(x);
            }
        }
    }
    fn fixed_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn month(&mut self, m: MonthKey) {
        self.i64(i64::from(m.year()));
        self.u8(m.month() as u8);
    }
    fn channel(&mut self, c: Channel) {
        self.u8(channel_code(c));
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, at: 0, what }
    }
    fn short(&self) -> SnapshotError {
        corrupt(self.what, format!("ends early at byte {}", self.at))
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        let b = *self.buf.get(self.at).ok_or_else(|| self.short())?;
        self.at += 1;
        Ok(b)
    }
    fn u128(&mut self) -> Result<u128, SnapshotError> {
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let b = self.u8()?;
            v |= u128::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(
            self.what,
            format!("varint too long at byte {}", self.at),
        ))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let v = self.u128()?;
        u64::try_from(v).map_err(|_| corrupt(self.what, format!("{v} out of range")))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let v = self.u64()?;
        u32::try_from(v).map_err(|_| corrupt(self.what, format!("{v} out of range")))
    }
    /// A count, bounded by the bytes left (every counted item takes at least
    /// one byte), so a corrupt count cannot make a huge allocation.
    fn len(&mut self) -> Result<usize, SnapshotError> {
        let v = self.u64()?;
        let left = self.buf.len() - self.at;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| corrupt(self.what, format!("count {v} beyond the value's end")))
    }
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        let u = self.u64()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    fn i128(&mut self) -> Result<i128, SnapshotError> {
        let u = self.u128()?;
        Ok(((u >> 1) as i128) ^ -((u & 1) as i128))
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            t => Err(corrupt(self.what, format!("option tag {t}"))),
        }
    }
    fn fixed_u64(&mut self) -> Result<u64, SnapshotError> {
        let end = self.at + 8;
        let b = self.buf.get(self.at..end).ok_or_else(|| self.short())?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        self.at = end;
        Ok(u64::from_le_bytes(a))
    }
    fn month(&mut self) -> Result<MonthKey, SnapshotError> {
        let y = self.i64()?;
        let m = self.u8()?;
        i32::try_from(y)
            .ok()
            .and_then(|y| MonthKey::new(y, u32::from(m)))
            .ok_or_else(|| corrupt(self.what, format!("month {y}-{m}")))
    }
    fn channel(&mut self) -> Result<Channel, SnapshotError> {
        let c = self.u8()?;
        if c > 3 {
            return Err(corrupt(self.what, format!("channel {c}")));
        }
        Ok(channel_of(c))
    }
    fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let n = self.len()?;
        let b = self
            .buf
            .get(self.at..self.at + n)
            .ok_or_else(|| self.short())?;
        self.at += n;
        std::str::from_utf8(b).map_err(|e| corrupt(self.what, e.to_string()))
    }
    fn end(&self) -> Result<(), SnapshotError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(corrupt(
                self.what,
                format!("{} bytes left after the value", self.buf.len() - self.at),
            ))
        }
    }
}
