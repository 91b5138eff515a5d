//! What every instance replicates from compacted topics: the whole opt-out
//! table (to enrich `destinationOptedOut` for any message, and to answer the
//! opt-out API), the partial totals of every message-owner partition
//! (month-to-date spend in enriched events) and the published spend state of
//! every (month, channel) (the spend API and the Prometheus gauges: exactly
//! what the spend topic says, alarms and limit included).

use std::collections::BTreeMap;

use crate::model::Channel;
use crate::money::Usd;
use crate::optout::config::OptOutConfig;
use crate::optout::{OptOutChange, OptOutEngine};
use crate::spend::{MonthKey, Totals};
use crate::stages::totals::SpendState;

/// The partial totals of one message-owner partition for one (month, channel):
/// the value of the spend-partials changelog (key `month|channel|partition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartialTotal {
    /// Month.
    pub month: MonthKey,
    /// Channel.
    pub channel: Channel,
    /// The message-owner partition whose messages these are.
    pub partition: i32,
    /// Exact spend of those messages.
    pub spend_usd: Usd,
    /// Distinct messages.
    pub messages: u64,
}

impl PartialTotal {
    /// The changelog key: `YYYY-MM|CHANNEL|partition`.
    pub fn key(&self) -> String {
        format!("{}|{}|{}", self.month, self.channel, self.partition)
    }
}

/// Replicated state.
#[derive(Clone, Debug)]
pub struct View {
    optout: OptOutEngine,
    partials: BTreeMap<(MonthKey, Channel), BTreeMap<i32, Totals>>,
    spend: BTreeMap<(MonthKey, Channel), SpendState>,
}

impl View {
    /// An empty view with the list mapping of `cfg`.
    pub fn new(cfg: &OptOutConfig) -> View {
        View {
            optout: OptOutEngine::new(cfg),
            partials: BTreeMap::new(),
            spend: BTreeMap::new(),
        }
    }

    /// Applies an opt-out changelog value.
    pub fn apply_optout(&mut self, change: &OptOutChange) {
        self.optout.apply_change(change);
    }

    /// Applies a partial-totals changelog value.
    pub fn apply_partial(&mut self, p: &PartialTotal) {
        self.partials
            .entry((p.month, p.channel))
            .or_default()
            .insert(
                p.partition,
                Totals {
                    spend: p.spend_usd,
                    messages: p.messages,
                },
            );
    }

    /// Is `destination` opted out of the list of `origination`?
    pub fn is_opted_out(&self, origination: &str, destination: &str) -> bool {
        self.optout.is_opted_out(origination, destination)
    }

    /// Month-to-date spend of a channel with the partial of `partition`
    /// replaced by `own` (the caller's fresh value).
    pub fn month_to_date(
        &self,
        month: MonthKey,
        channel: Channel,
        partition: i32,
        own: Usd,
    ) -> Usd {
        let others = self
            .partials
            .get(&(month, channel))
            .map(|m| {
                m.iter()
                    .filter(|(p, _)| **p != partition)
                    .fold(Usd::ZERO, |acc, (_, t)| acc + t.spend)
            })
            .unwrap_or(Usd::ZERO);
        others + own
    }

    /// The replicated opt-out table.
    pub fn optout(&self) -> &OptOutEngine {
        &self.optout
    }

    /// Applies a value of the spend topic (the latest per (month, channel)
    /// is kept).
    pub fn apply_spend(&mut self, s: SpendState) {
        self.spend.insert((s.month, s.channel), s);
    }

    /// Forgets a (month, channel) of the spend topic (a deleted key).
    pub fn remove_spend(&mut self, month: MonthKey, channel: Channel) {
        self.spend.remove(&(month, channel));
    }

    /// The published spend state of every (month, channel), by month then
    /// channel.
    pub fn spend(&self) -> &BTreeMap<(MonthKey, Channel), SpendState> {
        &self.spend
    }
}
