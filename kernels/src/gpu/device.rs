//! One opened GPU: its wgpu device and queue, the pools its buffers come from, and the
//! stream that ops are recorded into.
//!
//! Ops do not submit work one by one. Each records a dispatch (pipeline, bind group,
//! workgroup counts) and writes its parameters into a per-submission uniform arena; the
//! whole batch is encoded and submitted at a sync point: a download, an upload (whose
//! `write_buffer` must not overtake recorded ops), or a full arena.

use super::pool::Pool;
use super::shaders::{Kernel, Pipelines, Shader};
use crate::{trace, KernelError, Result};
use bytemuck::Pod;
use std::sync::mpsc::TryRecvError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes of the uniform arena: parameters of up to this many / 256 dispatches per
/// submission (fewer where the device's uniform alignment is coarser).
const ARENA_BYTES: u64 = 256 * 1024;

/// How long a download waits for the GPU before reporting it as hung.
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// Compute passes one timed region can time (two timestamps each).
const TIMED_PASSES: u32 = 512;

/// What every part of the backend needs: the device, its queue and limits.
pub(super) struct Shared {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
}

/// GPU-side timing where the device has timestamp queries: the start and end of every
/// compute pass of a timed region are written into `set`.
struct Timestamps {
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period: f32,
}

impl Timestamps {
    /// A query set for the start and end of `TIMED_PASSES` passes, and its resolve buffer.
    fn new(shared: &Shared, label: &'static str) -> Self {
        Timestamps {
            set: shared.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some(label),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * TIMED_PASSES,
            }),
            resolved: shared.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: u64::from(2 * TIMED_PASSES) * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period: shared.queue.get_timestamp_period(),
        }
    }
}

enum Command {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        groups: [u32; 3],
        name: Arc<str>,
    },
    Copy {
        src: wgpu::Buffer,
        dst: wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    },
}

struct Stream {
    commands: Vec<Command>,
    /// Parameters of the recorded dispatches, uploaded to `arena` at submission.
    params: Vec<u8>,
    arena: wgpu::Buffer,
    /// In a timed region: the next timestamp index, and whether the region has run out
    /// of timestamps (its passes are then not all timed).
    timing: Option<(u32, bool)>,
}

pub(super) struct Context {
    pub shared: Shared,
    pub storage: Arc<Pool>,
    staging: Pool,
    pipelines: Pipelines,
    stream: Mutex<Stream>,
    /// The first error wgpu reported outside an error scope (a lost device, say), kept
    /// until the next sync point returns it.
    error: Arc<Mutex<Option<String>>>,
    /// Parameter slots are this many bytes apart (the device's uniform offset alignment).
    slot: u64,
    timestamps: Option<Timestamps>,
    /// A second set for traces: every dispatch its own pass, timed, while a trace
    /// records (apart from [`Context::timed`] regions, whose set this does not touch).
    trace_timestamps: Option<TraceTimestamps>,
    /// This device's row in a trace.
    pub trace_track: String,
}

/// Timestamps of the dispatches of one submission, read back to become trace events.
struct TraceTimestamps {
    ts: Timestamps,
    readback: wgpu::Buffer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Context {
    pub fn new(shared: Shared) -> Self {
        let error = Arc::new(Mutex::new(None::<String>));
        let slot_err = error.clone();
        shared.device.on_uncaptured_error(Arc::new(move |e| {
            lock(&slot_err).get_or_insert_with(|| e.to_string());
        }));
        let lost_err = error.clone();
        shared.device.set_device_lost_callback(move |reason, msg| {
            lock(&lost_err).get_or_insert_with(|| format!("GPU device lost ({reason:?}): {msg}"));
        });
        let arena = shared.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ringtrain params"),
            size: ARENA_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let slot = u64::from(shared.limits.min_uniform_buffer_offset_alignment).max(16);
        let has_timestamps = shared
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY);
        let timestamps = has_timestamps.then(|| Timestamps::new(&shared, "ringtrain timing"));
        let trace_timestamps = has_timestamps.then(|| TraceTimestamps {
            ts: Timestamps::new(&shared, "ringtrain trace timing"),
            readback: shared.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("ringtrain trace readback"),
                size: u64::from(2 * TIMED_PASSES) * 8,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        });
        Self {
            trace_timestamps,
            trace_track: "gpu".to_string(),
            storage: Arc::new(Pool::new(
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            )),
            staging: Pool::new(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            pipelines: Pipelines::default(),
            stream: Mutex::new(Stream {
                commands: Vec::new(),
                params: Vec::new(),
                arena,
                timing: None,
            }),
            error,
            slot,
            timestamps,
            shared,
        }
    }

    /// Whether the device was opened with `SHADER_F16`.
    pub fn shader_f16(&self) -> bool {
        self.shared
            .device
            .features()
            .contains(wgpu::Features::SHADER_F16)
    }

    pub fn kernel(&self, shader: Shader) -> Result<Kernel> {
        self.pipelines.get(&self.shared, shader)
    }

    /// Buffers ever created for tensors (a training step that recycles everything
    /// leaves this unchanged).
    pub fn buffers_created(&self) -> usize {
        self.storage.created()
    }

    /// A recycled storage buffer of at least `bytes`.
    pub fn take(&self, bytes: u64) -> Result<wgpu::Buffer> {
        self.storage.take(&self.shared, bytes)
    }

    /// Records one dispatch of `kernel` over `groups`, its uniform `params` at binding 0
    /// and `buffers` at bindings 1, 2, ...
    pub fn dispatch<P: Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        let bytes = bytemuck::bytes_of(params);
        let size = (bytes.len() as u64).div_ceil(16) * 16;
        let mut stream = lock(&self.stream);
        let mut offset = (stream.params.len() as u64).div_ceil(self.slot) * self.slot;
        if offset + size > ARENA_BYTES {
            self.submit(&mut stream)?;
            offset = 0;
        }
        stream.params.resize(offset as usize, 0);
        stream.params.extend_from_slice(bytes);
        stream.params.resize((offset + size) as usize, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &stream.arena,
                offset,
                size: wgpu::BufferSize::new(size),
            }),
        }];
        entries.extend(
            buffers
                .iter()
                .zip(1..)
                .map(|(b, binding)| wgpu::BindGroupEntry {
                    binding,
                    resource: b.as_entire_binding(),
                }),
        );
        let bind_group = self
            .shared
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &kernel.layout,
                entries: &entries,
            });
        stream.commands.push(Command::Dispatch {
            pipeline: kernel.pipeline.clone(),
            bind_group,
            groups,
            name: kernel.name.clone(),
        });
        Ok(())
    }

    /// Submits everything recorded so far (does not wait for it).
    pub fn flush(&self) -> Result<()> {
        let mut stream = lock(&self.stream);
        self.submit(&mut stream)
    }

    fn submit(&self, stream: &mut Stream) -> Result<()> {
        if stream.commands.is_empty() {
            return self.take_error();
        }
        let Shared { device, queue, .. } = &self.shared;
        if !stream.params.is_empty() {
            queue.write_buffer(&stream.arena, 0, &stream.params);
        }
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("ringtrain"),
        });
        let commands = std::mem::take(&mut stream.commands);
        if let (Some(tt), None, true) = (&self.trace_timestamps, &stream.timing, trace::enabled()) {
            return self.submit_traced(tt, encoder, commands, stream);
        }
        let mut i = 0;
        while i < commands.len() {
            if let Command::Copy {
                src,
                dst,
                dst_offset,
                bytes,
            } = &commands[i]
            {
                encoder.copy_buffer_to_buffer(src, 0, dst, *dst_offset, *bytes);
                i += 1;
                continue;
            }
            // A run of dispatches shares one compute pass, timed in a timed region.
            let timestamp_writes = match (&self.timestamps, &mut stream.timing) {
                (Some(ts), Some((next, full))) => {
                    if *next + 2 <= 2 * TIMED_PASSES {
                        *next += 2;
                        Some(wgpu::ComputePassTimestampWrites {
                            query_set: &ts.set,
                            beginning_of_pass_write_index: Some(*next - 2),
                            end_of_pass_write_index: Some(*next - 1),
                        })
                    } else {
                        *full = true;
                        None
                    }
                }
                _ => None,
            };
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes,
            });
            while let Some(Command::Dispatch {
                pipeline,
                bind_group,
                groups: [x, y, z],
                ..
            }) = commands.get(i)
            {
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(*x, *y, *z);
                i += 1;
            }
        }
        stream.params.clear();
        queue.submit([encoder.finish()]);
        self.take_error()
    }

    /// [`Context::submit`] while a trace records: each dispatch in a pass of its own with
    /// timestamps at its start and end, read back once the submission has run (the
    /// trace then costs a wait per submission), each becoming an event on this device's
    /// row. GPU ticks are placed on the host clock from the submission's start: the
    /// kernels' durations and gaps are the GPU's own, their offset from the host's
    /// spans approximate. Dispatches past the set's 512 passes run untimed.
    fn submit_traced(
        &self,
        tt: &TraceTimestamps,
        mut encoder: wgpu::CommandEncoder,
        commands: Vec<Command>,
        stream: &mut Stream,
    ) -> Result<()> {
        let mut timed: Vec<(Arc<str>, [u32; 3])> = Vec::new();
        for command in &commands {
            match command {
                Command::Copy {
                    src,
                    dst,
                    dst_offset,
                    bytes,
                } => {
                    encoder.copy_buffer_to_buffer(src, 0, dst, *dst_offset, *bytes);
                }
                Command::Dispatch {
                    pipeline,
                    bind_group,
                    groups,
                    name,
                } => {
                    let at = 2 * timed.len() as u32;
                    let timestamp_writes =
                        (at + 2 <= 2 * TIMED_PASSES).then(|| wgpu::ComputePassTimestampWrites {
                            query_set: &tt.ts.set,
                            beginning_of_pass_write_index: Some(at),
                            end_of_pass_write_index: Some(at + 1),
                        });
                    if timestamp_writes.is_some() {
                        timed.push((name.clone(), *groups));
                    }
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes,
                    });
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, bind_group, &[]);
                    let [x, y, z] = *groups;
                    pass.dispatch_workgroups(x, y, z);
                }
            }
        }
        let queries = 2 * timed.len() as u32;
        let bytes = u64::from(queries) * 8;
        if queries > 0 {
            encoder.resolve_query_set(&tt.ts.set, 0..queries, &tt.ts.resolved, 0);
            encoder.copy_buffer_to_buffer(&tt.ts.resolved, 0, &tt.readback, 0, bytes);
        }
        stream.params.clear();
        let submitted_ns = trace::now_ns();
        self.shared.queue.submit([encoder.finish()]);
        self.take_error()?;
        if queries == 0 {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        tt.readback
            .slice(0..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        // Unmapped however this ends (a pending map is cancelled): a buffer left mapped
        // would fail the next traced submission's copy, and poison the device.
        struct Unmap<'a>(&'a wgpu::Buffer);
        impl Drop for Unmap<'_> {
            fn drop(&mut self) {
                self.0.unmap();
            }
        }
        let unmap = Unmap(&tt.readback);
        self.poll_wait()?;
        let mapped = rx
            .recv_timeout(SYNC_TIMEOUT)
            .map_err(|_| KernelError::Device("the GPU never returned its timestamps".into()))?;
        let bad = |e: &dyn std::fmt::Display| {
            KernelError::Device(format!("reading timestamps back: {e}"))
        };
        mapped.map_err(|e| bad(&e))?;
        let ticks: Result<Vec<u64>> = tt
            .readback
            .slice(0..bytes)
            .get_mapped_range()
            .map_err(|e| bad(&e))
            .map(|view| {
                view.chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect()
            });
        drop(unmap);
        let ticks = ticks?;
        let period = f64::from(tt.ts.period);
        let first = ticks.first().copied().unwrap_or(0);
        let track = &self.trace_track;
        for ((name, [x, y, z]), pair) in timed.into_iter().zip(ticks.chunks_exact(2)) {
            let start = submitted_ns + (pair[0].saturating_sub(first) as f64 * period) as u64;
            let dur = (pair[1].saturating_sub(pair[0]) as f64 * period) as u64;
            let groups = format!("{x} x {y} x {z}");
            let args = vec![("workgroups", trace::Arg::Text(groups))];
            trace::complete(
                "gpu",
                name.to_string(),
                trace::Track::Device(track.clone()),
                start,
                dur,
                args,
            );
        }
        self.take_error()
    }

    /// The device's first error, at every sync point from then on: a rejected batch lost
    /// every op in it, so nothing computed on this device since can be trusted.
    fn take_error(&self) -> Result<()> {
        match lock(&self.error).as_ref() {
            Some(msg) => Err(KernelError::Device(msg.clone())),
            None => Ok(()),
        }
    }

    /// Writes `data` into `dst` once every op recorded so far has run.
    pub fn write(&self, dst: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        let mut stream = lock(&self.stream);
        // `write_buffer` lands before the next submission's commands; `dst` may be a
        // recycled buffer that recorded ops still read, so those go first.
        self.submit(&mut stream)?;
        if !data.is_empty() {
            self.shared.queue.write_buffer(dst, 0, data);
        }
        Ok(())
    }

    /// Whether [`Context::timed`] can time on the GPU (the device has timestamp queries).
    pub fn has_timestamps(&self) -> bool {
        self.timestamps.is_some()
    }

    /// Runs `f`, which records ops, and returns its result with the GPU time its compute
    /// passes took, summed from timestamps written at the start and end of each pass
    /// (gaps between passes and submissions are not counted). `None` where the device has
    /// no timestamp queries or the region had more than 512 passes; the caller then falls
    /// back to a synchronized wall clock. Work recorded before the call is submitted
    /// first, untimed.
    pub fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, Option<Duration>)> {
        let Some(ts) = &self.timestamps else {
            return f().map(|v| (v, None));
        };
        {
            let mut stream = lock(&self.stream);
            self.submit(&mut stream)?;
            stream.timing = Some((0, false));
        }
        let out = f();
        let (queries, full) = {
            let mut stream = lock(&self.stream);
            let submitted = self.submit(&mut stream);
            let timing = stream.timing.take().unwrap_or((0, false));
            submitted?;
            timing
        };
        let value = out?;
        if full {
            return Ok((value, None));
        }
        if queries == 0 {
            return Ok((value, Some(Duration::ZERO)));
        }
        let mut encoder =
            self.shared
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("ringtrain timestamps"),
                });
        encoder.resolve_query_set(&ts.set, 0..queries, &ts.resolved, 0);
        let bytes = u64::from(queries) * 8;
        {
            let mut stream = lock(&self.stream);
            self.submit(&mut stream)?;
            self.shared.queue.submit([encoder.finish()]);
        }
        let raw = self.read(&ts.resolved, bytes)?;
        let ticks: u64 = raw
            .chunks_exact(16)
            .map(|pair| {
                let begin = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
                let end = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
                end.saturating_sub(begin)
            })
            .sum();
        let nanos = ticks as f64 * f64::from(ts.period);
        Ok((value, Some(Duration::from_nanos(nanos as u64))))
    }

    /// Blocks until the GPU has run everything submitted (submits nothing: callable with
    /// the stream locked).
    fn poll_wait(&self) -> Result<()> {
        self.shared
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(SYNC_TIMEOUT),
            })
            .map(|_| ())
            .map_err(|e| KernelError::Device(format!("waiting for the GPU: {e}")))
    }

    /// Submits everything recorded and blocks until the GPU has run it.
    pub fn wait(&self) -> Result<()> {
        self.flush()?;
        self.poll_wait()?;
        self.take_error()
    }

    /// Runs everything recorded, then copies the first `bytes` of `src` back to the host.
    pub fn read(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        Ok(self.read_many(&[(src, bytes)])?.pop().unwrap_or_default())
    }

    /// The first `bytes` of each buffer (a multiple of 4), read back with one
    /// submission and one wait: all of them copied into one staging buffer, end to end.
    pub fn read_many(&self, srcs: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        let total: u64 = srcs.iter().map(|&(_, bytes)| bytes).sum();
        if total == 0 {
            return self.flush().map(|_| vec![Vec::new(); srcs.len()]);
        }
        let staging = self.staging.take(&self.shared, total)?;
        {
            let mut stream = lock(&self.stream);
            let mut at = 0;
            for &(src, bytes) in srcs.iter().filter(|&&(_, bytes)| bytes > 0) {
                stream.commands.push(Command::Copy {
                    src: src.clone(),
                    dst: staging.clone(),
                    dst_offset: at,
                    bytes,
                });
                at += bytes;
            }
            self.submit(&mut stream)?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..total, move |r| {
            let _ = tx.send(r);
        });
        // Whichever thread polls runs the callback: when another thread's poll collected
        // ours, it may land just after our own wait returns, so poll until it arrives.
        let start = std::time::Instant::now();
        let mapped = loop {
            self.wait()?;
            match rx.try_recv() {
                Ok(r) => break r,
                Err(TryRecvError::Disconnected) => {
                    return Err(KernelError::Device(
                        "the readback was dropped by the device".into(),
                    ))
                }
                Err(TryRecvError::Empty) if start.elapsed() < SYNC_TIMEOUT => {
                    std::thread::yield_now()
                }
                Err(TryRecvError::Empty) => {
                    return Err(KernelError::Device(
                        "the GPU never finished the readback".into(),
                    ))
                }
            }
        };
        mapped.map_err(|e| KernelError::Device(format!("reading GPU memory back: {e}")))?;
        let data = {
            let view = staging
                .get_mapped_range(0..total)
                .map_err(|e| KernelError::Device(format!("reading GPU memory back: {e}")))?;
            let mut at = 0;
            srcs.iter()
                .map(|&(_, bytes)| {
                    let part = view[at as usize..(at + bytes) as usize].to_vec();
                    at += bytes;
                    part
                })
                .collect()
        };
        staging.unmap();
        self.staging.give_back(staging);
        Ok(data)
    }
}
