//! Activation checkpointing (`train.gradient_checkpointing`): a layer run through [`layer`]
//! keeps only its inputs for the backward pass, not the activations inside it; the backward
//! pass runs the layer again from those inputs and backpropagates through the recomputed
//! graph. Memory then grows with the number of layers times one layer's input, plus one
//! layer's activations, instead of every layer's activations; the cost is a second forward
//! pass of each layer (about a third more compute per step).
//!
//! How it fits candle's autograd: the layer's output is a custom op of its inputs whose
//! forward returns the value computed with the graph discarded, and whose backward recomputes
//! the layer with the inputs as fresh variables and runs a nested backward pass. That nested
//! pass yields the gradients of the layer's inputs (returned to the outer graph) and of its
//! parameters, which candle's custom ops cannot return; those are kept on this thread until
//! the trainer collects them with [`take_param_grads`] and adds them to the step's gradients.
//!
//! Recomputation must see the same randomness: the layer's dropout generator is restored to
//! its state before the first pass, and the seeds drawn from ambient streams (adapter dropout,
//! through [`seed`]) are recorded and replayed.

use crate::rng::Rng;
use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape,
    Tensor, TensorId, Var,
};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// A layer as [`layer`] runs it: its inputs, and the dropout generator when training with
/// dropout.
pub type LayerFn = dyn Fn(&[Tensor], Option<&mut Rng>) -> Result<Tensor> + Send + Sync;

/// What the ambient seed draws do: pass through, record, or replay.
enum Tape {
    Off,
    Record(Vec<Option<u64>>),
    Replay(VecDeque<Option<u64>>),
}

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static TAPE: RefCell<Tape> = const { RefCell::new(Tape::Off) };
    static PARAM_GRADS: RefCell<HashMap<TensorId, Tensor>> = RefCell::new(HashMap::new());
    static RECOMPUTED: Cell<usize> = const { Cell::new(0) };
}

/// Turns checkpointing on for this thread until the guard drops (and clears gradients left
/// from an earlier, failed pass).
pub fn enable(on: bool) -> Enabled {
    PARAM_GRADS.with(|g| g.borrow_mut().clear());
    RECOMPUTED.with(|r| r.set(0));
    Enabled(ACTIVE.with(|a| a.replace(on)))
}

/// Restores the previous setting on drop.
pub struct Enabled(bool);

impl Drop for Enabled {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// Whether layers run through [`layer`] are checkpointed on this thread.
pub fn active() -> bool {
    ACTIVE.with(|a| a.get())
}

/// A seed drawn by `draw` from a stream outside the layer's own generator (adapter dropout):
/// recorded during a checkpointed layer's first pass and replayed when it is recomputed.
pub fn seed(draw: impl FnOnce() -> Option<u64>) -> Option<u64> {
    TAPE.with(|t| match &mut *t.borrow_mut() {
        Tape::Off => draw(),
        Tape::Record(v) => {
            let s = draw();
            v.push(s);
            s
        }
        Tape::Replay(q) => q.pop_front().flatten(),
    })
}

/// Runs `f` with the tape set to `tape`, returning what it recorded.
fn with_tape<T>(tape: Tape, f: impl FnOnce() -> T) -> (T, Tape) {
    let prev = TAPE.with(|t| t.replace(tape));
    let out = f();
    (out, TAPE.with(|t| t.replace(prev)))
}

/// How many layers were recomputed on this thread since the last [`enable`].
pub fn recomputed() -> usize {
    RECOMPUTED.with(|r| r.get())
}

/// The parameter gradients the recomputed layers produced since [`enable`] (or the last
/// call), by parameter; the caller adds them to the gradients of its backward pass.
pub fn take_param_grads() -> HashMap<TensorId, Tensor> {
    PARAM_GRADS.with(|g| std::mem::take(&mut *g.borrow_mut()))
}

/// Adds [`take_param_grads`] into `grads`.
pub fn merge_param_grads(grads: &mut GradStore) -> Result<()> {
    for (id, g) in take_param_grads() {
        let sum = match grads.get_id(id) {
            Some(prev) => (prev + g)?.detach(),
            None => g,
        };
        grads.insert_id(id, sum);
    }
    Ok(())
}

/// One layer, `f(inputs, rng)`: run directly when checkpointing is off, else with only
/// `inputs` kept for the backward pass (see the module's documentation). At most three
/// inputs; the layer's output must not alias them.
pub fn layer<F>(inputs: &[&Tensor], rng: Option<&mut Rng>, f: F) -> Result<Tensor>
where
    F: Fn(&[Tensor], Option<&mut Rng>) -> Result<Tensor> + Send + Sync + 'static,
{
    let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    if !active() || !owned.iter().all(|t| t.device().is_cpu()) {
        return f(&owned, rng);
    }
    if inputs.len() > 3 {
        return Err(crate::Error::Config(
            "a checkpointed layer takes at most three inputs".into(),
        ));
    }
    let detached: Vec<Tensor> = owned.iter().map(Tensor::detach).collect();
    let snapshot = rng.as_deref().copied();
    let (y, tape) = with_tape(Tape::Record(Vec::new()), || f(&detached, rng));
    let y = y?;
    let seeds = match tape {
        Tape::Record(v) => v.into(),
        _ => VecDeque::new(),
    };
    let any_input = owned.iter().any(Tensor::track_op);
    if !any_input && !y.track_op() {
        // Nothing in or under this layer trains: no graph to keep.
        return Ok(y);
    }
    // The value only: dropping `y` frees the layer's graph and activations.
    let value = y.detach();
    drop(y);
    let op = Checkpoint {
        f: Arc::new(f),
        rng: snapshot,
        seeds,
        value: Mutex::new(Some(value)),
        inputs: owned.len(),
    };
    let mut args = owned;
    if !any_input {
        // The output must stay in the graph for the parameters' sake: tie it to a variable
        // that takes no gradient of its own.
        args.push(
            Var::zeros(1, DType::F32, args[0].device())?
                .as_tensor()
                .clone(),
        );
    }
    Ok(match args.as_slice() {
        [a] => a.apply_op1(op)?,
        [a, b] => a.apply_op2(b, op)?,
        [a, b, c] => a.apply_op3(b, c, op)?,
        _ => unreachable!("one to three arguments"),
    })
}

/// The checkpointed layer as a custom op of its inputs.
struct Checkpoint {
    f: Arc<LayerFn>,
    rng: Option<Rng>,
    seeds: VecDeque<Option<u64>>,
    /// The output computed at construction, handed to the forward (once).
    value: Mutex<Option<Tensor>>,
    /// How many of the op's arguments are the layer's inputs (the rest is the anchor).
    inputs: usize,
}

impl Checkpoint {
    fn output(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self
            .value
            .lock()
            .expect("checkpoint value")
            .take()
            .ok_or_else(|| candle_core::Error::Msg("checkpoint: output already taken".into()))?;
        let shape = y.shape().clone();
        let flat = y.flatten_all()?;
        let s = match y.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1()?),
            DType::F64 => CpuStorage::F64(flat.to_vec1()?),
            DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
            DType::F16 => CpuStorage::F16(flat.to_vec1()?),
            d => candle_core::bail!("checkpoint: a layer's output of type {d:?}"),
        };
        Ok((s, shape))
    }

    /// Recomputes the layer from `args` and backpropagates `grad` through it: the gradients of
    /// the tracked inputs (returned) and of the parameters (kept for the trainer).
    fn backward(
        &self,
        args: &[&Tensor],
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let args = &args[..self.inputs];
        let mut vars: Vec<Option<Var>> = Vec::with_capacity(args.len());
        let mut xs = Vec::with_capacity(args.len());
        for a in args {
            if a.track_op() {
                let v = Var::from_tensor(&a.detach())?;
                xs.push(v.as_tensor().clone());
                vars.push(Some(v));
            } else {
                xs.push(a.detach());
                vars.push(None);
            }
        }
        RECOMPUTED.with(|r| r.set(r.get() + 1));
        let mut rng = self.rng;
        let _off = enable_nested();
        let (y, _) = with_tape(Tape::Replay(self.seeds.clone()), || {
            (self.f)(&xs, rng.as_mut())
        });
        let y = y.map_err(|e| candle_core::Error::Msg(format!("checkpoint recompute: {e}")))?;
        let mut grads = y.apply_op1(SeedGrad(grad.detach()))?.backward()?;
        let input_grads = vars
            .iter()
            .map(|v| v.as_ref().and_then(|v| grads.remove(v.as_tensor())))
            .collect();
        PARAM_GRADS.with(|pg| -> candle_core::Result<()> {
            let mut pg = pg.borrow_mut();
            let ids: Vec<TensorId> = grads.get_ids().copied().collect();
            for id in ids {
                let g = grads.get_id(id).expect("listed").detach();
                let sum = match pg.remove(&id) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                pg.insert(id, sum);
            }
            Ok(())
        })?;
        Ok(input_grads)
    }
}

/// Checkpointing off while a layer is recomputed (a layer inside it is not checkpointed
/// again), restored after.
fn enable_nested() -> Enabled {
    Enabled(ACTIVE.with(|a| a.replace(false)))
}

impl CustomOp1 for Checkpoint {
    fn name(&self) -> &'static str {
        "checkpoint"
    }
    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output()
    }
    fn bwd(&self, a: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.backward(&[a], grad)?.remove(0))
    }
}

impl CustomOp2 for Checkpoint {
    fn name(&self) -> &'static str {
        "checkpoint"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[a, b], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for Checkpoint {
    fn name(&self) -> &'static str {
        "checkpoint"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[a, b, c], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// A scalar whose gradient with respect to its input is the given tensor: starts a backward
/// pass from an arbitrary output gradient without an extra product and sum.
struct SeedGrad(Tensor);

impl CustomOp1 for SeedGrad {
    fn name(&self) -> &'static str {
        "checkpoint-seed-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let zero = match s.dtype() {
            DType::F32 => CpuStorage::F32(vec![0.0]),
            DType::F64 => CpuStorage::F64(vec![0.0]),
            DType::BF16 => CpuStorage::BF16(vec![half::bf16::ZERO]),
            DType::F16 => CpuStorage::F16(vec![half::f16::ZERO]),
            d => candle_core::bail!("checkpoint: a layer's output of type {d:?}"),
        };
        Ok((zero, Shape::from(())))
    }
    fn bwd(
        &self,
        a: &Tensor,
        _res: &Tensor,
        _grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.to_dtype(a.dtype())?))
    }
}
