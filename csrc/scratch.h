// Large internal buffers of the cpp backend (input projection, saved activations, gate gradients):
// on 2 MiB pages, and kept for the next call instead of going back to the kernel.
//
// A training call touches hundreds of MiB of fresh memory (GRU T=100 B=256 H=256: ~350 MiB), and
// buffers that size come from (and go back to) the kernel on every call, so each call paid a minor
// page fault per 4 KiB: 88k faults per fwd+bwd there, vs 29k for torch's many small per-step
// tensors that malloc recycles.  On 2 MiB pages: 164 faults, and 594 -> 399 ms wall per fwd+bwd
// (torch 443 ms; 2-core AMD EPYC Zen4 VM, THP in "madvise" mode).  The kernel still zeroes every
// fresh page: 6% of the CPU time of an LSTM T=100 B=64 H=512 forward went to clear_page.  So a
// released mapping goes to a small cache and the next call of the same shape takes it back:
// in a training or inference loop each buffer is mapped and zeroed once.
//
// Only buffers that stay inside fastrnn (or go to autograd's saved tensors) come from here; outputs
// handed to the user stay ordinary, resizable tensors.  Contents are never assumed zero (smaller
// buffers come from at::empty).  Where THP is off the advice is ignored and the pages are ordinary.
//   FASTRNN_HUGE_PAGES=0          plain at::empty for everything (no mmap, no cache)
//   FASTRNN_SCRATCH_CACHE_MB=N    the most memory kept mapped between calls (default 1024; 0: none)
//   _ext.empty_scratch_cache()    unmaps what is kept (fastrnn.empty_cache() in Python)
#pragma once

#include <ATen/ATen.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "overrides.h"

namespace fastrnn {

constexpr size_t kHugePage = size_t(2) << 20;
// glibc recycles blocks below its mmap threshold (which grows to 32 MiB as large blocks are
// freed) from its heap with no new faults; at or above it, every allocation is a fresh mapping.
// Only those are taken over (smaller ones measured faster through malloc: RNN B=256 fwd 45 ms
// via malloc vs 52 ms on fresh huge pages).
constexpr int64_t kHugeMinBytes = int64_t(32) << 20;
// The most memory kept mapped between calls (MiB), unless FASTRNN_SCRATCH_CACHE_MB says otherwise.
constexpr size_t kScratchCacheMB = 1024;

#ifdef __linux__
class ScratchCache {
 public:
  static ScratchCache& get() {
    // Never destroyed: tensors holding a mapping may be freed during interpreter shutdown.
    static ScratchCache* c = new ScratchCache();
    return *c;
  }

  // A kept mapping of at least `len` bytes and at most twice that (so a small call does not pin a
  // huge buffer), or {nullptr, 0}.
  std::pair<char*, size_t> take(size_t len) {
    std::lock_guard<std::mutex> g(m_);
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].second >= len && free_[i].second / 2 <= len &&
          (best == free_.size() || free_[i].second < free_[best].second))
        best = i;
    if (best == free_.size()) return {nullptr, 0};
    auto r = free_[best];
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
    kept_ -= r.second;
    return r;
  }

  void give(char* p, size_t len) {
    {
      std::lock_guard<std::mutex> g(m_);
      if (kept_ + len <= budget_) {
        free_.emplace_back(p, len);
        kept_ += len;
        return;
      }
    }
    munmap(p, len);
  }

  size_t empty() {
    std::vector<std::pair<char*, size_t>> drop;
    {
      std::lock_guard<std::mutex> g(m_);
      drop.swap(free_);
      kept_ = 0;
    }
    size_t n = 0;
    for (auto& f : drop) munmap(f.first, f.second), n += f.second;
    return n;
  }

 private:
  ScratchCache() { budget_ = overrides().scratch_cache_mb.value_or(kScratchCacheMB) << 20; }
  std::mutex m_;
  std::vector<std::pair<char*, size_t>> free_;
  size_t kept_ = 0, budget_ = 0;
};

// A fresh 2 MiB-aligned mapping of `len` bytes (a multiple of 2 MiB) advised onto huge pages, or
// nullptr.  Straight from mmap, not malloc: glibc would keep such blocks in its heap once its mmap
// threshold has grown, and the 2 MiB alignment fragments that heap (RSS grew call after call).
inline char* map_huge(size_t len) {
  void* raw = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  char* base = static_cast<char*>(raw);
  char* p = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(kHugePage - 1));
  if (p > base) munmap(base, size_t(p - base));
  if (p + len < base + len + kHugePage) munmap(p + len, size_t(base + len + kHugePage - (p + len)));
  madvise(p, len, MADV_HUGEPAGE);  // advice only: ignored where THP is off
  return p;
}
#endif

inline at::Tensor scratch(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(opt.dtype().itemsize());
#ifdef __linux__
  if (overrides().huge_pages && bytes >= kHugeMinBytes) {
    const size_t want = (static_cast<size_t>(bytes) + kHugePage - 1) / kHugePage * kHugePage;
    auto kept = ScratchCache::get().take(want);
    char* p = kept.first;
    size_t len = kept.second;
    if (!p) p = map_huge(len = want);
    if (p)
      return at::from_blob(p, sizes, [len](void* q) { ScratchCache::get().give(static_cast<char*>(q), len); }, opt);
  }
#endif
  return at::empty(sizes, opt);
}

// Unmaps every kept buffer; returns the bytes released.
inline int64_t empty_scratch_cache() {
#ifdef __linux__
  return static_cast<int64_t>(ScratchCache::get().empty());
#else
  return 0;
#endif
}

}  // namespace fastrnn
