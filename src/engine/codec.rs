//! Byte-level primitives of chatkpi's compact binary formats (stored conversation records and
//! in-memory query segments): LEB128 varints, zigzag signed integers and time deltas.
//!
//! Times are microseconds (the precision PostgreSQL keeps), written as a delta from a base
//! instant with a unit tag in the two low bits: whole seconds, whole milliseconds or
//! microseconds. Real event streams are stamped in seconds or milliseconds, so most deltas take
//! 2-3 bytes while every value stays exact.
//!
//! The [`Reader`] never panics on bad input: reading past the end yields zeros and marks the
//! reader [`Reader::is_corrupt`], so a decoder can validate a whole value once (when it is
//! loaded) and later decode it on a hot path without error plumbing.

/// Appends values to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

const TAG_SECONDS: u64 = 0;
const TAG_MILLIS: u64 = 1;
const TAG_MICROS: u64 = 2;
/// The delta does not fit the tagged form; a plain zigzag varint follows.
const TAG_WIDE: u64 = 3;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// LEB128: 7 bits per byte, high bit = more bytes follow.
    pub fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// A length or count.
    pub fn count(&mut self, n: usize) {
        self.u64(n as u64);
    }

    pub fn i64(&mut self, v: i64) {
        self.u64(zigzag(v));
    }

    /// A signed microsecond delta, in the coarsest exact unit.
    pub fn delta(&mut self, d: i64) {
        let (value, tag) = if d % 1_000_000 == 0 {
            (d / 1_000_000, TAG_SECONDS)
        } else if d % 1000 == 0 {
            (d / 1000, TAG_MILLIS)
        } else {
            (d, TAG_MICROS)
        };
        let z = zigzag(value);
        if z >> 62 == 0 {
            self.u64((z << 2) | tag);
        } else {
            self.u64(TAG_WIDE);
            self.i64(d);
        }
    }

    /// Instant `t` relative to `base` (both microseconds since the epoch).
    pub fn time(&mut self, base: i64, t: i64) {
        self.delta(t.wrapping_sub(base));
    }

    /// An optional instant: a presence byte, then the time.
    pub fn opt_time(&mut self, base: i64, t: Option<i64>) {
        match t {
            Some(t) => {
                self.u8(1);
                self.time(base, t);
            }
            None => self.u8(0),
        }
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.count(b.len());
        self.buf.extend_from_slice(b);
    }

    /// A float, bit for bit (8 bytes).
    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

/// Reads values written by [`Writer`] from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    corrupt: bool,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            corrupt: false,
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether everything was consumed.
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Whether a read ran past the end or met a malformed value.
    pub fn is_corrupt(&self) -> bool {
        self.corrupt
    }

    /// Marks the input as malformed (a decoder found a value out of its domain).
    pub fn fail(&mut self) {
        self.corrupt = true;
    }

    pub fn u8(&mut self) -> u8 {
        match self.buf.get(self.pos) {
            Some(b) => {
                self.pos += 1;
                *b
            }
            None => {
                self.corrupt = true;
                0
            }
        }
    }

    #[inline]
    pub fn u64(&mut self) -> u64 {
        // Most values (symbols, counts, small deltas) fit one byte.
        if let Some(&byte) = self.buf.get(self.pos)
            && byte < 0x80
        {
            self.pos += 1;
            return u64::from(byte);
        }
        self.u64_long()
    }

    fn u64_long(&mut self) -> u64 {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let Some(&byte) = self.buf.get(self.pos) else {
                self.corrupt = true;
                return 0;
            };
            self.pos += 1;
            if shift >= 64 {
                self.corrupt = true;
                return 0;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return value;
            }
            shift += 7;
        }
    }

    /// A length or count, capped by what the remaining bytes could hold (one byte per item at
    /// least), so a corrupt length cannot make a decoder allocate without bound.
    pub fn count(&mut self) -> usize {
        let n = self.u64();
        let left = self.buf.len().saturating_sub(self.pos) as u64;
        if n > left {
            self.corrupt = true;
            0
        } else {
            n as usize
        }
    }

    pub fn u32(&mut self) -> u32 {
        let v = self.u64();
        u32::try_from(v).unwrap_or_else(|_| {
            self.corrupt = true;
            0
        })
    }

    pub fn i64(&mut self) -> i64 {
        unzigzag(self.u64())
    }

    pub fn i32(&mut self) -> i32 {
        let v = self.i64();
        i32::try_from(v).unwrap_or_else(|_| {
            self.corrupt = true;
            0
        })
    }

    /// A float written by [`Writer::f64`].
    pub fn f64(&mut self) -> f64 {
        match self.buf.get(self.pos..self.pos + 8) {
            Some(b) => {
                self.pos += 8;
                f64::from_bits(u64::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            None => {
                self.corrupt = true;
                self.pos = self.buf.len();
                0.0
            }
        }
    }

    pub fn delta(&mut self) -> i64 {
        let raw = self.u64();
        let value = unzigzag(raw >> 2);
        match raw & 3 {
            TAG_SECONDS => value.wrapping_mul(1_000_000),
            TAG_MILLIS => value.wrapping_mul(1000),
            TAG_MICROS => value,
            _ => self.i64(),
        }
    }

    pub fn time(&mut self, base: i64) -> i64 {
        base.wrapping_add(self.delta())
    }

    pub fn opt_time(&mut self, base: i64) -> Option<i64> {
        match self.u8() {
            0 => None,
            1 => Some(self.time(base)),
            _ => {
                self.corrupt = true;
                None
            }
        }
    }

    pub fn bytes(&mut self) -> &'a [u8] {
        let n = self.count();
        let end = self.pos + n;
        match self.buf.get(self.pos..end) {
            Some(b) => {
                self.pos = end;
                b
            }
            None => {
                self.corrupt = true;
                &[]
            }
        }
    }

    pub fn str(&mut self) -> &'a str {
        let b = self.bytes();
        std::str::from_utf8(b).unwrap_or_else(|_| {
            self.corrupt = true;
            ""
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_every_unit_and_width() {
        let deltas = [
            0,
            1,
            -1,
            999,
            1000,
            -1000,
            1_000_000,
            -86_400_000_000,
            1_234_567,
            i64::MAX / 4,
            i64::MIN / 4,
            i64::MAX,
            i64::MIN,
        ];
        let mut w = Writer::new();
        for d in deltas {
            w.delta(d);
            w.i64(d);
        }
        w.u64(u64::MAX);
        w.opt_time(100, Some(-5));
        w.opt_time(100, None);
        w.bytes("héllo".as_bytes());
        let mut r = Reader::new(&w.buf);
        for d in deltas {
            assert_eq!(r.delta(), d);
            assert_eq!(r.i64(), d);
        }
        assert_eq!(r.u64(), u64::MAX);
        assert_eq!(r.opt_time(100), Some(-5));
        assert_eq!(r.opt_time(100), None);
        assert_eq!(r.str(), "héllo");
        assert!(r.at_end() && !r.is_corrupt());
    }

    #[test]
    fn coarse_units_take_fewer_bytes() {
        let size = |d: i64| {
            let mut w = Writer::new();
            w.delta(d);
            w.buf.len()
        };
        assert_eq!(size(1_800_000_000), 2, "half an hour in whole seconds");
        assert_eq!(size(90_500_000), 3, "90.5 s in milliseconds");
        assert_eq!(size(90_500_001), 5, "microseconds when needed");
    }

    #[test]
    fn truncated_and_malformed_input_is_flagged_not_a_panic() {
        let mut w = Writer::new();
        w.u64(300);
        w.bytes(b"abc");
        let full = w.buf.clone();
        for cut in 0..full.len() {
            let mut r = Reader::new(&full[..cut]);
            let _ = r.u64();
            let _ = r.str();
            assert!(r.is_corrupt(), "cut at {cut}");
        }
        let mut r = Reader::new(&[0xff; 12]);
        assert_eq!(r.u64(), 0);
        assert!(r.is_corrupt());
        let mut r = Reader::new(&[0x7f, b'x']);
        assert_eq!(r.count(), 0, "a length beyond the input is refused");
        assert!(r.is_corrupt());
    }
}
