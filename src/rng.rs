//! A small seeded random number generator whose whole state is one `u64`, so a run can save it
//! in `trainer_state.json` and resume with exactly the same random stream.

use serde::{Deserialize, Serialize};

/// SplitMix64: fast, statistically sound for sampling and initialisation, and trivially
/// serialisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    pub state: u64,
}

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed ^ 0x5851_F42D_4C95_7F2D,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift: unbiased enough for n << 2^64 and branch-free.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal sample (Box-Muller; the spare value is dropped to keep state one word).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Shuffles `xs` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }

    /// A generator derived from this one's seed and a stream number, leaving this one unchanged.
    pub fn fork(&self, stream: u64) -> Rng {
        let mut r = Rng {
            state: self.state ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
        };
        r.next_u64();
        r
    }
}

/// Python's `random.Random`: the Mersenne Twister (MT19937) seeded from an integer exactly as
/// CPython seeds it, with `sample` drawing exactly what `random.Random(seed).sample` draws. Used
/// where results must match a Python tool's seeded choices (lm-evaluation-harness picks
/// few-shot exemplars with `random.Random(1234).sample`).
#[derive(Clone)]
pub struct PyRandom {
    mt: Box<[u32; 624]>,
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PyRandom {{ index: {} }}", self.index)
    }
}

impl PyRandom {
    const N: usize = 624;

    /// `random.Random(seed)`: CPython's `init_by_array` over the 32-bit words of the seed.
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut mt = Box::new([0u32; 624]);
        mt[0] = 19_650_218;
        for i in 1..Self::N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..Self::N.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= Self::N {
                mt[0] = mt[Self::N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..Self::N - 1 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= Self::N {
                mt[0] = mt[Self::N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        PyRandom { mt, index: Self::N }
    }

    fn twist(&mut self) {
        let mt = &mut self.mt;
        for i in 0..Self::N {
            let y = (mt[i] & 0x8000_0000) | (mt[(i + 1) % Self::N] & 0x7fff_ffff);
            let mut v = mt[(i + 397) % Self::N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            mt[i] = v;
        }
        self.index = 0;
    }

    /// The next 32 random bits (`getrandbits(32)`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= Self::N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `_randbelow(n)` for `0 < n <= 2^32`: rejection sampling on `n.bit_length()` bits.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0 && n <= 1 << 32, "below({n}) is outside (0, 2^32]");
        let bits = 64 - n.leading_zeros();
        loop {
            let r = (self.next_u32() >> (32 - bits)) as u64;
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: `k` distinct indices in selection order (`k <= n`), by CPython's
    /// two strategies (a shrinking pool for small populations, rejection from a set otherwise).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample of {k} from {n}");
        let mut setsize = 21usize;
        if k > 5 {
            let e = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(e.ceil() as u32);
        }
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.below((n - i) as u64) as usize;
                    let picked = pool[j];
                    pool[j] = pool[n - i - 1];
                    picked
                })
                .collect()
        } else {
            let mut selected = std::collections::HashSet::new();
            (0..k)
                .map(|_| loop {
                    let j = self.below(n as u64) as usize;
                    if selected.insert(j) {
                        break j;
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers (checked against a C SplitMix64), which the Python benchmark scripts
    /// reproduce to draw the same splits, orders and augmentations.
    #[test]
    fn known_answers() {
        let mut r = Rng::new(1234);
        let first: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            first,
            [
                9205277389216419087,
                10027727657500863405,
                14222224912321523931,
                5175073792779407127,
                16044280219590115511
            ]
        );
        assert!((r.uniform() - 0.485078901631817).abs() < 1e-15);
        assert!((r.uniform() - 0.2793343410531841).abs() < 1e-15);
        let b: Vec<u64> = (0..5).map(|_| r.below(10)).collect();
        assert_eq!(b, [4, 9, 1, 8, 3]);
        assert_eq!(r.state, 14045505539758312699);
        assert_eq!(Rng::new(1337).fork(1).state, 2890246466487587628);
        let mut v: Vec<u32> = (0..10).collect();
        Rng::new(7).shuffle(&mut v);
        assert_eq!(v, [8, 1, 4, 6, 0, 7, 2, 5, 3, 9]);
    }

    /// Known answers from CPython 3 (`random.Random(seed)`), printed by python3 on this machine.
    #[test]
    fn python_random_matches_cpython() {
        let mut r = PyRandom::new(1234);
        let got: Vec<u32> = (0..5).map(|_| r.next_u32()).collect();
        assert_eq!(
            got,
            [4150886329, 3342196574, 1892932127, 501869158, 32175636]
        );
        assert_eq!(
            PyRandom::new(1234).sample(1870, 5),
            [1593, 902, 239, 15, 185]
        );
        let mut r = PyRandom::new(0);
        let got: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(got, [3626764237, 1654615998, 3255389356]);
        let mut r = PyRandom::new((1 << 40) + 5);
        let got: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(got, [2166296868, 2220160828, 1153647273]);
        let mut r = PyRandom::new(7);
        assert_eq!(r.sample(10, 10), [5, 2, 6, 9, 0, 7, 4, 1, 3, 8]);
        assert_eq!(
            r.sample(100, 30),
            [
                4, 11, 55, 53, 8, 30, 98, 70, 54, 7, 72, 15, 28, 80, 86, 74, 90, 73, 84, 50, 6, 87,
                5, 71, 17, 37, 96, 18, 69, 88
            ]
        );
    }

    #[test]
    fn normal_moments() {
        let mut r = Rng::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn below_in_range_and_uniform() {
        let mut r = Rng::new(7);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            counts[r.below(10) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }
}
