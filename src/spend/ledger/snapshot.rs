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

use std::collections::{BTreeMap, BTreeSet};

use super::codec::{corrupt, Reader, Writer};
use super::entry::{self, Entry};
use super::key::{KeyRef, MessageKey};
use super::sources::{Idle, Source};
use super::{Interner, SpendLedger, Totals};
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

impl SpendLedger {
    /// Starts recording which entries change, for
    /// [`snapshot_changes`](Self::snapshot_changes). Off by default (file
    /// mode and the core never export and should not keep the record).
    pub fn track_changes(&mut self) {
        if self.dirty.is_none() {
            self.dirty = Some(hashbrown::HashSet::new());
        }
    }

    /// Marks every entry changed: the next export holds all of them (after a
    /// restore by replay, when the changelog does not hold the state yet).
    pub fn mark_all_changed(&mut self) {
        let keys: Vec<MessageKey> = self.entries.keys().cloned().collect();
        self.dirty
            .get_or_insert_with(hashbrown::HashSet::new)
            .extend(keys);
    }

    /// True when an entry changed since the last export.
    pub fn has_changes(&self) -> bool {
        self.dirty.as_ref().is_some_and(|d| !d.is_empty())
    }

    /// The entries changed (or dropped) since the last call, and the whole
    /// ledger state; starts tracking changes if it was not.
    pub fn snapshot_changes(&mut self) -> LedgerChanges {
        let dirty = self
            .dirty
            .replace(hashbrown::HashSet::new())
            .unwrap_or_default();
        let mut entries: Vec<(Box<str>, Option<Vec<u8>>)> = dirty
            .into_iter()
            .map(|k| {
                let v = self.entries.get(&k).map(|e| e.bytes().to_vec());
                (k.text(), v)
            })
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
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
            .map(|(k, e)| (k.text(), Some(e.bytes().to_vec())))
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
                entry::validate(v)?;
                let e = Entry::from_valid(v);
                match self.entries.get_mut(&KeyRef::of(message_id)) {
                    Some(old) => *old = e,
                    None => {
                        self.entries.insert(MessageKey::of(message_id), e);
                    }
                }
            }
            None => {
                self.entries.remove(&KeyRef::of(message_id));
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
            let v = e.view();
            let bad = v
                .seen()
                .map(|s| s.0)
                .chain(v.fields.best.map(|b| b.ty))
                .any(|ty| usize::try_from(ty).map_or(true, |t| t >= known));
            if bad {
                return Err(corrupt(
                    "entry",
                    format!(
                        "{:?} refers to an eventType the ledger state does not list",
                        k.text()
                    ),
                ));
            }
            *open.entry(v.fields.month).or_insert(0) += 1;
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
