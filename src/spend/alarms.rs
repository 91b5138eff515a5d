//! Spend alarms and enforced monthly limits, evaluated on month-to-date spend.
//!
//! * An **alarm** watches one channel's month-to-date spend against a static
//!   USD threshold with a [`Comparison`], like an alarm on the service's
//!   `TextMessageMonthlySpend` metric. Each (alarm, month) has its own state,
//!   starting [`AlarmState::Ok`]; a record is emitted on every change, OK to
//!   ALARM and ALARM to OK (spend can fall after a price correction).
//! * An **enforced limit** emits exactly one `LIMIT_REACHED` record per
//!   (channel, month), the first time spend is at or above the limit; never
//!   again for that month, even if spend falls and rises again.
//!
//! Record ids are deterministic, so replaying the same input emits the same
//! ids: `alarm:{name}:{YYYY-MM}:{n}` where `n` counts that alarm's transitions
//! in that month from 1, and `limit:{CHANNEL}:{YYYY-MM}`.
//!
//! Alarm names are expected to be unique and limits to be one per channel
//! ([`Config::validate`](crate::config::Config::validate) checks both). With
//! duplicates, [`AlarmEngine::state`] reports the first alarm of a name and
//! only the first limit of a channel is enforced.
//!
//! The engine keeps, per alarm and month, the state and the transition count,
//! and per (channel, month) whether the limit was reached: a few bytes per
//! month, never dropped.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::Channel;
use crate::money::Usd;
use crate::spend::config::{AlarmConfig, Comparison, SpendConfig};

use super::month::MonthKey;

/// State of an alarm in a month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    /// Spend does not breach the threshold.
    Ok,
    /// Spend breaches the threshold.
    Alarm,
}

/// A record emitted by the [`AlarmEngine`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "recordType", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmRecord {
    /// An alarm changed state (`recordType: ALARM_STATE_CHANGE`).
    #[serde(rename_all = "camelCase")]
    AlarmStateChange {
        /// `alarm:{name}:{YYYY-MM}:{n}`.
        id: String,
        /// The alarm's configured name.
        alarm_name: String,
        /// Channel watched.
        channel: Channel,
        /// Month, `YYYY-MM`.
        month: String,
        /// The service's metric the alarm mirrors (`TextMessageMonthlySpend`,
        /// ...); `None` for RCS.
        metric: Option<String>,
        /// How spend is compared with the threshold.
        comparison: Comparison,
        /// Threshold in USD.
        threshold_usd: Usd,
        /// State before.
        previous_state: AlarmState,
        /// State after.
        new_state: AlarmState,
        /// Month-to-date spend that caused the change.
        spend_usd: Usd,
    },
    /// Month-to-date spend reached the enforced limit (`recordType:
    /// LIMIT_REACHED`).
    #[serde(rename_all = "camelCase")]
    LimitReached {
        /// `limit:{CHANNEL}:{YYYY-MM}`.
        id: String,
        /// Channel limited.
        channel: Channel,
        /// Month, `YYYY-MM`.
        month: String,
        /// The enforced limit in USD.
        monthly_limit_usd: Usd,
        /// Month-to-date spend when the limit was reached.
        spend_usd: Usd,
    },
}

/// State of one alarm in one month.
#[derive(Clone, Copy, Debug)]
struct MonthState {
    state: AlarmState,
    transitions: u32,
}

/// Evaluates alarms and enforced limits; see the module documentation.
#[derive(Clone, Debug)]
pub struct AlarmEngine {
    alarms: Vec<AlarmConfig>,
    /// Alarm name -> index of the first alarm with that name.
    by_name: HashMap<String, usize>,
    /// Enforced limit per channel (the first configured one).
    limits: HashMap<Channel, Usd>,
    /// (alarm index, month) -> state; absent means OK with no transition.
    states: HashMap<(usize, MonthKey), MonthState>,
    /// (channel, month) whose limit was reached.
    limits_reached: HashSet<(Channel, MonthKey)>,
}

impl AlarmEngine {
    /// An engine for the alarms and limits of `cfg`, every state OK.
    pub fn new(cfg: &SpendConfig) -> Self {
        let mut by_name = HashMap::new();
        for (i, a) in cfg.alarms.iter().enumerate() {
            by_name.entry(a.name.clone()).or_insert(i);
        }
        let mut limits = HashMap::new();
        for l in &cfg.limits {
            limits.entry(l.channel).or_insert(l.monthly_limit_usd);
        }
        AlarmEngine {
            alarms: cfg.alarms.clone(),
            by_name,
            limits,
            states: HashMap::new(),
            limits_reached: HashSet::new(),
        }
    }

    /// Evaluates the alarms and the limit of `channel` for `month` against its
    /// new month-to-date `spend`, pushing a record for every transition to
    /// `out` (alarms in configuration order, then the limit).
    pub fn evaluate(
        &mut self,
        month: MonthKey,
        channel: Channel,
        spend: Usd,
        out: &mut Vec<AlarmRecord>,
    ) {
        for (i, alarm) in self.alarms.iter().enumerate() {
            if alarm.channel != channel {
                continue;
            }
            let new_state = if alarm.comparison.breached(spend, alarm.threshold_usd) {
                AlarmState::Alarm
            } else {
                AlarmState::Ok
            };
            let st = self.states.entry((i, month)).or_insert(MonthState {
                state: AlarmState::Ok,
                transitions: 0,
            });
            if st.state == new_state {
                continue;
            }
            let previous_state = st.state;
            st.state = new_state;
            st.transitions = st.transitions.saturating_add(1);
            out.push(AlarmRecord::AlarmStateChange {
                id: format!("alarm:{}:{}:{}", alarm.name, month, st.transitions),
                alarm_name: alarm.name.clone(),
                channel,
                month: month.to_string(),
                metric: channel.spend_metric().map(str::to_owned),
                comparison: alarm.comparison,
                threshold_usd: alarm.threshold_usd,
                previous_state,
                new_state,
                spend_usd: spend,
            });
        }
        if let Some(&limit) = self.limits.get(&channel) {
            if spend >= limit && self.limits_reached.insert((channel, month)) {
                out.push(AlarmRecord::LimitReached {
                    id: format!("limit:{}:{}", channel.as_str(), month),
                    channel,
                    month: month.to_string(),
                    monthly_limit_usd: limit,
                    spend_usd: spend,
                });
            }
        }
    }

    /// Current state of the alarm named `alarm_name` in `month` (OK for an
    /// unknown name or a month never evaluated).
    pub fn state(&self, alarm_name: &str, month: MonthKey) -> AlarmState {
        self.by_name
            .get(alarm_name)
            .and_then(|&i| self.states.get(&(i, month)))
            .map_or(AlarmState::Ok, |s| s.state)
    }

    /// True once the enforced limit of `channel` was reached in `month`.
    pub fn limit_reached(&self, channel: Channel, month: MonthKey) -> bool {
        self.limits_reached.contains(&(channel, month))
    }

    /// The alarm and limit state of one (month, channel), to be written to a
    /// changelog next to its totals.
    pub fn snapshot(&self, month: MonthKey, channel: Channel) -> AlarmSnapshot {
        let alarms = self
            .alarms
            .iter()
            .enumerate()
            .filter(|(_, a)| a.channel == channel)
            .filter_map(|(i, a)| {
                self.states.get(&(i, month)).map(|st| AlarmStateEntry {
                    name: a.name.clone(),
                    state: st.state,
                    transitions: st.transitions,
                })
            })
            .collect();
        AlarmSnapshot {
            alarms,
            limit_reached: self.limit_reached(channel, month),
        }
    }

    /// Restores the state of one (month, channel) read back from a changelog,
    /// so that a restarted owner neither repeats nor renumbers transitions.
    /// Alarms no longer configured are ignored.
    pub fn restore(&mut self, month: MonthKey, channel: Channel, snap: &AlarmSnapshot) {
        for entry in &snap.alarms {
            if let Some(&i) = self.by_name.get(&entry.name) {
                self.states.insert(
                    (i, month),
                    MonthState {
                        state: entry.state,
                        transitions: entry.transitions,
                    },
                );
            }
        }
        if snap.limit_reached {
            self.limits_reached.insert((channel, month));
        }
    }
}

/// Alarm and limit state of one (month, channel).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmSnapshot {
    /// State of each alarm of the channel that was evaluated in the month.
    pub alarms: Vec<AlarmStateEntry>,
    /// Whether LIMIT_REACHED was emitted.
    pub limit_reached: bool,
}

/// State of one alarm in one month.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmStateEntry {
    /// Alarm name.
    pub name: String,
    /// Current state.
    pub state: AlarmState,
    /// Transitions so far (the `n` of the last record id).
    pub transitions: u32,
}
