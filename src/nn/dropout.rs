//! Dropout (Srivastava et al., 2014) with masks drawn from our own seeded RNG, so a resumed run
//! draws exactly the masks the uninterrupted run would have.

use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::Tensor;

/// Zeroes each element with probability `p` in training and scales the rest by `1/(1-p)`.
/// The default, `p = 0`, is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dropout {
    pub p: f64,
}

impl Dropout {
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Config(format!(
                "dropout probability must be in [0, 1), got {p}"
            )));
        }
        Ok(Dropout { p })
    }

    /// Identity when `rng` is `None` (evaluation) or `p` is 0.
    pub fn forward(&self, x: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        let rng = match rng {
            Some(r) if self.p > 0.0 => r,
            _ => return Ok(x.clone()),
        };
        let scale = (1.0 / (1.0 - self.p)) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.uniform() < self.p { 0.0 } else { scale })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}
