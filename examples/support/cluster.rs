//! How an example's process joins a data-parallel group, as `--comm` says: the replicas
//! of this process alone (`local`), one replica per MPI process (`mpi`), or several
//! replicas per MPI process with MPI between processes (`hierarchical`). MPI needs the
//! `mpi` feature; without it the two MPI modes are a clear error.

use clap::{Args, ValueEnum};
use ringtrain::comm::Communicator;
use std::error::Error;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CommKind {
    /// Every replica in this process (threads joined by the in-process ring).
    Local,
    /// One replica per process; processes joined by MPI (launch with mpirun or srun).
    Mpi,
    /// One process per machine with several replicas: the in-process ring within the
    /// machine, MPI between machines.
    Hierarchical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MpiAlgorithmArg {
    /// ringtrain's pipelined ring over MPI point-to-point messages.
    Ring,
    /// The MPI library's own all-reduce (MPI_Iallreduce).
    Native,
}

/// The command-line flags of a multi-process run.
#[derive(Args, Debug, Clone)]
pub struct CommArgs {
    /// How replicas communicate: local, mpi (one process per device) or hierarchical (one
    /// process per machine, --devices replicas each).
    #[arg(long, value_enum, default_value = "local")]
    pub comm: CommKind,
    /// The all-reduce between MPI processes.
    #[arg(long, value_enum, default_value = "ring")]
    pub mpi_algorithm: MpiAlgorithmArg,
    /// Seconds a collective waits for a silent peer before the run fails. Keep it well
    /// above anything one rank does alone between steps (rank 0 evaluates each epoch
    /// while the others wait).
    #[arg(long, default_value_t = 120.0, value_parser = parse_seconds)]
    pub comm_timeout: f64,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds above 0")),
    }
}

impl CommArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.comm_timeout)
    }
}

/// One communicator per replica of this process.
pub type Communicators = Vec<Box<dyn Communicator>>;

/// This process's place in the run.
#[allow(dead_code)] // each example that includes this module reads some of it
pub struct Cluster {
    #[cfg(feature = "mpi")]
    mpi: Option<ringtrain::comm::mpi::Mpi>,
    pub kind: CommKind,
    /// This process among the run's processes (rank 0 of 1 for a local run).
    pub rank: usize,
    pub processes: usize,
    /// This process among those on its machine: the GPU it takes.
    pub local_rank: usize,
    pub local_processes: usize,
}

impl Cluster {
    /// An example's `main`: starts the cluster, runs `run`, and on an error prints it
    /// (prefixed with the rank) and exits with status 1, aborting an MPI job so that no
    /// peer waits for this rank.
    pub fn main(args: &CommArgs, run: impl FnOnce(&Cluster) -> Result<(), Box<dyn Error>>) {
        let cluster = match Cluster::start(args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        if let Err(e) = run(&cluster) {
            cluster.abort_job_on_exit();
            cluster.eprint(&format!("error: {e}"));
            cluster.exit(1);
        }
    }

    /// Starts MPI where `--comm` asks for it.
    pub fn start(args: &CommArgs) -> Result<Self, Box<dyn Error>> {
        match args.comm {
            CommKind::Local => Ok(Self {
                #[cfg(feature = "mpi")]
                mpi: None,
                kind: CommKind::Local,
                rank: 0,
                processes: 1,
                local_rank: 0,
                local_processes: 1,
            }),
            #[cfg(feature = "mpi")]
            kind => {
                let mpi = ringtrain::comm::mpi::Mpi::init()?;
                Ok(Self {
                    kind,
                    rank: mpi.rank(),
                    processes: mpi.size(),
                    local_rank: mpi.local_rank(),
                    local_processes: mpi.local_size(),
                    mpi: Some(mpi),
                })
            }
            #[cfg(not(feature = "mpi"))]
            kind => Err(format!(
                "--comm {} needs MPI, and this binary was built without it: build with \
                 `cargo build --release --features mpi --examples` (needs an MPI library such \
                 as Open MPI, and libclang)",
                kind.to_possible_value()
                    .map_or("?".into(), |v| v.get_name().to_string())
            )
            .into()),
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
    pub fn communicators(
        &self,
        args: &CommArgs,
        local_devices: usize,
    ) -> Result<Option<Communicators>, Box<dyn Error>> {
        let _ = (args, local_devices);
        match self.kind {
            CommKind::Local => Ok(None),
            #[cfg(feature = "mpi")]
            kind => {
                use ringtrain::comm::mpi::{MpiAlgorithm, MpiConfig};
                use ringtrain::comm::{hierarchical, ring_with, RingConfig};
                let mpi = self.mpi.as_ref().expect("started for MPI");
                let config = MpiConfig {
                    algorithm: match args.mpi_algorithm {
                        MpiAlgorithmArg::Ring => MpiAlgorithm::Ring,
                        MpiAlgorithmArg::Native => MpiAlgorithm::Native,
                    },
                    timeout: args.timeout(),
                    ..MpiConfig::default()
                };
                let comm = Box::new(mpi.communicator(config)?);
                if kind == CommKind::Mpi {
                    if local_devices != 1 {
                        return Err(format!(
                            "--comm mpi runs one device per process, not {local_devices}; \
                             launch more processes, or use --comm hierarchical"
                        )
                        .into());
                    }
                    return Ok(Some(vec![comm]));
                }
                // Longer than MPI's timeout, so that when a remote node hangs, the leader
                // (waiting on MPI) is the one to time out and name it, not the devices
                // waiting on their leader.
                let local = ring_with(
                    local_devices,
                    RingConfig {
                        timeout: args.timeout() * 2 + Duration::from_secs(5),
                        ..RingConfig::default()
                    },
                )?
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator>)
                .collect();
                Ok(Some(
                    hierarchical(local, comm)?
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
    #[allow(dead_code)] // not every example that includes this module needs it
    #[cfg(feature = "mpi")]
    pub fn world(
        &self,
        config: ringtrain::comm::mpi::MpiConfig,
    ) -> Result<ringtrain::comm::mpi::MpiComm, Box<dyn Error>> {
        let mpi = self.mpi.as_ref().ok_or("not an MPI run")?;
        Ok(mpi.communicator(config)?)
    }

    /// One line about the run's processes, for rank 0 to print.
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

    /// Ends the process with `code`: under MPI, after finalizing (or, after a failure,
    /// aborting the job; see [`Cluster::abort_job_on_exit`]).
    pub fn exit(self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        drop(self.mpi);
        std::process::exit(code)
    }

    /// After a failure: end the job rather than wait for peers in MPI_Finalize.
    pub fn abort_job_on_exit(&self) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.abort_job_on_exit();
        }
    }
}
