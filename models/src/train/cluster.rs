//! How a process joins a data-parallel group: its replicas alone (`local`, threads on the
//! in-process ring), one replica per MPI process (`mpi`), or several replicas per MPI
//! process with MPI between processes (`hierarchical`). The MPI modes need the `mpi`
//! feature; without it they are a clear error.

use ringtrain_runtime::comm::Communicator;
use ringtrain_runtime::{Error, Precision, Result};
use std::time::Duration;

/// How replicas communicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CommKind {
    /// Every replica in this process (threads joined by the in-process ring).
    #[default]
    Local,
    /// One replica per process; processes joined by MPI (launch with mpirun or srun).
    Mpi,
    /// One process per machine with several replicas: the in-process ring within the
    /// machine, MPI between machines.
    Hierarchical,
}

impl std::str::FromStr for CommKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "local" => Ok(CommKind::Local),
            "mpi" => Ok(CommKind::Mpi),
            "hierarchical" => Ok(CommKind::Hierarchical),
            _ => Err(Error::InvalidArgument(format!(
                "unknown communicator `{s}`: expected local, mpi or hierarchical"
            ))),
        }
    }
}

impl CommKind {
    pub fn name(self) -> &'static str {
        match self {
            CommKind::Local => "local",
            CommKind::Mpi => "mpi",
            CommKind::Hierarchical => "hierarchical",
        }
    }
}

/// The all-reduce between MPI processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MpiAlgorithm {
    /// ringtrain's pipelined ring over MPI point-to-point messages: the in-process ring's
    /// summation order, so the same bits as `--devices N` in one process.
    #[default]
    Ring,
    /// The MPI library's own all-reduce (MPI_Iallreduce).
    Native,
}

/// How this process joins its group, and how long a collective waits for a silent peer.
#[derive(Debug, Clone, PartialEq)]
pub struct CommConfig {
    pub kind: CommKind,
    pub mpi_algorithm: MpiAlgorithm,
    /// Keep it well above anything one rank does alone between steps (rank 0 evaluates
    /// while the others wait).
    pub timeout: Duration,
    /// The format gradients cross the links in (f32, or bf16 / f16: half the bytes);
    /// see `DataParallelConfig::grad_compression`.
    pub grad_compression: Precision,
}

impl Default for CommConfig {
    fn default() -> Self {
        Self {
            kind: CommKind::Local,
            mpi_algorithm: MpiAlgorithm::Ring,
            timeout: Duration::from_secs(120),
            grad_compression: Precision::F32,
        }
    }
}

/// One communicator per replica of this process.
pub type Communicators = Vec<Box<dyn Communicator>>;

/// This process's place in a run: its rank among the run's processes and among those on
/// its machine (which picks its GPU). Clones share the process's MPI, which is finalized
/// when the last clone goes (or aborted, after [`Cluster::abort_job_on_exit`]).
#[derive(Clone)]
pub struct Cluster {
    #[cfg(feature = "mpi")]
    mpi: Option<ringtrain_runtime::comm::mpi::Mpi>,
    pub config: CommConfig,
    /// This process among the run's processes (rank 0 of 1 for a local run).
    pub rank: usize,
    pub processes: usize,
    /// This process among those on its machine.
    pub local_rank: usize,
    pub local_processes: usize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cluster({}, rank {} of {})",
            self.config.kind.name(),
            self.rank,
            self.processes
        )
    }
}

impl Cluster {
    /// A process training alone (its replicas on the in-process ring).
    pub fn local() -> Self {
        Self::start(&CommConfig::default()).expect("a local cluster needs nothing")
    }

    /// Joins the run as `config` says: starts MPI for the MPI modes (once per process;
    /// clone the cluster to use it again).
    pub fn start(config: &CommConfig) -> Result<Self> {
        match config.kind {
            CommKind::Local => Ok(Self {
                #[cfg(feature = "mpi")]
                mpi: None,
                config: config.clone(),
                rank: 0,
                processes: 1,
                local_rank: 0,
                local_processes: 1,
            }),
            #[cfg(feature = "mpi")]
            _ => {
                let mpi = ringtrain_runtime::comm::mpi::Mpi::init()?;
                Ok(Self {
                    config: config.clone(),
                    rank: mpi.rank(),
                    processes: mpi.size(),
                    local_rank: mpi.local_rank(),
                    local_processes: mpi.local_size(),
                    mpi: Some(mpi),
                })
            }
            #[cfg(not(feature = "mpi"))]
            kind => Err(Error::InvalidArgument(format!(
                "--comm {} needs MPI, and this binary was built without it: build with \
                 `--features mpi` (needs an MPI library such as Open MPI, and libclang)",
                kind.name()
            ))),
        }
    }

    /// Rank 0 prints and writes; the others train quietly.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// What to put before a message so that the reader knows which rank said it.
    pub fn prefix(&self) -> String {
        if self.processes > 1 {
            format!("rank {}: ", self.rank)
        } else {
            String::new()
        }
    }

    /// Writes `message` to stderr as one line prefixed with this rank, in one write, so
    /// that the lines of ranks sharing a terminal (through mpirun) do not interleave.
    pub fn eprint(&self, message: &str) {
        use std::io::Write;
        let line = format!("{}{message}\n", self.prefix());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    /// Communicators for `local_devices` replicas in this process, or `None` for a local
    /// run (the caller uses the in-process ring).
    pub fn communicators(&self, local_devices: usize) -> Result<Option<Communicators>> {
        match self.config.kind {
            CommKind::Local => {
                let _ = local_devices;
                Ok(None)
            }
            #[cfg(feature = "mpi")]
            kind => {
                use ringtrain_runtime::comm::mpi::{self as rmpi, MpiConfig};
                use ringtrain_runtime::comm::{
                    hierarchical, hierarchical_rails, ring_with, RingConfig,
                };
                let mpi = self.mpi.as_ref().expect("started for MPI");
                let config = MpiConfig {
                    algorithm: match self.config.mpi_algorithm {
                        MpiAlgorithm::Ring => rmpi::MpiAlgorithm::Ring,
                        MpiAlgorithm::Native => rmpi::MpiAlgorithm::Native,
                    },
                    timeout: self.config.timeout,
                    ..MpiConfig::default()
                };
                let comm = Box::new(mpi.communicator(config.clone())?);
                if kind == CommKind::Mpi {
                    if local_devices != 1 {
                        return Err(Error::InvalidArgument(format!(
                            "--comm mpi runs one device per process, not {local_devices}; \
                             launch more processes, or use --comm hierarchical"
                        )));
                    }
                    return Ok(Some(vec![comm]));
                }
                // Longer than MPI's timeout, so that when a remote node hangs, the leader
                // (waiting on MPI) is the one to time out and name it, not the devices
                // waiting on their leader.
                let local = ring_with(
                    local_devices,
                    RingConfig {
                        timeout: self.config.timeout * 2 + Duration::from_secs(5),
                        ..RingConfig::default()
                    },
                )?
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator>)
                .collect();
                // Rails (one link between nodes per device) where every node has as many
                // devices, so that each device moves 1 / devices of the buffer between
                // nodes; otherwise through the leaders.
                let mut comm: Box<dyn Communicator> = comm;
                let mut counts = vec![0.0f32; comm.size()];
                counts[comm.rank()] = local_devices as f32;
                if let Err(e) = comm.all_reduce(&mut counts) {
                    comm.abort(&e.to_string());
                    return Err(e.into());
                }
                let joined = if counts.iter().all(|&c| c == local_devices as f32) {
                    let mut rails = vec![comm];
                    for _ in 1..local_devices {
                        rails.push(Box::new(mpi.communicator(config.clone())?));
                    }
                    hierarchical_rails(local, rails)?
                } else {
                    hierarchical(local, comm)?
                };
                Ok(Some(
                    joined
                        .into_iter()
                        .map(|c| Box::new(c) as Box<dyn Communicator>)
                        .collect(),
                ))
            }
            #[cfg(not(feature = "mpi"))]
            _ => unreachable!("Cluster::start refuses MPI modes without the mpi feature"),
        }
    }

    /// A communicator over every process, one per process, for checks and benchmarks.
    #[cfg(feature = "mpi")]
    pub fn world(
        &self,
        config: ringtrain_runtime::comm::mpi::MpiConfig,
    ) -> Result<ringtrain_runtime::comm::mpi::MpiComm> {
        let mpi = self
            .mpi
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("not an MPI run".into()))?;
        Ok(mpi.communicator(config)?)
    }

    /// One line about the run's processes.
    pub fn describe(&self) -> String {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            return format!(
                "{} MPI processes ({} on this machine), {} at thread level {:?}",
                self.processes,
                self.local_processes,
                mpi.library_version(),
                mpi.threading()
            );
        }
        "one process".into()
    }

    /// After a failure: end the job with `MPI_Abort` when the last clone is dropped,
    /// rather than wait for peers in `MPI_Finalize`.
    pub fn abort_job_on_exit(&self) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.abort_job_on_exit();
        }
    }

    /// CPU threads this process should use by default: the machine's cores shared out
    /// among the processes on it; `None` (all cores) for one process.
    pub fn default_threads(&self) -> Option<usize> {
        (self.local_processes > 1).then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / self.local_processes).max(1)
        })
    }

    /// A program's `main` over a cluster: starts it, runs `run`, and on an error prints
    /// it (prefixed with the rank) and exits with status 1, ending an MPI job with
    /// `MPI_Abort` so that no peer waits for this rank.
    pub fn main(config: &CommConfig, run: impl FnOnce(&Cluster) -> Result<()>) {
        // The cluster is dropped (MPI finalized, or aborted) at the end of the block,
        // before the process exits.
        let code = {
            let cluster = match Cluster::start(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            };
            match run(&cluster) {
                Ok(()) => 0,
                Err(e) => {
                    cluster.abort_job_on_exit();
                    cluster.eprint(&format!("error: {e}"));
                    1
                }
            }
        };
        if code != 0 {
            std::process::exit(code);
        }
    }
}
