// The C++ time loop of user-defined cells (custom_loop.cpp), bound as fastrnn._ext.custom_forward /
// custom_backward and driven by fastrnn/custom.py's _NumbaCellKernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace fastrnn {

// fn: the generated module's step_address("fwd", dtype); gi [D, N, GH]; whh0/whh1 [GH, H]; bhh [D, GH];
// prm [D, P]; zm [D, N, S*H] or [D, 1, 1]; st0 [D, S, B, H]; sizes [T] and offsets [T + 1] int64.
// Returns out [N, D*H], st [D, S, B, H], and when save sprev [D, N, S, H], ghs [D, N, GH]
// (else [1, 1, 1, 1] and [1, 1, 1] placeholders).
std::vector<at::Tensor> custom_forward(int64_t fn, const at::Tensor& gi, const at::Tensor& whh0,
                                       const at::Tensor& whh1, const at::Tensor& bhh, const at::Tensor& prm,
                                       const at::Tensor& zm, const at::Tensor& st0, const at::Tensor& sizes,
                                       const at::Tensor& offsets, bool save);

// fn: step_address("bwd", dtype); the forward's inputs and saved sprev, ghs; dout [N, D*H];
// ds [D, S, B, H]: dL/d(final states) in, dL/d(initial states) out (written in place).
// Returns dgi, dgh [D, N, GH] and dprm [D, P].
std::vector<at::Tensor> custom_backward(int64_t fn, const at::Tensor& gi, const at::Tensor& ghs,
                                        const at::Tensor& sprev, const at::Tensor& whh0, const at::Tensor& whh1,
                                        const at::Tensor& prm, const at::Tensor& zm, const at::Tensor& sizes,
                                        const at::Tensor& offsets, const at::Tensor& dout, const at::Tensor& ds);

}  // namespace fastrnn
