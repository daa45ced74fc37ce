// The time loop of a user-defined cell (fastrnn/custom.py): per step the recurrent GEMM through
// blas.h, then the step's rows through a C function pointer to the cell's generated Numba
// entry point (kernels/numba/custom.py, `_CFUNC`), so no step goes back to Python.
//
// Trust: the tensors and the row ranges are checked here before the loop (they must agree with
// each other); the entry point checks a tag (forward or backward, element size) and that the
// arrays fit the cell it was generated for (state count, gates, parameter and mask widths),
// and returns non-zero without touching memory if not; one probe call with no
// rows does that before the loop.  Beyond non-null the pointer itself cannot be checked: it must
// be an entry point of a generated module, `step_address(...)` (fastrnn/custom.py passes it).
//
// Threads (torch's count): the GEMMs run on MKL's threads, a step's rows are split over
// at::parallel_for (each chunk one call of the entry point with its row range); the backward
// accumulates the parameter gradients per row, so each thread slot gets its own dprm, summed
// after the loop (the split, hence the summation order, depends on the thread count only).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "blas.h"
#include "custom_loop.h"
#include "layer_checks.h"

namespace fastrnn {
namespace {

using at::Tensor;
using checks::check_shape;
using checks::check_tensor;

constexpr const char* kWhere = "fastrnn._ext.custom";

// int64 step(int64 d, int64 off, int64 b0, int64 b1, int64 save, void** ptrs, const int64* dims)
using StepFn = int64_t (*)(int64_t, int64_t, int64_t, int64_t, int64_t, void**, const int64_t*);

// A step's rows are split over torch's threads in chunks of at least this many.  Measured
// (LayerNorm-LSTM fwd+bwd, float32, T=50, I=H, 2 threads, 2-core Xeon Sapphire Rapids class,
// load < 1), split / unsplit time at H = 128 | 256: B=8 0.89 | 0.88, B=16 0.86 | 0.84, B=64
// 0.86 | 0.77; 1 thread unchanged.  Chunks of 2 rows against 4: B=4 0.82 | 0.94, B=8 and 16 the
// same within 3%; 8 was slower from B=8.
constexpr int64_t kRowsPerChunk = 2;

enum StepKind : int64_t { kForwardStep = 1, kBackwardStep = 2 };

// The arrays of one entry point call: their data pointers, and dims = the tag (kind, element
// size) then their shapes, concatenated, in the order of the generated module's _FWD_ARRAYS /
// _BWD_ARRAYS (kernels/numba/custom.py).
struct StepArgs {
  std::vector<void*> ptrs;
  std::vector<int64_t> dims;

  StepArgs(StepKind kind, std::initializer_list<Tensor> ts)
      : dims{kind, static_cast<int64_t>(ts.begin()->element_size())} {
    for (const Tensor& t : ts) {
      ptrs.push_back(t.data_ptr());
      for (int64_t s : t.sizes()) dims.push_back(s);
    }
  }
};

StepFn step_fn(int64_t address) {
  TORCH_CHECK_VALUE(address != 0, kWhere, ": the step function pointer is null; pass the generated module's "
                    "step_address(\"fwd\" | \"bwd\", dtype)");
  return reinterpret_cast<StepFn>(static_cast<uintptr_t>(address));
}

void check_entry_status(int64_t status) {
  TORCH_CHECK_VALUE(status == 0, kWhere, ": the step function refused the arrays (status ", status,
                    "): they do not fit the entry point (forward or backward, float32 or float64) or the cell "
                    "it was generated for (states, gates, parameter or mask widths); was the pointer taken "
                    "from another pass, dtype or cell?");
}

// sizes [T] rows per step, non-increasing, first <= B; offsets [T + 1] each step's first row,
// their running sum, ending at N: the packed layout of fastrnn.backends.reference.step_rows.
std::vector<int64_t> checked_rows(const Tensor& sizes, const Tensor& offsets, int64_t B, int64_t N,
                                  std::vector<int64_t>* offs) {
  TORCH_CHECK_VALUE(sizes.dim() == 1 && sizes.scalar_type() == at::kLong && sizes.device().is_cpu(), kWhere,
                    ": sizes must be a 1-D int64 CPU tensor, got ", sizes.scalar_type(), " of shape ", sizes.sizes());
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.scalar_type() == at::kLong && offsets.device().is_cpu(), kWhere,
                    ": offsets must be a 1-D int64 CPU tensor, got ", offsets.scalar_type(), " of shape ",
                    offsets.sizes());
  const int64_t T = sizes.size(0);
  TORCH_CHECK_VALUE(offsets.size(0) == T + 1, kWhere, ": offsets must have len(sizes) + 1 = ", T + 1,
                    " entries, got ", offsets.size(0));
  const Tensor sc = sizes.contiguous(), oc = offsets.contiguous();
  std::vector<int64_t> rows(sc.data_ptr<int64_t>(), sc.data_ptr<int64_t>() + T);
  offs->assign(oc.data_ptr<int64_t>(), oc.data_ptr<int64_t>() + T + 1);
  TORCH_CHECK_VALUE((*offs)[0] == 0, kWhere, ": offsets[0] must be 0, got ", (*offs)[0]);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t limit = t == 0 ? B : rows[t - 1];
    TORCH_CHECK_VALUE(rows[t] >= 0 && rows[t] <= limit, kWhere, ": sizes must be non-increasing and at most the ",
                      "batch size ", B, "; sizes[", t, "] = ", rows[t], " after ", limit);
    TORCH_CHECK_VALUE((*offs)[t + 1] == (*offs)[t] + rows[t], kWhere, ": offsets[", t + 1,
                      "] must be offsets[", t, "] + sizes[", t, "] = ", (*offs)[t] + rows[t], ", got ",
                      (*offs)[t + 1]);
  }
  TORCH_CHECK_VALUE((*offs)[T] == N, kWhere, ": the steps cover ", (*offs)[T], " rows but there are N = ", N);
  return rows;
}

// What forward and backward share: gi [D, N, GH] (float32 or float64, the dtype of the rest),
// whh0/whh1 [GH, H], prm [D, P], zm [D, 1 | N, Z], the states [D, S, B, H]; returns the sizes.
struct LoopDims {
  int64_t D, N, GH, S, B, H;
};

LoopDims check_common(const Tensor& gi, const Tensor& whh0, const Tensor& whh1, const Tensor& prm,
                      const Tensor& zm, const Tensor& states, const char* states_name) {
  TORCH_CHECK_TYPE(gi.defined() && (gi.scalar_type() == at::kFloat || gi.scalar_type() == at::kDouble), kWhere,
                   ": gi must be float32 or float64, got ", gi.defined() ? c10::toString(gi.scalar_type()) : "None");
  TORCH_CHECK_VALUE(gi.device().is_cpu(), kWhere, ": the custom-cell loop runs on CPU tensors, got ", gi.device());
  const auto dt = gi.scalar_type();
  check_tensor(kWhere, gi, "gi", gi, dt, 3);
  check_tensor(kWhere, states, states_name, gi, dt, 4);
  LoopDims d{gi.size(0), gi.size(1), gi.size(2), states.size(1), states.size(2), states.size(3)};
  TORCH_CHECK_VALUE(d.D == 1 || d.D == 2, kWhere, ": gi.size(0) is the number of directions, 1 or 2; got ", d.D);
  TORCH_CHECK_VALUE(d.S >= 1, kWhere, ": a cell has at least one state, got ", states_name, " ", states.sizes());
  check_shape(kWhere, states, states_name, {d.D, d.S, d.B, d.H});
  check_tensor(kWhere, whh0, "whh0", gi, dt, 2);
  check_shape(kWhere, whh0, "whh0", {d.GH, d.H});
  check_tensor(kWhere, whh1, "whh1", gi, dt, 2);
  check_shape(kWhere, whh1, "whh1", {d.GH, d.H});
  check_tensor(kWhere, prm, "prm", gi, dt, 2);
  TORCH_CHECK_VALUE(prm.size(0) == d.D, kWhere, ": prm must be [D, P] with D = ", d.D, ", got ", prm.sizes());
  check_tensor(kWhere, zm, "zm", gi, dt, 3);
  TORCH_CHECK_VALUE(zm.size(0) == d.D && (zm.size(1) == 1 || zm.size(1) == d.N) && zm.size(2) >= 1, kWhere,
                    ": zm must be [D, N, S*H] zoneout masks or a [D, 1, 1] placeholder with D = ", d.D, ", N = ",
                    d.N, ", got ", zm.sizes());
  return d;
}

// Rows [0, bs) of one step over torch's threads; ptrs_of(thread slot) gives that slot's pointers.
template <typename PtrsOf>
void run_rows(StepFn step, int64_t dir, int64_t off, int64_t bs, int64_t save, const PtrsOf& ptrs_of,
              const int64_t* dims) {
  std::atomic<int64_t> status{0};
  at::parallel_for(0, bs, kRowsPerChunk, [&](int64_t b0, int64_t b1) {
    const int64_t s = step(dir, off, b0, b1, save, ptrs_of(at::get_thread_num()), dims);
    if (s != 0) status = s;
  });
  check_entry_status(status);
}

}  // namespace

std::vector<Tensor> custom_forward(int64_t fn, const Tensor& gi, const Tensor& whh0, const Tensor& whh1,
                                   const Tensor& bhh, const Tensor& prm, const Tensor& zm, const Tensor& st0,
                                   const Tensor& sizes, const Tensor& offsets, bool save) {
  const StepFn step = step_fn(fn);
  const LoopDims d = check_common(gi, whh0, whh1, prm, zm, st0, "st0");
  check_tensor(kWhere, bhh, "bhh", gi, gi.scalar_type(), 2);
  check_shape(kWhere, bhh, "bhh", {d.D, d.GH});
  std::vector<int64_t> offs;
  const std::vector<int64_t> rows = checked_rows(sizes, offsets, d.B, d.N, &offs);
  const auto opt = gi.options();
  Tensor out = at::empty({d.N, d.D * d.H}, opt);
  Tensor st = st0.clone();
  Tensor sprev = save ? at::empty({d.D, d.N, d.S, d.H}, opt) : at::empty({1, 1, 1, 1}, opt);
  Tensor ghs = save ? at::empty({d.D, d.N, d.GH}, opt) : at::empty({1, 1, 1}, opt);
  Tensor gh = at::empty({std::max<int64_t>(d.B, 1), d.GH}, opt);
  StepArgs args(kForwardStep, {gi, gh, bhh, prm, zm, out, st, sprev, ghs});
  check_entry_status(step(0, 0, 0, 0, save, args.ptrs.data(), args.dims.data()));  // checks only: no rows
  const int64_t T = static_cast<int64_t>(rows.size());
  const auto ptrs = [&](int) { return args.ptrs.data(); };
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "custom_forward", [&] {
    pybind11::gil_scoped_release nogil;
    for (int64_t dir = 0; dir < d.D; ++dir) {
      const scalar_t* w = (dir == 0 ? whh0 : whh1).data_ptr<scalar_t>();
      const scalar_t* h = st.data_ptr<scalar_t>() + dir * d.S * d.B * d.H;
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = dir == 1 ? T - 1 - s : s;
        gemm<scalar_t>(false, true, rows[t], d.GH, d.H, h, d.H, w, d.H, scalar_t(0), gh.data_ptr<scalar_t>(), d.GH);
        run_rows(step, dir, offs[t], rows[t], save, ptrs, args.dims.data());
      }
    }
  });
  return {out, st, sprev, ghs};
}

std::vector<Tensor> custom_backward(int64_t fn, const Tensor& gi, const Tensor& ghs, const Tensor& sprev,
                                    const Tensor& whh0, const Tensor& whh1, const Tensor& prm, const Tensor& zm,
                                    const Tensor& sizes, const Tensor& offsets, const Tensor& dout,
                                    const Tensor& ds) {
  const StepFn step = step_fn(fn);
  const LoopDims d = check_common(gi, whh0, whh1, prm, zm, ds, "ds");
  const auto dt = gi.scalar_type();
  check_tensor(kWhere, ghs, "ghs", gi, dt, 3);
  check_shape(kWhere, ghs, "ghs", {d.D, d.N, d.GH});
  check_tensor(kWhere, sprev, "sprev", gi, dt, 4);
  check_shape(kWhere, sprev, "sprev", {d.D, d.N, d.S, d.H});
  check_tensor(kWhere, dout, "dout", gi, dt, 2);
  check_shape(kWhere, dout, "dout", {d.N, d.D * d.H});
  std::vector<int64_t> offs;
  const std::vector<int64_t> rows = checked_rows(sizes, offsets, d.B, d.N, &offs);
  Tensor dgi = at::empty_like(gi);
  Tensor dgh = at::empty_like(ghs);
  // dprm sums over rows: one partial sum per thread slot, added up after the loop
  const int64_t slots = std::max<int64_t>(1, at::get_num_threads());
  Tensor dprm_parts = at::zeros({slots, d.D, prm.size(1)}, prm.options());
  StepArgs args(kBackwardStep, {gi, ghs, sprev, prm, zm, dout, ds, dgi, dgh, dprm_parts[0]});
  std::vector<std::vector<void*>> slot_ptrs(slots, args.ptrs);
  constexpr size_t kDprm = 9;  // dprm's place in _BWD_ARRAYS
  for (int64_t i = 0; i < slots; ++i) slot_ptrs[i][kDprm] = dprm_parts[i].data_ptr();
  check_entry_status(step(0, 0, 0, 0, 0, args.ptrs.data(), args.dims.data()));  // checks only: no rows
  const int64_t T = static_cast<int64_t>(rows.size());
  const auto ptrs = [&](int tid) { return slot_ptrs[std::min<int64_t>(std::max(tid, 0), slots - 1)].data(); };
  AT_DISPATCH_FLOATING_TYPES(dt, "custom_backward", [&] {
    pybind11::gil_scoped_release nogil;
    for (int64_t dir = 0; dir < d.D; ++dir) {
      const scalar_t* w = (dir == 0 ? whh0 : whh1).data_ptr<scalar_t>();
      scalar_t* dh = ds.data_ptr<scalar_t>() + dir * d.S * d.B * d.H;
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = dir == 1 ? s : T - 1 - s;
        run_rows(step, dir, offs[t], rows[t], 0, ptrs, args.dims.data());
        // ds[dir, 0, :bs] += dgh[dir, off:off+bs] @ W_hh: the gradient reaching h_{t-1}
        const scalar_t* g = dgh.data_ptr<scalar_t>() + (dir * d.N + offs[t]) * d.GH;
        gemm<scalar_t>(false, false, rows[t], d.H, d.GH, g, d.GH, w, d.H, scalar_t(1), dh, d.H);
      }
    }
  });
  return {dgi, dgh, slots == 1 ? dprm_parts[0] : dprm_parts.sum(0)};
}

}  // namespace fastrnn
