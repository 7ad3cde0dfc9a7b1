//! Randomized inputs for the tests of the parsers that see untrusted bytes (the command line,
//! the pid file, the state carried across the re-exec, notify datagrams, haproxy's output
//! lines, the reload ledger, /proc text): a tiny xorshift generator with a fixed seed, so that
//! every run tries the same inputs and a failure names the case that broke; random bytes and
//! text; mutations of valid inputs. Tests only, no dependency.

/// How many inputs each randomized test tries.
pub const CASES: usize = 5000;

/// xorshift64*: small, fast, and good enough to spread inputs around.
pub struct Rng(u64);

/// Bytes that parsers care about: separators, signs, digits, hex, quotes, escapes, UTF-8 lead
/// and continuation bytes.
const INTERESTING: &[u8] = b" \t\n\r;=:,-+.0123456789abcdefABCDEFxX()[]'\"\\%@/\x00\x7f\xc3\xa9\xe2\x82\xac\xff";

/// Characters for text: ASCII, separators, multibyte characters (2, 3 and 4 bytes), controls.
const CHARS: &[char] = &[
    'a', 'Z', '0', '9', ' ', '\t', '\n', '\r', ';', '=', ':', ',', '(', ')', '[', ']', '-', '+', '.', 'é', '€', '𝄞',
    '\u{0}', '\u{7f}', '\u{2028}', '\u{fffd}',
];

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True once in `n` times.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A number of any size, small ones more often (parsers break at edges, not in the middle).
    pub fn number(&mut self) -> u64 {
        match self.below(4) {
            0 => self.below(10) as u64,
            1 => self.below(100_000) as u64,
            2 => *self.pick(&[
                0,
                1,
                u32::MAX as u64,
                i32::MAX as u64,
                i32::MAX as u64 + 1,
                4_194_304,
                4_194_305,
                u64::MAX,
            ]),
            _ => self.next(),
        }
    }

    /// Up to `max` bytes, random or from the interesting ones.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n)
            .map(|_| {
                if self.one_in(2) {
                    *self.pick(INTERESTING)
                } else {
                    self.next() as u8
                }
            })
            .collect()
    }

    /// Up to `max` characters of text (valid UTF-8, multibyte and control characters included).
    pub fn text(&mut self, max: usize) -> String {
        let n = self.below(max + 1);
        (0..n)
            .map(|_| {
                if self.one_in(3) {
                    char::from(b' ' + self.below(95) as u8)
                } else {
                    *self.pick(CHARS)
                }
            })
            .collect()
    }

    /// `input` with one to four random edits: a byte changed, bytes inserted (random, from
    /// `alphabet`, or a copy of a slice of the input), a slice deleted, the input cut short.
    pub fn mutate(&mut self, input: &[u8], alphabet: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(6) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] = self.next() as u8;
                }
                1 => {
                    let insert = if alphabet.is_empty() || self.one_in(3) {
                        self.bytes(4)
                    } else {
                        (0..1 + self.below(3)).map(|_| *self.pick(alphabet)).collect()
                    };
                    out.splice(at..at, insert);
                }
                2 if !out.is_empty() => {
                    let end = (at + 1 + self.below(8)).min(out.len());
                    let start = at.min(end);
                    out.drain(start..end);
                }
                3 if !out.is_empty() => {
                    let start = self.below(out.len());
                    let end = (start + 1 + self.below(16)).min(out.len());
                    let copy = out[start..end].to_vec();
                    out.splice(at..at, copy);
                }
                4 => out.truncate(at),
                _ => {
                    let c = self.pick(CHARS).to_string();
                    out.splice(at..at, c.into_bytes());
                }
            }
        }
        out
    }

    /// `mutate` for text inputs, made valid UTF-8 again (lossily) for parsers that take `&str`.
    pub fn mutate_text(&mut self, input: &str, alphabet: &[u8]) -> String {
        String::from_utf8_lossy(&self.mutate(input.as_bytes(), alphabet)).into_owned()
    }
}

/// An error a parser returns for bad input says what is wrong (the logger puts it on one line).
pub fn assert_clear_error(input: &dyn std::fmt::Debug, message: &str) {
    assert!(!message.trim().is_empty(), "empty error for {:?}", input);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_fixed_and_spreads() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..100).map(|_| a.next()).collect();
        assert_eq!(xs, (0..100).map(|_| b.next()).collect::<Vec<_>>());
        let mut seen = [0usize; 10];
        for _ in 0..10_000 {
            seen[a.below(10)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800 && n < 1200), "{:?}", seen);
        let m = a.mutate(b"12345", b"x");
        assert!(m.len() <= 5 + 4 * 16 + 16);
    }
}
