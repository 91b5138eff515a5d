//! Memory per tracked message of a message owner (the state a platform
//! keeps for every message of an open month plus the receipt window).
//!
//! ```sh
//! cargo bench --bench memory             # MEMORY_MESSAGES=200000,400000 by default
//! ```
//!
//! The figure is exact, not an RSS estimate: a counting global allocator
//! records the live heap bytes. Generated messages of one open month
//! (`Workload` with the default mix: 1 to 4 events per message,
//! duplicates, corrections, envelopes) are routed as the router does and
//! processed by one `MessageOwner`; the bench reports the live heap held by
//! the owner divided by the messages it tracks, at two sizes, and the slope
//! between them (what one more tracked message costs; fixed costs such as
//! the interner and hash-table growth steps cancel out in the slope, not
//! in the plain ratio).
//!
//! Prints one `RESULT` line per figure for `scripts/bench.sh`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::decode::RecordSource;
use smsvoice::generate::{generate, Workload};
use smsvoice::model::Provenance;
use smsvoice::stages::message_owner::{MessageOwner, OwnerOutputs};
use smsvoice::stages::router::{route, Routed};
use smsvoice::stages::view::View;

/// Live heap bytes.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Target of issue 12: bytes per tracked message.
const TARGET_BYTES: f64 = 48.0;

/// Routes `messages` generated messages of one open month and feeds them to
/// one owner; returns (live heap bytes held by the owner, tracked messages).
fn measure(cfg: &Config, messages: usize) -> (isize, usize) {
    let g = generate(&Workload {
        messages,
        // One month, no close: every message stays tracked.
        start_ms: 1_762_000_000_000,
        span_ms: 10 * 86_400_000,
        ..Workload::default()
    });
    let source: Arc<str> = Arc::from("sms-events");
    let mut forwarded = Vec::new();
    let mut routed = Vec::new();
    for (i, r) in g.records.iter().enumerate() {
        let src = RecordSource {
            source: source.clone(),
            partition: Some((i % 4) as i32),
            offset: (i / 4) as i64,
            timestamp_ms: None,
        };
        route(r, &src, &mut routed);
        for x in routed.drain(..) {
            if let Routed::Event { record, .. } = x {
                forwarded.push(record);
            }
        }
    }
    drop(g);
    let view = View::new(&cfg.optout);
    let topic: Arc<str> = Arc::from("smsvoice.internal.events-by-message");
    let mut out = OwnerOutputs::default();
    let before = LIVE.load(Ordering::Relaxed);
    let mut owner = MessageOwner::new(&cfg.spend, 0);
    for (o, r) in forwarded.iter().enumerate() {
        let at = Provenance {
            source: topic.clone(),
            partition: Some(0),
            offset: o as i64,
            sub: 0,
        };
        owner.process(r, &at, &view, &mut out);
        out.clear();
    }
    // `out` keeps its allocations between records: not state.
    drop(out);
    let held = LIVE.load(Ordering::Relaxed) - before;
    let tracked = owner.ledger().tracked_messages();
    drop(owner);
    (held, tracked)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MEMORY_MESSAGES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| v.len() >= 2)
        .unwrap_or_else(|| vec![200_000, 400_000]);
    let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").unwrap_or_else(|e| panic!("{e}"));
    let mut points = Vec::new();
    for &n in &sizes {
        let (held, tracked) = measure(&cfg, n);
        println!(
            "memory: {n} messages generated, {tracked} tracked, {held} live heap bytes held by the owner: {:.1} bytes per tracked message",
            held as f64 / tracked.max(1) as f64
        );
        points.push((held, tracked));
    }
    let (h0, t0) = points[0];
    let (h1, t1) = points[points.len() - 1];
    let slope = (h1 - h0) as f64 / (t1 as f64 - t0 as f64).max(1.0);
    let ratio = h1 as f64 / t1.max(1) as f64;
    println!(
        "memory: one more tracked message costs {slope:.1} bytes (slope {t0} -> {t1} tracked); target <= {TARGET_BYTES} bytes"
    );
    println!(
        "RESULT\tmemory per tracked message (live heap, slope)\t{slope:.1}\tbytes\t<= {TARGET_BYTES}\t{}",
        if slope <= TARGET_BYTES { "met" } else { "missed" }
    );
    println!(
        "RESULT\tmemory per tracked message (live heap / tracked, {t1} tracked)\t{ratio:.1}\tbytes\t<= {TARGET_BYTES}\t{}",
        if ratio <= TARGET_BYTES { "met" } else { "missed" }
    );
}
