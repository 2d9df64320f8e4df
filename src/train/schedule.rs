//! Learning-rate schedule: linear warmup, then cosine decay to a floor (as nanoGPT).

use serde::{Deserialize, Serialize};

/// Warmup + cosine decay.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LrSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    /// Step at which the decay reaches `min_lr` (usually the total number of steps).
    pub decay_steps: usize,
}

impl LrSchedule {
    /// Learning rate for (0-based) step `it`.
    pub fn at(&self, it: usize) -> f64 {
        if it < self.warmup_steps {
            return self.lr * (it + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        if it > self.decay_steps || self.decay_steps <= self.warmup_steps {
            return self.min_lr;
        }
        let ratio = (it - self.warmup_steps) as f64 / (self.decay_steps - self.warmup_steps) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            decay_steps: 2000,
        };
        assert!((s.at(0) - 1e-3 / 101.0).abs() < 1e-15);
        assert!((s.at(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
        assert!((s.at(100) - 1e-3).abs() < 1e-15);
        assert!((s.at(1050) - 5.5e-4).abs() < 1e-12);
        assert!((s.at(2000) - 1e-4).abs() < 1e-15);
        assert_eq!(s.at(5000), 1e-4);
    }
}
