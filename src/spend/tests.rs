//! Tests of the spend ledger and the alarm engine.

use std::collections::{BTreeMap, HashMap};

use chrono::DateTime;
use proptest::prelude::*;

use super::*;
use crate::model::{Channel, DeliveryEvent};
use crate::money::Usd;
use crate::spend::config::{AlarmConfig, Comparison, LimitConfig, SpendConfig};

fn usd(s: &str) -> Usd {
    Usd::parse_exact(s).expect(s)
}

fn ms(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect(rfc3339)
        .timestamp_millis()
}

fn mk(y: i32, m: u32) -> MonthKey {
    MonthKey::new(y, m).expect("valid month")
}

const HOUR: i64 = 3_600_000;

fn ev(
    event_type: &str,
    message_id: &str,
    ts: i64,
    request_ts: Option<i64>,
    price: Option<&str>,
    fee: Option<&str>,
) -> DeliveryEvent {
    let channel = Channel::ALL
        .into_iter()
        .find(|c| event_type.starts_with(c.event_prefix()))
        .expect("known prefix");
    DeliveryEvent {
        event_type: event_type.to_owned(),
        channel,
        status_class: None,
        event_timestamp: ts,
        message_id: message_id.to_owned(),
        message_request_timestamp: request_ts,
        event_version: Some("1.0".to_owned()),
        is_final: None,
        origination_phone_number: None,
        destination_phone_number: None,
        iso_country_code: None,
        is_international_send: None,
        mcc: None,
        mnc: None,
        carrier_name: None,
        message_encoding: None,
        message_type: None,
        message_status: None,
        message_status_description: None,
        context: None,
        total_message_parts: None,
        total_message_price: price.map(usd),
        total_carrier_fee: fee.map(usd),
        call_duration_in_seconds: None,
        total_duration_in_minutes: None,
        content_type: None,
        protect_configuration_id: None,
        protect_status: None,
    }
}

fn cfg() -> SpendConfig {
    SpendConfig::default()
}

fn totals(spend: &str, messages: u64) -> Totals {
    Totals {
        spend: usd(spend),
        messages,
    }
}

// ---------------------------------------------------------------- ledger

#[test]
fn cost_is_price_plus_carrier_fee() {
    let t = ms("2025-10-10T12:00:00Z");
    let e = ev(
        "TEXT_DELIVERED",
        "m1",
        t,
        Some(t - 500),
        Some("0.00581"),
        Some("0.00302"),
    );
    let mut l = SpendLedger::new(&cfg());
    let o = l.apply(&e);
    assert_eq!(o.cost.to_string(), "0.00883");
    assert_eq!(o.month, mk(2025, 10));
    assert_eq!(o.channel, Channel::Sms);
    assert_eq!(o.month_to_date, totals("0.00883", 1));
    assert_eq!(
        o.changed,
        vec![(mk(2025, 10), Channel::Sms, totals("0.00883", 1))]
    );
    assert!(!o.duplicate && !o.late);

    let mut no_fee = SpendLedger::new(&SpendConfig {
        include_carrier_fee: false,
        ..cfg()
    });
    assert_eq!(no_fee.apply(&e).cost.to_string(), "0.00581");
    assert_eq!(
        no_fee.total(mk(2025, 10), Channel::Sms),
        totals("0.00581", 1)
    );

    // a missing field counts zero
    let mut l = SpendLedger::new(&cfg());
    l.apply(&ev("TEXT_DELIVERED", "a", t, None, Some("0.06087"), None));
    l.apply(&ev("TEXT_DELIVERED", "b", t, None, None, Some("0.00302")));
    assert_eq!(l.total(mk(2025, 10), Channel::Sms), totals("0.06389", 2));
}

#[test]
fn repeated_price_on_every_event_counts_once() {
    let req = ms("2025-10-10T12:00:00.000Z");
    let mut l = SpendLedger::new(&cfg());
    let mut last = None;
    for (i, ty) in ["TEXT_QUEUED", "TEXT_SUCCESSFUL", "TEXT_DELIVERED"]
        .iter()
        .enumerate()
    {
        let o = l.apply(&ev(
            ty,
            "m1",
            req + 100 * (i as i64 + 1),
            Some(req),
            Some("0.00581"),
            Some("0.00302"),
        ));
        assert_eq!(o.cost, usd("0.00883"));
        assert!(!o.duplicate);
        if i > 0 {
            assert!(o.changed.is_empty(), "{ty} repeats the price");
        }
        last = Some(o);
    }
    assert_eq!(last.expect("3 events").month_to_date, totals("0.00883", 1));
    assert_eq!(
        l.totals(),
        vec![(mk(2025, 10), Channel::Sms, totals("0.00883", 1))]
    );
    assert_eq!(l.tracked_messages(), 1);
}

#[test]
fn price_correction_applies_the_difference_in_any_order() {
    let req = ms("2025-10-10T12:00:00Z");
    let older = ev(
        "TEXT_SUCCESSFUL",
        "m1",
        req + 1_000,
        Some(req),
        Some("0.00581"),
        Some("0.00302"),
    );
    let newer = ev(
        "TEXT_DELIVERED",
        "m1",
        req + 9_000,
        Some(req),
        Some("0.00645"),
        Some("0.00302"),
    );
    let other = ev("TEXT_DELIVERED", "m2", req, Some(req), Some("0.01"), None);

    let mut a = SpendLedger::new(&cfg());
    a.apply(&other);
    assert_eq!(a.apply(&older).cost, usd("0.00883"));
    let o = a.apply(&newer);
    assert_eq!(o.cost, usd("0.00947"));
    assert_eq!(o.month_to_date, totals("0.01947", 2));
    assert_eq!(
        o.changed,
        vec![(mk(2025, 10), Channel::Sms, totals("0.01947", 2))]
    );

    // the corrected (newer) event arrives first: the older one changes nothing
    let mut b = SpendLedger::new(&cfg());
    b.apply(&other);
    assert_eq!(b.apply(&newer).cost, usd("0.00947"));
    let o = b.apply(&older);
    assert_eq!(o.cost, usd("0.00947"));
    assert!(o.changed.is_empty());
    assert_eq!(a.totals(), b.totals());

    // a downward correction lowers spend
    let lower = ev(
        "TEXT_DELIVERED",
        "m1",
        req + 20_000,
        Some(req),
        Some("0.001"),
        None,
    );
    let o = a.apply(&lower);
    assert_eq!(o.cost, usd("0.001"));
    assert_eq!(o.month_to_date, totals("0.011", 2));

    // same timestamp: eventType text, then cost, breaks the tie
    let t = req + 5_000;
    let x = ev("TEXT_DELIVERED", "m3", t, Some(req), Some("0.02"), None);
    let y = ev("TEXT_SUCCESSFUL", "m3", t, Some(req), Some("0.01"), None);
    for order in [[&x, &y], [&y, &x]] {
        let mut l = SpendLedger::new(&cfg());
        for e in order {
            l.apply(e);
        }
        // "TEXT_SUCCESSFUL" > "TEXT_DELIVERED"
        assert_eq!(l.total(mk(2025, 10), Channel::Sms), totals("0.01", 1));
    }
}

#[test]
fn duplicate_events_change_nothing() {
    let req = ms("2025-10-10T12:00:00Z");
    let e = ev(
        "TEXT_DELIVERED",
        "m1",
        req + 10,
        Some(req),
        Some("0.00581"),
        Some("0.00302"),
    );
    let mut l = SpendLedger::new(&cfg());
    let first = l.apply(&e);
    assert!(!first.duplicate);
    for _ in 0..3 {
        let o = l.apply(&e);
        assert!(o.duplicate);
        assert!(!o.late);
        assert!(o.changed.is_empty());
        assert_eq!(o.cost, usd("0.00883"));
        assert_eq!(o.month_to_date, totals("0.00883", 1));
    }
    // same type, other timestamp: not a duplicate; other type, same timestamp: neither
    assert!(
        !l.apply(&ev("TEXT_DELIVERED", "m1", req + 11, Some(req), None, None))
            .duplicate
    );
    assert!(
        !l.apply(&ev(
            "TEXT_SUCCESSFUL",
            "m1",
            req + 10,
            Some(req),
            None,
            None
        ))
        .duplicate
    );
    // same key, other message: not a duplicate, a new message
    let o = l.apply(&ev("TEXT_DELIVERED", "m2", req + 10, Some(req), None, None));
    assert!(!o.duplicate);
    assert_eq!(l.total(mk(2025, 10), Channel::Sms), totals("0.00883", 2));
}

#[test]
fn event_without_price_changes_no_cost() {
    let req = ms("2025-10-10T12:00:00Z");
    let mut l = SpendLedger::new(&cfg());
    let o = l.apply(&ev("TEXT_QUEUED", "m1", req + 1, Some(req), None, None));
    assert_eq!(o.cost, Usd::ZERO);
    // the message counts even before it is priced
    assert_eq!(o.month_to_date, totals("0", 1));
    assert_eq!(
        o.changed,
        vec![(mk(2025, 10), Channel::Sms, totals("0", 1))]
    );

    let o = l.apply(&ev(
        "TEXT_SUCCESSFUL",
        "m1",
        req + 2,
        Some(req),
        Some("0.00581"),
        Some("0.00302"),
    ));
    assert_eq!(o.cost, usd("0.00883"));
    assert_eq!(
        o.changed,
        vec![(mk(2025, 10), Channel::Sms, totals("0.00883", 1))]
    );

    // a later event without price fields does not zero the cost
    let o = l.apply(&ev("TEXT_DELIVERED", "m1", req + 3, Some(req), None, None));
    assert_eq!(o.cost, usd("0.00883"));
    assert!(o.changed.is_empty());

    // an explicit zero price is a price
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "m1",
        req + 4,
        Some(req),
        Some("0.0"),
        None,
    ));
    assert_eq!(o.cost, Usd::ZERO);
    assert_eq!(o.month_to_date, totals("0", 1));
}

#[test]
fn month_boundary_is_utc_and_uses_the_request_time() {
    let mut l = SpendLedger::new(&cfg());
    // requested the last millisecond of October, receipt on November 1st
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "oct",
        ms("2025-11-01T00:00:03.000Z"),
        Some(ms("2025-10-31T23:59:59.999Z")),
        Some("0.00581"),
        Some("0.00302"),
    ));
    assert_eq!(o.month, mk(2025, 10));
    // requested the first millisecond of November
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "nov",
        ms("2025-11-01T00:00:01.000Z"),
        Some(ms("2025-11-01T00:00:00.000Z")),
        Some("0.00581"),
        None,
    ));
    assert_eq!(o.month, mk(2025, 11));
    // 20:00 in New York on Oct 31 is already November in UTC
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "ny",
        ms("2025-10-31T20:00:01-04:00"),
        Some(ms("2025-10-31T20:00:00-04:00")),
        Some("0.001"),
        None,
    ));
    assert_eq!(o.month, mk(2025, 11));
    assert_eq!(
        l.totals(),
        vec![
            (mk(2025, 10), Channel::Sms, totals("0.00883", 1)),
            (mk(2025, 11), Channel::Sms, totals("0.00681", 2)),
        ]
    );
}

#[test]
fn attribution_moves_when_the_request_time_appears_later() {
    let mut l = SpendLedger::new(&cfg());
    // first event without messageRequestTimestamp: eventTimestamp month
    let o = l.apply(&ev(
        "TEXT_SUCCESSFUL",
        "m1",
        ms("2025-11-01T00:00:02Z"),
        None,
        Some("0.00581"),
        Some("0.00302"),
    ));
    assert_eq!(o.month, mk(2025, 11));
    assert_eq!(l.total(mk(2025, 11), Channel::Sms), totals("0.00883", 1));

    // the next one says it was requested in October: everything moves
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "m1",
        ms("2025-11-01T00:00:05Z"),
        Some(ms("2025-10-31T23:59:58Z")),
        Some("0.00581"),
        Some("0.00302"),
    ));
    assert_eq!(o.month, mk(2025, 10));
    assert_eq!(o.cost, usd("0.00883"));
    assert_eq!(
        o.changed,
        vec![
            (mk(2025, 11), Channel::Sms, Totals::default()),
            (mk(2025, 10), Channel::Sms, totals("0.00883", 1)),
        ]
    );
    assert_eq!(
        l.totals(),
        vec![(mk(2025, 10), Channel::Sms, totals("0.00883", 1))]
    );

    // the smallest eventTimestamp counts when no event has a request time
    let mut l = SpendLedger::new(&cfg());
    l.apply(&ev(
        "MEDIA_DELIVERED",
        "m2",
        ms("2025-11-01T00:00:02Z"),
        None,
        Some("0.0195"),
        Some("0.00266"),
    ));
    let o = l.apply(&ev(
        "MEDIA_QUEUED",
        "m2",
        ms("2025-10-31T23:59:59Z"),
        None,
        None,
        None,
    ));
    assert_eq!(o.month, mk(2025, 10));
    assert_eq!(o.channel, Channel::Mms);
    assert_eq!(o.month_to_date, totals("0.02216", 1));
    assert_eq!(o.changed.len(), 2);
}

#[test]
fn channel_of_the_first_event_is_kept() {
    let t = ms("2025-10-10T00:00:00Z");
    let mut l = SpendLedger::new(&cfg());
    l.apply(&ev("TEXT_QUEUED", "m1", t, Some(t), None, None));
    let o = l.apply(&ev(
        "MEDIA_DELIVERED",
        "m1",
        t + 1,
        Some(t),
        Some("0.02"),
        None,
    ));
    assert_eq!(o.channel, Channel::Sms);
    assert_eq!(
        l.totals(),
        vec![(mk(2025, 10), Channel::Sms, totals("0.02", 1))]
    );
}

#[test]
fn distinct_messages_are_counted_per_month_and_channel() {
    let t = ms("2025-10-10T00:00:00Z");
    let mut l = SpendLedger::new(&cfg());
    for (ty, id, price) in [
        ("TEXT_QUEUED", "s1", None),
        ("TEXT_DELIVERED", "s1", Some("0.00581")),
        ("TEXT_DELIVERED", "s2", Some("0.00581")),
        ("TEXT_QUEUED", "s3", None), // never priced: still a message
        ("TEXT_DELIVERED", "s2", Some("0.00581")),
        ("MEDIA_DELIVERED", "mm1", Some("0.0195")),
        ("VOICE_COMPLETED", "v1", Some("0.013")),
        ("VOICE_INITIATED", "v1", None),
    ] {
        l.apply(&ev(ty, id, t, Some(t), price, None));
    }
    l.apply(&ev(
        "TEXT_DELIVERED",
        "s4",
        ms("2025-11-02T00:00:00Z"),
        None,
        Some("0.1"),
        None,
    ));
    assert_eq!(
        l.totals(),
        vec![
            (mk(2025, 10), Channel::Sms, totals("0.01162", 3)),
            (mk(2025, 10), Channel::Mms, totals("0.0195", 1)),
            (mk(2025, 10), Channel::Voice, totals("0.013", 1)),
            (mk(2025, 11), Channel::Sms, totals("0.1", 1)),
        ]
    );
    assert_eq!(l.total(mk(2025, 9), Channel::Sms), Totals::default());
    assert_eq!(l.tracked_messages(), 6);
}

#[test]
fn closed_month_drops_entries_and_late_events_are_not_counted() {
    let mut l = SpendLedger::new(&cfg()); // 72 h window
    let oct = mk(2025, 10);
    let nov = mk(2025, 11);
    let close = ms("2025-11-04T00:00:00Z");
    assert_eq!(oct.end_ms() + 72 * HOUR, close);

    let req1 = ms("2025-10-15T10:00:00Z");
    l.apply(&ev(
        "TEXT_DELIVERED",
        "m1",
        req1 + 1,
        Some(req1),
        Some("0.01"),
        None,
    ));
    let req2 = ms("2025-10-31T23:00:00Z");
    l.apply(&ev(
        "TEXT_SUCCESSFUL",
        "m2",
        req2 + 1,
        Some(req2),
        Some("0.01"),
        None,
    ));
    let req3 = ms("2025-11-02T00:00:00Z");
    l.apply(&ev(
        "TEXT_SUCCESSFUL",
        "m3",
        req3 + 1,
        Some(req3),
        Some("0.05"),
        None,
    ));
    assert_eq!(l.tracked_messages(), 3);
    assert_eq!(l.total(oct, Channel::Sms), totals("0.02", 2));

    // within the window: a correction of m2 and a new October message count
    let just_before = close - 1;
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "m2",
        just_before,
        Some(req2),
        Some("0.02"),
        None,
    ));
    assert!(!o.late);
    assert_eq!(o.month_to_date, totals("0.03", 2));
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "m4",
        just_before,
        Some(ms("2025-10-31T12:00:00Z")),
        Some("0.04"),
        None,
    ));
    assert!(!o.late);
    assert_eq!(o.month, oct);
    assert_eq!(o.month_to_date, totals("0.07", 3));
    assert!(!l.is_closed(oct));
    assert_eq!(l.tracked_messages(), 4);

    // the watermark reaches October's close: its three entries are dropped
    l.apply(&ev(
        "TEXT_DELIVERED",
        "m3",
        close,
        Some(req3),
        Some("0.05"),
        None,
    ));
    assert_eq!(l.watermark(), Some(close));
    assert!(l.is_closed(oct));
    assert!(!l.is_closed(nov));
    assert_eq!(l.tracked_messages(), 1);

    // a late receipt for a dropped October message: reported, not counted
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "m1",
        close + HOUR,
        Some(req1),
        Some("0.5"),
        None,
    ));
    assert!(o.late);
    assert!(!o.duplicate);
    assert_eq!(o.month, oct);
    assert_eq!(o.cost, usd("0.5"));
    assert!(o.changed.is_empty());
    assert_eq!(o.month_to_date, totals("0.07", 3));
    // a never-seen October message: late too
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "m5",
        close + HOUR,
        Some(ms("2025-10-31T23:59:59.999Z")),
        None,
        None,
    ));
    assert!(o.late);
    assert_eq!(o.cost, Usd::ZERO);
    // an event that would move a tracked November message into October: late
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "m3",
        close + HOUR,
        Some(req1),
        Some("9"),
        None,
    ));
    assert!(o.late);
    assert!(o.changed.is_empty());
    assert_eq!(l.total(oct, Channel::Sms), totals("0.07", 3));
    assert_eq!(l.total(nov, Channel::Sms), totals("0.05", 1));
    assert_eq!(l.tracked_messages(), 1);

    // November events still count
    let o = l.apply(&ev(
        "TEXT_DELIVERED",
        "m6",
        close + HOUR,
        Some(close),
        Some("0.01"),
        None,
    ));
    assert!(!o.late);
    assert_eq!(o.month_to_date, totals("0.06", 2));
    assert_eq!(l.tracked_messages(), 2);

    // closing November drops the rest
    l.apply(&ev(
        "TEXT_QUEUED",
        "d1",
        mk(2025, 12).end_ms() + 72 * HOUR,
        None,
        None,
        None,
    ));
    assert!(l.is_closed(nov));
    assert_eq!(
        l.tracked_messages(),
        1,
        "only the January message d1 is left"
    );
}

#[test]
fn a_closed_month_never_seen_counts_once_then_seals() {
    // Historical data read after newer data (files out of order): the month
    // is closed by the watermark but none of its messages was ever dropped,
    // so a first-seen message cannot be a repeat and counts.
    let mut l = SpendLedger::new(&cfg());
    let jun = mk(2023, 6);
    let oct21 = mk(2021, 10);
    let req = ms("2023-06-17T04:11:43Z");
    l.apply(&ev(
        "TEXT_SUCCESSFUL",
        "s1",
        req + 300,
        Some(req),
        Some("0.09582"),
        None,
    ));
    let old = ms("2021-10-25T21:34:53Z");
    let o = l.apply(&ev(
        "MEDIA_DELIVERED",
        "m1",
        old + 2000,
        Some(old),
        Some("0.0195"),
        Some("0.00266"),
    ));
    assert!(l.is_closed(oct21));
    assert!(!l.is_sealed(oct21));
    assert!(!o.late);
    assert_eq!(o.month_to_date, totals("0.02216", 1));
    // a redelivery while the entry is still there is a duplicate, not a second count
    let o = l.apply(&ev(
        "MEDIA_DELIVERED",
        "m1",
        old + 2000,
        Some(old),
        Some("0.0195"),
        Some("0.00266"),
    ));
    assert!(o.duplicate && !o.late);
    assert_eq!(l.total(oct21, Channel::Mms), totals("0.02216", 1));
    // the watermark moves on: the sweep drops m1 and seals October 2021 (and June 2023)
    let later = ms("2023-10-20T20:56:12Z");
    l.apply(&ev(
        "VOICE_COMPLETED",
        "v1",
        later + 780,
        Some(later),
        Some("0.013"),
        None,
    ));
    assert!(l.is_sealed(oct21));
    assert!(l.is_sealed(jun));
    // the same message again, now that its entry is gone: late, not counted twice
    let o = l.apply(&ev(
        "MEDIA_DELIVERED",
        "m1",
        old + 2000,
        Some(old),
        Some("0.0195"),
        Some("0.00266"),
    ));
    assert!(o.late);
    assert!(o.changed.is_empty());
    assert_eq!(l.total(oct21, Channel::Mms), totals("0.02216", 1));
    assert_eq!(l.total(jun, Channel::Sms), totals("0.09582", 1));
}

#[test]
fn shorter_window_and_empty_ledger() {
    let l = SpendLedger::new(&cfg());
    assert_eq!(l.watermark(), None);
    assert!(!l.is_closed(mk(2000, 1)));
    assert!(l.totals().is_empty());

    let mut l = SpendLedger::new(&SpendConfig {
        receipt_window_hours: 0,
        ..cfg()
    });
    l.apply(&ev(
        "TEXT_QUEUED",
        "a",
        mk(2025, 11).start_ms(),
        None,
        None,
        None,
    ));
    assert!(l.is_closed(mk(2025, 10)));
    assert!(!l.is_closed(mk(2025, 11)));
}

// ---------------------------------------------------------------- alarms

fn alarm(name: &str, channel: Channel, threshold: &str, comparison: Comparison) -> AlarmConfig {
    AlarmConfig {
        name: name.to_owned(),
        channel,
        threshold_usd: usd(threshold),
        comparison,
    }
}

#[test]
fn alarm_goes_ok_alarm_ok_through_a_price_correction() {
    let cfg = SpendConfig {
        alarms: vec![alarm(
            "sms-1c",
            Channel::Sms,
            "0.01",
            Comparison::GreaterThanOrEqualToThreshold,
        )],
        ..cfg()
    };
    let mut ledger = SpendLedger::new(&cfg);
    let mut engine = AlarmEngine::new(&cfg);
    let oct = mk(2025, 10);
    let req = ms("2025-10-20T00:00:00Z");
    let mut out = Vec::new();
    let mut feed = |e: DeliveryEvent, out: &mut Vec<AlarmRecord>| {
        let o = ledger.apply(&e);
        for (m, c, t) in &o.changed {
            engine.evaluate(*m, *c, t.spend, out);
        }
        engine.state("sms-1c", oct)
    };
    let s = feed(
        ev(
            "TEXT_DELIVERED",
            "a",
            req,
            Some(req),
            Some("0.00581"),
            Some("0.00302"),
        ),
        &mut out,
    );
    assert_eq!(s, AlarmState::Ok);
    assert!(out.is_empty());
    let s = feed(
        ev(
            "TEXT_SUCCESSFUL",
            "b",
            req + 1,
            Some(req),
            Some("0.00581"),
            Some("0.00302"),
        ),
        &mut out,
    );
    assert_eq!(s, AlarmState::Alarm);
    // repeated price, same spend: no new record
    let s = feed(
        ev(
            "TEXT_DELIVERED",
            "b",
            req + 2,
            Some(req),
            Some("0.00581"),
            Some("0.00302"),
        ),
        &mut out,
    );
    assert_eq!(s, AlarmState::Alarm);
    // correction down: back to OK
    let s = feed(
        ev(
            "TEXT_DELIVERED",
            "b",
            req + 3,
            Some(req),
            Some("0.001"),
            None,
        ),
        &mut out,
    );
    assert_eq!(s, AlarmState::Ok);
    // and up again
    let s = feed(
        ev("TEXT_DELIVERED", "c", req + 4, Some(req), Some("0.5"), None),
        &mut out,
    );
    assert_eq!(s, AlarmState::Alarm);

    let ids: Vec<_> = out
        .iter()
        .map(|r| match r {
            AlarmRecord::AlarmStateChange {
                id,
                previous_state,
                new_state,
                spend_usd,
                ..
            } => (
                id.as_str(),
                *previous_state,
                *new_state,
                spend_usd.to_string(),
            ),
            AlarmRecord::LimitReached { .. } => panic!("no limit configured"),
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            (
                "alarm:sms-1c:2025-10:1",
                AlarmState::Ok,
                AlarmState::Alarm,
                "0.01766".to_owned()
            ),
            (
                "alarm:sms-1c:2025-10:2",
                AlarmState::Alarm,
                AlarmState::Ok,
                "0.00983".to_owned()
            ),
            (
                "alarm:sms-1c:2025-10:3",
                AlarmState::Ok,
                AlarmState::Alarm,
                "0.50983".to_owned()
            ),
        ]
    );
    assert_eq!(engine.state("sms-1c", mk(2025, 11)), AlarmState::Ok);
    assert_eq!(engine.state("unknown", oct), AlarmState::Ok);
}

#[test]
fn both_comparisons_at_exactly_the_threshold() {
    let cfg = SpendConfig {
        alarms: vec![
            alarm("gt", Channel::Sms, "80", Comparison::GreaterThanThreshold),
            alarm(
                "ge",
                Channel::Sms,
                "80",
                Comparison::GreaterThanOrEqualToThreshold,
            ),
            alarm(
                "mms",
                Channel::Mms,
                "0",
                Comparison::GreaterThanOrEqualToThreshold,
            ),
        ],
        ..cfg()
    };
    let mut e = AlarmEngine::new(&cfg);
    let oct = mk(2025, 10);
    let mut out = Vec::new();
    e.evaluate(oct, Channel::Sms, usd("80"), &mut out);
    assert_eq!(e.state("gt", oct), AlarmState::Ok);
    assert_eq!(e.state("ge", oct), AlarmState::Alarm);
    assert_eq!(
        e.state("mms", oct),
        AlarmState::Ok,
        "other channel untouched"
    );
    assert_eq!(out.len(), 1);
    e.evaluate(oct, Channel::Sms, usd("80.0000000001"), &mut out);
    assert_eq!(e.state("gt", oct), AlarmState::Alarm);
    assert_eq!(out.len(), 2);
    e.evaluate(oct, Channel::Sms, usd("79.9999999999"), &mut out);
    assert_eq!(e.state("gt", oct), AlarmState::Ok);
    assert_eq!(e.state("ge", oct), AlarmState::Ok);
    let ids: Vec<_> = out
        .iter()
        .map(|r| match r {
            AlarmRecord::AlarmStateChange { id, .. } | AlarmRecord::LimitReached { id, .. } => {
                id.as_str()
            }
        })
        .collect();
    assert_eq!(
        ids,
        [
            "alarm:ge:2025-10:1",
            "alarm:gt:2025-10:1",
            "alarm:gt:2025-10:2",
            "alarm:ge:2025-10:2"
        ]
    );

    // a new month starts OK and counts from 1 again
    out.clear();
    e.evaluate(mk(2025, 11), Channel::Sms, usd("100"), &mut out);
    let ids: Vec<_> = out
        .iter()
        .map(|r| match r {
            AlarmRecord::AlarmStateChange { id, .. } | AlarmRecord::LimitReached { id, .. } => {
                id.clone()
            }
        })
        .collect();
    assert_eq!(ids, ["alarm:gt:2025-11:1", "alarm:ge:2025-11:1"]);
    assert_eq!(e.state("gt", oct), AlarmState::Ok);
}

#[test]
fn limit_reached_once_per_channel_and_month() {
    let cfg = SpendConfig {
        limits: vec![LimitConfig {
            channel: Channel::Sms,
            monthly_limit_usd: usd("1"),
        }],
        ..cfg()
    };
    let mut e = AlarmEngine::new(&cfg);
    let oct = mk(2025, 10);
    let mut out = Vec::new();
    e.evaluate(oct, Channel::Sms, usd("0.9999999999"), &mut out);
    assert!(out.is_empty());
    e.evaluate(oct, Channel::Sms, usd("1"), &mut out);
    assert_eq!(
        out,
        vec![AlarmRecord::LimitReached {
            id: "limit:SMS:2025-10".to_owned(),
            channel: Channel::Sms,
            month: "2025-10".to_owned(),
            monthly_limit_usd: usd("1"),
            spend_usd: usd("1"),
        }]
    );
    assert!(e.limit_reached(Channel::Sms, oct));
    // falls, rises, rises further: nothing more this month
    for s in ["0.5", "1.5", "3"] {
        e.evaluate(oct, Channel::Sms, usd(s), &mut out);
    }
    assert_eq!(out.len(), 1);
    // MMS has no limit here
    e.evaluate(oct, Channel::Mms, usd("50"), &mut out);
    assert_eq!(out.len(), 1);
    // next month: once again
    e.evaluate(mk(2025, 11), Channel::Sms, usd("2"), &mut out);
    e.evaluate(mk(2025, 11), Channel::Sms, usd("2.5"), &mut out);
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[1], AlarmRecord::LimitReached { id, .. } if id == "limit:SMS:2025-11"));
}

#[test]
fn records_serialize_with_exact_amounts_and_names() {
    let r = AlarmRecord::AlarmStateChange {
        id: "alarm:sms-80:2025-10:1".to_owned(),
        alarm_name: "sms-80".to_owned(),
        channel: Channel::Sms,
        month: "2025-10".to_owned(),
        metric: Channel::Sms.spend_metric().map(str::to_owned),
        comparison: Comparison::GreaterThanOrEqualToThreshold,
        threshold_usd: usd("80"),
        previous_state: AlarmState::Ok,
        new_state: AlarmState::Alarm,
        spend_usd: usd("80.00883"),
    };
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "recordType": "ALARM_STATE_CHANGE",
            "id": "alarm:sms-80:2025-10:1",
            "alarmName": "sms-80",
            "channel": "SMS",
            "month": "2025-10",
            "metric": "TextMessageMonthlySpend",
            "comparison": "GreaterThanOrEqualToThreshold",
            "thresholdUsd": "80",
            "previousState": "OK",
            "newState": "ALARM",
            "spendUsd": "80.00883",
        })
    );
    assert_eq!(
        serde_json::from_value::<AlarmRecord>(json).expect("back"),
        r
    );

    let l = AlarmRecord::LimitReached {
        id: "limit:MMS:2025-10".to_owned(),
        channel: Channel::Mms,
        month: "2025-10".to_owned(),
        monthly_limit_usd: usd("100"),
        spend_usd: usd("100.0195"),
    };
    assert_eq!(
        serde_json::to_value(&l).expect("json"),
        serde_json::json!({
            "recordType": "LIMIT_REACHED",
            "id": "limit:MMS:2025-10",
            "channel": "MMS",
            "month": "2025-10",
            "monthlyLimitUsd": "100",
            "spendUsd": "100.0195",
        })
    );
}

// ---------------------------------------------------------------- properties

/// Status suffixes shared by the generated channels' prefixes.
const SUFFIXES: [&str; 4] = ["QUEUED", "SUCCESSFUL", "DELIVERED", "UNKNOWN"];

#[derive(Clone, Debug)]
struct GenEvent {
    suffix: usize,
    ts_hours: i64,
    /// `None`: no messageRequestTimestamp; `Some(h)`: the message's base minus h hours.
    req_back_hours: Option<i64>,
    price: Option<i64>,
    fee: Option<i64>,
}

#[derive(Clone, Debug)]
struct GenMessage {
    channel: usize,
    base: i64,
    events: Vec<GenEvent>,
}

/// Formats integer 10^-10 USD units as decimal text, without going through `Usd`.
fn units_text(units: i64, style: u8) -> String {
    let int = units / 10_000_000_000;
    let frac = units % 10_000_000_000;
    match style % 3 {
        0 => format!("{int}.{frac:010}"),
        1 => {
            let s = format!("{int}.{frac:010}");
            let s = s.trim_end_matches('0');
            s.trim_end_matches('.').to_owned()
        }
        _ => format!("{units}e-10"),
    }
}

fn gen_event() -> impl Strategy<Value = GenEvent> {
    (
        0..SUFFIXES.len(),
        0i64..6,
        prop::option::weighted(0.7, 0i64..3),
        prop::option::weighted(0.6, 0i64..200_000_000),
        prop::option::weighted(0.5, 0i64..50_000_000),
    )
        .prop_map(|(suffix, ts_hours, req_back_hours, price, fee)| GenEvent {
            suffix,
            ts_hours,
            req_back_hours,
            price,
            fee,
        })
}

fn gen_message() -> impl Strategy<Value = GenMessage> {
    let boundaries = [
        ms("2025-10-01T00:00:00Z"),
        ms("2025-11-01T00:00:00Z"),
        ms("2025-12-01T00:00:00Z"),
    ];
    (
        0..Channel::ALL.len(),
        0..boundaries.len(),
        -4i64..4,
        prop::collection::vec(gen_event(), 1..6),
    )
        .prop_map(move |(channel, b, off, events)| GenMessage {
            channel,
            base: boundaries[b] + off * HOUR,
            events,
        })
}

fn build_events(msgs: &[GenMessage], dups: &[usize], style: u8) -> Vec<DeliveryEvent> {
    let mut out = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let channel = Channel::ALL[m.channel];
        for (j, g) in m.events.iter().enumerate() {
            let ty = format!("{}{}", channel.event_prefix(), SUFFIXES[g.suffix]);
            let style = style.wrapping_add(j as u8);
            let price = g.price.map(|u| units_text(u, style));
            let fee = g.fee.map(|u| units_text(u, style.wrapping_add(1)));
            out.push(ev(
                &ty,
                &format!("m{i}"),
                m.base + g.ts_hours * HOUR,
                g.req_back_hours.map(|h| m.base - h * HOUR),
                price.as_deref(),
                fee.as_deref(),
            ));
        }
    }
    if !out.is_empty() {
        for &d in dups {
            let copy = out[d % out.len()].clone();
            out.push(copy);
        }
    }
    out
}

/// Deterministic Fisher-Yates shuffle driven by splitmix64.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let j = (z % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

type Buckets = BTreeMap<(String, Channel), (i128, u64)>;

fn month_text(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m")
        .to_string()
}

/// Independent oracle: plain i128 sums over distinct messages, each costing
/// its max `(eventTimestamp, eventType, cost)` priced event.
fn oracle(events: &[DeliveryEvent], include_fee: bool) -> Buckets {
    let mut by_msg: HashMap<&str, Vec<&DeliveryEvent>> = HashMap::new();
    for e in events {
        by_msg.entry(e.message_id.as_str()).or_default().push(e);
    }
    let mut out = Buckets::new();
    for evs in by_msg.values() {
        let req = evs.iter().filter_map(|e| e.message_request_timestamp).min();
        let first_ts = evs.iter().map(|e| e.event_timestamp).min().expect("events");
        let month = month_text(req.unwrap_or(first_ts));
        let best = evs
            .iter()
            .filter(|e| e.total_message_price.is_some() || e.total_carrier_fee.is_some())
            .map(|e| {
                let p = e.total_message_price.map_or(0, |u| u.units());
                let f = e.total_carrier_fee.map_or(0, |u| u.units());
                let cost = if include_fee { p + f } else { p };
                (e.event_timestamp, e.event_type.clone(), cost)
            })
            .max();
        let b = out.entry((month, evs[0].channel)).or_insert((0, 0));
        b.0 += best.map_or(0, |k| k.2);
        b.1 += 1;
    }
    out
}

fn ledger_buckets(l: &SpendLedger) -> Buckets {
    l.totals()
        .into_iter()
        .map(|(m, c, t)| ((m.to_string(), c), (t.spend.units(), t.messages)))
        .collect()
}

proptest! {
    #[test]
    fn totals_match_oracle_in_any_order(
        msgs in prop::collection::vec(gen_message(), 1..10),
        dups in prop::collection::vec(any::<usize>(), 0..6),
        style in any::<u8>(),
        include_fee in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let events = build_events(&msgs, &dups, style);
        let cfg = SpendConfig {
            include_carrier_fee: include_fee,
            // nothing closes: arrival order cannot make anything late
            receipt_window_hours: 1_000_000,
            ..SpendConfig::default()
        };
        let expected = oracle(&events, include_fee);

        let mut a = SpendLedger::new(&cfg);
        let mut dup_count = 0;
        for e in &events {
            let o = a.apply(e);
            prop_assert!(!o.late);
            prop_assert_eq!(o.month_to_date, a.total(o.month, o.channel));
            for (m, c, t) in &o.changed {
                prop_assert_eq!(*t, a.total(*m, *c));
            }
            dup_count += usize::from(o.duplicate);
        }
        prop_assert!(dup_count >= dups.len());
        prop_assert_eq!(&ledger_buckets(&a), &expected);
        prop_assert_eq!(a.tracked_messages(), msgs.len());

        let mut shuffled = events.clone();
        shuffle(&mut shuffled, seed);
        let mut b = SpendLedger::new(&cfg);
        for e in &shuffled {
            b.apply(e);
        }
        prop_assert_eq!(a.totals(), b.totals());

        shuffled.reverse();
        let mut c = SpendLedger::new(&cfg);
        for e in &shuffled {
            c.apply(e);
        }
        prop_assert_eq!(a.totals(), c.totals());
    }

    #[test]
    fn eviction_does_not_change_totals_of_a_timely_stream(
        msgs in prop::collection::vec(
            (0usize..3, 0i64..(120 * 24), prop::collection::vec((0usize..4, 0i64..=72 * HOUR, prop::option::of(0i64..100_000_000)), 1..5)),
            1..25,
        ),
        dups in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        // requests between 2025-09-01 and 2025-12-29, receipts within 72 h
        let start = ms("2025-09-01T00:00:00Z");
        let mut events = Vec::new();
        for (i, (channel, req_h, evs)) in msgs.iter().enumerate() {
            let channel = Channel::ALL[*channel];
            let req = start + req_h * HOUR;
            for (suffix, off, price) in evs {
                let ty = format!("{}{}", channel.event_prefix(), SUFFIXES[*suffix]);
                let price = price.map(|u| units_text(u, 1));
                events.push(ev(&ty, &format!("m{i}"), req + off, Some(req), price.as_deref(), None));
            }
        }
        for d in &dups {
            let copy = events[d % events.len()].clone();
            events.push(copy);
        }
        events.sort_by_key(|e| e.event_timestamp);
        let mut l = SpendLedger::new(&SpendConfig::default());
        let mut max_tracked = 0;
        for e in &events {
            let o = l.apply(e);
            prop_assert!(!o.late, "{:?}", e);
            max_tracked = max_tracked.max(l.tracked_messages());
        }
        prop_assert_eq!(ledger_buckets(&l), oracle(&events, true));
        let open = msgs
            .iter()
            .map(|(_, h, _)| MonthKey::from_epoch_ms(start + h * HOUR).expect("month"))
            .filter(|m| !l.is_closed(*m))
            .count();
        prop_assert_eq!(l.tracked_messages(), open);
        prop_assert!(max_tracked <= msgs.len());
    }
}

#[test]
fn a_source_read_ahead_does_not_close_a_month_for_the_others() {
    // Two partitions read side by side: A is already past October's close,
    // B still carries an October message. Per-source watermarks keep
    // October open until B gets there; one global watermark would not.
    let oct = mk(2025, 10);
    let close = ms("2025-11-04T00:00:00Z");
    let req = ms("2025-10-31T22:00:00Z");
    let (a, b) = (1_u64, 2_u64);
    let ahead = ev(
        "TEXT_DELIVERED",
        "n1",
        close + HOUR,
        Some(close),
        Some("0.01"),
        None,
    );
    let behind = ev(
        "TEXT_DELIVERED",
        "o1",
        req + 1,
        Some(req),
        Some("0.02"),
        None,
    );

    let mut per_source = SpendLedger::new(&cfg());
    per_source.apply_from(
        &ev("TEXT_DELIVERED", "o0", req, Some(req), Some("0.03"), None),
        None,
        b,
    );
    per_source.apply_from(&ahead, None, a);
    assert!(!per_source.is_closed(oct), "B holds October open");
    let o = per_source.apply_from(&behind, None, b);
    assert!(!o.late);
    assert_eq!(per_source.total(oct, Channel::Sms), totals("0.05", 2));

    let mut global = SpendLedger::new(&cfg());
    global.apply_at(
        &ev("TEXT_DELIVERED", "o0", req, Some(req), Some("0.03"), None),
        None,
    );
    global.apply_at(&ahead, None);
    assert!(
        global.apply_at(&behind, None).late,
        "the single-stream rule closes October"
    );

    // Once B passes the close too, October closes.
    per_source.apply_from(
        &ev("TEXT_DELIVERED", "n2", close, Some(close), None, None),
        None,
        b,
    );
    assert!(per_source.is_closed(oct));
}

#[test]
fn a_source_holds_the_watermark_until_declared_idle_and_again_when_it_resumes() {
    let oct = mk(2025, 10);
    let nov = mk(2025, 11);
    let mut l = SpendLedger::new(&cfg());
    let req = ms("2025-10-25T00:00:00Z");
    l.apply_from(
        &ev("TEXT_DELIVERED", "o0", req, Some(req), Some("0.01"), None),
        None,
        7,
    );
    // source 8 runs weeks ahead; source 7 is silent but not declared idle:
    // a stalled source looks the same, so it keeps October open.
    let far = ms("2025-12-20T00:00:00Z");
    l.apply_from(
        &ev("TEXT_DELIVERED", "n1", far, Some(far), None, None),
        None,
        8,
    );
    assert!(!l.is_closed(oct), "7 is behind, not idle");
    l.source_idle(7);
    assert!(l.is_closed(oct) && l.is_closed(nov), "7 is caught up");
    // 7 resumes (December): it holds the watermark at its own pace again.
    let dec = ms("2025-12-02T00:00:00Z");
    l.apply_from(
        &ev("TEXT_DELIVERED", "d1", dec, Some(dec), Some("0.02"), None),
        None,
        7,
    );
    let jan_close = ms("2026-02-04T00:00:00Z");
    l.apply_from(
        &ev(
            "TEXT_DELIVERED",
            "j1",
            jan_close,
            Some(jan_close),
            None,
            None,
        ),
        None,
        8,
    );
    assert!(!l.is_closed(mk(2025, 12)), "7 holds December open again");
    // Declaring an unknown or already idle source changes nothing.
    l.source_idle(99);
    assert!(!l.is_closed(mk(2025, 12)));
}

#[test]
fn an_expected_source_not_yet_heard_from_holds_the_watermark() {
    // Partitions 1 and 2 are expected; only 1 has been read so far, and it
    // is far past October's close. Partition 2's October message must still
    // count: October stays open until 2 delivers or is declared idle.
    let oct = mk(2025, 10);
    let req = ms("2025-10-30T00:00:00Z");
    let far = ms("2025-11-20T00:00:00Z");
    let (a, b) = (1_u64, 2_u64);
    let mut expecting = SpendLedger::new(&cfg());
    expecting.expect_sources([a, b]);
    expecting.apply_from(
        &ev("TEXT_DELIVERED", "n1", far, Some(far), Some("0.01"), None),
        None,
        a,
    );
    assert!(!expecting.is_closed(oct), "2 has not been heard from");
    let o = expecting.apply_from(
        &ev("TEXT_DELIVERED", "o1", req, Some(req), Some("0.02"), None),
        None,
        b,
    );
    assert!(!o.late);
    assert_eq!(expecting.total(oct, Channel::Sms), totals("0.02", 1));

    // Without the expectation, 1 alone closes October and 2's message is
    // dropped as late (what happened while a partition was not yet assigned).
    let mut unaware = SpendLedger::new(&cfg());
    unaware.apply_from(
        &ev("TEXT_DELIVERED", "o0", req, Some(req), Some("0.03"), None),
        None,
        a,
    );
    unaware.apply_from(
        &ev("TEXT_DELIVERED", "n1", far, Some(far), None, None),
        None,
        a,
    );
    assert!(unaware.is_closed(oct));
    let lost = unaware.apply_from(
        &ev("TEXT_DELIVERED", "o1", req, Some(req), Some("0.02"), None),
        None,
        b,
    );
    assert!(lost.late);
    assert_eq!(unaware.total(oct, Channel::Sms), totals("0.03", 1));

    // An expected source declared idle before any event releases it.
    let mut idle = SpendLedger::new(&cfg());
    idle.expect_sources([a, b]);
    idle.apply_from(
        &ev("TEXT_DELIVERED", "n1", far, Some(far), None, None),
        None,
        a,
    );
    assert!(!idle.is_closed(oct));
    idle.source_idle(b);
    assert!(idle.is_closed(oct));
}

/// A router time (ms) for the idle-marker tests: the routers run after the
/// data.
const ROUTER: i64 = 1_763_000_000_000;
const MINUTE: i64 = 60_000;

#[test]
fn a_partition_resumed_while_the_others_are_idle_does_not_close_a_month_alone() {
    // Both partitions deliver October and are declared idle (checked at
    // ROUTER). An hour later a backlog arrives on both; a is read first and
    // is past October's close. b may have received records since its
    // check, so October stays open until b delivers or is confirmed again.
    let oct = mk(2025, 10);
    let close = ms("2025-11-04T00:00:00Z");
    let req = ms("2025-10-31T22:00:00Z");
    let (a, b) = (1_u64, 2_u64);
    let o0 = ev("TEXT_DELIVERED", "o0", req, Some(req), Some("0.01"), None);
    let o1 = ev("TEXT_DELIVERED", "o1", req, Some(req), Some("0.02"), None);
    let ahead = ev(
        "TEXT_DELIVERED",
        "n1",
        close + HOUR,
        Some(close),
        Some("0.05"),
        None,
    );
    let behind = ev(
        "TEXT_DELIVERED",
        "o2",
        req + 1,
        Some(req),
        Some("0.03"),
        None,
    );

    let mut l = SpendLedger::new(&cfg());
    l.expect_sources([a, b]);
    l.apply_forwarded(&o0, None, a, Some(ROUTER - 5_000));
    l.apply_forwarded(&o1, None, b, Some(ROUTER - 4_000));
    l.source_idle_at(a, Some(ROUTER));
    l.source_idle_at(b, Some(ROUTER));
    let f = ROUTER + HOUR;
    l.apply_forwarded(&ahead, None, a, Some(f));
    assert!(!l.is_closed(oct), "b was last seen idle before a's backlog");
    let o = l.apply_forwarded(&behind, None, b, Some(f + 10));
    assert!(!o.late, "b's October message counts");
    assert_eq!(l.total(oct, Channel::Sms), totals("0.06", 3));
    assert!(!l.is_closed(oct), "b is active and behind");
    l.apply_forwarded(
        &ev("TEXT_DELIVERED", "n2", close, Some(close), None, None),
        None,
        b,
        Some(f + 20),
    );
    assert!(l.is_closed(oct), "both are past the close");

    // Markers without a time (written before they had one) hold nothing
    // back: the partition read first closes October alone and b's October
    // message is lost, as it was before markers carried a time.
    let mut old = SpendLedger::new(&cfg());
    old.expect_sources([a, b]);
    old.apply_from(&o0, None, a);
    old.apply_from(&o1, None, b);
    old.source_idle(a);
    old.source_idle(b);
    old.apply_from(&ahead, None, a);
    assert!(old.is_closed(oct));
    assert!(old.apply_from(&behind, None, b).late);
    assert_eq!(old.total(oct, Channel::Sms), totals("0.03", 2));
}

#[test]
fn an_idle_partition_confirmed_after_the_others_forwarded_releases_them() {
    let oct = mk(2025, 10);
    let close = ms("2025-11-04T00:00:00Z");
    let (a, b) = (1_u64, 2_u64);
    let mut l = SpendLedger::new(&cfg());
    l.expect_sources([a, b]);
    l.source_idle_at(a, Some(ROUTER));
    l.source_idle_at(b, Some(ROUTER));
    let f = ROUTER + HOUR;
    l.apply_forwarded(
        &ev(
            "TEXT_DELIVERED",
            "n1",
            close + HOUR,
            Some(close),
            None,
            None,
        ),
        None,
        a,
        Some(f),
    );
    assert!(!l.is_closed(oct));
    // Confirmations checked before a's record was forwarded, or within the
    // allowance for the routers' clocks, release nothing.
    l.source_idle_at(b, Some(f - MINUTE));
    l.source_idle_at(b, Some(f + 30_000));
    assert!(!l.is_closed(oct));
    // b read to its end well after a's record was forwarded: b had nothing
    // of October (anything appended before would have come first).
    l.source_idle_at(b, Some(f + 3 * MINUTE));
    assert!(l.is_closed(oct));

    // A partition first heard of by its idle marker holds back too.
    let mut l = SpendLedger::new(&cfg());
    l.source_idle_at(b, Some(ROUTER));
    l.apply_forwarded(
        &ev(
            "TEXT_DELIVERED",
            "n1",
            close + HOUR,
            Some(close),
            None,
            None,
        ),
        None,
        a,
        Some(f),
    );
    assert!(!l.is_closed(oct));
    // ... and so does a forwarded record checked before nothing (no time).
    l.apply_forwarded(
        &ev(
            "TEXT_DELIVERED",
            "n2",
            close + HOUR,
            Some(close),
            None,
            None,
        ),
        None,
        a,
        None,
    );
    assert!(
        l.is_closed(oct),
        "a record without a forwarding time is not held"
    );
}

#[test]
fn events_waiting_when_their_partition_goes_idle_still_count() {
    // a forwards past October's close while b is idle, then a is idle too:
    // a's events still raise the watermark once b is confirmed after them.
    let oct = mk(2025, 10);
    let close = ms("2025-11-04T00:00:00Z");
    let (a, b) = (1_u64, 2_u64);
    let mut l = SpendLedger::new(&cfg());
    l.expect_sources([a, b]);
    l.source_idle_at(a, Some(ROUTER));
    l.source_idle_at(b, Some(ROUTER));
    let f = ROUTER + HOUR;
    l.apply_forwarded(
        &ev(
            "TEXT_DELIVERED",
            "n1",
            close + HOUR,
            Some(close),
            None,
            None,
        ),
        None,
        a,
        Some(f),
    );
    l.source_idle_at(a, Some(f + 1_000));
    assert!(!l.is_closed(oct));
    l.source_idle_at(b, Some(f + 3 * MINUTE));
    assert!(
        !l.is_closed(oct),
        "a's own confirmation is not yet past the allowance"
    );
    l.source_idle_at(a, Some(f + 4 * MINUTE));
    assert!(l.is_closed(oct));
}

#[test]
fn an_idle_partition_never_confirmed_again_stops_holding_after_the_receipt_window() {
    // b's reader is gone (say its topic left the configuration): after the
    // receipt window of router time in which records kept arriving, b no
    // longer holds back what a forwards, so memory stays bounded.
    let oct = mk(2025, 10);
    let close = ms("2025-11-04T00:00:00Z");
    let (a, b) = (1_u64, 2_u64);
    let window = i64::from(cfg().receipt_window_hours) * HOUR;
    let mut l = SpendLedger::new(&cfg());
    l.expect_sources([a, b]);
    l.source_idle_at(a, Some(ROUTER));
    l.source_idle_at(b, Some(ROUTER));
    let mut f = ROUTER;
    let mut i = 0;
    while f < ROUTER + window - HOUR {
        f += MINUTE;
        i += 1;
        l.apply_forwarded(
            &ev("TEXT_DELIVERED", "n", close + i, Some(close), None, None),
            None,
            a,
            Some(f),
        );
    }
    assert!(!l.is_closed(oct), "within the window, b still holds");
    while f < ROUTER + window + HOUR {
        f += MINUTE;
        i += 1;
        l.apply_forwarded(
            &ev("TEXT_DELIVERED", "n", close + i, Some(close), None, None),
            None,
            a,
            Some(f),
        );
    }
    assert!(l.is_closed(oct), "b has not been confirmed for a window");

    // A pause of the whole pipeline is not a reader that is gone: after ten
    // days without any record, the backlog read first is still held back.
    let mut l = SpendLedger::new(&cfg());
    l.expect_sources([a, b]);
    l.source_idle_at(a, Some(ROUTER));
    l.source_idle_at(b, Some(ROUTER));
    l.apply_forwarded(
        &ev("TEXT_DELIVERED", "n", close + HOUR, Some(close), None, None),
        None,
        a,
        Some(ROUTER + 10 * 24 * HOUR),
    );
    assert!(!l.is_closed(oct), "a pause counts as at most a few minutes");
}

#[test]
fn two_ledgers_fed_the_same_records_agree_at_every_step() {
    // Determinism: the ledger is a function of its records in order, so a
    // restore replaying the same records (markers included) rebuilds the
    // same state. Two ledgers iterate their sources in different hash
    // orders; fed the same sequence they agree at every step.
    let close = ms("2025-11-04T00:00:00Z");
    let mut x = SpendLedger::new(&cfg());
    let mut y = SpendLedger::new(&cfg());
    let mut rng = 0x5eed_u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        rng >> 33
    };
    let mut f = ROUTER;
    for i in 0..2_000_i64 {
        f += (next() % 90_000) as i64;
        let src = next() % 3;
        if next() % 4 == 0 {
            x.source_idle_at(src, Some(f));
            y.source_idle_at(src, Some(f));
        } else {
            let e = ev(
                "TEXT_DELIVERED",
                &format!("m{i}"),
                close - 3 * HOUR + i * 10_000,
                None,
                Some("0.01"),
                None,
            );
            assert_eq!(
                x.apply_forwarded(&e, None, src, Some(f)),
                y.apply_forwarded(&e, None, src, Some(f))
            );
        }
        assert_eq!(x.watermark(), y.watermark());
    }
    assert_eq!(x.totals(), y.totals());
}
