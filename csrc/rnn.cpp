// fastrnn._ext: the cpp backend.  One layer (all directions) per call, forward and backward.
//
//   forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train)
//       -> (out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] | None, saved)
//   backward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, saved, dout, dhn, dcn,
//            need_dx, need_dw) -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
//
// Shapes and semantics are those of fastrnn.backends.reference.rnn_layer.  The structure
// (DESIGN §3): one GEMM for the input projection of all steps and both directions; a C++
// time loop doing per step one GEMM h_{t-1} W_hh^T into a preallocated buffer and ONE fused
// pointwise pass (cells.h, vectorised, split across threads); no allocation inside the
// loop.  Backward runs the reverse loop (fused gate grads + the dh_{t-1} GEMM) and then
// computes every weight gradient as one GEMM over all steps.  (The float32 panel loops of
// fused_steps.h fold the input projection, dx and the weight gradients into the steps instead.)
//
// GEMMs go through torch's own BLAS (MKL in the x86 wheels): it is the fastest GEMM on
// the machine, it follows torch.set_num_threads, and we do not ship or build a BLAS.
// Large, once-per-layer products use at::mm/addmm_out on tensors.  The per-step products
// are small (often microseconds), so there the ~2-5 us of dispatcher and TensorImpl cost
// of at::mm_out would be a large fraction of the step: we call the same BLAS routine
// (sgemm_/dgemm_, which libtorch_cpu exports) directly on raw pointers, and fall back to
// at::mm_out when the symbol is not there (or FASTRNN_GEMM=aten).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cell_math.h"
#include "kernel_table.h"
#include "fused_steps.h"
#include "layer_checks.h"
#include "layer_grads.h"
#include "scratch.h"

namespace fastrnn {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// ---------------------------------------------------------------------------------------
// Kernel table: AVX-512 (F/DQ/VL/BW) or AVX2+FMA where the CPU has it, baseline x86-64
// otherwise.  FASTRNN_ISA=avx2|baseline caps the choice (read once, at the first call: tests run
// it in a fresh interpreter).
const KernelTable& kernels() {
  static const KernelTable* k = [] {
    const std::string cap = std::getenv("FASTRNN_ISA") ? std::getenv("FASTRNN_ISA") : "";
    bool avx2 = false, avx512 = false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#endif
    if (cap == "baseline") avx2 = avx512 = false;
    if (cap == "avx2") avx512 = false;
    if (avx512) return &isa_avx512::kernels();
    return avx2 ? &isa_avx2::kernels() : &isa_base::kernels();
  }();
  return *k;
}

template <typename T> FwdFn<T> fwd_kernel(int cell, bool save, bool out);
template <> FwdFn<float> fwd_kernel<float>(int c, bool s, bool o) { return kernels().fwd_f[c][s][o]; }
template <> FwdFn<double> fwd_kernel<double>(int c, bool s, bool o) { return kernels().fwd_d[c][s][o]; }
template <typename T> BwdFn<T> bwd_kernel(int cell, bool dout);
template <> BwdFn<float> bwd_kernel<float>(int c, bool d) { return kernels().bwd_f[c][d]; }
template <> BwdFn<double> bwd_kernel<double>(int c, bool d) { return kernels().bwd_d[c][d]; }

// ---------------------------------------------------------------------------------------
// Row-major GEMM on raw pointers: C[m,n] = alpha * op(A) op(B) + beta * C.
using fgemm_t = void (*)(const char*, const char*, const void*, const void*, const void*,
                         const float*, const float*, const void*, const float*, const void*,
                         const float*, float*, const void*);
using dgemm_t = void (*)(const char*, const char*, const void*, const void*, const void*,
                         const double*, const double*, const void*, const double*, const void*,
                         const double*, double*, const void*);

using spack_size_t = size_t (*)(const char*, const void*, const void*, const void*);
using spack_t = void (*)(const char*, const char*, const void*, const void*, const void*, const float*,
                         const float*, const void*, float*);
using scompute_t = void (*)(const char*, const char*, const void*, const void*, const void*, const float*,
                            const void*, const float*, const void*, const float*, float*, const void*);

struct Blas {
  fgemm_t s = nullptr;
  dgemm_t d = nullptr;
  // MKL's packed GEMM (float only): W_hh is packed once per layer call instead of by every
  // per-step sgemm; at small batch that repacking is as much memory traffic as the product.
  spack_size_t spack_size = nullptr;
  spack_t spack = nullptr;
  scompute_t scompute = nullptr;
};

const Blas& blas() {
  static const Blas b = [] {
    Blas r;
    const char* env = std::getenv("FASTRNN_GEMM");
    if (env && std::string(env) == "aten") return r;
    void* h = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!h) return r;
    r.s = reinterpret_cast<fgemm_t>(dlsym(h, "sgemm_"));
    r.d = reinterpret_cast<dgemm_t>(dlsym(h, "dgemm_"));
    if (!r.s || !r.d) return Blas{};
    if (!(env && std::string(env) == "nopack")) {
      r.spack_size = reinterpret_cast<spack_size_t>(dlsym(h, "sgemm_pack_get_size_"));
      r.spack = reinterpret_cast<spack_t>(dlsym(h, "sgemm_pack_"));
      r.scompute = reinterpret_cast<scompute_t>(dlsym(h, "sgemm_compute_"));
      if (!r.spack_size || !r.spack || !r.scompute) r.spack_size = nullptr, r.spack = nullptr, r.scompute = nullptr;
    }
    return r;
  }();
  return b;
}

template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const Blas& bl = blas();
  const int64_t lim = (int64_t(1) << 31) - 1;
  const bool small = m < lim && n < lim && k < lim && lda < lim && ldb < lim && ldc < lim;
  if (small && (std::is_same<T, float>::value ? bl.s != nullptr : bl.d != nullptr)) {
    // Column-major BLAS sees row-major C = op(A) op(B) as C^T = op(B)^T op(A)^T.  Integers
    // are passed as int64 holding values < 2^31: read correctly by both LP64 (the low 4
    // bytes, little-endian) and ILP64 builds.
    const int64_t M = n, N = m, K = k, LA = ldb, LB = lda, LC = ldc;
    const char tA = tb ? 'T' : 'N', tB = ta ? 'T' : 'N';
    const T one = T(1);
    if (k == 0) {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
      return;
    }
    if constexpr (std::is_same<T, float>::value)
      bl.s(&tA, &tB, &M, &N, &K, &one, B, &LA, A, &LB, &beta, C, &LC);
    else
      bl.d(&tA, &tB, &M, &N, &K, &one, B, &LA, A, &LB, &beta, C, &LC);
    return;
  }
  auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = ta ? at::from_blob(const_cast<T*>(A), {k, m}, {lda, 1}, opt).t()
                : at::from_blob(const_cast<T*>(A), {m, k}, {lda, 1}, opt);
  Tensor b = tb ? at::from_blob(const_cast<T*>(B), {n, k}, {ldb, 1}, opt).t()
                : at::from_blob(const_cast<T*>(B), {k, n}, {ldb, 1}, opt);
  Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opt);
  if (beta == T(0)) {
    at::mm_out(c, a, b);  // `c` is a strided view: ATen writes through it (copying if needed)
  } else {
    at::addmm_out(c, c, a, b, beta, 1);
  }
}

// The recurrent weight as the right operand of every step's row-major product
// C[m, n] = A[m, k] op(W) with m <= m_max; packed once where MKL offers it.
template <typename T>
struct StepGemm {
  bool tb = false;
  int64_t n = 0, k = 0, ldb = 0;
  const T* B = nullptr;
  Tensor packed;  // raw bytes

  StepGemm(bool tb_, int64_t n_, int64_t k_, const T* B_, int64_t ldb_, int64_t m_max)
      : tb(tb_), n(n_), k(k_), ldb(ldb_), B(B_) {
    const Blas& bl = blas();
    const int64_t lim = (int64_t(1) << 31) - 1;
    if (!std::is_same<T, float>::value || !bl.spack || n == 0 || k == 0 || m_max == 0 || n >= lim || k >= lim ||
        m_max >= lim || ldb >= lim)
      return;
    const int64_t M = n, N = m_max, K = k;
    const size_t bytes = bl.spack_size("A", &M, &N, &K);
    packed = at::empty({(int64_t)bytes + 64}, at::kByte);
    const char t = tb ? 'T' : 'N';
    const float one = 1.f;
    bl.spack("A", &t, &M, &N, &K, &one, reinterpret_cast<const float*>(B), &ldb,
             reinterpret_cast<float*>(packed.data_ptr()));
  }

  void operator()(int64_t m, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
    if (!packed.defined() || m == 0) {
      gemm<T>(false, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
      return;
    }
    const int64_t M = n, N = m, K = k, LA = ldb, LB = lda, LC = ldc;
    const float fb = static_cast<float>(beta);
    blas().scompute("P", "N", &M, &N, &K, reinterpret_cast<const float*>(packed.data_ptr()), &LA,
                    reinterpret_cast<const float*>(A), &LB, &fb, reinterpret_cast<float*>(C), &LC);
  }
};

// ---------------------------------------------------------------------------------------
// Pointwise passes are split across threads over the bs x H block, but only when a chunk
// holds enough work: waking the pool costs more than a whole step at B=1, H=128.
constexpr int64_t kGrain = 16384;

template <typename T, typename Args, typename Fn>
void run_pointwise(Fn fn, const Args& a, int64_t elems, int64_t grain) {
  if (elems <= grain || at::get_num_threads() == 1) {
    fn(a, 0, elems);
  } else {
    at::parallel_for(0, elems, grain, [&](int64_t b, int64_t e) { fn(a, b, e); });
  }
}

// The float32 loops of fused_steps.h (own panel GEMM, one parallel region per step) run where
// the CPU has AVX2+FMA, there is no proj_size and the batch has at most 64 rows, or at most 512
// rows for LSTM and GRU layers of 256+ units; other large batches are proper GEMMs where MKL's
// cache blocking over the rows holds up.  Measured on the 2-core AMD EPYC Zen4 (2 threads, both
// loops side by side in one process, T=100, ratio to torch panel / blas, fwd | fwd+bwd): GRU B1
// H256 3.68 / 1.84 | 6.59 / 3.96, LSTM B16 H256 0.84 / 0.62 | 0.86 / 0.69, GRU B64 H512 1.24 /
// 1.09 | 1.22 / 1.12, RNN B64 H1024 1.28 / 1.14 | 1.22 / 1.11.  Past 64 rows, with the panel loop
// doing the input side in its steps: LSTM B128 H256 1.10 / 0.87 | 1.30 / 1.09, B256 H256 0.98 /
// 0.83 | 1.28 / 1.11, T=50 B512 H256 1.12 / 0.99, B256 H1024 1.00 / 0.89; GRU B256 H256 1.51 /
// 1.32 | 1.34 / 1.24, T=50 B512 H256 1.50 / 1.42; but GRU T=50 B1024 H128 1.34 / 1.60, RNN B128
// H256 1.20 / 1.48 | 1.28 / 1.15, B256 H256 1.04 / 1.31 | 1.24 / 1.14 (RNN H512 and up favour
// the panel loop, 1.16-1.33 / 1.06-1.23, but not enough cases were measured to move them).
// FASTRNN_STEP_GEMM=blas|panel forces one loop; read per call, so one process can time both.
constexpr int64_t kFusedMaxRows = 64;
constexpr int64_t kFusedMaxRowsGated = 512;

// A single step (a cell, or T = 1) takes the BLAS loop without packing: packing W_hh would cost as
// much as the one product that reads it.
bool use_fused_steps(bool proj, int64_t rows, int64_t steps, int64_t gates, int64_t hidden) {
  if (proj || kernels().panel_f == nullptr || steps <= 1) return false;
  const char* force = std::getenv("FASTRNN_STEP_GEMM");
  if (force && std::string(force) == "blas") return false;
  if (force && std::string(force) == "panel") return true;
  return rows <= kFusedMaxRows || (gates >= 3 && hidden >= 256 && rows <= kFusedMaxRowsGated);
}

// The float32 input projection of 4096 rows (T x B) or more on the panel kernel (fused_steps.h)
// where the CPU has one; on BLAS otherwise.  Measured on the 2-core AMD EPYC Zen4, T=100 fwd, time
// with the panel projection / with MKL's: LSTM B64 H512 0.945, GRU B64 H512 0.944, RNN B64 H1024
// 0.959, LSTM B256 H256 0.955; below, packing W_ih costs more than it saves: GRU B16 H256 (1600
// rows) 1.04, GRU B1 H256 1.09.  FASTRNN_INPUT_GEMM=blas|panel forces one (read per call).
constexpr int64_t kPanelInputMinRows = 4096;

bool use_panel_input_gemm(int64_t rows) {
  if (kernels().panel_f == nullptr) return false;
  const char* force = std::getenv("FASTRNN_INPUT_GEMM");
  if (force && std::string(force) == "blas") return false;
  if (force && std::string(force) == "panel") return true;
  return rows >= kPanelInputMinRows;
}

// In the fused loop, each step does its own input projection on the panel kernel (fused_steps.h,
// StepInput; and the backward its dx and weight gradients) instead of one GEMM for all steps
// before the loop, when the batch has at least 4 rows and the packed [W_ih; W_hh] of a direction
// is at most 8 MiB or under 512 KiB per batch row: the step streams twice the weights, which pays
// while they stay in cache or the batch reuses them enough.  Measured on the 2-core AMD EPYC Zen4
// (2 threads, side by side in one process, T=100, ratio to torch, in-step / before the loop,
// fwd): LSTM H256 B8 1.13 / 0.92, B16 1.00 / 0.90, B64 0.99 / 0.84; LSTM B64 H512 (8 MiB) 1.05 /
// 0.91; GRU B64 H256 1.58 / 1.42; RNN B64 H1024 1.45 / 1.27; LSTM B4 H128 1.32 / 1.27, B4 H512
// 1.05 / 1.00; GRU B4 H512 3.30 / 3.13; RNN B4 H1024 (8 MiB) 3.79 / 3.51; fwd+bwd: LSTM B4 H128
// 1.41 / 1.10, B8 H512 0.98 / 0.91; GRU B4 H256 4.37 / 3.98.  But LSTM T=50 B16 H1024 (32 MiB)
// 0.70 / 1.04, B16 H768 (19 MiB) 0.90 / 0.97, B4 H1024 0.72 / 1.61, and at two rows or fewer,
// LSTM B2 H256 0.96 / 1.16, GRU B2 H256 3.75 / 4.38, LSTM B1 H128 1.12 / 1.30.
// FASTRNN_INPUT_GEMM=step forces it in the fused loop; =blas|panel force the projection before it.
constexpr int64_t kStepInputMinRows = 4;
constexpr int64_t kStepInputCachedBytes = int64_t(8) << 20;
constexpr int64_t kStepInputBytesPerRow = int64_t(512) << 10;

bool use_step_input_gemm(bool fused, int64_t batch, int64_t weight_bytes) {
  if (!fused || kernels().panel2_f == nullptr) return false;
  const char* force = std::getenv("FASTRNN_INPUT_GEMM");
  if (force && std::string(force) == "step") return true;
  if (force && (std::string(force) == "blas" || std::string(force) == "panel")) return false;
  return batch >= kStepInputMinRows &&
         (weight_bytes <= kStepInputCachedBytes || weight_bytes < batch * kStepInputBytesPerRow);
}

// Both directions of a fused layer at once, one per thread, when there are two threads to
// spare: each direction's loop then runs with no barrier at all (and keeps its own W_hh in its
// core's cache) instead of two barriers-per-step loops one after the other.  The BLAS loop
// runs directions in turn, each split across the threads by MKL and the pointwise pass.
template <typename F>
void run_directions(int64_t D, bool fused, const F& direction) {
  if (fused && D == 2 && at::get_num_threads() >= 2 && !at::in_parallel_region()) {
    at::parallel_for(0, 2, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) direction(k, false);
    });
  } else {
    for (int64_t k = 0; k < D; ++k) direction(k, true);
  }
}

std::vector<StepSpan> step_spans(const std::vector<int64_t>& sizes, const std::vector<int64_t>& offs, bool rev) {
  std::vector<StepSpan> v(sizes.size());
  const size_t n = sizes.size();
  for (size_t s = 0; s < n; ++s) {
    const size_t t = rev ? n - 1 - s : s;
    v[s] = StepSpan{sizes[t], offs[t]};
  }
  return v;
}

// ---------------------------------------------------------------------------------------
// Validation (before any memory is touched).
constexpr const char* kWhere = "fastrnn._ext";
using checks::given;
using Dims = checks::LayerDims;

void check_tensor(const Tensor& t, const std::string& name, const Tensor& x, c10::ScalarType dt, int64_t dim) {
  checks::check_tensor(kWhere, t, name, x, dt, dim);
}

void check_shape(const Tensor& t, const std::string& name, at::IntArrayRef want) {
  checks::check_shape(kWhere, t, name, want);
}

Dims check_layer(const std::string& cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0,
                 const OptTensor& c0, const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh,
                 const std::vector<OptTensor>& w_hr) {
  checks::check_x_2d(kWhere, x);
  TORCH_CHECK(x.device().is_cpu(), kWhere, ": x must be a CPU tensor, got device ", x.device());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, kWhere, ": the cpp kernels run float32 and float64, got ", dt);
  return checks::check_layer(kWhere, cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
}

// ---------------------------------------------------------------------------------------
// Forward of one layer.
template <class Cell, typename T>
std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward_impl(
    const Dims& d, const Tensor& x, const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
    const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih, const std::vector<OptTensor>& b_hh,
    const std::vector<OptTensor>& w_hr, bool train) {
  constexpr int G = Cell::G, S = Cell::S;
  const int64_t N = d.N, D = d.D, B = d.B, H = d.H, Hout = d.Hout, GH = G * H, nT = d.T;
  auto opt = x.options();
  // ATen needs no GIL: other Python threads run while this layer does (GEMMs included).
  pybind11::gil_scoped_release no_gil;

  // Input projection of all steps and both directions, biases folded in: gi rows start as the
  // summed biases, then one BLAS GEMM per direction adds x W_ih^T into its column block (no
  // concatenated copy of the weights, no ATen op per bias: a layer call of one step is a few
  // microseconds of work).  The split gate's recurrent bias stays out of it (GRU's b_hn: n =
  // tanh(gi_n + r * (W_hn h + b_hn)); cell_math.h's kSplitGate).
  std::vector<const T*> bhn(D, nullptr);
  bool has_bias = false;
  std::vector<T> bias(D * GH, T(0));
  for (int64_t k = 0; k < D; ++k) {
    T* bk = bias.data() + k * GH;
    if (given(b_ih[k])) {
      const T* p = b_ih[k]->data_ptr<T>();
      for (int64_t j = 0; j < GH; ++j) bk[j] += p[j];
      has_bias = true;
    }
    if (given(b_hh[k])) {
      const T* p = b_hh[k]->data_ptr<T>();
      const int64_t s0 = Cell::kSplitRecurrentBias ? Cell::kSplitGate * H : GH, s1 = s0 + H;
      for (int64_t j = 0; j < s0; ++j) bk[j] += p[j];
      for (int64_t j = s1; j < GH; ++j) bk[j] += p[j];
      if (Cell::kSplitRecurrentBias) bhn[k] = p + s0;
      has_bias = true;
    }
  }
  const bool fused = std::is_same<T, float>::value && use_fused_steps(d.proj, B, nT, G, H);
  const bool step_input = use_step_input_gemm(fused, B, (d.I + H) * GH * int64_t(sizeof(T)));
  Tensor gi = step_input ? Tensor() : scratch({N, D * GH}, opt);
  T* gi_p = step_input ? nullptr : gi.data_ptr<T>();
  if (has_bias && !step_input)
    at::parallel_for(0, N, 1024, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::memcpy(gi_p + r * D * GH, bias.data(), sizeof(T) * D * GH);
    });
  for (int64_t k = 0; k < D && !step_input; ++k) {
    if constexpr (std::is_same<T, float>::value) {
      if (use_panel_input_gemm(N)) {
        panel_input_projection(kernels(), N, d.I, x.data_ptr<float>(), w_ih[k].data_ptr<float>(), G, H,
                               gi_p + k * GH, D * GH, has_bias);
        continue;
      }
    }
    gemm<T>(false, true, N, GH, d.I, x.data_ptr<T>(), d.I, w_ih[k].data_ptr<T>(), d.I, has_bias ? T(1) : T(0),
            gi_p + k * GH, D * GH);
  }

  Tensor out = at::empty({N, D * Hout}, opt);
  Tensor hn = h0.clone();  // the state is updated in place: rows that ended keep their last h
  Tensor cn = Cell::has_c ? c0->clone() : Tensor();
  Tensor save, hprev, R;
  if (train) {
    save = scratch({D, N, S * H}, opt);
    hprev = scratch({D, N, Hout}, opt);
    if (d.proj) R = scratch({D, N, H}, opt);
  }
  Tensor gh = at::empty({D, B, GH}, opt);  // per direction: the fused loop may run both at once
  Tensor rbuf = (d.proj && !train) ? at::empty({B, H}, opt) : Tensor();

  T* out_p = out.data_ptr<T>();
  T* gh_p = gh.data_ptr<T>();
  const auto fwd = fwd_kernel<T>(Cell::kId, train, !d.proj);
  {
    auto direction = [&](int64_t k, bool split) {
      const bool rev = k == 1;
      const StepGemm<T> rec(true, GH, Hout, w_hh[k].data_ptr<T>(), Hout, fused || nT <= 1 ? 0 : B);  // 0: no packing
      T* hs = hn.data_ptr<T>() + k * B * Hout;
      T* cs = Cell::has_c ? cn.data_ptr<T>() + k * B * H : nullptr;
      const StepGemm<T> prj(true, Hout, H, d.proj ? w_hr[k]->data_ptr<T>() : nullptr, H, d.proj ? B : 0);
      T* save_k = train ? save.data_ptr<T>() + k * N * S * H : nullptr;
      T* hprev_k = train ? hprev.data_ptr<T>() + k * N * Hout : nullptr;
      T* R_k = (train && d.proj) ? R.data_ptr<T>() + k * N * H : nullptr;
      FwdArgs<T> a{};
      a.ldgi = D * GH;
      a.gh = gh_p;
      a.ldgh = GH;
      a.bhn = bhn[k];
      a.c = cs;
      a.ldc = H;
      a.ldout = D * Hout;
      a.ldsave = S * H;
      a.H = H;
      if constexpr (std::is_same<T, float>::value) {
        if (fused) {
          StepInput in;
          if (step_input) {
            in.x = x.data_ptr<float>();
            in.I = d.I;
            in.w_ih = w_ih[k].data_ptr<float>();
            in.bias = has_bias ? bias.data() + k * GH : nullptr;
          }
          fused_forward<Cell>(kernels(), fwd, a, step_spans(d.sizes, d.offs, rev), hs, B, w_hh[k].data_ptr<T>(), in,
                              step_input ? nullptr : gi_p + k * GH, D * GH, out_p + k * Hout, D * Hout, save_k,
                              hprev_k, gh_p + k * B * GH, split);
          return;
        }
      }
      for (int64_t s = 0; s < nT; ++s) {
        const int64_t t = rev ? nT - 1 - s : s;
        const int64_t bs = d.sizes[t], row0 = d.offs[t];
        if (train) std::memcpy(hprev_k + row0 * Hout, hs, sizeof(T) * bs * Hout);
        rec(bs, hs, Hout, T(0), gh_p, GH);
        a.gi = gi_p + row0 * D * GH + k * GH;
        a.out = out_p + row0 * D * Hout + k * Hout;
        a.save = train ? save_k + row0 * S * H : nullptr;
        if (d.proj) {
          a.h = train ? R_k + row0 * H : rbuf.data_ptr<T>();
          a.ldh = H;
        } else {
          a.h = hs;
          a.ldh = Hout;
        }
        run_pointwise<T>(fwd, a, bs * H, kGrain / G);
        if (d.proj) {
          prj(bs, a.h, H, T(0), hs, Hout);
          for (int64_t b = 0; b < bs; ++b)
            std::memcpy(a.out + b * D * Hout, hs + b * Hout, sizeof(T) * Hout);
        }
      }
    };
    run_directions(D, fused, direction);
  }
  std::vector<Tensor> saved;
  if (train) {
    saved = {save, hprev};
    if (d.proj) saved.push_back(R);
  }
  return {out, hn, Cell::has_c ? OptTensor(cn) : OptTensor(), saved};
}

// ---------------------------------------------------------------------------------------
// Backward of one layer.
template <class Cell, typename T>
std::vector<OptTensor> backward_impl(const Dims& d, const Tensor& x, const std::vector<Tensor>& w_ih,
                                     const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& w_hr,
                                     const std::vector<Tensor>& saved, const Tensor& dout, const Tensor& dhn,
                                     const OptTensor& dcn, bool need_dx, bool need_dw) {
  constexpr int G = Cell::G, S = Cell::S;
  const int64_t N = d.N, D = d.D, B = d.B, H = d.H, Hout = d.Hout, GH = G * H, nT = d.T;
  constexpr bool kSplit = Cell::kSplitRecurrentBias;
  auto opt = x.options();
  const Tensor& save = saved[0];
  const Tensor& hprev = saved[1];
  pybind11::gil_scoped_release no_gil;

  Tensor dgi = scratch({N, D * GH}, opt);
  Tensor dgh = kSplit ? scratch({N, D * GH}, opt) : dgi;
  Tensor dh = dhn.clone();
  Tensor dc = Cell::has_c ? dcn->clone() : Tensor();
  Tensor dHt = d.proj ? scratch({D, N, Hout}, opt) : Tensor();
  Tensor dr = d.proj ? at::empty({B, H}, opt) : Tensor();

  const auto bwd_dout = bwd_kernel<T>(Cell::kId, true);
  const auto bwd_plain = bwd_kernel<T>(Cell::kId, false);
  const bool fused = std::is_same<T, float>::value && use_fused_steps(d.proj, B, nT, G, H);
  // The fused loop's steps compute their dx rows where the forward's steps did their input
  // projection; the second direction's into its own buffer, added after (the directions may run
  // at once).
  const bool step_grads = use_step_input_gemm(fused, B, (d.I + H) * GH * int64_t(sizeof(T)));
  const bool step_dx = need_dx && step_grads;
  Tensor dx = step_dx ? at::empty({N, d.I}, opt) : Tensor();
  Tensor dx1 = step_dx && D == 2 ? scratch({N, d.I}, opt) : Tensor();
  // ... and each direction's weight and bias gradients, accumulated over the steps (AVX-512), also
  // below the in-step projection's rows, where three GEMMs after the loop cost more than the loop
  // (T=5 B=3 H=20 fwd+bwd vs torch, in the steps / after: RNN 1.32 / 1.17, GRU 2.52 / 2.25).
  const bool step_dw = need_dw && fused && (step_grads || B < kStepInputMinRows) &&
                       kernels().rank_update_f != nullptr;
  std::vector<Tensor> dw;  // per direction: dw_ih, dw_hh, db_ih, db_hh (kSplit only: the others' is db_ih)
  if (step_dw)
    for (int64_t k = 0; k < D; ++k)
      dw.insert(dw.end(), {at::zeros({GH, d.I}, opt), at::zeros({GH, H}, opt), at::zeros({GH}, opt),
                           kSplit ? at::zeros({GH}, opt) : Tensor()});
  {
    auto direction = [&](int64_t k, bool split) {
      const bool rev = k == 1;
      const StepGemm<T> rec(false, Hout, GH, w_hh[k].data_ptr<T>(), Hout, fused || nT <= 1 ? 0 : B);  // 0: no packing
      T* dhs = dh.data_ptr<T>() + k * B * Hout;
      T* dcs = Cell::has_c ? dc.data_ptr<T>() + k * B * H : nullptr;
      const StepGemm<T> prj(false, H, Hout, d.proj ? w_hr[k]->data_ptr<T>() : nullptr, H, d.proj ? B : 0);
      const T* save_k = save.data_ptr<T>() + k * N * S * H;
      const T* hprev_k = hprev.data_ptr<T>() + k * N * Hout;
      const T* dout_p = dout.data_ptr<T>() + k * Hout;
      T* dgi_p = dgi.data_ptr<T>() + k * GH;
      T* dgh_p = dgh.data_ptr<T>() + k * GH;
      BwdArgs<T> a{};
      a.lddout = D * Hout;
      a.dc = dcs;
      a.lddc = H;
      a.ldsave = S * H;
      a.ldhp = Hout;
      a.lddgi = D * GH;
      a.lddgh = D * GH;
      a.H = H;
      if constexpr (std::is_same<T, float>::value) {
        if (fused) {
          StepInputGrad in;
          in.I = d.I;
          in.w_ih = w_ih[k].data_ptr<float>();
          if (step_dx) in.dx = (k == 0 ? dx : dx1).data_ptr<float>();
          if (step_dw) {
            in.x = x.data_ptr<float>();
            in.dw_ih = dw[4 * k].data_ptr<float>();
            in.dw_hh = dw[4 * k + 1].data_ptr<float>();
            in.db_ih = dw[4 * k + 2].data_ptr<float>();
            in.db_hh = kSplit ? dw[4 * k + 3].data_ptr<float>() : nullptr;
          }
          fused_backward<Cell>(kernels(), bwd_dout, a, step_spans(d.sizes, d.offs, rev), dhs, w_hh[k].data_ptr<T>(),
                               in, save_k, hprev_k, dout_p, dgi_p, dgh_p, D * GH, split);
          return;
        }
      }
      for (int64_t s = 0; s < nT; ++s) {
        const int64_t t = rev ? s : nT - 1 - s;   // the forward's order, reversed
        const int64_t bs = d.sizes[t], row0 = d.offs[t];
        a.save = save_k + row0 * S * H;
        a.hprev = hprev_k + row0 * Hout;
        a.dgi = dgi_p + row0 * D * GH;
        a.dgh = dgh_p + row0 * D * GH;
        a.dout = dout_p + row0 * D * Hout;
        BwdFn<T> fn = bwd_dout;
        if (d.proj) {
          // dL/dh_t = carried + output grad; dL/dr_t = dL/dh_t W_hr.
          T* dht = dHt.data_ptr<T>() + (k * N + row0) * Hout;
          for (int64_t b = 0; b < bs; ++b) {
            const T* x1 = dhs + b * Hout;
            const T* x2 = a.dout + b * D * Hout;
            T* y = dht + b * Hout;
            for (int64_t j = 0; j < Hout; ++j) y[j] = x1[j] + x2[j];
          }
          prj(bs, dht, Hout, T(0), dr.data_ptr<T>(), H);
          a.dh = dr.data_ptr<T>();
          a.lddh = H;
          fn = bwd_plain;
        } else {
          a.dh = dhs;
          a.lddh = Hout;
        }
        run_pointwise<T>(fn, a, bs * H, kGrain / G);
        // dL/dh_{t-1} = dG_h W_hh (+ the direct term a kDirectPrevH cell's pass left in dh).
        rec(bs, a.dgh, D * GH, Cell::kDirectPrevH ? T(1) : T(0), dhs, Hout);
      }
    };
    run_directions(D, fused, direction);
  }

  // dx (unless the steps made it) and the weight gradients: one GEMM each over all steps
  // (layer_grads.h).
  if (dx1.defined()) dx.add_(dx1);
  std::vector<OptTensor> res;
  append_layer_grads(res, x, w_ih, dgi, dgh, hprev, dh, Cell::has_c ? OptTensor(dc) : OptTensor(), dHt,
                     d.proj ? saved[2] : Tensor(), D, GH, kSplit, need_dx, need_dw, dx, dw);
  return res;
}

// ---------------------------------------------------------------------------------------
// Entry points.
template <typename Fn>
auto dispatch(int cell, c10::ScalarType dt, Fn&& fn) {
  return with_cell(cell, [&](auto cell_tag) {
    using C = decltype(cell_tag);
    if (dt == at::kDouble) return fn(C{}, double{});
    return fn(C{}, float{});
  });
}

std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward(
    const std::string& cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
    const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih,
    const std::vector<OptTensor>& b_hh, const std::vector<OptTensor>& w_hr, bool train) {
  Dims d = check_layer(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
  TORCH_CHECK((int64_t)b_ih.size() == d.D && (int64_t)b_hh.size() == d.D,
              "fastrnn._ext: expected one b_ih and b_hh entry (a tensor or None) per direction");
  for (int64_t k = 0; k < d.D; ++k) {
    for (const auto* b : {&b_ih[k], &b_hh[k]}) {
      if (given(*b)) {
        check_tensor(**b, "bias", x, x.scalar_type(), 1);
        check_shape(**b, "bias", {d.G * d.H});
      }
    }
  }
  return dispatch(d.cell, x.scalar_type(), [&](auto c, auto t) {
    return forward_impl<decltype(c), decltype(t)>(d, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train);
  });
}

std::vector<OptTensor> backward(const std::string& cell, const Tensor& x, const OptTensor& batch_sizes,
                                const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
                                const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& w_hr,
                                const std::vector<Tensor>& saved, const Tensor& dout, const Tensor& dhn,
                                const OptTensor& dcn, bool need_dx, bool need_dw) {
  Dims d = check_layer(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
  const auto dt = x.scalar_type();
  checks::check_backward(kWhere, d, x, cell_traits(d.cell).S, dt, saved, dout, dhn, dcn);
  return dispatch(d.cell, dt, [&](auto c, auto t) {
    return backward_impl<decltype(c), decltype(t)>(d, x, w_ih, w_hh, w_hr, saved, dout, dhn, dcn, need_dx,
                                                   need_dw);
  });
}

std::string isa() { return kernels().isa; }

// How many distinct threads one at::parallel_for over `n` unit items runs on: torch's thread
// count when the extension was built with OpenMP, 1 when the pragma compiled away (a build
// without -fopenmp ran every split loop on one thread for three sessions; tests check this).
int64_t parallel_threads(int64_t n) {
  std::mutex m;
  std::set<std::thread::id> seen;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> g(m);
    seen.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(seen.size());
}
// The loop a float32 layer call takes ("panel+step": the panel loop doing the input side in its
// steps; "panel"; "blas"), for auto's dispatch (fastrnn/backends/cpp.py): the same rules as the
// calls, environment overrides included.
std::string loop_plan(bool proj, int64_t batch, int64_t steps, int64_t input_size, int64_t hidden, int64_t gates) {
  TORCH_CHECK_VALUE(batch >= 0 && steps >= 0 && input_size >= 0 && hidden >= 0 && gates >= 1 && gates <= 4, kWhere,
                    ": loop_plan needs non-negative sizes and 1-4 gates");
  const bool fused = use_fused_steps(proj, batch, steps, gates, hidden);
  if (!fused) return "blas";
  return use_step_input_gemm(fused, batch, (input_size + hidden) * gates * hidden * int64_t(sizeof(float)))
             ? "panel+step" : "panel";
}

std::string gemm_path() {
  // "panel-<isa>+<path>": float32 steps of up to 64-512 rows on the panel kernel, the rest on <path>
  const std::string blas_path = blas().spack ? "mkl-packed" : blas().s ? "blas" : "aten";
  return kernels().panel_f != nullptr ? "panel-" + std::string(kernels().isa) + "+" + blas_path : blas_path;
}

}  // namespace
}  // namespace fastrnn

PYBIND11_MODULE(_ext, m) {
  m.doc() = "fastrnn cpp backend: fused CPU kernels for LSTM/GRU/RNN layers (forward and backward)";
  m.def("forward", &fastrnn::forward, "One layer forward; see csrc/rnn.cpp", pybind11::arg("cell"),
        pybind11::arg("x"), pybind11::arg("batch_sizes"), pybind11::arg("h0"), pybind11::arg("c0"),
        pybind11::arg("w_ih"), pybind11::arg("w_hh"), pybind11::arg("b_ih"), pybind11::arg("b_hh"),
        pybind11::arg("w_hr"), pybind11::arg("train"));
  m.def("backward", &fastrnn::backward, "One layer backward; see csrc/rnn.cpp", pybind11::arg("cell"),
        pybind11::arg("x"), pybind11::arg("batch_sizes"), pybind11::arg("h0"), pybind11::arg("c0"),
        pybind11::arg("w_ih"), pybind11::arg("w_hh"), pybind11::arg("w_hr"), pybind11::arg("saved"),
        pybind11::arg("dout"), pybind11::arg("dhn"), pybind11::arg("dcn"), pybind11::arg("need_dx"),
        pybind11::arg("need_dw"));
  m.def("isa", &fastrnn::isa, "The instruction set the pointwise kernels were picked for");
  m.def("gemm_path", &fastrnn::gemm_path, "How per-step GEMMs run: mkl-packed, blas or aten");
  m.def("loop_plan", &fastrnn::loop_plan, pybind11::arg("proj"), pybind11::arg("batch"), pybind11::arg("steps"),
        pybind11::arg("input_size"), pybind11::arg("hidden"), pybind11::arg("gates"),
        "The float32 loop a layer call takes: 'panel+step', 'panel' or 'blas'");
  m.def("empty_scratch_cache", &fastrnn::empty_scratch_cache,
        "Unmap the large scratch buffers kept between calls (csrc/scratch.h); returns the bytes released");
  m.def("parallel_threads", &fastrnn::parallel_threads, pybind11::arg("n") = 64,
        "Distinct threads one at::parallel_for over n items ran on (1: built without OpenMP)");
}
