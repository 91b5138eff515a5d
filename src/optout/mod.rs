//! Opt-out lists and inbound keywords (BRIEF section 4): a pure, deterministic
//! state machine fed with inbound two-way messages.
//!
//! * Every origination identity is linked to one list ([`DEFAULT_LIST`] unless
//!   configured in `[[optout.lists]]`); the state is kept per (list, customer
//!   number).
//! * The keyword is the first word of the message ([`keywords`]).
//! * Inbound order is not guaranteed, so each stored entry remembers the
//!   `received_at` (`as_of`) and `inboundMessageId` (`cause`) of the message
//!   that decided it, and an older decision arriving later does not override
//!   a newer one (see [`OptOutEngine::handle_inbound`]). The rule **fails
//!   safe**: at equal receive times the opt-out wins, and a receive time can
//!   never be later than the record's arrival plus the clock skew (the
//!   decoder dead-letters it), so no record can make later decisions look
//!   older.
//! * No reply is ever addressed to one of our own numbers (a HELP or
//!   auto-response loop between two of our numbers would bill forever).
//! * Self-managed numbers get their replies ([`Reply`]) from here; other
//!   numbers are answered by the service, but their state is still kept.

pub mod config;
pub mod keywords;

mod compact_keys;
use compact_keys::*;

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::model::InboundMessage;
use config::{default_help_response, default_start_response, default_stop_response, OptOutConfig};
use keywords::{Classification, NumberKeywords};

/// Name of the list every origination uses unless configured otherwise.
pub const DEFAULT_LIST: &str = "Default";

/// What an inbound message asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InboundAction {
    /// Add the customer to the list (mandatory keyword or custom `OPT_OUT`).
    OptOut,
    /// Remove the customer from the list (`START`, `UNSTOP`, custom `OPT_IN`).
    OptIn,
    /// Answer with the support contact text.
    Help,
    /// Custom keyword that only answers.
    AutomaticResponse,
    /// Ordinary text, no keyword.
    None,
}

impl InboundAction {
    /// The name used in records: `OPT_OUT`, `OPT_IN`, `HELP`,
    /// `AUTOMATIC_RESPONSE`, `NONE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            InboundAction::OptOut => "OPT_OUT",
            InboundAction::OptIn => "OPT_IN",
            InboundAction::Help => "HELP",
            InboundAction::AutomaticResponse => "AUTOMATIC_RESPONSE",
            InboundAction::None => "NONE",
        }
    }
}

impl fmt::Display for InboundAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of the stored opt-out state of one number on one list, as written
/// to (and read back from) the changelog.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptOutChange {
    /// The list.
    pub opt_out_list: String,
    /// The customer number.
    pub number: String,
    /// State after the change.
    pub opted_out: bool,
    /// the time the deciding message was received, epoch ms, if known
    pub as_of: Option<i64>,
    /// inboundMessageId of the message that caused it, if known
    pub cause: Option<String>,
    /// The keyword of the message that decided it (`STOP`, a custom
    /// keyword); absent for an operator's change and in values written
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
}

/// The stored entry of one number on one list ([`OptOutEngine::lookup`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// Opted out.
    pub opted_out: bool,
    /// The receive time of the deciding message, or the operator's request
    /// time, epoch ms.
    pub since: Option<i64>,
    /// What decided it: an inboundMessageId, or `operator:<request id>`.
    pub cause: Option<String>,
    /// The deciding message's keyword.
    pub keyword: Option<String>,
}

/// A reply a self-managed number must send.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// customer number to send to
    pub to: String,
    /// our number to send from
    pub from: String,
    /// Text to send.
    pub body: String,
    /// Action of the message answered.
    pub action: InboundAction,
    /// Canonical keyword of the message answered.
    pub keyword: String,
    /// inboundMessageId of the message answered, if known.
    pub in_reply_to: Option<String>,
}

/// Why an opt-out or opt-in left the customer's state as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateUnchanged {
    /// An opt-out for a customer already opted out.
    AlreadyOptedOut,
    /// An opt-in for a customer not opted out.
    AlreadyOptedIn,
    /// An opt-out older than the stored opt-in (by receive time).
    NewerOptIn,
    /// An opt-in older than the stored opt-out (by receive time).
    NewerOptOut,
    /// An opt-in received at the same time as the stored opt-out: the
    /// opt-out wins ties.
    OptOutWinsTie,
}

impl StateUnchanged {
    /// The name used in records (`already_opted_out`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            StateUnchanged::AlreadyOptedOut => "already_opted_out",
            StateUnchanged::AlreadyOptedIn => "already_opted_in",
            StateUnchanged::NewerOptIn => "newer_opt_in",
            StateUnchanged::NewerOptOut => "newer_opt_out",
            StateUnchanged::OptOutWinsTie => "opt_out_wins_tie",
        }
    }
}

/// What handling one inbound message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundOutcome {
    /// Canonical uppercase keyword that matched; `None` when action is `None`.
    pub keyword: Option<String>,
    /// The action of the message.
    pub action: InboundAction,
    /// The list linked to our number.
    pub opt_out_list: String,
    /// Whether the customer is opted out of that list after processing.
    pub opted_out: bool,
    /// For an opt-out or opt-in that left the state as it was: why. `None`
    /// for every other action and when the state changed.
    pub state_unchanged: Option<StateUnchanged>,
    /// `Some` only when the stored entry changed (see
    /// [`OptOutEngine::handle_inbound`]); to be written to the changelog.
    pub change: Option<OptOutChange>,
    /// Reply to send; only for self-managed numbers.
    pub reply: Option<Reply>,
}

/// Stored state of one (list, number).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    opted_out: bool,
    as_of: Option<i64>,
    cause: Option<CauseId>,
    /// The deciding message's keyword (not part of the ordering).
    keyword: Option<Box<str>>,
}

impl Entry {
    /// Does a decision `(opted_out, as_of, cause)` override this stored one?
    ///
    /// A decision with no time overrides (processing order). Otherwise it
    /// overrides a stored entry with no time, an older one, or one of the
    /// same time that it beats on `(opted_out, cause)`: **the opt-out wins a
    /// tie** (fail safe), and between two decisions of the same state and
    /// time the greater cause is kept (`None` < `Some`, then text order), so
    /// the stored entry does not depend on arrival order.
    fn overridden_by(&self, opted_out: bool, as_of: Option<i64>, cause: Option<&CauseId>) -> bool {
        match (as_of, self.as_of) {
            (None, _) | (Some(_), None) => true,
            (Some(t), Some(s)) => {
                let by_cause = || match (cause, self.cause.as_ref()) {
                    (Some(a), Some(b)) => a.cmp_text(b),
                    (Some(_), None) => Ordering::Greater,
                    (None, Some(_)) => Ordering::Less,
                    (None, None) => Ordering::Equal,
                };
                t.cmp(&s)
                    .then(opted_out.cmp(&self.opted_out))
                    .then_with(by_cause)
                    == Ordering::Greater
            }
        }
    }
}

/// One list: its name and its entries.
#[derive(Clone, Debug)]
struct ListState {
    name: Box<str>,
    entries: HashMap<NumKey, Entry>,
}

/// Result of offering a decision to the store.
struct Decision {
    /// The stored entry was created or differs from before.
    changed: bool,
    /// Stored opted-out state afterwards.
    opted_out: bool,
    /// Why the state is the same as before, if it is.
    unchanged: Option<StateUnchanged>,
}

impl ListState {
    fn decide(
        &mut self,
        number: &str,
        opted_out: bool,
        as_of: Option<i64>,
        cause: Option<&str>,
        keyword: Option<&str>,
    ) -> Decision {
        let cause = cause.map(CauseId::new);
        let new = Entry {
            opted_out,
            as_of,
            cause,
            keyword: keyword.map(Box::from),
        };
        let already = if opted_out {
            StateUnchanged::AlreadyOptedOut
        } else {
            StateUnchanged::AlreadyOptedIn
        };
        match self.entries.get_mut(number) {
            Some(e) => {
                let before = e.opted_out;
                if e.overridden_by(new.opted_out, new.as_of, new.cause.as_ref()) && *e != new {
                    *e = new;
                    Decision {
                        changed: true,
                        opted_out,
                        unchanged: (before == opted_out).then_some(already),
                    }
                } else if before == opted_out {
                    Decision {
                        changed: false,
                        opted_out: before,
                        unchanged: Some(already),
                    }
                } else {
                    // Overridden by a stored decision of the other state.
                    let why = if opted_out {
                        StateUnchanged::NewerOptIn
                    } else if e.as_of == new.as_of {
                        StateUnchanged::OptOutWinsTie
                    } else {
                        StateUnchanged::NewerOptOut
                    };
                    Decision {
                        changed: false,
                        opted_out: before,
                        unchanged: Some(why),
                    }
                }
            }
            None => {
                self.entries.insert(NumKey::new(number), new);
                Decision {
                    changed: true,
                    opted_out,
                    // A number with no entry is not opted out.
                    unchanged: (!opted_out).then_some(already),
                }
            }
        }
    }
}

/// Settings of one of our numbers.
#[derive(Clone, Debug)]
struct NumberSettings {
    keywords: NumberKeywords,
    self_managed: bool,
    help_response: String,
    stop_response: String,
    start_response: String,
}

impl NumberSettings {
    /// A number absent from `[[optout.numbers]]`: not toll-free, service-managed.
    fn unconfigured() -> Self {
        NumberSettings {
            keywords: NumberKeywords::new(false),
            self_managed: false,
            help_response: default_help_response(),
            stop_response: default_stop_response(),
            start_response: default_start_response(),
        }
    }
}

/// Index of a list in [`OptOutEngine::lists`]; [`DEFAULT_LIST`] is 0.
type ListId = usize;

/// The opt-out state of every list, and the keyword settings of our numbers.
#[derive(Clone, Debug)]
pub struct OptOutEngine {
    /// Lists, indexed by [`ListId`]; names are unique.
    lists: Vec<ListState>,
    /// List name -> id.
    list_ids: HashMap<Box<str>, ListId>,
    /// Origination identity -> list id (absent: [`DEFAULT_LIST`]).
    origination_lists: HashMap<Box<str>, ListId>,
    /// Our configured numbers.
    numbers: HashMap<Box<str>, NumberSettings>,
    /// Settings of numbers that are not configured.
    unconfigured: NumberSettings,
    /// Our own numbers and origination identities (every one named in
    /// `[optout]`): never the addressee of a reply.
    own: std::collections::HashSet<Box<str>>,
}

impl OptOutEngine {
    /// An engine with empty lists.
    ///
    /// The configuration is expected to be validated; if it is not, the first
    /// definition of a number, of an origination's list and of a custom keyword
    /// wins, and custom keywords that redefine built-ins, have nothing
    /// alphanumeric, or change state on a toll-free number are ignored.
    pub fn new(cfg: &OptOutConfig) -> Self {
        let mut engine = OptOutEngine {
            lists: Vec::new(),
            list_ids: HashMap::new(),
            origination_lists: HashMap::new(),
            numbers: HashMap::new(),
            unconfigured: NumberSettings::unconfigured(),
            own: std::collections::HashSet::new(),
        };
        let own = cfg
            .lists
            .iter()
            .flat_map(|l| l.originations.iter())
            .chain(cfg.numbers.iter().map(|n| &n.number))
            .chain(cfg.keywords.iter().map(|k| &k.origination));
        engine.own = own.map(|n| n.as_str().into()).collect();
        engine.intern_list(DEFAULT_LIST);
        for list in &cfg.lists {
            let id = engine.intern_list(&list.name);
            for o in &list.originations {
                engine
                    .origination_lists
                    .entry(o.as_str().into())
                    .or_insert(id);
            }
        }
        for n in &cfg.numbers {
            engine
                .numbers
                .entry(n.number.as_str().into())
                .or_insert_with(|| NumberSettings {
                    keywords: NumberKeywords::new(n.toll_free),
                    self_managed: n.self_managed,
                    help_response: n.help_response.clone(),
                    stop_response: n.stop_response.clone(),
                    start_response: n.start_response.clone(),
                });
        }
        for k in &cfg.keywords {
            let settings = engine
                .numbers
                .entry(k.origination.as_str().into())
                .or_insert_with(NumberSettings::unconfigured);
            // Rejections are already reported by config validation.
            let _ = settings
                .keywords
                .add_custom(&k.keyword, k.action, &k.response);
        }
        engine
    }

    fn intern_list(&mut self, name: &str) -> ListId {
        if let Some(&id) = self.list_ids.get(name) {
            return id;
        }
        let id = self.lists.len();
        self.lists.push(ListState {
            name: name.into(),
            entries: HashMap::new(),
        });
        self.list_ids.insert(name.into(), id);
        id
    }

    fn list_id_for(&self, origination: &str) -> ListId {
        self.origination_lists
            .get(origination)
            .copied()
            .unwrap_or(0)
    }

    /// list linked to an origination identity (DEFAULT_LIST when not configured)
    pub fn list_for(&self, origination: &str) -> &str {
        self.lists
            .get(self.list_id_for(origination))
            .map_or(DEFAULT_LIST, |l| &l.name)
    }

    /// Handles one inbound message from the customer `msg.origination_number`
    /// to our number `msg.destination_number`, on the list linked to our number.
    ///
    /// `OPT_OUT` / `OPT_IN` decide the customer's state. A decision with
    /// `received_at = Some(t)` overrides the stored one only when the stored
    /// `as_of` is unknown or older than `t`, or equal to `t` and the decision
    /// is an opt-out over a stored opt-in (**the opt-out wins a tie**), or of
    /// the same state with a greater `inboundMessageId` (`None` < `Some`); a
    /// decision with `received_at = None` always overrides (processing
    /// order). `state_unchanged` says why an opt-out or opt-in left the state
    /// as it was (already in that state, overridden by a newer opposite
    /// decision, or an opt-in tied with a stored opt-out). The stored entry keeps the
    /// time and id of the message that decided it, even when the state itself
    /// is unchanged (a newer `STOP` while opted out refreshes `as_of`), so
    /// `change` is `Some` whenever the stored entry (state, `as_of` or `cause`)
    /// changed; a decision that does not override leaves `change` `None` and
    /// reports the current state.
    ///
    /// Self-managed numbers get a [`Reply`]: `HELP` -> help text; `OPT_OUT` ->
    /// custom response or stop text, also when already opted out; `OPT_IN` ->
    /// custom response or start text; custom `AUTOMATIC_RESPONSE` -> its
    /// response. No reply is produced when it would contradict the stored
    /// state: an opt-out or opt-in overridden by a newer opposite decision
    /// (that message had its own reply), or an automatic response to a
    /// customer who is opted out of the list. `HELP` is always answered,
    /// except that nothing is ever sent to one of our own numbers
    /// ([`is_own_number`](Self::is_own_number)) or back to the number the
    /// message was sent to.
    pub fn handle_inbound(&mut self, msg: &InboundMessage) -> InboundOutcome {
        let customer = msg.origination_number.as_str();
        let ours = msg.destination_number.as_str();
        let list_id = self.list_id_for(ours);
        let settings = self.numbers.get(ours).unwrap_or(&self.unconfigured);
        let class = settings.keywords.classify_body(&msg.message_body);
        let action = class.action();
        let Some(list) = self.lists.get_mut(list_id) else {
            // Unreachable: ids come from `intern_list`.
            return InboundOutcome {
                keyword: class.keyword().map(str::to_owned),
                action,
                opt_out_list: DEFAULT_LIST.to_owned(),
                opted_out: false,
                state_unchanged: None,
                change: None,
                reply: None,
            };
        };

        let (opted_out, unchanged, change) = match action {
            InboundAction::OptOut | InboundAction::OptIn => {
                let want = action == InboundAction::OptOut;
                let d = list.decide(
                    customer,
                    want,
                    msg.received_at,
                    msg.inbound_message_id.as_deref(),
                    class.keyword(),
                );
                let change = d.changed.then(|| OptOutChange {
                    opt_out_list: list.name.to_string(),
                    number: customer.to_owned(),
                    opted_out: want,
                    as_of: msg.received_at,
                    cause: msg.inbound_message_id.clone(),
                    keyword: class.keyword().map(str::to_owned),
                });
                (d.opted_out, d.unchanged, change)
            }
            _ => (
                list.entries.get(customer).is_some_and(|e| e.opted_out),
                None,
                None,
            ),
        };

        // A message from one of our own numbers (or from the number it was
        // sent to) gets no reply: two of our numbers answering each other
        // would loop and bill forever. Its state is still kept.
        let own_sender = customer == ours || self.own.contains(customer);
        let reply = if settings.self_managed && !own_sender {
            reply_body(settings, &class, opted_out).map(|body| Reply {
                to: customer.to_owned(),
                from: ours.to_owned(),
                body: body.to_owned(),
                action,
                keyword: class.keyword().unwrap_or_default().to_owned(),
                in_reply_to: msg.inbound_message_id.clone(),
            })
        } else {
            None
        };

        InboundOutcome {
            keyword: class.keyword().map(str::to_owned),
            action,
            opt_out_list: list.name.to_string(),
            opted_out,
            state_unchanged: unchanged,
            change,
            reply,
        }
    }

    /// Is `number` one of our own numbers or origination identities (named
    /// in `[optout]`)? Replies are never addressed to one.
    pub fn is_own_number(&self, number: &str) -> bool {
        self.own.contains(number)
    }

    /// is `destination` opted out of the list linked to `origination`
    pub fn is_opted_out(&self, origination: &str, destination: &str) -> bool {
        self.lists
            .get(self.list_id_for(origination))
            .and_then(|l| l.entries.get(destination))
            .is_some_and(|e| e.opted_out)
    }

    /// every (list, number, opted_out) with state, sorted by list then number
    pub fn entries(&self) -> Vec<(&str, &str, bool)> {
        let mut lists: Vec<&ListState> = self.lists.iter().collect();
        lists.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::with_capacity(lists.iter().map(|l| l.entries.len()).sum());
        for l in lists {
            let start = out.len();
            out.extend(
                l.entries
                    .iter()
                    .map(|(k, e)| (&*l.name, k.as_str(), e.opted_out)),
            );
            out[start..].sort_unstable_by(|a, b| a.1.cmp(b.1));
        }
        out
    }

    /// Is `name` a list of this engine (configured, [`DEFAULT_LIST`], or
    /// read back from the changelog)?
    pub fn has_list(&self, name: &str) -> bool {
        self.list_ids.contains_key(name)
    }

    /// The stored entry of `number` on `list`: opted out, since when (the
    /// receive time of the deciding message, or the operator's request
    /// time, epoch ms) and what decided it (an inboundMessageId, or
    /// `operator:<request id>`). `None` when the number has no entry (it is
    /// not opted out).
    pub fn lookup(&self, list: &str, number: &str) -> Option<Lookup> {
        let id = *self.list_ids.get(list)?;
        let e = self.lists.get(id)?.entries.get(number)?;
        Some(Lookup {
            opted_out: e.opted_out,
            since: e.as_of,
            cause: e.cause.as_ref().map(CauseId::text),
            keyword: e.keyword.as_deref().map(str::to_owned),
        })
    }

    /// An operator's decision (the API's PUT or DELETE): `number` opted out
    /// of `list` (or back in) as of `at` (epoch ms), decided by `cause`. The
    /// same last-writer-wins rule as a customer's keyword: a later message
    /// of the customer overrides it, an earlier one does not. Returns the
    /// changelog value when the stored entry changed.
    pub fn decide_operator(
        &mut self,
        list: &str,
        number: &str,
        opted_out: bool,
        at: i64,
        cause: &str,
    ) -> Option<OptOutChange> {
        let id = self.intern_list(list);
        let l = self.lists.get_mut(id)?;
        l.decide(number, opted_out, Some(at), Some(cause), None)
            .changed
            .then(|| OptOutChange {
                opt_out_list: list.to_owned(),
                number: number.to_owned(),
                opted_out,
                as_of: Some(at),
                cause: Some(cause.to_owned()),
                keyword: None,
            })
    }

    /// apply a change read back from a changelog (state restore); same ordering rule as handle_inbound; returns true if state changed
    ///
    /// A list not in the configuration is created. Applying the same change
    /// twice changes nothing the second time.
    pub fn apply_change(&mut self, change: &OptOutChange) -> bool {
        let id = self.intern_list(&change.opt_out_list);
        self.lists.get_mut(id).is_some_and(|l| {
            l.decide(
                &change.number,
                change.opted_out,
                change.as_of,
                change.cause.as_deref(),
                change.keyword.as_deref(),
            )
            .changed
        })
    }
}

/// The reply text for a self-managed number, `None` when there is none.
fn reply_body<'a>(
    settings: &'a NumberSettings,
    class: &Classification<'a>,
    opted_out: bool,
) -> Option<&'a str> {
    let custom = class.custom().map(|c| c.response.as_str());
    match class.action() {
        InboundAction::Help => Some(&settings.help_response),
        InboundAction::OptOut if opted_out => Some(custom.unwrap_or(&settings.stop_response)),
        InboundAction::OptIn if !opted_out => Some(custom.unwrap_or(&settings.start_response)),
        InboundAction::AutomaticResponse if !opted_out => custom,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::keywords::MANDATORY_OPT_OUT;
    use super::*;
    use crate::config::Config;
    use proptest::prelude::*;

    const CUST: &str = "+14255550182";
    const CUST2: &str = "+14255550183";
    /// Marketing list, self-managed, custom keywords.
    const MK: &str = "+12125550101";
    /// Toll-free, self-managed, Default list.
    const TF: &str = "+18445550100";
    /// Configured, service-managed, Default list.
    const SVC: &str = "+12065550100";
    /// Not configured at all.
    const UNK: &str = "+13105550100";

    const CFG: &str = r#"
[[optout.lists]]
name = "Marketing"
originations = ["+12125550101"]
[[optout.numbers]]
number = "+18445550100"
toll_free = true
self_managed = true
help_response = "TF help"
[[optout.numbers]]
number = "+12125550101"
self_managed = true
help_response = "MK help"
stop_response = "MK stop"
start_response = "MK start"
[[optout.numbers]]
number = "+12065550100"
[[optout.keywords]]
origination = "+12125550101"
keyword = "join"
action = "OPT_IN"
response = "joined"
[[optout.keywords]]
origination = "+12125550101"
keyword = "LEAVE"
action = "OPT_OUT"
response = "left"
[[optout.keywords]]
origination = "+12125550101"
keyword = "Hours"
action = "AUTOMATIC_RESPONSE"
response = "9-5"
[[optout.keywords]]
origination = "+18445550100"
keyword = "INFO"
action = "AUTOMATIC_RESPONSE"
response = "tf info"
"#;

    fn engine() -> OptOutEngine {
        let cfg = Config::from_toml(CFG, "test").expect("valid test config");
        OptOutEngine::new(&cfg.optout)
    }

    fn msg_at(
        from: &str,
        to: &str,
        body: &str,
        at: Option<i64>,
        id: Option<&str>,
    ) -> InboundMessage {
        InboundMessage {
            origination_number: from.to_owned(),
            destination_number: to.to_owned(),
            message_body: body.to_owned(),
            message_keyword: None,
            inbound_message_id: id.map(str::to_owned),
            previous_published_message_id: None,
            received_at: at,
        }
    }

    fn msg(from: &str, to: &str, body: &str) -> InboundMessage {
        msg_at(from, to, body, None, None)
    }

    #[test]
    fn action_names() {
        for (a, s) in [
            (InboundAction::OptOut, "OPT_OUT"),
            (InboundAction::OptIn, "OPT_IN"),
            (InboundAction::Help, "HELP"),
            (InboundAction::AutomaticResponse, "AUTOMATIC_RESPONSE"),
            (InboundAction::None, "NONE"),
        ] {
            assert_eq!(a.as_str(), s);
            assert_eq!(a.to_string(), s);
            let json = serde_json::to_string(&a).expect("serialize");
            assert_eq!(json, format!("\"{s}\""));
            let back: InboundAction = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, a);
        }
    }

    #[test]
    fn every_mandatory_keyword_opts_out() {
        for k in MANDATORY_OPT_OUT {
            for body in [k.to_owned(), k.to_lowercase(), format!("{k}.")] {
                let mut e = engine();
                let o = e.handle_inbound(&msg(CUST, SVC, &body));
                assert_eq!(o.action, InboundAction::OptOut, "{body}");
                assert_eq!(o.keyword.as_deref(), Some(k), "{body}");
                assert!(o.opted_out, "{body}");
                assert_eq!(o.opt_out_list, DEFAULT_LIST);
                assert_eq!(
                    o.change,
                    Some(OptOutChange {
                        opt_out_list: DEFAULT_LIST.into(),
                        number: CUST.into(),
                        opted_out: true,
                        as_of: None,
                        cause: None,
                        keyword: Some(k.to_owned()),
                    })
                );
                assert_eq!(o.reply, None);
                assert!(e.is_opted_out(SVC, CUST));
            }
        }
    }

    #[test]
    fn first_word_decides() {
        for body in ["Stop.", "stop!!", " STOP please", "Stop sending me these"] {
            let mut e = engine();
            let o = e.handle_inbound(&msg(CUST, SVC, body));
            assert_eq!(o.action, InboundAction::OptOut, "{body:?}");
            assert_eq!(o.keyword.as_deref(), Some("STOP"));
            assert!(e.is_opted_out(SVC, CUST), "{body:?}");
        }
        for body in ["please stop", "WEEKEND", "Endless", "STOPPED", "", "!!!"] {
            let mut e = engine();
            let o = e.handle_inbound(&msg(CUST, SVC, body));
            assert_eq!(o.action, InboundAction::None, "{body:?}");
            assert_eq!(o.keyword, None);
            assert!(!o.opted_out);
            assert_eq!(o.change, None);
            assert_eq!(o.reply, None);
            assert!(!e.is_opted_out(SVC, CUST), "{body:?}");
            assert!(e.entries().is_empty());
        }
    }

    #[test]
    fn help() {
        let mut e = engine();
        let o = e.handle_inbound(&msg(CUST, SVC, "help"));
        assert_eq!(o.action, InboundAction::Help);
        assert_eq!(o.keyword.as_deref(), Some("HELP"));
        assert_eq!((o.change, o.reply), (None, None));
        let o = e.handle_inbound(&msg(CUST, MK, "Help?"));
        assert_eq!(o.reply.map(|r| r.body), Some("MK help".to_owned()));
        let o = e.handle_inbound(&msg(CUST, TF, "HELP"));
        assert_eq!(o.reply.map(|r| r.body), Some("TF help".to_owned()));
        // HELP is answered even when opted out, and changes nothing.
        e.handle_inbound(&msg(CUST, MK, "stop"));
        let o = e.handle_inbound(&msg(CUST, MK, "help"));
        assert!(o.opted_out);
        assert_eq!(o.change, None);
        assert_eq!(o.reply.map(|r| r.body), Some("MK help".to_owned()));
        assert!(e.entries().len() == 1);
    }

    #[test]
    fn start_and_unstop_opt_back_in() {
        for word in ["START", "unstop", "Start!"] {
            let mut e = engine();
            e.handle_inbound(&msg(CUST, SVC, "STOP"));
            assert!(e.is_opted_out(SVC, CUST));
            let o = e.handle_inbound(&msg(CUST, SVC, word));
            assert_eq!(o.action, InboundAction::OptIn);
            assert!(!o.opted_out);
            assert_eq!(o.change.map(|c| c.opted_out), Some(false));
            assert!(!e.is_opted_out(SVC, CUST));
            assert_eq!(e.entries(), vec![(DEFAULT_LIST, CUST, false)]);
        }
    }

    #[test]
    fn custom_keywords() {
        let mut e = engine();
        let o = e.handle_inbound(&msg(CUST, MK, "leave now"));
        assert_eq!(o.action, InboundAction::OptOut);
        assert_eq!(o.keyword.as_deref(), Some("LEAVE"));
        assert!(o.opted_out && e.is_opted_out(MK, CUST));
        // custom response wins over stop_response
        assert_eq!(o.reply.map(|r| r.body), Some("left".to_owned()));

        // automatic response is not sent to an opted-out customer
        let o = e.handle_inbound(&msg(CUST, MK, "hours"));
        assert_eq!(o.action, InboundAction::AutomaticResponse);
        assert_eq!((o.change, o.reply), (None, None));

        let o = e.handle_inbound(&msg(CUST, MK, "JOIN"));
        assert_eq!(o.action, InboundAction::OptIn);
        assert_eq!(o.keyword.as_deref(), Some("JOIN"));
        assert!(!o.opted_out && !e.is_opted_out(MK, CUST));
        assert_eq!(o.reply.map(|r| r.body), Some("joined".to_owned()));

        let o = e.handle_inbound(&msg(CUST, MK, "Hours?"));
        assert_eq!(o.action, InboundAction::AutomaticResponse);
        assert_eq!(o.keyword.as_deref(), Some("HOURS"));
        assert_eq!(o.change, None);
        assert_eq!(o.reply.map(|r| r.body), Some("9-5".to_owned()));

        // built-in replies of the same number
        let o = e.handle_inbound(&msg(CUST, MK, "stop"));
        assert_eq!(o.reply.map(|r| r.body), Some("MK stop".to_owned()));
        let o = e.handle_inbound(&msg(CUST, MK, "start"));
        assert_eq!(o.reply.map(|r| r.body), Some("MK start".to_owned()));

        // custom keywords belong to their number only
        for to in [SVC, TF, UNK] {
            let o = e.handle_inbound(&msg(CUST, to, "leave"));
            assert_eq!(o.action, InboundAction::None, "{to}");
            assert_eq!(o.keyword, None);
        }
    }

    #[test]
    fn toll_free() {
        let mut e = engine();
        for word in ["QUIT", "cancel", "End", "ARRET", "unsubscribe", "OPT-OUT"] {
            let o = e.handle_inbound(&msg(CUST, TF, word));
            assert_eq!(o.action, InboundAction::None, "{word}");
            assert_eq!((o.keyword, o.change, o.reply), (None, None, None));
            assert!(!e.is_opted_out(TF, CUST), "{word}");
        }
        let o = e.handle_inbound(&msg(CUST, TF, "stop"));
        assert_eq!(o.action, InboundAction::OptOut);
        assert!(o.opted_out && e.is_opted_out(TF, CUST));
        assert_eq!(o.reply.map(|r| r.body), Some(default_stop_response()));
        // QUIT still does nothing while opted out
        let o = e.handle_inbound(&msg(CUST, TF, "quit"));
        assert_eq!(o.action, InboundAction::None);
        assert!(o.opted_out);
        for word in ["START", "unstop"] {
            e.handle_inbound(&msg(CUST, TF, "STOP"));
            let o = e.handle_inbound(&msg(CUST, TF, word));
            assert_eq!(o.action, InboundAction::OptIn, "{word}");
            assert!(!o.opted_out && !e.is_opted_out(TF, CUST));
            assert_eq!(o.reply.map(|r| r.body), Some(default_start_response()));
        }
        let o = e.handle_inbound(&msg(CUST, TF, "info"));
        assert_eq!(o.action, InboundAction::AutomaticResponse);
        assert_eq!(o.reply.map(|r| r.body), Some("tf info".to_owned()));
    }

    #[test]
    fn self_managed_reply_fields() {
        let mut e = engine();
        let o = e.handle_inbound(&msg_at(CUST, MK, "STOP pls", Some(10), Some("id-1")));
        assert_eq!(
            o.reply,
            Some(Reply {
                to: CUST.into(),
                from: MK.into(),
                body: "MK stop".into(),
                action: InboundAction::OptOut,
                keyword: "STOP".into(),
                in_reply_to: Some("id-1".into()),
            })
        );
        let json = serde_json::to_value(o.reply.as_ref().expect("reply")).expect("json");
        assert_eq!(json["inReplyTo"], "id-1");
        assert_eq!(json["action"], "OPT_OUT");
        // STOP when already opted out: confirmed again
        let o = e.handle_inbound(&msg_at(CUST, MK, "stop", Some(20), Some("id-2")));
        assert!(o.opted_out);
        assert_eq!(o.reply.map(|r| r.body), Some("MK stop".to_owned()));
        // the newer decision refreshes as_of, so the change is recorded
        assert_eq!(o.change.and_then(|c| c.as_of), Some(20));
        // an older STOP, already opted out: reply, no change
        let o = e.handle_inbound(&msg_at(CUST, MK, "stop", Some(5), Some("id-0")));
        assert!(o.opted_out);
        assert_eq!(o.change, None);
        assert_eq!(
            o.reply.map(|r| r.in_reply_to),
            Some(Some("id-0".to_owned()))
        );
    }

    #[test]
    fn service_managed_keeps_state_without_replies() {
        let mut e = engine();
        for (to, cust) in [(SVC, CUST), (UNK, CUST2)] {
            let o = e.handle_inbound(&msg(cust, to, "STOP"));
            assert_eq!(o.action, InboundAction::OptOut);
            assert!(o.change.is_some());
            assert_eq!(o.reply, None);
            assert!(e.is_opted_out(to, cust));
            let o = e.handle_inbound(&msg(cust, to, "help"));
            assert_eq!(o.action, InboundAction::Help);
            assert_eq!(o.reply, None);
        }
        // unconfigured numbers are not toll-free
        let o = e.handle_inbound(&msg("+15555550100", UNK, "quit"));
        assert_eq!(o.action, InboundAction::OptOut);
        assert_eq!(o.reply, None);
    }

    #[test]
    fn list_mapping() {
        let mut e = engine();
        assert_eq!(e.list_for(MK), "Marketing");
        for o in [SVC, TF, UNK, "pool-123"] {
            assert_eq!(e.list_for(o), DEFAULT_LIST);
        }
        let o = e.handle_inbound(&msg(CUST, MK, "stop"));
        assert_eq!(o.opt_out_list, "Marketing");
        assert_eq!(
            o.change.map(|c| c.opt_out_list),
            Some("Marketing".to_owned())
        );
        assert!(e.is_opted_out(MK, CUST));
        // opting out of Marketing does not opt out of Default
        assert!(!e.is_opted_out(SVC, CUST));
        assert!(!e.is_opted_out(TF, CUST));
        assert!(!e.is_opted_out(UNK, CUST));
        // Default numbers share one list
        let o = e.handle_inbound(&msg(CUST, SVC, "stop"));
        assert_eq!(o.opt_out_list, DEFAULT_LIST);
        assert!(e.is_opted_out(TF, CUST) && e.is_opted_out(UNK, CUST));
        let o = e.handle_inbound(&msg(CUST, UNK, "start"));
        assert!(!o.opted_out && !e.is_opted_out(SVC, CUST));
        assert!(e.is_opted_out(MK, CUST));
    }

    #[test]
    fn older_message_arriving_later_does_not_override() {
        let mut e = engine();
        let o = e.handle_inbound(&msg_at(CUST, MK, "START", Some(200), Some("b")));
        assert!(!o.opted_out);
        let o = e.handle_inbound(&msg_at(CUST, MK, "STOP", Some(100), Some("a")));
        assert_eq!(o.action, InboundAction::OptOut);
        assert!(!o.opted_out, "the newer START stands");
        assert_eq!(o.change, None);
        // no confirmation that contradicts the state
        assert_eq!(o.reply, None);
        assert!(!e.is_opted_out(MK, CUST));
        // a newer STOP does override
        let o = e.handle_inbound(&msg_at(CUST, MK, "STOP", Some(300), Some("c")));
        assert!(o.opted_out && o.change.is_some());
        let o = e.handle_inbound(&msg_at(CUST, MK, "START", Some(250), Some("d")));
        assert!(o.opted_out);
        assert_eq!((o.change, o.reply), (None, None));
    }

    #[test]
    fn equal_times_opt_out_wins() {
        // STOP and START with the same receive time: the opt-out wins,
        // whatever the arrival order and whatever the ids
        for (stop_id, start_id) in [("a", "b"), ("b", "a"), ("x", "x")] {
            for stop_first in [true, false] {
                let mut e = engine();
                let stop = msg_at(CUST, SVC, "STOP", Some(7), Some(stop_id));
                let start = msg_at(CUST, SVC, "START", Some(7), Some(start_id));
                let (first, second) = if stop_first {
                    (stop, start)
                } else {
                    (start, stop)
                };
                e.handle_inbound(&first);
                let o = e.handle_inbound(&second);
                assert!(o.opted_out, "{stop_id} {start_id} {stop_first}");
                assert!(e.is_opted_out(SVC, CUST));
                if stop_first {
                    assert_eq!(o.state_unchanged, Some(StateUnchanged::OptOutWinsTie));
                    assert!(o.change.is_none());
                } else {
                    assert_eq!(o.state_unchanged, None);
                    assert!(o.change.is_some());
                }
            }
        }
        // None < Some among decisions of the same state and time; an untimed
        // START against a timed STOP of the same time never wins the tie
        let mut e = engine();
        e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(7), Some("x")));
        let o = e.handle_inbound(&msg_at(CUST, SVC, "START", Some(7), None));
        assert!(o.opted_out && o.change.is_none());
        let mut e = engine();
        e.handle_inbound(&msg_at(CUST, SVC, "START", Some(7), None));
        let o = e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(7), Some("x")));
        assert!(o.opted_out && o.change.is_some());
        // the very same message again changes nothing
        let o = e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(7), Some("x")));
        assert!(o.opted_out && o.change.is_none());
        assert_eq!(o.state_unchanged, Some(StateUnchanged::AlreadyOptedOut));
        // between two STOPs of the same time the greater id is kept as the
        // cause, whatever the order; UUIDs compare as their text
        let (lo, hi) = (
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        );
        for (first, second, kept) in [
            (hi, lo, hi),
            (lo, hi, hi),
            (hi, "0-not-a-uuid", hi),
            ("0-not-a-uuid", hi, hi),
            ("Z-not-a-uuid", hi, "Z-not-a-uuid"),
        ] {
            let mut e = engine();
            let a = e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(1), Some(first)));
            let b = e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(1), Some(second)));
            let cause = b.change.or(a.change).and_then(|c| c.cause);
            assert_eq!(cause.as_deref(), Some(kept), "{first} {second}");
            assert!(e.is_opted_out(SVC, CUST));
        }
    }

    #[test]
    fn state_unchanged_says_why() {
        let mut e = engine();
        // a first START: nothing to opt back in from
        let o = e.handle_inbound(&msg_at(CUST, SVC, "START", Some(10), Some("a")));
        assert_eq!(o.state_unchanged, Some(StateUnchanged::AlreadyOptedIn));
        // STOP changes the state
        let o = e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(20), Some("b")));
        assert_eq!((o.opted_out, o.state_unchanged), (true, None));
        // a newer STOP: already opted out (the entry is refreshed)
        let o = e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(30), Some("c")));
        assert_eq!(o.state_unchanged, Some(StateUnchanged::AlreadyOptedOut));
        assert!(o.change.is_some());
        // an older START: the newer opt-out stands
        let o = e.handle_inbound(&msg_at(CUST, SVC, "START", Some(25), Some("d")));
        assert_eq!(
            (o.opted_out, o.state_unchanged),
            (true, Some(StateUnchanged::NewerOptOut))
        );
        // a newer START opts in
        let o = e.handle_inbound(&msg_at(CUST, SVC, "START", Some(40), Some("e")));
        assert_eq!((o.opted_out, o.state_unchanged), (false, None));
        // an older STOP: the newer opt-in stands, and says so
        let o = e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(35), Some("f")));
        assert_eq!(
            (o.opted_out, o.state_unchanged),
            (false, Some(StateUnchanged::NewerOptIn))
        );
        // HELP and plain text say nothing about state changes
        let o = e.handle_inbound(&msg_at(CUST, SVC, "HELP", Some(50), Some("g")));
        assert_eq!(o.state_unchanged, None);
        assert_eq!(StateUnchanged::NewerOptIn.as_str(), "newer_opt_in");
        assert_eq!(
            serde_json::to_value(StateUnchanged::OptOutWinsTie).expect("json"),
            "opt_out_wins_tie"
        );
    }

    #[test]
    fn no_reply_to_our_own_numbers() {
        let mut e = engine();
        // TF and MK are both ours and self-managed: HELP, STOP and START
        // between them would answer each other for ever
        for body in ["HELP", "STOP", "START", "hours", "join"] {
            let o = e.handle_inbound(&msg_at(TF, MK, body, Some(1), None));
            assert_eq!(o.reply, None, "{body} from TF to MK");
            let o = e.handle_inbound(&msg_at(MK, TF, body, Some(1), None));
            assert_eq!(o.reply, None, "{body} from MK to TF");
        }
        // a message from the number it was sent to
        let o = e.handle_inbound(&msg(TF, TF, "HELP"));
        assert_eq!(o.reply, None);
        // state is still kept
        e.handle_inbound(&msg_at(SVC, MK, "STOP", Some(5), None));
        assert!(e.is_opted_out(MK, SVC));
        assert!(e.is_own_number(SVC) && e.is_own_number(MK) && !e.is_own_number(CUST));
        // customers are still answered
        let o = e.handle_inbound(&msg(CUST, MK, "HELP"));
        assert!(o.reply.is_some());
    }

    #[test]
    fn unknown_time_follows_processing_order() {
        let mut e = engine();
        e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(1_000), Some("a")));
        let o = e.handle_inbound(&msg_at(CUST, SVC, "START", None, Some("b")));
        assert!(!o.opted_out && o.change.is_some());
        // a timed decision overrides a stored untimed one
        let o = e.handle_inbound(&msg_at(CUST, SVC, "STOP", Some(1), Some("c")));
        assert!(o.opted_out && o.change.is_some());
        let o = e.handle_inbound(&msg_at(CUST, SVC, "START", None, None));
        assert!(!o.opted_out);
        let o = e.handle_inbound(&msg_at(CUST, SVC, "START", None, None));
        assert!(!o.opted_out && o.change.is_none(), "identical entry");
    }

    #[test]
    fn apply_change_restores_state() {
        let mut e = engine();
        let mut log = Vec::new();
        let inputs = [
            (CUST, MK, "STOP", 10, "1"),
            (CUST, SVC, "STOP", 11, "2"),
            (CUST2, SVC, "STOP", 12, "3"),
            (CUST2, SVC, "START", 13, "4"),
            (CUST, MK, "START", 5, "5"),
        ];
        for (from, to, body, t, id) in inputs {
            let o = e.handle_inbound(&msg_at(from, to, body, Some(t), Some(id)));
            log.extend(o.change);
        }
        assert_eq!(log.len(), 4);
        // the changelog round-trips through JSON, in camelCase
        let json = serde_json::to_string(&log).expect("json");
        assert!(json.contains("\"optOutList\"") && json.contains("\"asOf\""));
        let log: Vec<OptOutChange> = serde_json::from_str(&json).expect("parse");

        let mut r = engine();
        let applied: Vec<bool> = log.iter().rev().map(|c| r.apply_change(c)).collect();
        // CUST2's STOP@12 is older than its START@13, applied first
        assert_eq!(applied, [true, false, true, true]);
        assert_eq!(r.entries(), e.entries());
        for c in &log {
            assert!(!r.apply_change(c), "applying twice changes nothing");
        }
        // same ordering rule
        let stale = OptOutChange {
            opt_out_list: "Marketing".into(),
            number: CUST.into(),
            opted_out: false,
            as_of: Some(9),
            cause: Some("9".into()),
            keyword: None,
        };
        assert!(!r.apply_change(&stale));
        assert!(r.is_opted_out(MK, CUST));
        // then the restored engine behaves like the original one
        let late = msg_at(CUST, MK, "START", Some(8), Some("6"));
        assert_eq!(r.handle_inbound(&late), e.handle_inbound(&late));
        // a list that is no longer configured is kept
        let other = OptOutChange {
            opt_out_list: "Old".into(),
            ..stale
        };
        assert!(r.apply_change(&other));
        assert!(r.entries().contains(&("Old", CUST, false)));
    }

    #[test]
    fn entries_are_sorted() {
        let mut e = engine();
        for (from, to, body) in [
            ("+15555550003", SVC, "STOP"),
            ("+15555550001", MK, "STOP"),
            ("+15555550002", SVC, "START"),
            ("+15555550001", SVC, "STOP"),
            ("+15555550000", MK, "JOIN"),
            ("+15555550009", SVC, "hello"),
        ] {
            e.handle_inbound(&msg(from, to, body));
        }
        let long = "a-very-long-sender-identity-beyond-inline";
        e.handle_inbound(&msg(long, SVC, "stop"));
        assert_eq!(
            e.entries(),
            vec![
                (DEFAULT_LIST, "+15555550001", true),
                (DEFAULT_LIST, "+15555550002", false),
                (DEFAULT_LIST, "+15555550003", true),
                (DEFAULT_LIST, long, true),
                ("Marketing", "+15555550000", false),
                ("Marketing", "+15555550001", true),
            ]
        );
        assert!(e.is_opted_out(SVC, long));
    }

    #[test]
    fn unvalidated_config_cannot_redefine_builtins() {
        let cfg = OptOutConfig {
            keywords: vec![
                crate::config::KeywordConfig {
                    origination: SVC.into(),
                    keyword: "stop".into(),
                    action: crate::config::KeywordAction::OptIn,
                    response: "x".into(),
                },
                crate::config::KeywordConfig {
                    origination: SVC.into(),
                    keyword: "WEEK".into(),
                    action: crate::config::KeywordAction::OptOut,
                    response: "bye".into(),
                },
            ],
            ..OptOutConfig::default()
        };
        let mut e = OptOutEngine::new(&cfg);
        assert_eq!(
            e.handle_inbound(&msg(CUST, SVC, "stop")).action,
            InboundAction::OptOut
        );
        assert_eq!(
            e.handle_inbound(&msg(CUST, SVC, "weekend")).action,
            InboundAction::None
        );
        assert_eq!(
            e.handle_inbound(&msg(CUST, SVC, "week")).action,
            InboundAction::OptOut
        );
    }

    #[test]
    fn uuid_round_trip() {
        let u = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        assert!(matches!(CauseId::new(u), CauseId::Uuid(_)));
        assert_eq!(CauseId::new(u).text(), u);
        for s in [
            "7C9E6679-7425-40DE-944B-E07FC1F90AE7",
            "7c9e6679742540de944be07fc1f90ae7",
            "7c9e6679-7425-40de-944b-e07fc1f90ae",
            "",
        ] {
            assert!(matches!(CauseId::new(s), CauseId::Text(_)), "{s}");
            assert_eq!(CauseId::new(s).text(), s);
        }
    }

    proptest! {
        #[test]
        fn uuid_order_is_text_order(a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
            let (sa, sb) = (format_uuid(&a), format_uuid(&b));
            prop_assert_eq!(parse_uuid(&sa), Some(a));
            prop_assert_eq!(CauseId::new(&sa).cmp_text(&CauseId::new(&sb)), sa.cmp(&sb));
        }

        /// Final state = state of the message with the greatest timestamp,
        /// whatever the arrival order; the changelog restores it in any order.
        #[test]
        fn latest_timestamp_wins(
            (stops, times, order, replay) in prop::collection::vec(any::<bool>(), 1..24)
                .prop_flat_map(|stops| {
                    let n = stops.len();
                    (
                        Just(stops),
                        prop::collection::btree_set(-1_000_000i64..1_000_000, n),
                        Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                        Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                    )
                })
        ) {
            let times: Vec<i64> = times.into_iter().collect();
            // `times` is sorted and distinct: message i has time times[i]
            let newest = times.len() - 1;
            let expected = stops[newest];

            let mut e = engine();
            let mut log = Vec::new();
            for &i in &order {
                let body = if stops[i] { "STOP" } else { "start" };
                let id = format!("m{i}");
                let o = e.handle_inbound(&msg_at(CUST, MK, body, Some(times[i]), Some(&id)));
                prop_assert_eq!(o.opted_out, e.is_opted_out(MK, CUST));
                log.extend(o.change);
            }
            prop_assert_eq!(e.is_opted_out(MK, CUST), expected);
            prop_assert_eq!(e.entries(), vec![("Marketing", CUST, expected)]);

            let mut r = engine();
            for &j in &replay {
                if let Some(c) = log.get(j) {
                    r.apply_change(c);
                }
            }
            for c in log.iter().skip(replay.len()) {
                r.apply_change(c);
            }
            prop_assert_eq!(r.entries(), e.entries());
        }

        /// With equal timestamps the opt-out wins.
        #[test]
        fn ties_go_to_the_opt_out(
            (msgs, order) in prop::collection::vec((any::<bool>(), 0i64..4), 1..16)
                .prop_flat_map(|msgs| {
                    let n = msgs.len();
                    (Just(msgs), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
                })
        ) {
            let id = |i: usize| format!("id{i:03}");
            // the greatest (time, opt-out, id) wins: the opt-out wins ties
            let expected = msgs
                .iter()
                .enumerate()
                .max_by_key(|(i, (stop, t))| (*t, *stop, id(*i)))
                .map(|(_, (stop, _))| *stop);
            let mut e = engine();
            for &i in &order {
                let (stop, t) = msgs[i];
                let body = if stop { "stop" } else { "UNSTOP" };
                e.handle_inbound(&msg_at(CUST, TF, body, Some(t), Some(&id(i))));
            }
            prop_assert_eq!(Some(e.is_opted_out(TF, CUST)), expected);
        }
    }
}
