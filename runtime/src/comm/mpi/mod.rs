//! Collectives between processes over MPI (the `mpi` feature): one process per device,
//! launched by `mpirun`, `srun` or any launcher of the MPI library the crate was built
//! against (OpenMPI, MPICH).
//!
//! [`Mpi::init`] starts MPI for the process and [`Mpi::communicator`] gives an
//! [`MpiComm`], a [`Communicator`](super::Communicator) like the in-process ring, over one of two algorithms:
//!
//! - [`MpiAlgorithm::Ring`] (the default) runs ringtrain's own ring, the schedule the
//!   in-process ring runs, with MPI point-to-point messages as the links: the same
//!   summation order, so the same bits on every rank and the same bits as a ring of
//!   threads of the same size.
//! - [`MpiAlgorithm::Native`] hands the whole reduction to `MPI_Iallreduce`, whose
//!   algorithm the MPI library picks (trees for small messages, rings or
//!   Rabenseifner for large ones, InfiniBand offload where there is one).
//!
//! Every MPI call of a collective is non-blocking and polled, so that no rank waits
//! forever: a collective also watches for a notice that a peer has failed (sent by
//! [`Communicator::abort`](super::Communicator::abort), or by a peer whose collective
//! failed) and for its timeout. Ranks that time out tell each other whom they were
//! waiting on and follow that chain to the rank holding the group up, so they all blame
//! the same one, not their starved neighbours. A process whose communicator failed ends
//! with `MPI_Abort` rather than `MPI_Finalize` (after a short grace for its peers to
//! report what they were told), so a failure tears the whole job down instead of leaving
//! ranks blocked in finalize; a rank that dies outright is noticed by the launcher, which
//! stops the others.
//!
//! ```no_run
//! use ringtrain_runtime::comm::mpi::{Mpi, MpiConfig};
//! use ringtrain_runtime::comm::Communicator;
//!
//! # fn main() -> Result<(), ringtrain_runtime::comm::CommError> {
//! // Launched as `mpirun -np 4 this-program`.
//! let mpi = Mpi::init()?;
//! let mut comm = mpi.communicator(MpiConfig::default())?;
//! let mut grads = vec![mpi.rank() as f32; 1000];
//! comm.all_reduce(&mut grads)?; // 0 + 1 + 2 + 3 = 6 everywhere
//! assert!(grads.iter().all(|&g| g == (0..mpi.size()).sum::<usize>() as f32));
//! # Ok(())
//! # }
//! ```
//!
//! `DataParallel::with_communicators` (in `ringtrain-models`) takes such a communicator
//! for the process's one replica; `examples/mpi_check.rs` is a complete program.

mod call;
mod comm;
mod notice;

pub use comm::MpiComm;

use super::{CommError, Thresholds};
use call::{call, check};
use mpi::environment::{Threading, Universe};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::Communicator as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a failed process waits before `MPI_Abort`, so that its peers can print the
/// failure they were notified of before the launcher stops them.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Which all-reduce an [`MpiComm`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MpiAlgorithm {
    /// ringtrain's pipelined ring over point-to-point messages.
    #[default]
    Ring,
    /// The MPI library's own `MPI_Iallreduce` and `MPI_Ibcast`.
    Native,
}

impl std::str::FromStr for MpiAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ring" => Ok(Self::Ring),
            "native" => Ok(Self::Native),
            _ => Err(format!("unknown MPI algorithm `{s}` (ring or native)")),
        }
    }
}

/// Tuning and failure detection of an [`MpiComm`].
#[derive(Debug, Clone)]
pub struct MpiConfig {
    pub algorithm: MpiAlgorithm,
    /// Bytes per ring message: segments travel in chunks of this size, two in flight per
    /// link, so one is combined while the next arrives.
    pub chunk_bytes: usize,
    /// How long a collective waits without progress before declaring a peer hung.
    pub timeout: Duration,
    /// Chunks a ring keeps in flight each way per link (at least 2): one is combined
    /// while the others move.
    pub pipeline_depth: usize,
    /// The largest message the latency-bound algorithms send in one piece: below MPI's
    /// eager limit, so that a piece is delivered without a handshake (Open MPI's
    /// shared-memory transport: 4096 bytes, header included).
    pub eager_bytes: usize,
    /// Message sizes below which the latency-bound algorithms run; the same as the
    /// in-process group's by default, so that a group over MPI gives the bits a group of
    /// threads of the same size gives.
    pub thresholds: Thresholds,
}

impl Default for MpiConfig {
    fn default() -> Self {
        Self {
            algorithm: MpiAlgorithm::Ring,
            chunk_bytes: 1 << 20,
            timeout: Duration::from_secs(120),
            pipeline_depth: 4,
            eager_bytes: 4000,
            thresholds: Thresholds::default(),
        }
    }
}

/// The process's MPI library: initialized once, finalized (or, after a failure,
/// aborted) when the last [`Mpi`] handle and [`MpiComm`] are gone.
pub(super) struct Environment {
    universe: Option<Universe>,
    /// Set when a communicator of this process failed: the process then aborts the job
    /// on exit instead of finalizing, since peers may still be waiting on it.
    pub(super) failed: AtomicBool,
}

impl Drop for Environment {
    fn drop(&mut self) {
        let Some(universe) = self.universe.take() else {
            return;
        };
        if self.failed.load(Ordering::Acquire) || std::thread::panicking() {
            std::thread::sleep(ABORT_GRACE);
            universe.world().abort(1);
        }
        drop(universe); // MPI_Finalize
    }
}

/// MPI in this process: its rank in the job, and the node it shares with other ranks.
#[derive(Clone)]
pub struct Mpi {
    env: Arc<Environment>,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    threading: Threading,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Mpi(rank {} of {}, local {} of {})",
            self.rank, self.size, self.local_rank, self.local_size
        )
    }
}

impl Mpi {
    /// Initializes MPI (`MPI_Init_thread`, asking for `MPI_THREAD_SERIALIZED`: data
    /// parallelism runs collectives on a communication thread). Call it once per process;
    /// a second call fails, as MPI cannot be initialized twice.
    pub fn init() -> Result<Self, CommError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| {
                CommError::InvalidArgument(
                    "MPI is already initialized in this process; create one ringtrain Mpi \
                     and clone it"
                        .into(),
                )
            })?;
        let env = Arc::new(Environment {
            universe: Some(universe),
            failed: AtomicBool::new(false),
        });
        if threading < Threading::Serialized {
            return Err(CommError::InvalidArgument(format!(
                "the MPI library provides thread level {threading:?}; ringtrain needs \
                 Serialized or Multiple (rebuild MPI with thread support)"
            )));
        }
        // Without MPI_THREAD_MULTIPLE, calls from different threads must not overlap.
        call::SERIALIZE.store(threading < Threading::Multiple, Ordering::Relaxed);
        let world = env.universe.as_ref().expect("set above").world();
        let node = world.split_shared(world.rank());
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: node.rank() as usize,
            local_size: node.size() as usize,
            threading,
            env,
        })
    }

    /// The thread support MPI gave: `Multiple`, or `Serialized` (ringtrain then
    /// serializes its MPI calls itself).
    pub fn threading(&self) -> Threading {
        self.threading
    }

    /// This process's rank in the job.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the job.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among the processes on its node (those that share memory
    /// with it): the index of the GPU it should take.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Marks this process failed: when the last handle and communicator are gone, the
    /// job is aborted (`MPI_Abort`) instead of finalized. Call it when a rank gives up
    /// for a reason of its own, so that peers waiting on it do not wait in
    /// `MPI_Finalize`; a communicator whose collective failed does this itself.
    pub fn abort_job_on_exit(&self) {
        self.env.failed.store(true, Ordering::Release);
    }

    /// The host name MPI reports for this process.
    pub fn processor_name(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into())
    }

    /// The MPI library, e.g. "Open MPI v4.1.4" (the first part of what it reports).
    pub fn library_version(&self) -> String {
        mpi::environment::library_version()
            .ok()
            .and_then(|v| v.split([',', '\n']).next().map(|s| s.trim().to_string()))
            .unwrap_or_default()
    }

    /// A communicator over every process of the job. This is collective: every process
    /// must create its communicators in the same order. Each gets its own MPI
    /// communicators (duplicates of `MPI_COMM_WORLD`), so its messages never meet the
    /// application's own MPI traffic.
    pub fn communicator(&self, config: MpiConfig) -> Result<MpiComm, CommError> {
        if config.pipeline_depth < 2 {
            return Err(CommError::InvalidArgument(format!(
                "an MPI ring needs a pipeline at least 2 chunks deep (pipeline_depth {})",
                config.pipeline_depth
            )));
        }
        if config.chunk_bytes < 4 || config.chunk_bytes / 4 >= i32::MAX as usize {
            return Err(CommError::InvalidArgument(format!(
                "MPI chunks must hold between 1 and 2^31 - 1 f32s (chunk_bytes {})",
                config.chunk_bytes
            )));
        }
        let world = self.env.universe.as_ref().expect("live until drop").world();
        let (data, notices) = call(|| (world.duplicate(), world.duplicate()));
        for c in [&data, &notices] {
            // Errors come back as codes to report, not as an abort of the job.
            check(call(|| unsafe {
                ffi::MPI_Comm_set_errhandler(c.as_raw(), ffi::RSMPI_ERRORS_RETURN)
            }))?;
        }
        Ok(MpiComm::new(data, notices, config, self.env.clone()))
    }
}
