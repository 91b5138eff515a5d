//! `[optout]`: opt-out lists, our numbers and custom keywords. A core
//! configuration type: it imports nothing of the shell (archive, Kafka).

use serde::Deserialize;

use crate::model::is_e164;

/// `[optout]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptOutConfig {
    /// Named lists and the origination identities linked to them. An
    /// origination not named here uses the list `Default`.
    #[serde(default)]
    pub lists: Vec<OptOutListConfig>,
    /// Per-number settings of our origination numbers.
    #[serde(default)]
    pub numbers: Vec<NumberConfig>,
    /// Custom keywords per origination number.
    #[serde(default)]
    pub keywords: Vec<KeywordConfig>,
}

/// `[[optout.lists]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptOutListConfig {
    /// List name.
    pub name: String,
    /// Origination identities (phone numbers, pool ids, sender ids) linked to it.
    #[serde(default)]
    pub originations: Vec<String>,
}

/// `[[optout.numbers]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NumberConfig {
    /// Our number (as it appears in destinationNumber of inbound messages).
    pub number: String,
    /// US toll-free number: only STOP opts out, only START/UNSTOP opt in.
    #[serde(default)]
    pub toll_free: bool,
    /// Self-managed opt-outs: this pipeline is the system of record and emits
    /// the reply records (HELP, opt-out/opt-in confirmations, custom responses).
    #[serde(default)]
    pub self_managed: bool,
    /// Reply to HELP.
    #[serde(default = "default_help_response")]
    pub help_response: String,
    /// Reply confirming an opt-out.
    #[serde(default = "default_stop_response")]
    pub stop_response: String,
    /// Reply confirming an opt-in.
    #[serde(default = "default_start_response")]
    pub start_response: String,
}

/// Default HELP reply of a self-managed number.
pub fn default_help_response() -> String {
    "Reply STOP to unsubscribe. Msg&data rates may apply.".to_owned()
}

/// Default opt-out confirmation of a self-managed number.
pub fn default_stop_response() -> String {
    "You are unsubscribed and will receive no further messages. Reply START to resubscribe."
        .to_owned()
}

/// Default opt-in confirmation of a self-managed number.
pub fn default_start_response() -> String {
    "You are subscribed again. Reply STOP to unsubscribe.".to_owned()
}

/// Action of a custom keyword.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeywordAction {
    /// Adds the sender to the list.
    OptOut,
    /// Removes the sender from the list.
    OptIn,
    /// Only answers with the response.
    AutomaticResponse,
}

/// `[[optout.keywords]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeywordConfig {
    /// Our number the keyword belongs to.
    pub origination: String,
    /// 1 to 30 characters, no whitespace, matched case-insensitively as the
    /// first word of a message.
    pub keyword: String,
    /// What the keyword does.
    pub action: KeywordAction,
    /// Reply sent (by self-managed numbers) when the keyword matches.
    pub response: String,
}

/// The built-in keywords, which custom keywords may not redefine.
pub const RESERVED_KEYWORDS: [&str; 13] = [
    "ARRET",
    "CANCEL",
    "END",
    "OPT-OUT",
    "OPTOUT",
    "QUIT",
    "REMOVE",
    "STOP",
    "TD",
    "UNSUBSCRIBE",
    "HELP",
    "START",
    "UNSTOP",
];

impl OptOutConfig {
    /// Checks what types cannot: lists, duplicate numbers, keyword rules.
    pub fn validate(&self) -> Result<(), String> {
        let mut linked = std::collections::HashMap::new();
        for list in &self.lists {
            if list.name.trim().is_empty() {
                return Err("optout.lists: a list has an empty name".into());
            }
            for o in &list.originations {
                if let Some(prev) = linked.insert(o.as_str(), list.name.as_str()) {
                    if prev != list.name {
                        return Err(format!(
                            "optout.lists: origination {o} is linked to both {prev:?} and {:?}",
                            list.name
                        ));
                    }
                }
            }
        }
        let mut numbers = std::collections::HashMap::new();
        for n in &self.numbers {
            if numbers.insert(n.number.as_str(), n).is_some() {
                return Err(format!("optout.numbers: {} is configured twice", n.number));
            }
            if n.toll_free && !is_e164(&n.number) {
                return Err(format!(
                    "optout.numbers: toll-free number {} is not E.164",
                    n.number
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.keywords {
            let kw = k.keyword.to_uppercase();
            let len = k.keyword.chars().count();
            if !(1..=30).contains(&len) || k.keyword.chars().any(char::is_whitespace) {
                return Err(format!(
                    "optout.keywords: keyword {:?} must be 1 to 30 characters without spaces",
                    k.keyword
                ));
            }
            let edge_punct = |c: Option<char>| c.is_some_and(|c| !c.is_alphanumeric());
            if edge_punct(k.keyword.chars().next()) || edge_punct(k.keyword.chars().last()) {
                return Err(format!(
                    "optout.keywords: keyword {:?} must start and end with a letter or digit (punctuation around the first word of a message is ignored)",
                    k.keyword
                ));
            }
            if RESERVED_KEYWORDS.contains(&kw.as_str()) {
                return Err(format!(
                    "optout.keywords: {:?} is a built-in keyword and cannot be redefined",
                    k.keyword
                ));
            }
            if !seen.insert((k.origination.as_str(), kw.clone())) {
                return Err(format!(
                    "optout.keywords: {:?} is defined twice for {}",
                    k.keyword, k.origination
                ));
            }
            let toll_free = numbers
                .get(k.origination.as_str())
                .is_some_and(|n| n.toll_free);
            if toll_free && k.action != KeywordAction::AutomaticResponse {
                return Err(format!(
                    "optout.keywords: {:?} on toll-free {}: toll-free numbers opt out only with STOP and in only with START/UNSTOP",
                    k.keyword, k.origination
                ));
            }
        }
        Ok(())
    }
}
