//! CUDA graphs through `csrc/cuda_graph.cpp` (libtorch's `at::cuda::CUDAGraph`): record
//! the kernels a closure launches once, then replay them with one launch.
//!
//! What a captured closure must respect (all of it holds for [`crate::agents::Agent::update`]):
//! its inputs live in tensors that keep their storage between replays (copy new values
//! into them, never rebind them); every value that changes between replays is a device
//! tensor, not a host number baked in at capture (learning rates, Adam step counts, α);
//! it never reads a tensor on the host (no `double_value`: a synchronization inside a
//! capture is an error); its branches are fixed at capture, so each variant of an update
//! gets its own graph. Random numbers are drawn from libtorch's CUDA generator, which
//! the graph registers: a replay draws from the generator's seed and offset at the time
//! of the replay, so reseeding before each update works as it does eagerly.
//!
//! Several trainers on one GPU (`trainer train --seeds`) each get a [`CudaLane`]: a stream
//! of their own, so one seed's replay runs while the host steps another seed's envs, and
//! a random-number state of their own, so concurrent replays do not share the device
//! tensors a replay reads its seed and offset from.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;

use anyhow::{bail, ensure, Result};
use tch::{Device, Kind, Tensor};

extern "C" {
    fn flame_cuda_graph_new(device: c_int, out: *mut *mut c_void) -> *const c_char;
    fn flame_cuda_graph_enter_stream(graph: *mut c_void) -> *const c_char;
    fn flame_cuda_graph_leave_stream(graph: *mut c_void) -> *const c_char;
    fn flame_cuda_graph_capture_begin(graph: *mut c_void) -> *const c_char;
    fn flame_cuda_graph_capture_end(graph: *mut c_void) -> *const c_char;
    fn flame_cuda_graph_replay(graph: *mut c_void) -> *const c_char;
    fn flame_cuda_graph_free(graph: *mut c_void);
    fn flame_cuda_lane_new(device: c_int, out: *mut *mut c_void) -> *const c_char;
    fn flame_cuda_lane_enter(lane: *mut c_void) -> *const c_char;
    fn flame_cuda_lane_free(lane: *mut c_void);
}

/// The shim's answer: null, or the message of what libtorch refused.
fn check(what: &str, message: *const c_char) -> Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null answer is a NUL-terminated message in the shim's thread-local
    // buffer, valid until the next failing call on this thread.
    let message = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    bail!("CUDA graph {what}: {message}")
}

/// One graph on one CUDA device: warmed up, then recorded once, then replayed.
pub struct CudaGraph {
    handle: NonNull<c_void>,
}

impl CudaGraph {
    /// An empty graph on `device`. Refused on the CPU: there is nothing to record there,
    /// and the eager update is already what runs.
    pub fn new(device: Device) -> Result<Self> {
        let Device::Cuda(index) = device else {
            bail!(
                "CUDA graphs record CUDA kernels, and this run is on {device:?}: use --device cuda, or leave CUDA graphs off (the CPU runs the same update eagerly)"
            );
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: the shim writes a fresh graph into `raw` or answers with an error.
        check("creation", unsafe {
            flame_cuda_graph_new(index as c_int, &mut raw)
        })?;
        Ok(Self {
            handle: NonNull::new(raw).expect("the shim returned a graph"),
        })
    }

    /// Runs `work` eagerly on the graph's side stream. Do this at least once before
    /// [`CudaGraph::record`]: libtorch's lazy initializations (cuBLAS handles and
    /// workspaces, kernel caches) must not happen inside a capture.
    pub fn warm_up<T>(&mut self, work: impl FnOnce() -> T) -> Result<T> {
        let h = self.handle.as_ptr();
        // SAFETY (this and the call below): `h` is the live graph owned by `self`.
        check("side stream", unsafe { flame_cuda_graph_enter_stream(h) })?;
        let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let left = check("side stream", unsafe { flame_cuda_graph_leave_stream(h) });
        let output = output.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        left.map(|()| output)
    }

    /// Records the kernels `work` launches, on the side stream. The recorded work has not
    /// run: [`CudaGraph::replay`] runs it. Returns what `work` returned (tensors in the
    /// graph's memory, which every replay overwrites).
    pub fn record<T>(&mut self, work: impl FnOnce() -> T) -> Result<T> {
        let h = self.handle.as_ptr();
        // SAFETY (this and the calls below): `h` is the live graph owned by `self`.
        check("side stream", unsafe { flame_cuda_graph_enter_stream(h) })?;
        let begun = check("capture", unsafe { flame_cuda_graph_capture_begin(h) });
        let output = begun.map(|()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
        let ended = match output {
            Ok(_) => check("capture", unsafe { flame_cuda_graph_capture_end(h) }),
            Err(_) => Ok(()),
        };
        let left = check("side stream", unsafe { flame_cuda_graph_leave_stream(h) });
        let output = output?.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        ended.and(left).map(|()| output)
    }

    /// Launches the recorded kernels once on the current stream.
    pub fn replay(&self) -> Result<()> {
        // SAFETY: the handle is the live graph owned by `self`.
        check("replay", unsafe {
            flame_cuda_graph_replay(self.handle.as_ptr())
        })
    }
}

/// One trainer's own CUDA stream and random-number state on a GPU shared by several
/// trainers. While a lane is entered, libtorch launches on its stream, and the default
/// CUDA generator draws, records into graphs and reseeds with its state.
pub struct CudaLane {
    handle: NonNull<c_void>,
}

impl CudaLane {
    /// A lane on `device` (a CUDA device: the CPU runs one thing at a time anyway).
    pub fn new(device: Device) -> Result<Self> {
        let Device::Cuda(index) = device else {
            bail!("CUDA lanes are for CUDA devices, and this run is on {device:?}");
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: the shim writes a fresh lane into `raw` or answers with an error.
        check("lane", unsafe {
            flame_cuda_lane_new(index as c_int, &mut raw)
        })?;
        Ok(Self {
            handle: NonNull::new(raw).expect("the shim returned a lane"),
        })
    }

    /// Makes this lane's stream current and its random-number state the default
    /// generator's, until another lane is entered.
    pub fn enter(&self) -> Result<()> {
        // SAFETY: the handle is the live lane owned by `self`.
        check("lane", unsafe {
            flame_cuda_lane_enter(self.handle.as_ptr())
        })
    }
}

impl Drop for CudaLane {
    fn drop(&mut self) {
        // SAFETY: the handle came from `flame_cuda_lane_new` and is freed once.
        unsafe { flame_cuda_lane_free(self.handle.as_ptr()) }
    }
}

/// Two lanes on `device`, each recording a graph that draws normal numbers, replayed in
/// turn after reseeds: each replay must draw what an eager draw after the same reseed
/// draws on that lane, and the lanes must differ (`trainer devices` reports it).
pub fn lanes_self_check(device: Device) -> Result<()> {
    let n = 4096;
    let opts = (Kind::Float, device);
    let lanes = [CudaLane::new(device)?, CudaLane::new(device)?];
    let mut graphs = Vec::new();
    let mut outputs = Vec::new();
    for lane in &lanes {
        lane.enter()?;
        let out = Tensor::zeros([n], opts);
        let draw = || out.shallow_clone().copy_(&Tensor::randn([n], opts));
        let mut graph = CudaGraph::new(device)?;
        graph.warm_up(draw)?;
        graph.record(draw)?;
        graphs.push(graph);
        outputs.push(out);
    }
    let seed = |round: i64, lane: usize| 100 + 10 * round + lane as i64;
    for round in 0..3 {
        for (i, lane) in lanes.iter().enumerate() {
            lane.enter()?;
            tch::manual_seed(seed(round, i));
            graphs[i].replay()?;
        }
        for (i, lane) in lanes.iter().enumerate() {
            lane.enter()?;
            tch::manual_seed(seed(round, i));
            let eager = Tensor::randn([n], opts);
            ensure!(
                outputs[i].equal(&eager),
                "lane {i}, round {round}: the replay drew other numbers than an eager draw after the same reseed"
            );
        }
        ensure!(
            !outputs[0].equal(&outputs[1]),
            "round {round}: two lanes reseeded differently drew the same numbers"
        );
    }
    Ok(())
}

/// Records `x += 1` on a small tensor of `device`, replays it three times and checks
/// the result: whether CUDA graphs work there, end to end (`trainer devices` reports it).
pub fn self_check(device: Device) -> Result<()> {
    let x = Tensor::zeros([4], (Kind::Float, device));
    let add_one = || {
        let _ = x.shallow_clone().g_add_scalar_(1.0);
    };
    let mut graph = CudaGraph::new(device)?;
    graph.warm_up(add_one)?;
    graph.record(add_one)?;
    let recorded = x.double_value(&[0]);
    ensure!(
        recorded == 1.0,
        "the recording ran its kernels ({recorded} after one warm-up call)"
    );
    for _ in 0..3 {
        graph.replay()?;
    }
    let replayed = x.double_value(&[0]);
    ensure!(replayed == 4.0, "three replays gave {replayed}, expected 4");
    Ok(())
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: the handle came from `flame_cuda_graph_new` and is freed once.
        unsafe { flame_cuda_graph_free(self.handle.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU a graph is refused with the reason and the way out.
    #[test]
    fn graphs_are_refused_on_the_cpu() {
        let err = CudaGraph::new(Device::Cpu)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("CUDA graphs record CUDA kernels, and this run is on Cpu"),
            "{err}"
        );
        assert!(err.contains("--device cuda"), "{err}");
    }

    /// Where libtorch sees a GPU, a recorded in-place update replays with fresh effect:
    /// the graph really recorded the kernels; and lanes replay their own random streams
    /// (this part needs a GPU).
    #[test]
    fn replays_repeat_the_recorded_kernels_where_a_gpu_exists() {
        if tch::Cuda::is_available() {
            self_check(Device::Cuda(0)).unwrap();
            lanes_self_check(Device::Cuda(0)).unwrap();
        }
    }

    /// On the CPU a lane is refused.
    #[test]
    fn lanes_are_refused_on_the_cpu() {
        let err = CudaLane::new(Device::Cpu)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("CUDA lanes are for CUDA devices"), "{err}");
    }
}
