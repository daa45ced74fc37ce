// The fused pointwise passes of every cell, instantiated for one ISA.
//
// CMake compiles this file three times: for baseline x86-64 (namespace isa_base), with
// -mavx2 -mfma (isa_avx2, FASTRNN_ISA_AVX2) and with AVX-512 (isa_avx512, FASTRNN_ISA_AVX512).
// isa.cpp picks the table at run time from the CPU, so wheels run on any x86-64 and still use
// the widest lanes present.  No torch headers here: this unit compiles in seconds.
#include "kernel_table.h"

#if defined(FASTRNN_ISA_AVX512)
#define FASTRNN_ISA_NS isa_avx512
#define FASTRNN_ISA_NAME "avx512"
#elif defined(FASTRNN_ISA_AVX2)
#define FASTRNN_ISA_NS isa_avx2
#define FASTRNN_ISA_NAME "avx2"
#else
#define FASTRNN_ISA_NS isa_base
#define FASTRNN_ISA_NAME "baseline"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {
namespace {

template <class Cell, typename T, bool kSave, bool kOut>
void fwd_range(const FwdArgs<T>& a, int64_t begin, int64_t end) {
  const int64_t H = a.H;
  while (begin < end) {
    const int64_t b = begin / H, j0 = begin - b * H;
    const int64_t j1 = (end - b * H) < H ? (end - b * H) : H;
    fwd_row<Cell, T, kSave, kOut>(a, b, j0, j1);
    begin = b * H + j1;
  }
}

template <class Cell, typename T, bool kDout>
void bwd_range(const BwdArgs<T>& a, int64_t begin, int64_t end) {
  const int64_t H = a.H;
  while (begin < end) {
    const int64_t b = begin / H, j0 = begin - b * H;
    const int64_t j1 = (end - b * H) < H ? (end - b * H) : H;
    bwd_row<Cell, T, kDout>(a, b, j0, j1);
    begin = b * H + j1;
  }
}

template <class Cell>
void fill(KernelTable& k) {
  constexpr int c = Cell::kId;
  k.fwd_f[c][0][0] = &fwd_range<Cell, float, false, false>;
  k.fwd_f[c][0][1] = &fwd_range<Cell, float, false, true>;
  k.fwd_f[c][1][0] = &fwd_range<Cell, float, true, false>;
  k.fwd_f[c][1][1] = &fwd_range<Cell, float, true, true>;
  k.fwd_d[c][0][0] = &fwd_range<Cell, double, false, false>;
  k.fwd_d[c][0][1] = &fwd_range<Cell, double, false, true>;
  k.fwd_d[c][1][0] = &fwd_range<Cell, double, true, false>;
  k.fwd_d[c][1][1] = &fwd_range<Cell, double, true, true>;
  k.bwd_f[c][0] = &bwd_range<Cell, float, false>;
  k.bwd_f[c][1] = &bwd_range<Cell, float, true>;
  k.bwd_d[c][0] = &bwd_range<Cell, double, false>;
  k.bwd_d[c][1] = &bwd_range<Cell, double, true>;
}

KernelTable make() {
  KernelTable k{};
  for (int c = 0; c < kNumCells; ++c) with_cell(c, [&](auto cell) { fill<decltype(cell)>(k); });
  k.isa = FASTRNN_ISA_NAME;
#if defined(FASTRNN_ISA_AVX2) || defined(FASTRNN_ISA_AVX512)
  k.panel_f = &panel_gemm;
  k.panel2_f = &panel_gemm2;
#else
  k.panel_f = nullptr;
  k.panel2_f = nullptr;
#endif
#ifdef FASTRNN_ISA_AVX512
  k.rank_update_f = &rank_update;
#else
  k.rank_update_f = nullptr;
#endif
  return k;
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable table = make();
  return table;
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
