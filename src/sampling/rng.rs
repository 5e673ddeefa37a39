//! The sampler's random number generator: xoshiro256** seeded through SplitMix64.
//!
//! xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number generators", 2021;
//! reference code at <https://prng.di.unimi.it/xoshiro256starstar.c>) has 256 bits of state,
//! passes BigCrush and needs four words of state and a handful of ALU ops per draw. The 64-bit
//! seed is expanded to the 256-bit state with SplitMix64 (<https://prng.di.unimi.it/splitmix64.c>),
//! as the authors recommend, so that nearby seeds give unrelated streams and the state is never
//! all zero.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// One step of SplitMix64: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256**: deterministic for a given seed, identical on every platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    /// The generator for `seed`: the state is four successive SplitMix64 outputs from `seed`.
    pub fn from_seed(seed: u64) -> Xoshiro256 {
        let mut sm = seed;
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Xoshiro256 { s }
    }

    /// The generator with an explicit state (for the reference test vectors). An all-zero state
    /// would only ever produce zeros, so it is replaced by the state of seed 0.
    pub fn from_state(s: [u64; 4]) -> Xoshiro256 {
        if s == [0; 4] {
            return Xoshiro256::from_seed(0);
        }
        Xoshiro256 { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform double in [0, 1): the top 53 bits of a draw, scaled by 2^-53 (the conversion
    /// recommended next to the reference code).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A fresh seed for runs that were not given one: the OS-seeded keys std draws for hash maps,
/// mixed with the clock and the process id. Not cryptographic; only needs to differ per run.
pub fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    h.write_u64(nanos);
    h.write_u32(std::process::id());
    let mut x = h.finish();
    splitmix64(&mut x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_vector() {
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut s), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(splitmix64(&mut s), 0x06c4_5d18_8009_454f);
        assert_eq!(splitmix64(&mut s), 0xf88b_b8a8_724c_81ec);
    }

    #[test]
    fn xoshiro256starstar_reference_vector() {
        // Outputs of the reference C code from the state {1, 2, 3, 4}.
        let expected: [u64; 10] = [
            11520,
            0,
            1509978240,
            1215971899390074240,
            1216172134540287360,
            607988272756665600,
            16172922978634559625,
            8476171486693032832,
            10595114339597558777,
            2904607092377533576,
        ];
        let mut r = Xoshiro256::from_state([1, 2, 3, 4]);
        for e in expected {
            assert_eq!(r.next_u64(), e);
        }
    }

    #[test]
    fn seeded_streams_repeat_and_differ() {
        let (mut a, mut b, mut c) = (Xoshiro256::from_seed(42), Xoshiro256::from_seed(42), Xoshiro256::from_seed(43));
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn unit_doubles_stay_in_range() {
        let mut r = Xoshiro256::from_seed(7);
        let mut sum = 0.0;
        for _ in 0..100_000 {
            let u = r.next_f64();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        assert!((sum / 100_000.0 - 0.5).abs() < 0.01);
    }
}
