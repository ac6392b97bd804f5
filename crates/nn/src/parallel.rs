//! Data-parallel training, the layer library's part (PyTorch's DistributedDataParallel): every
//! rank holds the same model, takes its shard of each batch, and before each optimizer step the
//! gradients are summed over the ranks, each weighted by the share of the batch its loss
//! covered, so every rank takes the step one process would take on the whole batch.
//!
//! - [`Collective`] is what carries the sums between ranks: MPI in the `kiln` binary (its
//!   `distributed` feature), or [`thread_group`] for ranks that are threads of one process
//!   (the tests). It knows nothing of tensors.
//! - [`Communicator`] runs a `Collective` on a thread of its own and takes requests in the
//!   order they come, so a rank can start summing a bucket of gradients and go on with the
//!   backward pass; every rank makes the same requests in the same order, as MPI requires.
//! - [`DataParallel`] is what a trainer holds: [`DataParallel::backward`] (gradients averaged
//!   in buckets, each bucket sent as soon as its gradients are final), [`DataParallel::sum`]
//!   (a differentiable sum over the ranks, which synchronised batch norm is built from),
//!   weighted means of logged metrics, and a checksum check that the replicas agree.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kiln_tensor::{no_grad, CustomBackward, DType, Device, Gradients, Tensor, TensorId, Var};

use crate::{NnError, Result};

/// Numbers summed over the ranks.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The operations between the ranks of a data-parallel run. Every rank calls the same ones,
/// with values of the same lengths, in the same order. A [`Communicator`] makes its collective
/// on its own thread and calls it only there.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces `values` with their elementwise sum over the ranks: the same bits on every rank.
    fn sum(&mut self, values: &mut Values) -> std::result::Result<(), String>;
    /// Every rank's `value`, in rank order.
    fn gather(&mut self, value: u64) -> std::result::Result<Vec<u64>, String>;
}

enum Job {
    Sum(Values, Sender<std::result::Result<Values, String>>),
    Gather(u64, Sender<std::result::Result<Vec<u64>, String>>),
}

struct Worker {
    rank: usize,
    world_size: usize,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread, which drops the collective there (MPI_Finalize).
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// A [`Collective`] on a thread of its own, taking requests in order; cheap to clone. The
/// collective is made on that thread (MPI's funneled threading: one thread calls MPI) and
/// dropped there when the last clone goes.
#[derive(Clone)]
pub struct Communicator(Arc<Worker>);

/// A sum started with [`Communicator::start_sum`].
pub struct PendingSum(Receiver<std::result::Result<Values, String>>);

impl PendingSum {
    /// Waits for the sum.
    pub fn wait(self) -> Result<Values> {
        collective_result(self.0.recv())
    }
}

fn collective_result<T>(
    reply: std::result::Result<std::result::Result<T, String>, std::sync::mpsc::RecvError>,
) -> Result<T> {
    match reply {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(NnError::Collective(message)),
        Err(_) => Err(NnError::Collective(
            "the communication thread has stopped".into(),
        )),
    }
}

impl Communicator {
    /// Starts the thread and makes the collective on it with `make`.
    pub fn spawn(
        make: impl FnOnce() -> std::result::Result<Box<dyn Collective>, String> + Send + 'static,
    ) -> Result<Communicator> {
        let (jobs, queue) = channel::<Job>();
        let (ready, started) = channel();
        let thread = std::thread::Builder::new()
            .name("kiln-collective".into())
            .spawn(move || {
                let mut collective = match make() {
                    Ok(collective) => {
                        let _ = ready.send(Ok((collective.rank(), collective.world_size())));
                        collective
                    }
                    Err(message) => {
                        let _ = ready.send(Err(message));
                        return;
                    }
                };
                for job in queue {
                    match job {
                        Job::Sum(mut values, reply) => {
                            let done = collective.sum(&mut values).map(|()| values);
                            let _ = reply.send(done);
                        }
                        Job::Gather(value, reply) => {
                            let _ = reply.send(collective.gather(value));
                        }
                    }
                }
            })
            .map_err(|e| NnError::Collective(format!("cannot start its thread: {e}")))?;
        let (rank, world_size) = collective_result(started.recv())?;
        Ok(Communicator(Arc::new(Worker {
            rank,
            world_size,
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })))
    }

    pub fn rank(&self) -> usize {
        self.0.rank
    }

    pub fn world_size(&self) -> usize {
        self.0.world_size
    }

    fn submit(&self, job: Job) -> Result<()> {
        let jobs = self.0.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let sent = jobs.as_ref().map(|jobs| jobs.send(job).is_ok());
        match sent {
            Some(true) => Ok(()),
            _ => Err(NnError::Collective(
                "the communication thread has stopped".into(),
            )),
        }
    }

    /// Starts summing `values` over the ranks; the work goes on while the caller does.
    pub fn start_sum(&self, values: Values) -> Result<PendingSum> {
        let (reply, answer) = channel();
        self.submit(Job::Sum(values, reply))?;
        Ok(PendingSum(answer))
    }

    /// `values` summed over the ranks.
    pub fn sum(&self, values: Values) -> Result<Values> {
        self.start_sum(values)?.wait()
    }

    /// Every rank's `value`, in rank order.
    pub fn gather(&self, value: u64) -> Result<Vec<u64>> {
        let (reply, answer) = channel();
        self.submit(Job::Gather(value, reply))?;
        collective_result(answer.recv())
    }
}

/// `world_size` ranks that are threads of one process, meeting in memory: hand one to each
/// thread (through [`Communicator::spawn`]). Sums add the ranks' values in rank order.
pub fn thread_group(world_size: usize) -> Vec<Box<dyn Collective + Send>> {
    let meeting = Arc::new(Meeting {
        world_size,
        state: Mutex::new(Round {
            generation: 0,
            arrived: vec![None; world_size],
            count: 0,
            done: Arc::new(Vec::new()),
        }),
        turn: Condvar::new(),
    });
    (0..world_size)
        .map(|rank| {
            Box::new(ThreadRank {
                rank,
                meeting: meeting.clone(),
            }) as Box<dyn Collective + Send>
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Contribution {
    Values(Values),
    Word(u64),
}

struct Round {
    generation: u64,
    arrived: Vec<Option<Contribution>>,
    count: usize,
    /// The last completed round's contributions, in rank order.
    done: Arc<Vec<Contribution>>,
}

struct Meeting {
    world_size: usize,
    state: Mutex<Round>,
    turn: Condvar,
}

struct ThreadRank {
    rank: usize,
    meeting: Arc<Meeting>,
}

impl ThreadRank {
    /// Every rank's contribution to this round, once all have given theirs. The next round
    /// cannot end before every rank has joined it, so `done` is still this round's when read.
    fn meet(&self, mine: Contribution) -> Arc<Vec<Contribution>> {
        let meeting = &self.meeting;
        let mut round = meeting.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = round.generation;
        round.arrived[self.rank] = Some(mine);
        round.count += 1;
        if round.count == meeting.world_size {
            let all: Vec<Contribution> =
                round.arrived.iter_mut().filter_map(|c| c.take()).collect();
            round.done = Arc::new(all);
            round.count = 0;
            round.generation += 1;
            meeting.turn.notify_all();
        } else {
            while round.generation == generation {
                round = meeting.turn.wait(round).unwrap_or_else(|e| e.into_inner());
            }
        }
        round.done.clone()
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.meeting.world_size
    }

    fn sum(&mut self, values: &mut Values) -> std::result::Result<(), String> {
        let all = self.meet(Contribution::Values(values.clone()));
        let mut total = match &all[0] {
            Contribution::Values(first) => first.clone(),
            Contribution::Word(_) => return Err("ranks disagree on the operation".into()),
        };
        for other in &all[1..] {
            match (&mut total, other) {
                (Values::F32(total), Contribution::Values(Values::F32(v)))
                    if v.len() == total.len() =>
                {
                    total.iter_mut().zip(v).for_each(|(t, x)| *t += x)
                }
                (Values::F64(total), Contribution::Values(Values::F64(v)))
                    if v.len() == total.len() =>
                {
                    total.iter_mut().zip(v).for_each(|(t, x)| *t += x)
                }
                _ => return Err("ranks summed values of different kinds or lengths".into()),
            }
        }
        *values = total;
        Ok(())
    }

    fn gather(&mut self, value: u64) -> std::result::Result<Vec<u64>, String> {
        let all = self.meet(Contribution::Word(value));
        all.iter()
            .map(|c| match c {
                Contribution::Word(w) => Ok(*w),
                Contribution::Values(_) => Err("ranks disagree on the operation".to_string()),
            })
            .collect()
    }
}

/// The rows of a whole batch one step takes: `len` rows from `start` of a batch of `global`
/// images (in a data-parallel run, this rank's shard; else the whole batch). A family draws
/// its noise for the whole batch and [`Rows::take`]s its rows, so the ranks together draw
/// what one process would, and a checkpoint's noise stream is the same whatever the number of
/// ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    pub global: usize,
    pub start: usize,
    pub len: usize,
}

impl Rows {
    /// All `n` rows of a batch.
    pub fn whole(n: usize) -> Rows {
        Rows {
            global: n,
            start: 0,
            len: n,
        }
    }

    /// Rows `start..start + len` of a batch of `global`: at least one, inside the batch.
    pub fn new(global: usize, start: usize, len: usize) -> Result<Rows> {
        if len == 0 || start + len > global {
            return Err(NnError::invalid(
                "step",
                format!(
                    "rows {start}..{} are not a shard of a batch of {global}",
                    start + len
                ),
            ));
        }
        Ok(Rows { global, start, len })
    }

    /// This shard's share of the batch, the weight of its mean loss in the batch's.
    pub fn share(&self) -> f64 {
        self.len as f64 / self.global as f64
    }

    /// This shard's rows of a tensor `[global, ..]` drawn for the whole batch.
    pub fn take(&self, whole: Tensor) -> Result<Tensor> {
        if self.len == self.global {
            return Ok(whole);
        }
        Ok(whole.narrow(0, self.start, self.len)?)
    }
}

/// The gradients of `loss` (a mean over `rows`) for `params` only (the graph's other leaves,
/// as a discriminator's in its generator's step, get none computed): the whole batch's,
/// summed over the ranks, in a data-parallel run; else `loss.backward_for(params)`'s.
pub fn gradients(
    parallel: Option<&DataParallel>,
    loss: &Tensor,
    params: &[(String, Var)],
    rows: Rows,
) -> Result<Gradients> {
    match parallel {
        Some(parallel) => parallel.backward(loss, params, rows.share()),
        None => {
            let leaves: Vec<&Tensor> = params.iter().map(|(_, var)| var.as_tensor()).collect();
            Ok(loss.backward_for(&leaves)?)
        }
    }
}

/// After a step of a data-parallel run whose batch norm is per rank: every rank takes rank
/// 0's buffers of `stores` (the running statistics), as DDP broadcasts them. Nothing to do
/// with synchronised batch norm (the statistics are the same everywhere) or one process.
pub fn settle_buffers(
    parallel: Option<&DataParallel>,
    stores: &[&crate::ParamStore],
) -> Result<()> {
    match parallel.filter(|p| !p.syncs_batch_norm()) {
        Some(parallel) => {
            let buffers: Vec<(String, Var)> = stores.iter().flat_map(|s| s.buffers()).collect();
            parallel.copy_from_first(&buffers)
        }
        None => Ok(()),
    }
}

/// Sums of tensors on one device over the ranks without passing through the host: NCCL
/// between GPUs (the binary's `distributed` feature wraps kiln-tensor's `cuda::nccl`). The
/// sums are queued in order on the device, so every rank must queue the same ones in the
/// same order, as with a [`Collective`].
pub trait DeviceSum: Send + Sync {
    /// The device whose tensors this sums.
    fn device(&self) -> Device;
    /// `x` (f32 or f64) summed over the ranks, as a new tensor of its shape.
    fn sum(&self, x: &Tensor) -> kiln_tensor::Result<Tensor>;
}

/// Bytes of gradients per bucket: a bucket is sent as soon as it is full, while the backward
/// pass goes on (PyTorch's DDP: 25 MiB, its first bucket 1 MiB).
pub const DEFAULT_BUCKET_BYTES: usize = 1 << 20;

/// A trainer's handle on a data-parallel run: cheap to clone.
#[derive(Clone)]
pub struct DataParallel {
    communicator: Communicator,
    /// Sums of the tensors on one device (a GPU) without the host, if any.
    device_sum: Option<Arc<dyn DeviceSum>>,
    sync_batch_norm: bool,
    bucket_bytes: usize,
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("rank", &self.rank())
            .field("world_size", &self.world_size())
            .field("sync_batch_norm", &self.sync_batch_norm)
            .finish()
    }
}

impl DataParallel {
    /// Over `communicator`; batch norm keeps per-rank statistics unless `sync_batch_norm`.
    pub fn new(communicator: Communicator, sync_batch_norm: bool) -> DataParallel {
        DataParallel {
            communicator,
            device_sum: None,
            sync_batch_norm,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    /// The same run with the gradients and batch-norm sums of tensors on `device_sum`'s
    /// device summed there (NCCL), not through the host.
    pub fn with_device_sum(mut self, device_sum: Arc<dyn DeviceSum>) -> DataParallel {
        self.device_sum = Some(device_sum);
        self
    }

    /// How tensors on `device` are summed: on the device when it has a [`DeviceSum`].
    fn summer(&self, device: Device) -> Summer {
        match &self.device_sum {
            Some(sum) if sum.device() == device => Summer::Device(sum.clone()),
            _ => Summer::Host(self.communicator.clone()),
        }
    }

    /// The same run with buckets of `bytes` (at least one gradient each).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> DataParallel {
        self.bucket_bytes = bytes;
        self
    }

    pub fn rank(&self) -> usize {
        self.communicator.rank()
    }

    pub fn world_size(&self) -> usize {
        self.communicator.world_size()
    }

    pub fn communicator(&self) -> &Communicator {
        &self.communicator
    }

    pub fn syncs_batch_norm(&self) -> bool {
        self.sync_batch_norm
    }

    /// The gradients of `loss` for `params`, summed over the ranks with each rank's scaled by
    /// `weight` (the share of the whole batch its loss is the mean over: rows / global rows),
    /// so each is the gradient of the whole batch's mean loss. Gradients are sent in buckets
    /// of about [`DEFAULT_BUCKET_BYTES`] as soon as the backward pass has finished them; the
    /// gradients of other leaves are left out. f64 gradients are summed in f64, others in f32.
    pub fn backward(
        &self,
        loss: &Tensor,
        params: &[(String, Var)],
        weight: f64,
    ) -> Result<Gradients> {
        let index: HashMap<TensorId, usize> = params
            .iter()
            .enumerate()
            .map(|(i, (_, var))| (var.as_tensor().id(), i))
            .collect();
        let mut buckets = Buckets::new(self, weight);
        let leaves: Vec<&Tensor> = params.iter().map(|(_, var)| var.as_tensor()).collect();
        let mut grads =
            loss.backward_observed(&leaves, &mut |leaf, grad| match index.get(&leaf.id()) {
                Some(&i) => buckets
                    .add(i, grad)
                    .map_err(|e| kiln_tensor::Error::Invalid {
                        op: "all_reduce",
                        message: e.to_string(),
                    }),
                None => Ok(()),
            })?;
        for (i, summed) in buckets.finish()? {
            grads.insert(&params[i].1, summed);
        }
        let mut ours = Gradients::default();
        for (_, var) in params {
            if let Some(grad) = grads.remove(var) {
                ours.insert(var, grad);
            }
        }
        Ok(ours)
    }

    /// `x` summed over the ranks, differentiably: the gradient reaching each rank's `x` is the
    /// sum of every rank's gradient of the result (each rank's loss depends on every rank's
    /// `x`). Through the host; f64 stays f64, other dtypes sum in f32.
    pub fn sum(&self, x: &Tensor) -> Result<Tensor> {
        let summer = self.summer(x.device());
        let total = no_grad(|| summer.sum(x))?;
        Ok(x.custom_unary(&total, Arc::new(SumBackward(summer)))?)
    }

    /// The means of `values` over the whole batch, from each rank's means over its shard
    /// weighted by its share `weight` of the batch: a logged loss of the whole batch.
    pub fn weighted_mean(&self, values: &[f64], weight: f64) -> Result<Vec<f64>> {
        let scaled = values.iter().map(|v| v * weight).collect();
        match self.communicator.sum(Values::F64(scaled))? {
            Values::F64(sums) => Ok(sums),
            Values::F32(_) => Err(NnError::Collective("a sum changed its type".into())),
        }
    }

    /// Gives every rank rank 0's values of `vars` (batch norm's running statistics, when
    /// each rank normalises with its own shard's: PyTorch's DDP broadcasts them likewise), so
    /// the replicas stay identical. A sum of rank 0's values and the others' zeros.
    pub fn copy_from_first(&self, vars: &[(String, Var)]) -> Result<()> {
        if vars.is_empty() {
            return Ok(());
        }
        let scale = if self.rank() == 0 { 1.0 } else { 0.0 };
        let mut flat = Values::F64(Vec::new());
        for (_, var) in vars {
            if let (Values::F64(all), Values::F64(v)) =
                (&mut flat, to_values(&var.to_dtype(DType::F64)?, scale)?)
            {
                all.extend(v);
            }
        }
        let Values::F64(summed) = self.communicator.sum(flat)? else {
            return Err(NnError::Collective("a sum changed its type".into()));
        };
        let mut at = 0;
        for (_, var) in vars {
            let n = var.elem_count();
            let part = Values::F64(summed[at..at + n].to_vec());
            at += n;
            var.set(&from_values(part, var.as_tensor())?)?;
        }
        Ok(())
    }

    /// Whether any rank says `yes` (a rank stopping makes them all stop at the same step).
    pub fn any(&self, yes: bool) -> Result<bool> {
        Ok(self.communicator.gather(u64::from(yes))?.contains(&1))
    }

    /// Refuses, naming the first rank that differs, replicas whose `tensors` are not
    /// bit-identical to rank 0's (a checksum of each rank's tensors, gathered).
    pub fn check_replicas(&self, tensors: &[(String, Tensor)], what: &str) -> Result<()> {
        let mine = checksum(tensors)?;
        let all = self.communicator.gather(mine)?;
        match all.iter().position(|&c| c != all[0]) {
            None => Ok(()),
            Some(rank) => Err(NnError::Collective(format!(
                "rank {rank}'s {what} differ from rank 0's (checksum {:016x} against {:016x}): \
                 the ranks must start from the same seed and checkpoint and stay in step",
                all[rank], all[0]
            ))),
        }
    }

    /// Batch norm in training mode uses the whole batch's statistics on this thread until
    /// the guard is dropped, when the run synchronises batch norm (else nothing changes).
    pub fn batch_norm_scope(&self) -> BatchNormScope {
        let previous = self
            .sync_batch_norm
            .then(|| SYNC_BATCH_NORM.with(|current| current.borrow_mut().replace(self.clone())));
        BatchNormScope {
            previous,
            active: self.sync_batch_norm,
        }
    }
}

/// FNV-1a over the names, dtypes, shapes and bytes of `tensors`.
fn checksum(tensors: &[(String, Tensor)]) -> Result<u64> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, tensor) in tensors {
        feed(name.as_bytes());
        feed(format!("{:?}{:?}", tensor.dtype(), tensor.dims()).as_bytes());
        let bits = tensor
            .reshape([tensor.elem_count()])?
            .to_dtype(DType::F64)?
            .to_vec::<f64>()?;
        for v in bits {
            feed(&v.to_bits().to_le_bytes());
        }
    }
    Ok(hash)
}

thread_local! {
    static SYNC_BATCH_NORM: RefCell<Option<DataParallel>> = const { RefCell::new(None) };
}

/// The run batch norm synchronises over on this thread, if any (see
/// [`DataParallel::batch_norm_scope`]).
pub fn synchronised_batch_norm() -> Option<DataParallel> {
    SYNC_BATCH_NORM.with(|current| current.borrow().clone())
}

/// Restores the previous batch-norm setting of the thread when dropped.
pub struct BatchNormScope {
    previous: Option<Option<DataParallel>>,
    active: bool,
}

impl Drop for BatchNormScope {
    fn drop(&mut self) {
        if self.active {
            let previous = self.previous.take().flatten();
            SYNC_BATCH_NORM.with(|current| *current.borrow_mut() = previous);
        }
    }
}

/// How a tensor is summed over the ranks: through the host and the [`Communicator`], or on
/// its device.
#[derive(Clone)]
enum Summer {
    Host(Communicator),
    Device(Arc<dyn DeviceSum>),
}

impl Summer {
    /// `x` summed over the ranks, as a new untracked tensor of its shape, dtype and device.
    fn sum(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Summer::Host(communicator) => {
                let summed = communicator.sum(to_values(x, 1.0)?)?;
                from_values(summed, x)
            }
            Summer::Device(device) => {
                let wide = match x.dtype() {
                    DType::F64 | DType::F32 => x.clone(),
                    _ => x.to_dtype(DType::F32)?,
                };
                Ok(device.sum(&wide)?.to_dtype(x.dtype())?)
            }
        }
    }
}

/// `x`'s elements, times `scale`, flattened for sending: f64 as f64, the rest as f32.
fn to_values(x: &Tensor, scale: f64) -> Result<Values> {
    let flat = x.reshape([x.elem_count()])?;
    Ok(if x.dtype() == DType::F64 {
        let mut v = flat.to_vec::<f64>()?;
        if scale != 1.0 {
            v.iter_mut().for_each(|x| *x *= scale);
        }
        Values::F64(v)
    } else {
        let mut v = flat.to_dtype(DType::F32)?.to_vec::<f32>()?;
        if scale != 1.0 {
            let scale = scale as f32;
            v.iter_mut().for_each(|x| *x *= scale);
        }
        Values::F32(v)
    })
}

/// `values` as a tensor like `like` (its shape, dtype and device).
fn from_values(values: Values, like: &Tensor) -> Result<Tensor> {
    let device = like.device();
    let tensor = match values {
        Values::F32(v) => Tensor::from_vec(v, like.shape().clone(), device)?,
        Values::F64(v) => Tensor::from_vec(v, like.shape().clone(), device)?,
    };
    Ok(tensor.to_dtype(like.dtype())?)
}

/// The backward rule of [`DataParallel::sum`]: the gradients summed over the ranks.
struct SumBackward(Summer);

impl CustomBackward for SumBackward {
    fn name(&self) -> &'static str {
        "sum over ranks"
    }

    fn backward(&self, grad: &Tensor) -> kiln_tensor::Result<Tensor> {
        self.0.sum(grad).map_err(|e| kiln_tensor::Error::Invalid {
            op: "all_reduce",
            message: e.to_string(),
        })
    }
}

/// Gradients on their way: filled in the order the backward pass finishes them, each bucket
/// sent when full.
struct Buckets<'a> {
    parallel: &'a DataParallel,
    weight: f64,
    /// The gradients not yet sent, by dtype kind (f64 or not): (parameter index, gradient).
    open: [Vec<(usize, Tensor)>; 2],
    open_bytes: [usize; 2],
    sent: Vec<(Vec<(usize, Tensor)>, Sent)>,
}

/// A bucket's sum on its way: from the communication thread, or queued on the device.
enum Sent {
    Host(PendingSum),
    Device(Tensor),
}

impl<'a> Buckets<'a> {
    fn new(parallel: &'a DataParallel, weight: f64) -> Buckets<'a> {
        Buckets {
            parallel,
            weight,
            open: [Vec::new(), Vec::new()],
            open_bytes: [0, 0],
            sent: Vec::new(),
        }
    }

    fn add(&mut self, index: usize, grad: &Tensor) -> Result<()> {
        let kind = usize::from(grad.dtype() == DType::F64);
        self.open_bytes[kind] += grad.elem_count() * if kind == 1 { 8 } else { 4 };
        self.open[kind].push((index, grad.clone()));
        if self.open_bytes[kind] >= self.parallel.bucket_bytes {
            self.send(kind)?;
        }
        Ok(())
    }

    fn send(&mut self, kind: usize) -> Result<()> {
        let grads = std::mem::take(&mut self.open[kind]);
        self.open_bytes[kind] = 0;
        if grads.is_empty() {
            return Ok(());
        }
        let device = grads[0].1.device();
        if let Summer::Device(sum) = self.parallel.summer(device) {
            if grads.iter().all(|(_, g)| g.device() == device) {
                // One flat tensor on the device, scaled as it is made, summed there.
                let dtype = if kind == 1 { DType::F64 } else { DType::F32 };
                let parts = grads
                    .iter()
                    .map(|(_, g)| {
                        g.reshape([g.elem_count()])?
                            .to_dtype(dtype)?
                            .mul_scalar(self.weight)
                    })
                    .collect::<kiln_tensor::Result<Vec<Tensor>>>()?;
                let flat = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)?;
                let summed = sum.sum(&flat)?;
                self.sent.push((grads, Sent::Device(summed)));
                return Ok(());
            }
        }
        let mut flat = match kind {
            1 => Values::F64(Vec::new()),
            _ => Values::F32(Vec::new()),
        };
        for (_, grad) in &grads {
            match (&mut flat, to_values(grad, self.weight)?) {
                (Values::F32(all), Values::F32(v)) => all.extend(v),
                (Values::F64(all), Values::F64(v)) => all.extend(v),
                _ => unreachable!("a bucket holds one kind"),
            }
        }
        let pending = self.parallel.communicator.start_sum(flat)?;
        self.sent.push((grads, Sent::Host(pending)));
        Ok(())
    }

    /// Sends what is left and waits for every sum: (parameter index, summed gradient).
    fn finish(mut self) -> Result<Vec<(usize, Tensor)>> {
        self.send(0)?;
        self.send(1)?;
        let mut summed = Vec::new();
        for (grads, sent) in self.sent {
            let mut at = 0;
            match sent {
                Sent::Host(pending) => {
                    let values = pending.wait()?;
                    for (index, grad) in grads {
                        let n = grad.elem_count();
                        let part = match &values {
                            Values::F32(v) => Values::F32(v[at..at + n].to_vec()),
                            Values::F64(v) => Values::F64(v[at..at + n].to_vec()),
                        };
                        at += n;
                        summed.push((index, from_values(part, &grad)?));
                    }
                }
                Sent::Device(flat) => {
                    for (index, grad) in grads {
                        let n = grad.elem_count();
                        let part = flat
                            .narrow(0, at, n)?
                            .reshape(grad.shape().clone())?
                            .to_dtype(grad.dtype())?;
                        at += n;
                        summed.push((index, part));
                    }
                }
            }
        }
        Ok(summed)
    }
}

#[cfg(test)]
mod tests {
    use kiln_tensor::Device;

    use super::*;

    /// Runs `body(rank, parallel)` on `world` thread ranks; its results in rank order.
    fn on_ranks<T: Send>(world: usize, body: impl Fn(usize, DataParallel) -> T + Sync) -> Vec<T> {
        let body = &body;
        std::thread::scope(|scope| {
            let handles: Vec<_> = thread_group(world)
                .into_iter()
                .enumerate()
                .map(|(rank, collective)| {
                    scope.spawn(move || {
                        let communicator = Communicator::spawn(move || Ok(collective)).unwrap();
                        body(rank, DataParallel::new(communicator, false))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn sums_and_gathers_agree_on_every_rank() {
        let results = on_ranks(3, |rank, parallel| {
            let sum = parallel
                .communicator()
                .sum(Values::F32(vec![rank as f32, 1.0]))
                .unwrap();
            let all = parallel.communicator().gather(10 + rank as u64).unwrap();
            (sum, all, parallel.any(rank == 2).unwrap())
        });
        for (sum, all, any) in results {
            assert_eq!(sum, Values::F32(vec![3.0, 3.0]));
            assert_eq!(all, vec![10, 11, 12]);
            assert!(any);
        }
    }

    #[test]
    fn the_sum_over_ranks_sends_back_the_sum_of_the_gradients() {
        // Rank r: y = Σ_ranks x, loss_r = (r + 1)·Σ y. d(Σ_r loss_r)/dx = (1 + 2)·1.
        let grads = on_ranks(2, |rank, parallel| {
            let x = Tensor::from_vec(vec![1.0f64, 2.0], [2], Device::Cpu)
                .unwrap()
                .track()
                .unwrap();
            let y = parallel.sum(&x).unwrap();
            assert_eq!(y.to_vec::<f64>().unwrap(), vec![2.0, 4.0]);
            let loss = y.sum_all().unwrap().mul_scalar(rank as f64 + 1.0).unwrap();
            loss.backward()
                .unwrap()
                .get(&x)
                .unwrap()
                .to_vec::<f64>()
                .unwrap()
        });
        assert_eq!(grads, vec![vec![3.0, 3.0], vec![3.0, 3.0]]);
    }

    #[test]
    fn gradients_are_the_weighted_sum_whatever_the_buckets() {
        // Rank r's loss: (r + 1)·Σ w² for three parameters; weights 1/4 and 3/4.
        let run = |bucket_bytes: usize| {
            on_ranks(2, move |rank, parallel| {
                let parallel = parallel.with_bucket_bytes(bucket_bytes);
                let params: Vec<(String, Var)> = (0..3)
                    .map(|i| {
                        let value = Tensor::from_vec(vec![i as f32 + 1.0; 5], [5], Device::Cpu);
                        (format!("w{i}"), Var::new(&value.unwrap()).unwrap())
                    })
                    .collect();
                let mut loss = Tensor::scalar(0.0f32, Device::Cpu).unwrap();
                for (_, w) in &params {
                    loss = loss.add(&w.square().unwrap().sum_all().unwrap()).unwrap();
                }
                let loss = loss.mul_scalar(rank as f64 + 1.0).unwrap();
                let share = [0.25, 0.75][rank];
                let grads = parallel.backward(&loss, &params, share).unwrap();
                params
                    .iter()
                    .map(|(_, w)| grads.get(w).unwrap().to_vec::<f32>().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        // d/dw of 0.25·Σw²·1 + 0.75·Σw²·2 = 2w·1.75.
        let expected: Vec<Vec<f32>> = (0..3).map(|i| vec![(i as f32 + 1.0) * 3.5; 5]).collect();
        for bucket_bytes in [1, 24, 1 << 20] {
            for grads in run(bucket_bytes) {
                assert_eq!(grads, expected, "buckets of {bucket_bytes} bytes");
            }
        }
    }
}
