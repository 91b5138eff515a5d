//! Stage 3: the owner of a set of (month, channel) keys. Sums the partial
//! totals of every message-owner partition, runs the alarms and limits, and
//! writes the spend changelog: totals plus the alarm state, so a restarted
//! owner neither repeats nor renumbers a transition.

use std::collections::BTreeMap;

use crate::model::Channel;
use crate::money::Usd;
use crate::spend::config::SpendConfig;
use crate::spend::{AlarmEngine, AlarmRecord, AlarmSnapshot, MonthKey, Totals};
use crate::stages::view::PartialTotal;

/// The spend changelog value of one (month, channel) (key `YYYY-MM|CHANNEL`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendState {
    /// Month.
    pub month: MonthKey,
    /// Channel.
    pub channel: Channel,
    /// Exact month-to-date spend.
    pub spend_usd: Usd,
    /// Distinct messages.
    pub messages: u64,
    /// Partial totals per message-owner partition.
    pub partials: BTreeMap<i32, PartialValue>,
    /// Alarm and limit state.
    pub alarms: AlarmSnapshot,
    /// Offset of the spend-partials record this value reflects (set by the
    /// Kafka runtime): a restored owner skips partials at or before it, so a
    /// replay after a crash neither re-applies an old partial over a newer
    /// one nor repeats an alarm transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_offset: Option<i64>,
}

/// One partition's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartialValue {
    /// Exact spend.
    pub spend_usd: Usd,
    /// Distinct messages.
    pub messages: u64,
}

impl SpendState {
    /// The changelog key: `YYYY-MM|CHANNEL`.
    pub fn key(&self) -> String {
        format!("{}|{}", self.month, self.channel)
    }
}

/// Sums and alarms of the (month, channel) keys this instance owns.
#[derive(Debug)]
pub struct TotalsOwner {
    partials: BTreeMap<(MonthKey, Channel), BTreeMap<i32, Totals>>,
    alarms: AlarmEngine,
}

impl TotalsOwner {
    /// An empty owner.
    pub fn new(cfg: &SpendConfig) -> TotalsOwner {
        TotalsOwner {
            partials: BTreeMap::new(),
            alarms: AlarmEngine::new(cfg),
        }
    }

    /// Restores a spend changelog value.
    pub fn restore(&mut self, s: &SpendState) {
        let m = self.partials.entry((s.month, s.channel)).or_default();
        for (p, v) in &s.partials {
            m.insert(
                *p,
                Totals {
                    spend: v.spend_usd,
                    messages: v.messages,
                },
            );
        }
        self.alarms.restore(s.month, s.channel, &s.alarms);
    }

    /// Applies one partial total. Returns the new changelog value when the
    /// sum or the partial changed (None for a repeat of the same value), and
    /// pushes alarm transitions to `alarms`.
    pub fn apply(&mut self, p: &PartialTotal, alarms: &mut Vec<AlarmRecord>) -> Option<SpendState> {
        let m = self.partials.entry((p.month, p.channel)).or_default();
        let new = Totals {
            spend: p.spend_usd,
            messages: p.messages,
        };
        if m.get(&p.partition) == Some(&new) {
            return None;
        }
        m.insert(p.partition, new);
        let total = self.total(p.month, p.channel);
        self.alarms
            .evaluate(p.month, p.channel, total.spend, alarms);
        Some(self.state(p.month, p.channel))
    }

    /// The sum of the partials of (month, channel).
    pub fn total(&self, month: MonthKey, channel: Channel) -> Totals {
        self.partials
            .get(&(month, channel))
            .map(|m| {
                m.values().fold(Totals::default(), |acc, t| Totals {
                    spend: acc.spend + t.spend,
                    messages: acc.messages + t.messages,
                })
            })
            .unwrap_or_default()
    }

    /// The changelog value of (month, channel).
    pub fn state(&self, month: MonthKey, channel: Channel) -> SpendState {
        let total = self.total(month, channel);
        SpendState {
            month,
            channel,
            spend_usd: total.spend,
            messages: total.messages,
            partials: self
                .partials
                .get(&(month, channel))
                .map(|m| {
                    m.iter()
                        .map(|(p, t)| {
                            (
                                *p,
                                PartialValue {
                                    spend_usd: t.spend,
                                    messages: t.messages,
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            alarms: self.alarms.snapshot(month, channel),
            through_offset: None,
        }
    }

    /// Every (month, channel) with its total, sorted.
    pub fn totals(&self) -> Vec<(MonthKey, Channel, Totals)> {
        self.partials
            .keys()
            .map(|&(m, c)| (m, c, self.total(m, c)))
            .filter(|(_, _, t)| *t != Totals::default())
            .collect()
    }
}
