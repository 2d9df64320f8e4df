//! Dropout (Srivastava et al., 2014) with masks drawn from our own seeded RNG, so a resumed run
//! draws exactly the masks the uninterrupted run would have.

use crate::nn::kernels::dropout::{dropout, DropoutOp};
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
        // One draw per call: the mask is a counter-based stream from it, drawn in parallel
        // and regenerated in backward rather than stored.
        let op = DropoutOp {
            p: self.p,
            seed: rng.next_u64(),
        };
        dropout(x, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn drops_at_rate_p_and_keeps_the_mean() {
        let n = 200_000;
        for p in [0.1, 0.5] {
            let d = Dropout::new(p).unwrap();
            let mut rng = Rng::new(7);
            let x = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
            let y: Vec<f32> = d.forward(&x, Some(&mut rng)).unwrap().to_vec1().unwrap();
            let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
            // Binomial standard deviation sqrt(p(1-p)/n) is about 1e-3: 5 sigma.
            assert!((zeros - p).abs() < 5e-3, "p {p}: dropped {zeros}");
            let kept = 1.0 / (1.0 - p) as f32;
            assert!(y.iter().all(|&v| v == 0.0 || (v - kept).abs() < 1e-6));
            let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            assert!((mean - 1.0).abs() < 0.02, "p {p}: mean {mean}");
            // Neighbouring elements (and chunk borders) are independent: the rate of both of
            // a pair dropped is p^2.
            let both =
                y.chunks(2).filter(|c| c[0] == 0.0 && c[1] == 0.0).count() as f64 / (n / 2) as f64;
            assert!((both - p * p).abs() < 6e-3, "p {p}: pairs {both}");
        }
    }

    #[test]
    fn masks_follow_the_generator_and_the_gradient_is_masked() {
        let d = Dropout::new(0.3).unwrap();
        let x = Var::new(&[1f32, 2., 3., 4., 5., 6., 7., 8.], &Device::Cpu).unwrap();
        let (mut a, mut b) = (Rng::new(1), Rng::new(1));
        let y1 = d.forward(&x, Some(&mut a)).unwrap();
        let y2 = d.forward(&x, Some(&mut b)).unwrap();
        // The same generator state draws the same mask; each call advances it.
        assert_eq!(y1.to_vec1::<f32>().unwrap(), y2.to_vec1::<f32>().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, Rng::new(1));
        let y3 = d.forward(&x, Some(&mut a)).unwrap();
        assert_ne!(y3.to_vec1::<f32>().unwrap(), y1.to_vec1::<f32>().unwrap());
        // d y / d x is the mask itself.
        let g = y1.sum_all().unwrap().backward().unwrap();
        let gx = g.get(&x).unwrap().to_vec1::<f32>().unwrap();
        let ys = y1.to_vec1::<f32>().unwrap();
        for (i, (&gi, &yi)) in gx.iter().zip(&ys).enumerate() {
            assert!((gi * (i + 1) as f32 - yi).abs() < 1e-5);
        }
        // Evaluation and p = 0 are the identity.
        let id = d.forward(&x, None).unwrap();
        assert_eq!(id.to_vec1::<f32>().unwrap(), x.to_vec1::<f32>().unwrap());
        let z = Dropout::default().forward(&x, Some(&mut a)).unwrap();
        assert_eq!(z.to_vec1::<f32>().unwrap(), x.to_vec1::<f32>().unwrap());
        assert!(Dropout::new(1.0).is_err() && Dropout::new(-0.1).is_err());
    }
}
