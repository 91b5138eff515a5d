//! Keyword extraction and classification (BRIEF section 4).
//!
//! The keyword of an inbound message is its **first word** ([`first_word`]),
//! matched as a whole word: `"Stop sending me these"` opts out, `"Please stop"`
//! does not, and `"WEEKEND"` never matches `END`.
//!
//! Precedence for one of our numbers ([`NumberKeywords::classify`]):
//! mandatory opt-out keywords (only `STOP` on toll-free numbers) > `HELP` >
//! built-in opt-in (`START`, `UNSTOP`) > custom keywords of that number >
//! no action.

use std::collections::HashMap;

use super::InboundAction;
use crate::optout::config::{KeywordAction, RESERVED_KEYWORDS};

/// Mandatory opt-out keywords of non-toll-free numbers; they cannot be deleted.
pub const MANDATORY_OPT_OUT: [&str; 10] = [
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
];

/// The only opt-out keyword of a US toll-free number.
pub const TOLL_FREE_OPT_OUT: &str = "STOP";

/// The keyword answered with the number's support contact text.
pub const HELP: &str = "HELP";

/// Built-in opt-in keywords (all numbers, toll-free included).
pub const DEFAULT_OPT_IN: [&str; 2] = ["START", "UNSTOP"];

/// The keyword of a message body: its first whitespace-separated word, with
/// leading and trailing non-alphanumeric characters stripped (interior ones,
/// such as the hyphen of `OPT-OUT`, are kept), uppercased.
///
/// `None` when the body is blank or its first word has no alphanumeric
/// character (`"!!!"`).
pub fn first_word(body: &str) -> Option<String> {
    let word = body.split_whitespace().next()?;
    normalize_keyword(word)
}

/// Canonical form of a single keyword: leading and trailing non-alphanumeric
/// characters stripped, uppercased. `None` when nothing is left.
///
/// Used both for the first word of a message and for configured custom
/// keywords, so that both sides of a comparison are normalised alike.
pub fn normalize_keyword(word: &str) -> Option<String> {
    let core = word.trim_matches(|c: char| !c.is_alphanumeric());
    if core.is_empty() {
        None
    } else {
        Some(core.to_uppercase())
    }
}

/// The built-in meaning of a canonical (uppercase) word on a number, if any.
///
/// On toll-free numbers the mandatory opt-out keywords other than `STOP` have
/// no built-in meaning and return `None`.
pub fn classify_builtin(word: &str, toll_free: bool) -> Option<(&'static str, InboundAction)> {
    let hit = |list: &[&'static str]| list.iter().copied().find(|k| *k == word);
    if toll_free {
        if word == TOLL_FREE_OPT_OUT {
            return Some((TOLL_FREE_OPT_OUT, InboundAction::OptOut));
        }
    } else if let Some(k) = hit(&MANDATORY_OPT_OUT) {
        return Some((k, InboundAction::OptOut));
    }
    if word == HELP {
        return Some((HELP, InboundAction::Help));
    }
    hit(&DEFAULT_OPT_IN).map(|k| (k, InboundAction::OptIn))
}

/// True for a built-in keyword (mandatory opt-out, `HELP`, `START`, `UNSTOP`),
/// given in canonical uppercase form.
pub fn is_reserved(word: &str) -> bool {
    RESERVED_KEYWORDS.contains(&word)
}

/// A custom keyword of one of our numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomKeyword {
    /// Canonical (normalised, uppercase) keyword.
    pub keyword: String,
    /// What it does.
    pub action: KeywordAction,
    /// Reply sent by a self-managed number when it matches.
    pub response: String,
}

impl From<KeywordAction> for InboundAction {
    fn from(a: KeywordAction) -> Self {
        match a {
            KeywordAction::OptOut => InboundAction::OptOut,
            KeywordAction::OptIn => InboundAction::OptIn,
            KeywordAction::AutomaticResponse => InboundAction::AutomaticResponse,
        }
    }
}

/// What the first word of a message means on one of our numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification<'a> {
    /// A built-in keyword.
    Builtin {
        /// Canonical keyword (`STOP`, `HELP`, `START`, ...).
        keyword: &'static str,
        /// `OptOut`, `Help` or `OptIn`.
        action: InboundAction,
    },
    /// A custom keyword of the number.
    Custom(&'a CustomKeyword),
    /// No keyword: the message is ordinary text.
    None,
}

impl<'a> Classification<'a> {
    /// The action to take.
    pub fn action(&self) -> InboundAction {
        match self {
            Classification::Builtin { action, .. } => *action,
            Classification::Custom(c) => c.action.into(),
            Classification::None => InboundAction::None,
        }
    }

    /// The canonical keyword that matched, `None` when nothing matched.
    pub fn keyword(&self) -> Option<&str> {
        match self {
            Classification::Builtin { keyword, .. } => Some(keyword),
            Classification::Custom(c) => Some(&c.keyword),
            Classification::None => None,
        }
    }

    /// The custom keyword that matched, if any.
    pub fn custom(&self) -> Option<&'a CustomKeyword> {
        match *self {
            Classification::Custom(c) => Some(c),
            _ => None,
        }
    }
}

/// Keyword settings of one of our numbers: toll-free or not, and its custom
/// keywords.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NumberKeywords {
    toll_free: bool,
    custom: HashMap<String, CustomKeyword>,
}

/// Why [`NumberKeywords::add_custom`] ignored a custom keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CustomKeywordRejected {
    /// Nothing alphanumeric in it.
    Empty,
    /// It redefines a built-in keyword.
    Reserved,
    /// Already defined for this number (the first definition is kept).
    Duplicate,
    /// `OPT_OUT` / `OPT_IN` on a toll-free number, where only `STOP` opts out
    /// and only `START` / `UNSTOP` opt in.
    TollFreeStateChange,
}

impl NumberKeywords {
    /// Settings with no custom keyword.
    pub fn new(toll_free: bool) -> Self {
        NumberKeywords {
            toll_free,
            custom: HashMap::new(),
        }
    }

    /// US toll-free number.
    pub fn toll_free(&self) -> bool {
        self.toll_free
    }

    /// Adds a custom keyword (matched case-insensitively, normalised like
    /// [`normalize_keyword`]). Configuration validation already rejects the
    /// error cases; they are re-checked here so an unvalidated configuration
    /// can never override a built-in keyword.
    pub fn add_custom(
        &mut self,
        keyword: &str,
        action: KeywordAction,
        response: &str,
    ) -> Result<(), CustomKeywordRejected> {
        let kw = normalize_keyword(keyword).ok_or(CustomKeywordRejected::Empty)?;
        if is_reserved(&kw) {
            return Err(CustomKeywordRejected::Reserved);
        }
        if self.toll_free && action != KeywordAction::AutomaticResponse {
            return Err(CustomKeywordRejected::TollFreeStateChange);
        }
        if self.custom.contains_key(&kw) {
            return Err(CustomKeywordRejected::Duplicate);
        }
        self.custom.insert(
            kw.clone(),
            CustomKeyword {
                keyword: kw,
                action,
                response: response.to_owned(),
            },
        );
        Ok(())
    }

    /// Meaning of a canonical (uppercase, see [`first_word`]) word.
    pub fn classify(&self, word: &str) -> Classification<'_> {
        if let Some((keyword, action)) = classify_builtin(word, self.toll_free) {
            return Classification::Builtin { keyword, action };
        }
        if is_reserved(word) {
            // Other mandatory opt-out words on a toll-free number: no action.
            return Classification::None;
        }
        match self.custom.get(word) {
            Some(c) => Classification::Custom(c),
            None => Classification::None,
        }
    }

    /// Meaning of a message body (its first word).
    pub fn classify_body(&self, body: &str) -> Classification<'_> {
        match first_word(body) {
            Some(w) => self.classify(&w),
            None => Classification::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fw(s: &str) -> Option<String> {
        first_word(s)
    }

    #[test]
    fn first_word_strips_and_uppercases() {
        for s in [
            "Stop.",
            "stop!!",
            " STOP please",
            "\n\tstop",
            "...STOP...",
            "STOP",
        ] {
            assert_eq!(fw(s).as_deref(), Some("STOP"), "{s:?}");
        }
        assert_eq!(fw("opt-out").as_deref(), Some("OPT-OUT"));
        assert_eq!(fw("Stop sending me these").as_deref(), Some("STOP"));
        assert_eq!(fw("please stop").as_deref(), Some("PLEASE"));
        assert_eq!(fw("\u{a0}stop\u{a0}now").as_deref(), Some("STOP"));
        assert_eq!(fw("stop\u{1F6D1}").as_deref(), Some("STOP"));
        assert_eq!(fw("arrêt").as_deref(), Some("ARRÊT"));
        for s in ["", "   ", "!!!", "\n\t", "!!! STOP"] {
            assert_eq!(fw(s), None, "{s:?}");
        }
    }

    #[test]
    fn builtin_classification_is_whole_word() {
        for k in MANDATORY_OPT_OUT {
            assert_eq!(classify_builtin(k, false), Some((k, InboundAction::OptOut)));
        }
        for w in [
            "WEEKEND", "ENDLESS", "STOPPED", "PLEASE", "STOPSTOP", "HELPME", "RESTART",
        ] {
            assert_eq!(classify_builtin(w, false), None, "{w}");
            assert_eq!(classify_builtin(w, true), None, "{w}");
        }
        assert_eq!(
            classify_builtin("HELP", false),
            Some(("HELP", InboundAction::Help))
        );
        assert_eq!(
            classify_builtin("HELP", true),
            Some(("HELP", InboundAction::Help))
        );
        for k in DEFAULT_OPT_IN {
            assert_eq!(classify_builtin(k, false), Some((k, InboundAction::OptIn)));
            assert_eq!(classify_builtin(k, true), Some((k, InboundAction::OptIn)));
        }
    }

    #[test]
    fn toll_free_only_stop_opts_out() {
        assert_eq!(
            classify_builtin("STOP", true),
            Some(("STOP", InboundAction::OptOut))
        );
        for k in MANDATORY_OPT_OUT.iter().filter(|k| **k != "STOP") {
            assert_eq!(classify_builtin(k, true), None, "{k}");
            assert_eq!(NumberKeywords::new(true).classify(k), Classification::None);
        }
    }

    #[test]
    fn custom_keywords() {
        let mut n = NumberKeywords::new(false);
        assert_eq!(n.add_custom("join", KeywordAction::OptIn, "joined"), Ok(()));
        assert_eq!(n.add_custom("Leave", KeywordAction::OptOut, "left"), Ok(()));
        assert_eq!(
            n.add_custom("hours", KeywordAction::AutomaticResponse, "9-5"),
            Ok(())
        );
        assert_eq!(
            n.add_custom("JOIN", KeywordAction::OptOut, "x"),
            Err(CustomKeywordRejected::Duplicate)
        );
        assert_eq!(
            n.add_custom("stop", KeywordAction::OptIn, "x"),
            Err(CustomKeywordRejected::Reserved)
        );
        assert_eq!(
            n.add_custom("?!", KeywordAction::OptIn, "x"),
            Err(CustomKeywordRejected::Empty)
        );
        let c = n.classify_body("Join now!");
        assert_eq!(c.action(), InboundAction::OptIn);
        assert_eq!(c.keyword(), Some("JOIN"));
        assert_eq!(c.custom().map(|c| c.response.as_str()), Some("joined"));
        assert_eq!(n.classify_body("leave.").action(), InboundAction::OptOut);
        assert_eq!(
            n.classify_body("HOURS?").action(),
            InboundAction::AutomaticResponse
        );
        assert_eq!(n.classify_body("joined").action(), InboundAction::None);
        // built-ins still win
        assert_eq!(n.classify_body("stop").action(), InboundAction::OptOut);
    }

    #[test]
    fn toll_free_custom_keywords() {
        let mut n = NumberKeywords::new(true);
        assert_eq!(
            n.add_custom("join", KeywordAction::OptIn, "x"),
            Err(CustomKeywordRejected::TollFreeStateChange)
        );
        assert_eq!(
            n.add_custom("info", KeywordAction::AutomaticResponse, "about"),
            Ok(())
        );
        assert_eq!(
            n.classify_body("info").action(),
            InboundAction::AutomaticResponse
        );
        assert_eq!(n.classify_body("join").action(), InboundAction::None);
        assert_eq!(n.classify_body("quit").action(), InboundAction::None);
        assert_eq!(n.classify_body("stop").action(), InboundAction::OptOut);
        assert_eq!(n.classify_body("unstop").action(), InboundAction::OptIn);
        assert_eq!(n.classify_body("help").action(), InboundAction::Help);
    }

    proptest! {
        #[test]
        fn first_word_ignores_leading_whitespace(body in "\\PC{0,40}", pad in "[ \t\n]{0,4}") {
            let a = first_word(&body);
            let b = first_word(&format!("{pad}{body}"));
            prop_assert_eq!(&a, &b);
            if let Some(w) = a {
                prop_assert!(!w.is_empty());
                prop_assert!(!w.chars().any(char::is_whitespace));
            }
        }
    }
}
