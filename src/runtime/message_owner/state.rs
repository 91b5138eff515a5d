//! The message owners' state changelog, `<prefix>.internal.message-state`
//! (compacted; partition p written by the owner of partition p of
//! `events-by-message`, in the transaction that commits its offsets).
//!
//! | key | value |
//! |---|---|
//! | messageId | one ledger entry ([`crate::spend::SpendLedger::snapshot_changes`]); no value (a tombstone) once the entry was dropped with its sealed month |
//! | `0xFF "state"` (never a messageId: not UTF-8) | `through` (i64 LE: the next `events-by-message` offset the state reflects), the partition (i32 LE), then the ledger state |
//!
//! Every value carries `smsvoice.format` = 1 ([`Format::MessageState`]).
//! At each commit point an owner writes the entries changed since the last
//! one, their tombstones, and then the state record: all in the
//! transaction that commits the offset `through` (the message stage always
//! commits in transactions, whatever `exactly_once` says), and the
//! changelog is read back with `read_committed`. So what a restore reads is
//! exactly the state at the committed offset (see `restore`).

use std::sync::Arc;
use std::time::Instant;

use super::super::formats::Format;
use super::super::records::OutRecord;
use super::super::restore::{replay_range, try_replay_committed};
use super::super::stage::InRecord;
use super::super::{RecordError, RuntimeError, Shared};
use super::new_owner;
use crate::model::Provenance;
use crate::stages::message_owner::{MessageOwner, OwnerOutputs};
use crate::stages::view::View;

/// The key of a partition's state record.
pub const STATE_KEY: &[u8] = b"\xffstate";

/// An owned partition of `events-by-message`.
#[derive(Debug)]
pub struct Owned {
    /// Its ledger.
    pub owner: MessageOwner,
    /// The next offset the ledger reflects (`None`: nothing yet).
    pub through: Option<i64>,
    /// Records below this offset are already in the restored state (the
    /// changelog was ahead of the committed offset): skipped.
    pub skip_below: i64,
    /// The ledger changed since its state was last written.
    pub changed: bool,
}

impl Owned {
    /// Notes that the record at `offset` was applied.
    pub fn applied(&mut self, offset: i64) {
        self.through = Some(offset + 1);
        self.changed = true;
    }
}

/// An owner with no state, tracking its changes.
pub fn fresh(shared: &Shared, partition: i32) -> Owned {
    let mut owner = new_owner(shared, partition);
    owner.ledger_mut().track_changes();
    Owned {
        owner,
        through: None,
        skip_below: 0,
        changed: false,
    }
}

/// The records of the changes since the last call (the entries changed and
/// dropped, then the state record) for partition `partition` of
/// `state_topic`; nothing when nothing changed.
pub fn publish(owned: &mut Owned, state_topic: &str, partition: i32, out: &mut Vec<OutRecord>) {
    if !owned.changed {
        return;
    }
    let Some(through) = owned.through else {
        return;
    };
    owned.changed = false;
    let changes = owned.owner.ledger_mut().snapshot_changes();
    for (k, v) in changes.entries {
        let mut o = OutRecord::keyed(state_topic, k.as_bytes(), v.unwrap_or_default())
            .with_format(Format::MessageState);
        o.partition = Some(partition);
        out.push(o);
    }
    let mut value = Vec::with_capacity(12 + changes.state.len());
    value.extend_from_slice(&through.to_le_bytes());
    value.extend_from_slice(&partition.to_le_bytes());
    value.extend_from_slice(&changes.state);
    let mut o = OutRecord::keyed(state_topic, STATE_KEY, value).with_format(Format::MessageState);
    o.partition = Some(partition);
    out.push(o);
}

/// A state record's `through`, partition and ledger state.
fn split_state(v: &[u8]) -> Option<(i64, i32, &[u8])> {
    let through = i64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let partition = i32::from_le_bytes(v.get(8..12)?.try_into().ok()?);
    Some((through, partition, v.get(12..)?))
}

fn unreadable(rec: &InRecord<'_>, detail: String) -> RuntimeError {
    RuntimeError::Record(Format::MessageState.unreadable(rec, detail))
}

/// How a partition was restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Records read from `message-state`.
    pub changelog_records: u64,
    /// Records of `events-by-message` replayed (the tail between the
    /// changelog's `through` and the committed offset, or the whole
    /// partition when the changelog has no state for it yet).
    pub replayed: u64,
    /// The offset the changelog's state reflects (`None`: no state).
    pub through: Option<i64>,
    /// No state in the changelog: the partition was replayed from its start.
    pub replayed_from_start: bool,
}

/// Restores partition `partition` of `events_topic` whose committed offset
/// is `committed`: reads partition `partition` of `state_topic` to its end
/// (`read_committed`), giving the state at the offset `through` of its
/// latest state record, then
///
/// * `through == committed` (the normal case: both were written in one
///   transaction): nothing else is read;
/// * `through < committed` (the changelog behind, e.g. offsets moved
///   forward by an operator): the records from `through` to `committed` are
///   replayed, outputs discarded;
/// * `through > committed` (offsets moved back, or expired): the records
///   below `through` are in the state already and are skipped when they are
///   read again (their outputs were committed with that state);
/// * no state record (a partition last committed by a release without the
///   changelog): the partition is replayed from its start up to
///   `committed`, outputs discarded, and every entry is written at the next
///   commit point.
pub fn restore(
    shared: &Shared,
    events_topic: &Arc<str>,
    state_topic: &str,
    partition: i32,
    committed: Option<i64>,
) -> Result<(Owned, Restored), RuntimeError> {
    let started = Instant::now();
    let mut owner = MessageOwner::new(&shared.cfg.spend, partition)
        .with_limits(crate::limits::Limits::new(&shared.cfg));
    let mut state: Option<(i64, Vec<u8>)> = None;
    let mut entries = 0u64;
    let n = try_replay_committed(shared, state_topic, partition, |rec| {
        let value = Format::MessageState.check(rec)?;
        let key = rec.key.unwrap_or_default();
        if key == STATE_KEY {
            let Some(v) = value else {
                return Err(unreadable(rec, "a tombstone of the state record".into()));
            };
            let Some((through, p, _)) = split_state(v) else {
                return Err(unreadable(rec, "state record shorter than 12 bytes".into()));
            };
            if p != partition {
                return Err(unreadable(
                    rec,
                    format!("state of partition {p} in partition {partition}"),
                ));
            }
            state = Some((through, v.to_vec()));
            return Ok(());
        }
        let Ok(id) = std::str::from_utf8(key) else {
            return Err(unreadable(
                rec,
                "key is neither a messageId nor the state key".into(),
            ));
        };
        entries += 1;
        owner
            .ledger_mut()
            .restore_entry(id, value)
            .map_err(|e| unreadable(rec, e.to_string()))
    })?;
    let mut report = Restored {
        changelog_records: n,
        ..Restored::default()
    };
    let view = View::new(&shared.cfg.optout);
    let mut scratch = OwnerOutputs::default();
    let mut replay = |owner: &mut MessageOwner, from: Option<i64>, until: i64| {
        replay_range(shared, events_topic, partition, from, Some(until), |rec| {
            let at = Provenance {
                source: events_topic.clone(),
                partition: Some(rec.partition),
                offset: rec.offset,
                sub: 0,
            };
            owner.process(rec.value, &at, &view, &mut scratch);
            scratch.clear();
        })
    };
    let owned = match state {
        Some((through, v)) => {
            let l = owner.ledger_mut();
            let restored = split_state(&v)
                .ok_or_else(|| "state record shorter than 12 bytes".to_owned())
                .and_then(|(_, _, s)| l.restore_state(s).map_err(|e| e.to_string()))
                .and_then(|()| l.finish_restore().map_err(|e| e.to_string()));
            if let Err(detail) = restored {
                return Err(RuntimeError::Record(RecordError::Unreadable {
                    what: Format::MessageState.what(),
                    topic: state_topic.to_owned(),
                    partition,
                    offset: -1,
                    detail,
                }));
            }
            l.track_changes();
            report.through = Some(through);
            let mut owned = Owned {
                owner,
                through: Some(through),
                skip_below: through,
                changed: false,
            };
            if let Some(c) = committed.filter(|&c| c > through) {
                tracing::warn!(
                    topic = %events_topic,
                    partition,
                    through,
                    committed = c,
                    "message-state behind the committed offset: replaying the records between"
                );
                report.replayed = replay(&mut owned.owner, Some(through), c)?;
                owned.through = Some(c);
                owned.skip_below = c;
                owned.changed = true;
            } else if committed.is_some_and(|c| c < through) {
                tracing::warn!(
                    topic = %events_topic,
                    partition,
                    through,
                    committed,
                    "message-state ahead of the committed offset: the records below are in the state and are skipped"
                );
            }
            owned
        }
        None => {
            if entries > 0 {
                tracing::warn!(
                    topic = state_topic,
                    partition,
                    entries,
                    "message-state holds entries but no state record: ignored"
                );
            }
            let mut owned = fresh(shared, partition);
            if let Some(c) = committed {
                report.replayed = replay(&mut owned.owner, None, c)?;
                report.replayed_from_start = true;
                owned.owner.ledger_mut().mark_all_changed();
                owned.through = Some(c);
                owned.skip_below = c;
                owned.changed = true;
            }
            owned
        }
    };
    tracing::info!(
        topic = %events_topic,
        partition,
        changelog_records = report.changelog_records,
        tail_records = report.replayed,
        from_start = report.replayed_from_start,
        through = report.through,
        committed,
        tracked = owned.owner.ledger().tracked_messages(),
        ms = started.elapsed().as_millis() as u64,
        "message owner state restored"
    );
    Ok((owned, report))
}
