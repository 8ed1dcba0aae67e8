// One Adam step on one flat parameter tensor by libtorch's fused kernel, the kernel of
// `torch.optim.Adam(fused=True)`: one pass over the parameters, the gradient and both
// moments, instead of the eight passes (and eight dispatches) of the op-by-op step.
//
// Why C++: tch binds only the ops whose arguments it can marshal, and `_fused_adam_`
// takes tensor lists, so it has no binding. `tch::Tensor` wraps an `at::Tensor*`, which
// is what these functions take.

#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adam.h>

#include <exception>

#include "last_error.h"

using flame_shim::remember;

// Adam (no weight decay, no AMSGrad) on `params` with gradient `grad` and moments `m`,
// `v`. `steps` is the step count as a one-element float32 tensor on the parameters'
// device (1 on the first call; the bias corrections use it, the kernel does not change
// it) and `lr` the learning rate as a one-element tensor: both are read by the kernel
// where it runs, so a CUDA graph that captured this call uses their values at each
// replay. Returns null, or a message when libtorch refused the call (a dtype or device it
// has no kernel for). The kernel does not check that the four tensors have the same size
// and layout: it walks raw pointers over the parameters' length, so the caller checks
// that first.
extern "C" const char* flame_fused_adam_step(const at::Tensor* params, const at::Tensor* grad,
                                             const at::Tensor* m, const at::Tensor* v,
                                             const at::Tensor* steps, const at::Tensor* lr,
                                             double beta1, double beta2, double eps) {
  try {
    at::_fused_adam_({*params}, {*grad}, {*m}, {*v}, {}, {*steps}, *lr, beta1, beta2,
                     /*weight_decay=*/0.0, eps, /*amsgrad=*/false, /*maximize=*/false);
    return nullptr;
  } catch (const c10::Error& e) {
    // Without the C++ stack trace that `what()` appends.
    return remember(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return remember(e.what());
  }
}
