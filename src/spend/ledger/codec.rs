//! The binary encoding of the ledger's snapshot records (and of its
//! in-memory entries, which are kept in the same form: see
//! [`super::entry`]): LEB128 varints, zigzag for signed values, position
//! hashes as 8 little-endian bytes. [`Reader`] is strict: a value that ends
//! early, has bytes left over or holds an impossible value is a
//! [`SnapshotError`].

use super::snapshot::SnapshotError;
use crate::model::Channel;
use crate::spend::MonthKey;

pub(super) fn corrupt(what: &'static str, detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt {
        what,
        detail: detail.into(),
    }
}

pub(super) fn channel_code(c: Channel) -> u8 {
    match c {
        Channel::Sms => 0,
        Channel::Mms => 1,
        Channel::Voice => 2,
        Channel::Rcs => 3,
    }
}

pub(super) fn channel_of(code: u8) -> Channel {
    match code & 0b11 {
        0 => Channel::Sms,
        1 => Channel::Mms,
        2 => Channel::Voice,
        _ => Channel::Rcs,
    }
}

#[derive(Default)]
pub(super) struct Writer {
    pub(super) buf: Vec<u8>,
}

impl Writer {
    pub(super) fn u8(&mut self, b: u8) {
        self.buf.push(b);
    }
    pub(super) fn u128(&mut self, mut v: u128) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return;
            }
            self.buf.push(b | 0x80);
        }
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.u128(u128::from(v));
    }
    pub(super) fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    pub(super) fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }
    pub(super) fn i128(&mut self, v: i128) {
        self.u128(((v << 1) ^ (v >> 127)) as u128);
    }
    pub(super) fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.i64(x);
            }
        }
    }
    pub(super) fn fixed_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn month(&mut self, m: MonthKey) {
        self.i64(i64::from(m.year()));
        self.u8(m.month() as u8);
    }
    pub(super) fn channel(&mut self, c: Channel) {
        self.u8(channel_code(c));
    }
    pub(super) fn str(&mut self, s: &str) {
        self.len(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }
}

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, at: 0, what }
    }
    pub(super) fn short(&self) -> SnapshotError {
        corrupt(self.what, format!("ends early at byte {}", self.at))
    }
    pub(super) fn u8(&mut self) -> Result<u8, SnapshotError> {
        let b = *self.buf.get(self.at).ok_or_else(|| self.short())?;
        self.at += 1;
        Ok(b)
    }
    pub(super) fn u128(&mut self) -> Result<u128, SnapshotError> {
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let b = self.u8()?;
            v |= u128::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(
            self.what,
            format!("varint too long at byte {}", self.at),
        ))
    }
    pub(super) fn u64(&mut self) -> Result<u64, SnapshotError> {
        let v = self.u128()?;
        u64::try_from(v).map_err(|_| corrupt(self.what, format!("{v} out of range")))
    }
    pub(super) fn u32(&mut self) -> Result<u32, SnapshotError> {
        let v = self.u64()?;
        u32::try_from(v).map_err(|_| corrupt(self.what, format!("{v} out of range")))
    }
    /// A count, bounded by the bytes left (every counted item takes at least
    /// one byte), so a corrupt count cannot make a huge allocation.
    pub(super) fn len(&mut self) -> Result<usize, SnapshotError> {
        let v = self.u64()?;
        let left = self.buf.len() - self.at;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| corrupt(self.what, format!("count {v} beyond the value's end")))
    }
    pub(super) fn i64(&mut self) -> Result<i64, SnapshotError> {
        let u = self.u64()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    pub(super) fn i128(&mut self) -> Result<i128, SnapshotError> {
        let u = self.u128()?;
        Ok(((u >> 1) as i128) ^ -((u & 1) as i128))
    }
    pub(super) fn opt_i64(&mut self) -> Result<Option<i64>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            t => Err(corrupt(self.what, format!("option tag {t}"))),
        }
    }
    pub(super) fn fixed_u64(&mut self) -> Result<u64, SnapshotError> {
        let end = self.at + 8;
        let b = self.buf.get(self.at..end).ok_or_else(|| self.short())?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        self.at = end;
        Ok(u64::from_le_bytes(a))
    }
    pub(super) fn month(&mut self) -> Result<MonthKey, SnapshotError> {
        let y = self.i64()?;
        let m = self.u8()?;
        i32::try_from(y)
            .ok()
            .and_then(|y| MonthKey::new(y, u32::from(m)))
            .ok_or_else(|| corrupt(self.what, format!("month {y}-{m}")))
    }
    pub(super) fn channel(&mut self) -> Result<Channel, SnapshotError> {
        let c = self.u8()?;
        if c > 3 {
            return Err(corrupt(self.what, format!("channel {c}")));
        }
        Ok(channel_of(c))
    }
    pub(super) fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let n = self.len()?;
        let b = self
            .buf
            .get(self.at..self.at + n)
            .ok_or_else(|| self.short())?;
        self.at += n;
        std::str::from_utf8(b).map_err(|e| corrupt(self.what, e.to_string()))
    }
    pub(super) fn end(&self) -> Result<(), SnapshotError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(corrupt(
                self.what,
                format!("{} bytes left after the value", self.buf.len() - self.at),
            ))
        }
    }
}
