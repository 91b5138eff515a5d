//! A byte stream split into records: top-level JSON values (concatenated,
//! with or without whitespace) and invalid spans, each found by one scan.

use super::*;

/// A piece of a byte stream of concatenated JSON values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A syntactically valid JSON value at this byte range.
    Value(Range<usize>),
    /// Bytes that are not JSON, up to the end of their line.
    Invalid(Range<usize>, Reason),
}

pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Splits bytes into top-level JSON values (concatenated with or without
/// whitespace) and invalid spans. After an invalid span the scan resumes at
/// the next line, so one bad line of a JSON-lines file costs only that line.
pub fn split_values(bytes: &[u8]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(seg) = split_step(bytes, &mut pos) {
        out.push(seg);
    }
    out
}

/// One step of [`split_values`]: the segment after `*pos` (whitespace
/// skipped), moving `*pos` past it; `None` at the end.
pub(crate) fn split_step(bytes: &[u8], pos: &mut usize) -> Option<Segment> {
    while *pos < bytes.len() && is_ws(bytes[*pos]) {
        *pos += 1;
    }
    if *pos >= bytes.len() {
        return None;
    }
    // Fast path: a value the scanner accepts is one serde accepts, with
    // the same end (see `scan`).
    if let Some(end) = scan::scan_value_end(&bytes[*pos..], SPLIT_SCAN_DEPTH) {
        let seg = Segment::Value(*pos..*pos + end);
        *pos += end;
        return Some(seg);
    }
    let (seg, _) = next_segment(bytes, *pos, false)?;
    *pos = match &seg {
        Segment::Value(r) | Segment::Invalid(r, _) => r.end,
    };
    Some(seg)
}

/// A top-level value of a file, found by one scan that the decoding of the
/// record then reuses ([`decode_scanned_record`]): the object at `bytes[pos..]`
/// (after whitespace) when the scanner accepts it with `limits`; else the
/// [`split_step`] segment. Moves `*pos` past it; `None` at the end.
pub(crate) fn next_record(
    bytes: &[u8],
    pos: &mut usize,
    limits: &Limits,
) -> Option<(Range<usize>, Option<ScannedRecord>)> {
    while *pos < bytes.len() && is_ws(bytes[*pos]) {
        *pos += 1;
    }
    if *pos >= bytes.len() {
        return None;
    }
    if bytes[*pos] == b'{' {
        if let Some(s) = scan::scan_object(&bytes[*pos..], limits.max_json_depth) {
            let r = *pos..*pos + s.end;
            *pos = r.end;
            return Some((r, Some(ScannedRecord(s))));
        }
    }
    match split_step(bytes, pos)? {
        Segment::Value(r) | Segment::Invalid(r, _) => Some((r, None)),
    }
}

/// The scan of a record that is one object (see [`next_record`]).
pub(crate) struct ScannedRecord(scan::Scanned);

/// [`decode_record_with`] of a record that [`next_record`] scanned: the
/// same result, without scanning it again.
pub(crate) fn decode_scanned_record<'a>(
    bytes: &'a [u8],
    scanned: &ScannedRecord,
    src: &RecordSource,
    limits: &Limits,
    arrival_ms: Option<i64>,
    out: &mut Vec<Decoded<'a>>,
) {
    if bytes.len() > limits.max_record_bytes || scanned.0.end != bytes.len() {
        return decode_record_with(bytes, src, limits, arrival_ms, out);
    }
    let mut d = Decoder::new(bytes, src, limits, arrival_ms, out);
    // What `split_and_decode` does for a record that is one scanned object.
    let mut ctx = Ctx::top(src.timestamp_ms);
    ctx.top = Some(0..bytes.len());
    d.decode_value(bytes, Some(0), &ctx, Pre::Scanned(&scanned.0));
}

/// Nesting depth up to which [`split_values`] takes its fast path (deeper
/// values take serde's, which has no limit when it only skips a value).
pub(super) const SPLIT_SCAN_DEPTH: usize = 128;

/// The segment that starts at `pos` (not whitespace), and for an object the
/// probe of its kind fields when `probe` is set: the scan that finds where
/// a value ends reads those fields on the way. `None` at the end of input.
pub(super) fn next_segment(
    bytes: &[u8],
    pos: usize,
    probe: bool,
) -> Option<(Segment, Option<Probe>)> {
    if probe && bytes[pos] == b'{' {
        let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Probe>();
        if let Some(Ok(p)) = stream.next() {
            let end = pos + stream.byte_offset();
            return Some((Segment::Value(pos..end), Some(p)));
        }
    }
    let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<IgnoredAny>();
    match stream.next() {
        Some(Ok(_)) => {
            let end = pos + stream.byte_offset();
            Some((Segment::Value(pos..end), None))
        }
        Some(Err(e)) => {
            let end = bytes[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| pos + i);
            let span = &bytes[pos..end];
            let reason = match std::str::from_utf8(span) {
                Err(u) => Reason::InvalidUtf8 {
                    at: u.valid_up_to(),
                },
                Ok(_) => Reason::InvalidJson {
                    detail: e.to_string(),
                },
            };
            Some((Segment::Invalid(pos..end, reason), None))
        }
        None => None,
    }
}
