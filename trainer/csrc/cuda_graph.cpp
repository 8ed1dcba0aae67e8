// CUDA graphs of a training update: record the kernels one update launches, then replay
// them with one launch per update; and lanes, which let several trainers' graphs replay
// concurrently on one GPU. Eager tch on a GPU is launch bound (a FLAME-M update
// is a few hundred small kernels), which is what a graph removes.
//
// Why C++: tch has no graph API. `at::cuda::CUDAGraph` is libtorch's own (the one under
// `torch.cuda.CUDAGraph`): it routes the caching allocator into a private pool during
// capture, so the tensors an update allocates keep their addresses across replays, and it
// registers the CUDA generator, so each replay draws fresh random numbers from the
// generator's current seed and offset.
//
// The file compiles in every build. Where the libtorch that the trainer links has no
// CUDA backend, or its CUDA headers are not found, build.rs leaves FLAME_CUDA_GRAPHS
// undefined and every entry point answers with the reason instead.

#include <exception>

#include "last_error.h"

#ifdef FLAME_CUDA_GRAPHS
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <mutex>
#include <optional>
#endif

using flame_shim::remember;

#ifdef FLAME_CUDA_GRAPHS

// One graph and the side stream it is captured on (capture on the legacy default stream
// is illegal). While `on_stream` holds a guard, everything libtorch launches on this
// thread goes to that stream: the warm-up updates, then the capture. (The generic
// `c10::StreamGuard` goes through libtorch's registered CUDA guard; `CUDAStreamGuard`
// would compile CUDA runtime calls into this file, and the trainer does not link the
// CUDA runtime itself.)
struct FlameCudaGraph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream stream;
  std::optional<c10::StreamGuard> on_stream;

  explicit FlameCudaGraph(c10::DeviceIndex device)
      : stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device)) {}
};

#define FLAME_TRY(body)                              \
  try {                                              \
    body;                                            \
    return nullptr;                                  \
  } catch (const c10::Error& e) {                    \
    return remember(e.what_without_backtrace());     \
  } catch (const std::exception& e) {                \
    return remember(e.what());                       \
  }

extern "C" const char* flame_cuda_graph_new(int device, FlameCudaGraph** out) {
  FLAME_TRY(*out = new FlameCudaGraph(static_cast<c10::DeviceIndex>(device)))
}

// Route this thread's launches to the graph's side stream, after all work queued so far
// (a device synchronization: this happens once per graph, never per update).
extern "C" const char* flame_cuda_graph_enter_stream(FlameCudaGraph* g) {
  FLAME_TRY({
    c10::cuda::device_synchronize();
    g->on_stream.emplace(g->stream.unwrap());
  })
}

// Back to the previous stream, after the side stream's work.
extern "C" const char* flame_cuda_graph_leave_stream(FlameCudaGraph* g) {
  FLAME_TRY({
    c10::cuda::device_synchronize();
    g->on_stream.reset();
  })
}

// Start recording on the side stream (entered by `flame_cuda_graph_enter_stream`).
extern "C" const char* flame_cuda_graph_capture_begin(FlameCudaGraph* g) {
  FLAME_TRY(g->graph.capture_begin())
}

// Stop recording and instantiate the graph.
extern "C" const char* flame_cuda_graph_capture_end(FlameCudaGraph* g) {
  FLAME_TRY(g->graph.capture_end())
}

// Launch the recorded kernels once, on the current stream.
extern "C" const char* flame_cuda_graph_replay(FlameCudaGraph* g) {
  FLAME_TRY(g->graph.replay())
}

extern "C" void flame_cuda_graph_free(FlameCudaGraph* g) { delete g; }

// A lane: one trainer's own stream and random-number state, so that several trainers'
// graphs replay concurrently on one GPU. A graph reads its random seed and offset from
// device tensors of the generator state it was recorded with, which each replay fills
// on the replaying stream; graphs of one shared state on several streams would race on
// those tensors. Entering a lane makes its stream current and shares its state into the
// default CUDA generator (`graphsafe_set_state`, what `torch.cuda.graph` does for
// generators it is handed): everything libtorch then draws, records or reseeds
// (`manual_seed`) uses the lane's state.
struct FlameCudaLane {
  c10::cuda::CUDAStream stream;
  at::Generator generator;

  explicit FlameCudaLane(c10::DeviceIndex device)
      : stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device)),
        generator(at::cuda::detail::createCUDAGenerator(device)) {}
};

extern "C" const char* flame_cuda_lane_new(int device, FlameCudaLane** out) {
  FLAME_TRY(*out = new FlameCudaLane(static_cast<c10::DeviceIndex>(device)))
}

extern "C" const char* flame_cuda_lane_enter(FlameCudaLane* lane) {
  FLAME_TRY({
    c10::cuda::setCurrentCUDAStream(lane->stream);
    at::Generator current =
        at::cuda::detail::getDefaultCUDAGenerator(lane->stream.device_index());
    std::lock_guard<std::mutex> lock(current.mutex());
    current.graphsafe_set_state(lane->generator);
  })
}

extern "C" void flame_cuda_lane_free(FlameCudaLane* lane) { delete lane; }

#else

struct FlameCudaGraph;

namespace {
const char* unavailable() {
  return remember(
      "this trainer was built against a libtorch without CUDA (or without the CUDA "
      "headers of its nvidia-cuda-runtime package), so it cannot capture CUDA graphs");
}
}  // namespace

extern "C" const char* flame_cuda_graph_new(int, FlameCudaGraph**) { return unavailable(); }
extern "C" const char* flame_cuda_graph_enter_stream(FlameCudaGraph*) { return unavailable(); }
extern "C" const char* flame_cuda_graph_leave_stream(FlameCudaGraph*) { return unavailable(); }
extern "C" const char* flame_cuda_graph_capture_begin(FlameCudaGraph*) { return unavailable(); }
extern "C" const char* flame_cuda_graph_capture_end(FlameCudaGraph*) { return unavailable(); }
extern "C" const char* flame_cuda_graph_replay(FlameCudaGraph*) { return unavailable(); }
extern "C" void flame_cuda_graph_free(FlameCudaGraph*) {}

struct FlameCudaLane;
extern "C" const char* flame_cuda_lane_new(int, FlameCudaLane**) { return unavailable(); }
extern "C" const char* flame_cuda_lane_enter(FlameCudaLane*) { return unavailable(); }
extern "C" void flame_cuda_lane_free(FlameCudaLane*) {}

#endif
