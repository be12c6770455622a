//! A small fuzzing driver that runs on stable Rust as an ordinary test, for the parsers
//! that read what clients, sprites and files send (exec queries, exec and init frames,
//! DNS messages, policy JSON, paths, durations, the daemon's config).
//!
//! Each target starts from its seeds (the known-good inputs and every input that once
//! crashed it: a crash found becomes a seed, so a regression test) and then mutates them
//! for a time budget: bit flips, interesting bytes, insertions, deletions, repeats and
//! splices of seeds and dictionary tokens. It has no coverage feedback; what it has is
//! cheap, runs in CI (`SPRITE_FUZZ_SECONDS`, 1 s by default, 30 s in `scripts/test.sh`)
//! and reports a crash with the input that caused it, in hex and as text.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// The budget of each target: `SPRITE_FUZZ_SECONDS`, else 1 s.
pub fn budget() -> Duration {
    let seconds = std::env::var("SPRITE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(seconds)
}

/// xorshift64*: enough randomness for mutations, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'%', b'/', b'.', b'\\', b'"'];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[&[u8]], dictionary: &[&[u8]]) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let at = rng.below(len + 1);
                let count = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..count).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(16)).min(len);
                input.drain(at..end);
            }
            4 if len > 0 && len < 1 << 16 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                let piece = input[at..end].to_vec();
                let times = 1 + rng.below(64);
                let to = rng.below(len + 1);
                for _ in 0..times {
                    input.splice(to..to, piece.iter().copied());
                }
            }
            5 if !dictionary.is_empty() => {
                let token = dictionary[rng.below(dictionary.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            6 if !seeds.is_empty() => {
                let other = seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..len.max(at), other[from..].iter().copied());
                }
            }
            _ if len > 0 => {
                let at = rng.below(len);
                input.truncate(at);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(1 << 20);
}

/// Runs `check` on every seed, then on mutations of them until `budget` is spent.
/// `check` panics (an assertion, an unwrap, an overflow) when a property breaks; the
/// panic is reported with the input. Answers how many inputs ran.
pub fn fuzz(
    target: &str,
    budget: Duration,
    seeds: &[&[u8]],
    dictionary: &[&[u8]],
    mut check: impl FnMut(&[u8]),
) -> u64 {
    let started = Instant::now();
    let seed = started.elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
    let mut rng = Rng(seed | 1);
    let mut run = |input: &[u8], runs: u64| {
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            panic!(
                "fuzz target {target} failed after {runs} inputs (rng seed {seed:#x}) on input:\n  hex {}\n  text {:?}\nadd it to the target's seeds as a regression test",
                input.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                String::from_utf8_lossy(input)
            );
        }
    };
    let mut runs = 0u64;
    for seed_input in seeds {
        run(seed_input, runs);
        runs += 1;
    }
    let mut input = Vec::new();
    while started.elapsed() < budget {
        if runs.is_multiple_of(64) || input.is_empty() {
            input = seeds
                .get(rng.below(seeds.len()))
                .map(|s| s.to_vec())
                .unwrap_or_default();
        }
        mutate(&mut rng, &mut input, seeds, dictionary);
        run(&input, runs);
        runs += 1;
    }
    eprintln!("fuzz {target}: {runs} inputs in {:?}", started.elapsed());
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_property_is_found_and_reported_with_its_input() {
        let found = catch_unwind(|| {
            fuzz(
                "demo",
                Duration::from_secs(5),
                &[b"abc"],
                &[b"BOOM"],
                |input| {
                    assert!(!input.windows(4).any(|w| w == b"BOOM"), "boom");
                },
            )
        });
        let message = found
            .err()
            .and_then(|e| e.downcast_ref::<String>().cloned())
            .expect("the driver finds BOOM");
        assert!(message.contains("fuzz target demo"), "{message}");
        assert!(message.contains("424f4f4d"), "{message}");
    }
}
