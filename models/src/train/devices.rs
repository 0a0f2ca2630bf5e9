//! Which devices a run trains on.

use super::cluster::{Cluster, CommKind};
use ringtrain_runtime::{Device, Error, Result};

/// The kind of device to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// A hardware GPU when wgpu finds one, else the CPU (never a software GPU).
    #[default]
    Auto,
    Cpu,
    /// A GPU, software ones (Mesa's lavapipe) included.
    Gpu,
}

impl std::str::FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "cpu" => Ok(Backend::Cpu),
            "gpu" => Ok(Backend::Gpu),
            other => Err(Error::InvalidArgument(format!(
                "unknown backend `{other}`: expected auto, cpu or gpu"
            ))),
        }
    }
}

/// One device of an explicit list: the CPU, the best GPU, or GPU adapter `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    Cpu,
    Gpu(Option<usize>),
}

impl std::str::FromStr for DeviceName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceName::Cpu),
            "gpu" => Ok(DeviceName::Gpu(None)),
            _ => s
                .strip_prefix("gpu:")
                .and_then(|k| k.parse().ok())
                .map(|k| DeviceName::Gpu(Some(k)))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown device `{s}`: expected cpu, gpu or gpu:K (adapter K)"
                    ))
                }),
        }
    }
}

impl DeviceName {
    /// The device this names.
    pub fn open(&self) -> Result<Device> {
        match self {
            DeviceName::Cpu => Ok(Device::cpu()),
            DeviceName::Gpu(None) => Device::gpu(),
            DeviceName::Gpu(Some(k)) => Device::gpu_adapter(*k),
        }
    }
}

/// The devices of a run: a backend and how many replicas of it (by default every
/// hardware GPU, or one CPU), or an explicit list such as `gpu:0,gpu:1` or `cpu,cpu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    Backend {
        backend: Backend,
        count: Option<usize>,
    },
    List(Vec<DeviceName>),
}

/// `auto`: every hardware GPU, else one CPU.
impl Default for Devices {
    fn default() -> Self {
        Devices::of(Backend::Auto, None)
    }
}

impl Devices {
    /// `count` replicas of `backend` (`None`: the default for it).
    pub fn of(backend: Backend, count: Option<usize>) -> Self {
        Devices::Backend { backend, count }
    }

    /// Opens the devices of this process: under `--comm mpi` its one device (its
    /// machine's GPU number local rank, or the CPU). With `say`, says on stdout (from
    /// rank 0) when `auto` falls back to the CPU.
    pub fn open(&self, cluster: &Cluster, say: bool) -> Result<Vec<Device>> {
        let (backend, count) = match self {
            Devices::List(names) => return open_list(names, cluster),
            Devices::Backend { backend, count } => (*backend, *count),
        };
        if count == Some(0) {
            return Err(Error::InvalidArgument(
                "--devices: at least one device is needed".into(),
            ));
        }
        let gpu = || match backend {
            Backend::Cpu => false,
            Backend::Gpu => true,
            Backend::Auto => Device::hardware_gpu_count() > 0,
        };
        if cluster.config.kind == CommKind::Hierarchical && cluster.local_processes > 1 && gpu() {
            return Err(Error::InvalidArgument(format!(
                "--comm hierarchical drives every GPU of a machine from one process, but {} \
                 processes share this one: launch one per machine (mpirun --map-by \
                 ppr:1:node, srun --ntasks-per-node=1), or use --comm mpi for one process \
                 per GPU",
                cluster.local_processes
            )));
        }
        if cluster.config.kind == CommKind::Mpi {
            if count.is_some_and(|n| n != 1) {
                return Err(Error::InvalidArgument(
                    "--comm mpi trains one device per process; launch more processes \
                     (mpirun -np N), or use --comm hierarchical --devices N"
                        .into(),
                ));
            }
            return Ok(vec![if gpu() {
                Device::local_gpu(cluster.local_rank)?
            } else {
                Device::cpu()
            }]);
        }
        let cpus = |n: usize| (0..n).map(|_| Device::cpu()).collect::<Vec<_>>();
        Ok(match backend {
            Backend::Cpu => cpus(count.unwrap_or(1)),
            Backend::Gpu => Device::gpus(count)?,
            Backend::Auto if Device::hardware_gpu_count() > 0 => Device::gpus(count)?,
            Backend::Auto => {
                if say && cluster.is_root() {
                    println!(
                        "auto: no hardware GPU found, training on the CPU (--backend gpu \
                         forces a GPU)"
                    );
                }
                cpus(count.unwrap_or(1))
            }
        })
    }
}

fn open_list(names: &[DeviceName], cluster: &Cluster) -> Result<Vec<Device>> {
    if names.is_empty() {
        return Err(Error::InvalidArgument(
            "--devices: the list names no device".into(),
        ));
    }
    if cluster.config.kind == CommKind::Mpi && names.len() != 1 {
        return Err(Error::InvalidArgument(
            "--comm mpi trains one device per process: name one, or use --comm hierarchical".into(),
        ));
    }
    names.iter().map(DeviceName::open).collect()
}

/// Several devices of one name as `4 x name`, else the names.
pub fn describe(devices: &[Device]) -> String {
    let names: Vec<String> = devices.iter().map(Device::name).collect();
    if names.len() > 1 && names.iter().all(|n| *n == names[0]) {
        format!("{} x {}", names.len(), names[0])
    } else {
        names.join(", ")
    }
}
