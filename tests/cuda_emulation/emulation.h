// The CUDA execution model on the host, shared by the emulation harnesses of tests/cuda_emulation
// (one per kernel of csrc/kernels; tests/test_cuda_emulation.py builds and runs each). A harness
// includes this header, then the real kernel header, which compiles as host code:
//
//   - __global__ / __device__ functions become host functions; threadIdx, blockIdx, blockDim and
//     gridDim are variables set by launch() (threadIdx per std::thread);
//   - launch() runs the CTAs of a grid one after another, in increasing or decreasing order, and
//     the CUDA threads of a CTA as concurrent std::threads (a warp: 32 consecutive linear thread
//     indices, x fastest, then y, z);
//   - __syncthreads() is a barrier of the CTA's threads; __syncwarp() and the __shfl_*_sync
//     intrinsics are collectives of the lanes in their mask (warp_collective below): every lane of
//     the mask must reach the same call (same source line), with the same mask;
//   - a function-local `__shared__` array becomes a function-local static (one CTA runs at a time,
//     so its threads share it); before each CTA every shared array is filled with 0xff bytes (a NaN
//     in fp32 / fp16 / bf16, -1 in integers), so a value read before the CTA wrote it poisons the
//     result. A harness names its kernels (register_static_shared), whose statics are then found
//     in the executable's symbol table; a kernel's `extern __shared__` array is defined by its
//     harness and registered with register_shared();
//   - the tensor-core instructions of csrc/kernels/mma.cuh, ldmatrix<n> (ldmatrix .m8n8.x{2,4}.b16)
//     and mma_m16n8<k, T> (mma.sync .m16n8k{16,8}.row.col.f32, T = f16 / bf16), are defined here
//     (mma.cuh only declares them on the host) as collectives of the warp's 32 lanes with the exact
//     per-lane fragment layouts of the PTX ISA: every lane must reach the same call instruction
//     (and, for mma, with the same k and T); ldmatrix fails unless each row address it reads is
//     16-byte aligned and its 16 bytes lie in a registered shared array; mma computes each output
//     as an fp64 sum of the accumulator and the k (exact) products, rounded to fp32 -- one valid
//     order, since the hardware's summation order and internal precision are unspecified;
//   - a barrier or collective that can no longer complete (a thread of it returned, threads wait at
//     different barriers, lanes of a warp at different calls) is a hang or undefined behaviour on a
//     GPU: it prints FAIL with the place and ends the program (exit code 1), instead of hanging.
//
// Stricter than the hardware: sm_70+ lets different shfl.sync / bar.warp.sync instructions of
// one warp pair up, and does not wait for exited lanes; here both are failures (none of our
// kernels relies on them). Warps whose masks split the warp into groups that sync independently are
// not supported (reported as divergence). Not modelled at all: warp scheduling, the GPU memory
// model (every write is visible at once), alignment faults (but ldmatrix's are checked), bank
// conflicts, registers, timing, the tensor cores' rounding and their handling of subnormals.
//
// The second half holds what the harnesses share to check a kernel: dtype facts, guarded buffers
// (NaN guards, then inaccessible pages), output comparison against an fp64 reference with a
// tolerance per output, and the command-line driver (fixed case list, chosen cases, random cases).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cxxabi.h>
#include <elf.h>
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

// Every system header a kernel header includes must come here, before the macros at the end.
#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "kernels.h"

// ---- built-in variables --------------------------------------------------------------------------
inline thread_local uint3 emulated_thread_idx;  // threadIdx of the calling std::thread
inline thread_local int emulated_linear_thread;  // x + y * blockDim.x + z * blockDim.x * blockDim.y
inline uint3 emulated_block_idx;                 // blockIdx of the CTA being run (one at a time)
inline dim3 emulated_block_dim, emulated_grid_dim;

namespace emulation {

// printf into a std::string.
template <typename... Args>
std::string format(const char* pattern, Args... args) {
  char text[512];
  std::snprintf(text, sizeof(text), pattern, args...);
  return text;
}

// Reports a kernel-level failure (a barrier that cannot complete, a misused collective) and ends
// the program: its threads may be stuck, so nothing else can run.
[[noreturn]] inline void fail(const std::string& what) {
  std::printf("FAIL: %s (block (%u, %u, %u))\n", what.c_str(), emulated_block_idx.x,
              emulated_block_idx.y, emulated_block_idx.z);
  std::fflush(stdout);
  std::_Exit(1);
}

// "function+0xoffset" of a code address of this program (defined with the symbol table reader).
inline std::string describe_code_address(const void* address);

// Where a barrier or collective is called: a source line (the macros below), or, for the tensor-core
// functions that kernels call by name (ldmatrix, mma_m16n8), the call instruction itself (its
// return address): the same instruction, as .aligned requires.
struct Site {
  const char* file;
  int line;
  const void* caller = nullptr;
  bool operator==(const Site& o) const {
    if (caller != nullptr || o.caller != nullptr) return caller == o.caller;
    return line == o.line && std::strcmp(file, o.file) == 0;
  }
  std::string text() const {
    if (caller != nullptr) return "the call from " + describe_code_address(caller);
    const char* slash = std::strrchr(file, '/');
    return format("%s:%d", slash ? slash + 1 : file, line);
  }
};

inline int popcount(unsigned v) { return __builtin_popcount(v); }

// ---- barriers and warp collectives of the CTA being run ----------------------------------------
// A generation counter that threads wait on (a Linux futex: a release wakes the waiters without
// making them take a lock again, which matters with hundreds of threads on a few cores).
class Generation {
 public:
  uint32_t now() const { return value_.load(std::memory_order_acquire); }
  void advance() {  // wakes every waiter
    value_.fetch_add(1, std::memory_order_acq_rel);
    syscall(SYS_futex, &value_, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
  }
  void wait_past(uint32_t seen) const {
    while (now() == seen) syscall(SYS_futex, &value_, FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
  }

 private:
  mutable std::atomic<uint32_t> value_{0};
  static_assert(sizeof(std::atomic<uint32_t>) == 4, "a futex word");
};

// All bookkeeping is under one mutex. `running_` counts the threads neither waiting nor returned;
// when it drops to 0 while some thread waits, nothing can release it: a deadlock, reported.
class Cta {
 public:
  static constexpr int kMaxWarps = 32;  // 1024 threads

  void start(int threads) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (threads < 1 || threads > 32 * kMaxWarps) fail(format("bad block size %d", threads));
    threads_ = running_ = threads;
    exited_ = block_arrived_ = 0;
    for (int w = 0; w < kMaxWarps; ++w) {
      Warp& warp = warps_[w];
      const int lanes = std::clamp(threads - 32 * w, 0, 32);
      warp.present = lanes == 32 ? ~0u : (1u << lanes) - 1u;
      warp.exited = warp.arrived = 0;
    }
  }

  void syncthreads(Site site) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (block_arrived_ == 0) {
      block_site_ = site;
    } else if (!(site == block_site_)) {
      fail(format("__syncthreads() at %s while %d threads wait at %s (divergent barrier)",
                  site.text().c_str(), block_arrived_, block_site_.text().c_str()));
    }
    if (++block_arrived_ == threads_) {
      block_arrived_ = 0;
      running_ += threads_ - 1;
      lock.unlock();
      block_generation_.advance();
      return;
    }
    check_block_barrier();
    wait(lock, block_generation_);
  }

  // A collective of the lanes in `mask` of the caller's warp: each lane leaves `payload` (its own
  // data), the last lane to arrive runs complete(payloads, mask) for all of them, then all go on.
  // `what` names the collective (a string literal: calls pair up only with the same one).
  template <typename Complete>
  void warp_collective(const char* what, Site site, unsigned mask, void* payload, Complete&& complete) {
    std::unique_lock<std::mutex> lock(mutex_);
    const int lane = emulated_linear_thread % 32;
    Warp& warp = warps_[emulated_linear_thread / 32];
    auto where = [&] {
      return format("%s at %s, warp %d lane %d", what, site.text().c_str(), emulated_linear_thread / 32, lane);
    };
    if (!(mask >> lane & 1u)) fail(where() + format(": mask %08x leaves the calling lane out", mask));
    if (mask & ~warp.present) fail(where() + format(": mask %08x names lanes past the block", mask));
    if (mask & warp.exited)
      fail(where() + format(": waits for lanes %08x that returned", mask & warp.exited));
    if (warp.arrived == 0) {
      warp.mask = mask;
      warp.site = site;
      warp.what = what;
    } else if (warp.mask != mask || !(warp.site == site) || std::strcmp(warp.what, what) != 0) {
      fail(where() + format(" (mask %08x) while lanes %08x wait at %s at %s (mask %08x): divergent warp",
                          mask, warp.arrived, warp.what, warp.site.text().c_str(), warp.mask));
    }
    warp.arrived |= 1u << lane;
    warp.payload[lane] = payload;
    if (warp.arrived == mask) {
      complete(warp.payload, mask);
      warp.arrived = 0;
      running_ += popcount(mask) - 1;
      lock.unlock();
      warp.generation.advance();
      return;
    }
    wait(lock, warp.generation);
  }

  void thread_exited() {
    std::lock_guard<std::mutex> lock(mutex_);
    --running_;
    ++exited_;
    Warp& warp = warps_[emulated_linear_thread / 32];
    const unsigned lane_bit = 1u << (emulated_linear_thread % 32);
    warp.exited |= lane_bit;
    if (warp.arrived != 0 && (warp.mask & lane_bit))
      fail(format("%s at %s: lanes %08x of warp %d wait for lane %d, which returned", warp.what,
                  warp.site.text().c_str(), warp.arrived, emulated_linear_thread / 32,
                  emulated_linear_thread % 32));
    check_block_barrier();
    check_stuck();
  }

 private:
  struct Warp {
    unsigned present = 0, exited = 0, arrived = 0, mask = 0;
    Site site{"", 0};
    const char* what = "";
    void* payload[32] = {};
    Generation generation;
  };

  // Waits (unlocked) for the barrier to complete; the thread that completes it counts this one as
  // running again.
  void wait(std::unique_lock<std::mutex>& lock, const Generation& generation) {
    --running_;
    check_stuck();
    const uint32_t seen = generation.now();
    lock.unlock();
    generation.wait_past(seen);
  }
  void check_block_barrier() const {
    if (block_arrived_ > 0 && block_arrived_ + exited_ == threads_)
      fail(format("__syncthreads() at %s waits for %d threads that returned",
                  block_site_.text().c_str(), exited_));
  }
  void check_stuck() const {
    if (running_ > 0) return;
    std::string waiting;
    if (block_arrived_ > 0)
      waiting += format(" %d threads at __syncthreads() %s;", block_arrived_, block_site_.text().c_str());
    for (int w = 0; w < kMaxWarps; ++w)
      if (warps_[w].arrived != 0)
        waiting += format(" warp %d lanes %08x at %s %s;", w, warps_[w].arrived, warps_[w].what,
                          warps_[w].site.text().c_str());
    if (!waiting.empty()) fail("deadlock, no thread can go on:" + waiting);
  }

  std::mutex mutex_;
  int threads_ = 0, running_ = 0, exited_ = 0, block_arrived_ = 0;
  Generation block_generation_;
  Site block_site_{"", 0};
  Warp warps_[kMaxWarps];
};
inline Cta cta;

// ---- warp intrinsics ------------------------------------------------------------------------------
inline void syncwarp(Site site, unsigned mask) {
  cta.warp_collective("__syncwarp", site, mask, nullptr, [](void**, unsigned) {});
}
struct SyncWarpCall {  // __syncwarp(mask = all lanes)
  Site site;
  void operator()(unsigned mask = 0xffffffffu) const { syncwarp(site, mask); }
};

enum class ShuffleMode { kIdx, kUp, kDown, kXor };

// __shfl_*_sync(mask, var, b, width): the source lane as PTX shfl.sync computes it (clamp c =
// ((32 - width) << 8) | (up ? 0 : 31)); a lane whose source is outside its segment gets its own var.
// Reading a lane outside the mask is undefined on a GPU: reported.
template <typename T>
T shuffle(Site site, ShuffleMode mode, const char* what, unsigned mask, T var, int b, int width = 32) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail(format("%s at %s: width %d is not a power of 2 in 1..32", what, site.text().c_str(), width));
  struct Slot {
    T value, result;
    int b;
  } mine{var, var, b};
  cta.warp_collective(what, site, mask, &mine, [&](void** payload, unsigned m) {
    const unsigned segmask = (32u - width) & 31u;
    const unsigned cval = mode == ShuffleMode::kUp ? 0u : 31u;
    for (unsigned lane = 0; lane < 32; ++lane) {
      if (!(m >> lane & 1u)) continue;
      Slot& slot = *static_cast<Slot*>(payload[lane]);  // each lane its own b (a source lane, say)
      const unsigned bval = static_cast<unsigned>(slot.b) & 31u;
      const unsigned max_lane = (lane & segmask) | (cval & ~segmask);
      const unsigned min_lane = lane & segmask;
      int j = 0;
      bool in_range = false;
      switch (mode) {
        case ShuffleMode::kUp: j = int(lane) - int(bval); in_range = j >= int(max_lane); break;
        case ShuffleMode::kDown: j = int(lane + bval); in_range = j <= int(max_lane); break;
        case ShuffleMode::kXor: j = int(lane ^ bval); in_range = j <= int(max_lane); break;
        case ShuffleMode::kIdx: j = int(min_lane | (bval & ~segmask)); in_range = j <= int(max_lane); break;
      }
      if (!in_range) j = int(lane);
      if (!(m >> j & 1u))
        fail(format("%s at %s: lane %u reads lane %d, outside mask %08x (undefined)", what,
                    site.text().c_str(), lane, j, m));
      slot.result = static_cast<Slot*>(payload[j])->value;
    }
  });
  return mine.result;
}

template <typename To, typename From>
To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To to;
  std::memcpy(static_cast<void*>(&to), &from, sizeof(To));
  return to;
}

// ---- shared memory ----------------------------------------------------------------------------------
struct SharedArray {
  unsigned char* data;
  size_t bytes;
  std::string name;
};

// Calls visit(symbol, mangled name, loaded address) for each symbol in the symbol table of
// /proc/self/exe.
template <typename Visit>
void for_each_symbol(Visit&& visit) {
  std::ifstream file("/proc/self/exe", std::ios::binary);
  const std::vector<char> image((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (image.size() < sizeof(Elf64_Ehdr)) fail("cannot read /proc/self/exe");
  const auto* header = reinterpret_cast<const Elf64_Ehdr*>(image.data());
  const auto* sections = reinterpret_cast<const Elf64_Shdr*>(image.data() + header->e_shoff);
  uintptr_t load_bias = 0;  // the main program is the first object dl_iterate_phdr reports
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* bias) {
        *static_cast<uintptr_t*>(bias) = info->dlpi_addr;
        return 1;
      },
      &load_bias);
  for (int s = 0; s < header->e_shnum; ++s) {
    if (sections[s].sh_type != SHT_SYMTAB) continue;
    const char* names = image.data() + sections[sections[s].sh_link].sh_offset;
    const auto* symbols = reinterpret_cast<const Elf64_Sym*>(image.data() + sections[s].sh_offset);
    for (size_t i = 0; i < sections[s].sh_size / sizeof(Elf64_Sym); ++i)
      visit(symbols[i], names + symbols[i].st_name, load_bias + symbols[i].st_value);
  }
}

inline std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                                   std::free);
  return status == 0 ? std::string(demangled.get()) : std::string(mangled);
}

// The function-local static objects of functions in namespace convmixer_fast, at their loaded
// addresses, with demangled names ("convmixer_fast::head_detail::head_pool_kernel<float, 4>(float
// const*, float*, int, int)::partial").
inline std::vector<SharedArray> find_function_statics() {
  std::vector<SharedArray> statics;
  for_each_symbol([&](const Elf64_Sym& symbol, const char* mangled, uintptr_t address) {
    if (ELF64_ST_TYPE(symbol.st_info) == STT_OBJECT && symbol.st_size != 0 &&
        std::strncmp(mangled, "_ZZN14convmixer_fast", 20) == 0)
      statics.push_back({reinterpret_cast<unsigned char*>(address), static_cast<size_t>(symbol.st_size),
                         demangle(mangled)});
  });
  return statics;
}

inline std::string describe_code_address(const void* code) {
  const auto address = reinterpret_cast<uintptr_t>(code);
  std::string text = format("code address %p", code);
  for_each_symbol([&](const Elf64_Sym& symbol, const char* mangled, uintptr_t begin) {
    if (ELF64_ST_TYPE(symbol.st_info) == STT_FUNC && begin <= address && address < begin + symbol.st_size)
      text = demangle(mangled) + format("+0x%zx", static_cast<size_t>(address - begin));
  });
  return text;
}

inline std::vector<SharedArray>& shared_arrays() {  // what poison_shared_memory() fills
  static std::vector<SharedArray> arrays;
  return arrays;
}

// The `__shared__` arrays declared in kernel `kernel` (its qualified name, e.g.
// "convmixer_fast::stem_detail::stem_kernel"): every instantiation's function-local statics. Fails
// if there is none (a stripped binary, or a renamed kernel), which would leave them unpoisoned.
inline void register_static_shared(const std::string& kernel) {
  static const std::vector<SharedArray> statics = find_function_statics();
  size_t found = 0;
  for (const SharedArray& object : statics) {
    const char next = object.name.size() > kernel.size() ? object.name[kernel.size()] : '\0';
    if (object.name.compare(0, kernel.size(), kernel) == 0 && (next == '<' || next == '(')) {
      shared_arrays().push_back(object);
      ++found;
    }
  }
  if (found == 0)
    fail(format("no __shared__ array of %s in the symbol table: shared memory could not be poisoned",
                kernel.c_str()));
}

// A kernel's `extern __shared__` array, defined by the harness.
inline void register_shared(void* data, size_t bytes, const char* name) {
  shared_arrays().push_back({static_cast<unsigned char*>(data), bytes, name});
}

inline void poison_shared_memory() {
  for (const SharedArray& array : shared_arrays()) std::memset(array.data, 0xff, array.bytes);
}

// ---- launch -------------------------------------------------------------------------------------------
// Runs body() (the kernel call with its arguments) as every CUDA thread of every CTA of the grid,
// CTAs in increasing (x fastest, then y, z) or decreasing order.
template <typename Body>
void launch(dim3 grid, dim3 block, bool reverse_order, Body&& body) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  const uint64_t ctas = uint64_t{grid.x} * grid.y * grid.z;
  emulated_grid_dim = grid;
  emulated_block_dim = block;
  for (uint64_t i = 0; i < ctas; ++i) {
    const uint64_t linear = reverse_order ? ctas - 1 - i : i;
    emulated_block_idx = make_uint3(static_cast<unsigned>(linear % grid.x),
                                    static_cast<unsigned>(linear / grid.x % grid.y),
                                    static_cast<unsigned>(linear / (uint64_t{grid.x} * grid.y)));
    poison_shared_memory();
    cta.start(threads);
    std::vector<std::thread> workers;
    workers.reserve(threads);
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&body, &block, t] {
        emulated_linear_thread = t;
        emulated_thread_idx = make_uint3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
        body();
        cta.thread_exited();
      });
    }
    for (std::thread& worker : workers) worker.join();
  }
}

// ---- tensor-core instructions (csrc/kernels/mma.cuh declares them on the host) -----------------------
// A shared array registered above that holds [address, address + bytes), or nullptr.
inline const SharedArray* shared_array_holding(const void* address, size_t bytes) {
  const auto* begin = static_cast<const unsigned char*>(address);
  for (const SharedArray& array : shared_arrays())
    if (begin >= array.data && begin + bytes <= array.data + array.bytes) return &array;
  return nullptr;
}

// Element `half` (0: low 16 bits, 1: high) of a fragment register holding two T.
template <typename T>
double fragment_element(uint32_t reg, int half) {
  return static_cast<float>(bit_cast<T>(static_cast<uint16_t>(reg >> (16 * half))));
}

}  // namespace emulation

// PTX ldmatrix / mma.sync with the per-lane layouts of the PTX ISA (quoted in mma.cuh), as warp
// collectives of all 32 lanes: each lane leaves its operands, the last to arrive computes for the
// warp. Both are noinline: the call instruction (return address) is the collective's site. Host pass
// only: nvcc's device pass of a harness compiles mma.cuh's own (inline PTX) definitions, never used.
#if !defined(__CUDA_ARCH__)
namespace convmixer_fast {

// ldmatrix.sync.aligned.m8n8.x{2,4}.shared.b16 (ldmatrix<kMatrices>): lane l < 8 kMatrices gives
// the row address of row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned, inside a registered
// shared array, else FAIL; the other lanes' addresses are not looked at); lane l receives in
// fragment[i] row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of matrix i (the lower column in the
// low 16 bits). Shared memory is read once all 32 lanes have arrived.
template <int kMatrices>
__attribute__((noinline)) void ldmatrix(uint32_t (&fragment)[kMatrices], const void* row) {
  static_assert(kMatrices == 2 || kMatrices == 4, "ldmatrix .x2 or .x4");
  const emulation::Site site{"", 0, __builtin_return_address(0)};
  struct Slot {
    uint32_t* fragment;
    const unsigned char* row;
  } mine{fragment, static_cast<const unsigned char*>(row)};
  const char* what = kMatrices == 4 ? "ldmatrix<4>" : "ldmatrix<2>";
  emulation::cta.warp_collective(what, site, 0xffffffffu, &mine, [&](void** payload, unsigned) {
    for (int lane = 0; lane < 8 * kMatrices; ++lane) {
      const unsigned char* address = static_cast<const Slot*>(payload[lane])->row;
      const char* problem = reinterpret_cast<uintptr_t>(address) % 16 != 0 ? "is not 16-byte aligned"
                            : emulation::shared_array_holding(address, 16) == nullptr
                                ? "is not 16 bytes inside a shared array"
                                : nullptr;
      if (problem != nullptr)
        emulation::fail(emulation::format("%s at %s: lane %d's row address %p %s", what, site.text().c_str(),
                                          lane, static_cast<const void*>(address), problem));
    }
    uint32_t loaded[32][kMatrices];
    for (int lane = 0; lane < 32; ++lane)
      for (int matrix = 0; matrix < kMatrices; ++matrix) {
        const unsigned char* row_start = static_cast<const Slot*>(payload[8 * matrix + lane / 4])->row;
        std::memcpy(&loaded[lane][matrix], row_start + 4 * (lane % 4), 4);
      }
    for (int lane = 0; lane < 32; ++lane)
      std::memcpy(static_cast<Slot*>(payload[lane])->fragment, loaded[lane], sizeof(loaded[lane]));
  });
}

// mma.sync.aligned.m16n8k{16,8}.row.col.f32.T.T.f32 (mma_m16n8<kK, T>): acc += A B, with
// g = lane / 4, t = lane % 4,
//   A [16, kK]: a[0] = (row g, cols 2t, 2t+1), a[1] = (row g+8, cols 2t, 2t+1), and for kK = 16
//               a[2] = (row g, cols 2t+8, 2t+9), a[3] = (row g+8, cols 2t+8, 2t+9);
//   B [kK, 8]:  b[0] = (rows 2t, 2t+1, col g), and for kK = 16 b[1] = (rows 2t+8, 2t+9, col g);
//   acc [16, 8]: acc[0], acc[1] = (row g, cols 2t, 2t+1), acc[2], acc[3] = (row g+8, same).
// Each output is the fp64 sum of acc and its kK products (each exact), rounded to fp32: one valid
// order (the hardware's order and internal precision are unspecified). All lanes must use the same
// kK and T.
template <int kK, typename T>
__attribute__((noinline)) void mma_m16n8(float (&acc)[4], const uint32_t (&a)[kK / 4],
                                         const uint32_t (&b)[kK / 8]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "16-bit operands");
  static_assert(kK == 16 || kK == 8, "m16n8k16 or m16n8k8");
  const emulation::Site site{"", 0, __builtin_return_address(0)};
  struct Slot {
    float* acc;
    const uint32_t* a;
    const uint32_t* b;
  } mine{acc, a, b};
  const char* what = std::is_same_v<T, __half>
                         ? (kK == 16 ? "mma_m16n8<16, __half>" : "mma_m16n8<8, __half>")
                         : (kK == 16 ? "mma_m16n8<16, __nv_bfloat16>" : "mma_m16n8<8, __nv_bfloat16>");
  emulation::cta.warp_collective(what, site, 0xffffffffu, &mine, [&](void** payload, unsigned) {
    double A[16][kK], B[kK][8], D[16][8];
    for (int lane = 0; lane < 32; ++lane) {
      const Slot& slot = *static_cast<const Slot*>(payload[lane]);
      const int g = lane / 4, t = lane % 4;
      for (int i = 0; i < 4; ++i) D[g + 8 * (i / 2)][2 * t + i % 2] = slot.acc[i];
      for (int i = 0; i < kK / 4; ++i)
        for (int half = 0; half < 2; ++half)
          A[g + 8 * (i % 2)][2 * t + 8 * (i / 2) + half] = emulation::fragment_element<T>(slot.a[i], half);
      for (int i = 0; i < kK / 8; ++i)
        for (int half = 0; half < 2; ++half)
          B[2 * t + 8 * i + half][g] = emulation::fragment_element<T>(slot.b[i], half);
    }
    for (int row = 0; row < 16; ++row)
      for (int col = 0; col < 8; ++col)
        for (int k = 0; k < kK; ++k) D[row][col] += A[row][k] * B[k][col];
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int i = 0; i < 4; ++i)
        static_cast<Slot*>(payload[lane])->acc[i] = static_cast<float>(D[g + 8 * (i / 2)][2 * t + i % 2]);
    }
  });
}

}  // namespace convmixer_fast
#endif  // !defined(__CUDA_ARCH__)

namespace emulation {


// ==== checking a kernel ==============================================================================

// ---- dtypes ---------------------------------------------------------------------------------------
enum class DTypeName { kF32, kF16, kBF16 };

inline const char* dtype_text(DTypeName dtype) {
  static const char* const kNames[] = {"f32", "f16", "bf16"};
  return kNames[static_cast<int>(dtype)];
}

// Calls f(T{}) for the storage type of `dtype`.
template <typename F>
auto with_dtype(DTypeName dtype, F&& f) {
  switch (dtype) {
    case DTypeName::kF16: return f(__half{});
    case DTypeName::kBF16: return f(__nv_bfloat16{});
    default: return f(float{});
  }
}

inline const char* activation_text(convmixer_fast::Activation act) {
  return act == convmixer_fast::Activation::kGelu ? "gelu" : "relu";
}

// Calls f(std::integral_constant<Activation, act>{}).
template <typename F>
auto with_activation(convmixer_fast::Activation act, F&& f) {
  using convmixer_fast::Activation;
  if (act == Activation::kGelu) return f(std::integral_constant<Activation, Activation::kGelu>{});
  return f(std::integral_constant<Activation, Activation::kRelu>{});
}

// Per storage type: significand bits (with the implicit one), the exponent of the smallest
// subnormal, and the bits outputs start with (a quiet NaN no arithmetic produces here).
template <int kSignificand, int kMinUlp, typename TBits, TBits kUnwrittenBits>
struct DTypeFacts {
  static constexpr int kMantissaBits = kSignificand;
  static constexpr int kMinUlpExponent = kMinUlp;
  using Bits = TBits;
  static constexpr Bits kUnwritten = kUnwrittenBits;
};
template <typename T>
struct DTypeInfo;
template <>
struct DTypeInfo<float> : DTypeFacts<24, -149, uint32_t, 0x7fc0deadu> {};
template <>
struct DTypeInfo<__half> : DTypeFacts<11, -24, uint16_t, 0x7eadu> {};
template <>
struct DTypeInfo<__nv_bfloat16> : DTypeFacts<8, -133, uint16_t, 0x7fedu> {};

template <typename T>
typename DTypeInfo<T>::Bits bits_of(T value) {
  return bit_cast<typename DTypeInfo<T>::Bits>(value);
}
template <typename T>
T unwritten() {  // the bit pattern outputs start with
  return bit_cast<T>(DTypeInfo<T>::kUnwritten);
}
template <typename T>
double as_double(T value) {
  return static_cast<float>(value);
}
template <typename T>
T round_to(double value) {  // round to nearest even, through fp32 (exact for the random inputs)
  return T(static_cast<float>(value));
}
template <typename T>
T nan_of() {
  return T(NAN);
}

// One unit in the last place of T at |y|.
template <typename T>
double ulp(double y) {
  int exponent;
  std::frexp(y, &exponent);  // 2^(exponent - 1) <= |y| < 2^exponent
  return std::ldexp(1.0, std::max(exponent - DTypeInfo<T>::kMantissaBits, DTypeInfo<T>::kMinUlpExponent));
}

// ---- tensors with guards ----------------------------------------------------------------------------
// Where the live guarded buffers lie, for the SIGSEGV report.
struct BufferRange {
  const char* name;
  uintptr_t data_begin, data_end;
};
inline std::mutex buffer_ranges_mutex;
inline std::vector<BufferRange> buffer_ranges;

// An access to a protected page (just outside a guarded buffer's guards): a read or write out of
// bounds, reported with the nearest buffer (async-signal-unsafe printing is fine: the program ends).
inline void report_out_of_bounds(int, siginfo_t* info, void*) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
  char line[400];
  int length = std::snprintf(line, sizeof(line), "FAIL: out-of-bounds access at %p (block (%u, %u, %u))",
                             info->si_addr, emulated_block_idx.x, emulated_block_idx.y, emulated_block_idx.z);
  for (const BufferRange& range : buffer_ranges) {
    if (address + 8192 >= range.data_begin && address < range.data_end + 8192) {
      const long long offset = address >= range.data_end ? static_cast<long long>(address - range.data_end)
                                                        : static_cast<long long>(range.data_begin - address);
      length += std::snprintf(line + length, sizeof(line) - length, ": %lld bytes %s %s", offset,
                              address >= range.data_end ? "past the end of" : "before the start of", range.name);
      break;
    }
  }
  std::snprintf(line + length, sizeof(line) - length, "\n");
  std::fputs(line, stdout);
  std::fflush(stdout);
  std::_Exit(1);
}

// A tensor of n elements between guards of poison elements, in a mapping whose pages before and
// after the guards are inaccessible: an access just outside the tensor reads poison (a NaN that
// spreads into the results) or, if written, breaks a guard (reported by the output check); one
// past the guards faults and is reported as out of bounds (even a read that feeds no output). The
// leading guard has at least `guard` elements; the trailing one only pads the tensor to 16 bytes.
// data() is 16-byte aligned, or one element past that when misaligned.
template <typename T>
class GuardedBuffer {
 public:
  GuardedBuffer(const char* name, int64_t n, int64_t guard, T poison, bool misaligned)
      : name_(name), n_(n), poison_(poison) {
    static const bool handler = [] {
      struct sigaction action = {};
      action.sa_sigaction = report_out_of_bounds;
      action.sa_flags = SA_SIGINFO;
      sigaction(SIGSEGV, &action, nullptr);
      return true;
    }();
    (void)handler;
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const int64_t lead = (guard + 15) / 16 * 16 + (misaligned ? 1 : 0);  // elements before data()
    const size_t used = ((lead + n) * sizeof(T) + 15) / 16 * 16;         // guards + data, 16-byte padded
    const size_t pages = (used + page - 1) / page;
    mapping_bytes_ = (pages + 2) * page;
    void* mapping = mmap(nullptr, mapping_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapping == MAP_FAILED) fail("mmap failed");
    mapping_ = static_cast<unsigned char*>(mapping);
    mprotect(mapping_, page, PROT_NONE);
    mprotect(mapping_ + (pages + 1) * page, page, PROT_NONE);
    begin_ = reinterpret_cast<T*>(mapping_ + page);                  // first accessible element
    end_ = reinterpret_cast<T*>(mapping_ + (pages + 1) * page);      // the protected page
    data_ = reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(end_) - used) + lead;
    fill(poison);
    std::lock_guard<std::mutex> lock(buffer_ranges_mutex);
    buffer_ranges.push_back({name_, reinterpret_cast<uintptr_t>(data_), reinterpret_cast<uintptr_t>(data_ + n_)});
  }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;
  ~GuardedBuffer() {
    std::lock_guard<std::mutex> lock(buffer_ranges_mutex);
    for (size_t i = 0; i < buffer_ranges.size(); ++i)
      if (buffer_ranges[i].data_begin == reinterpret_cast<uintptr_t>(data_) && buffer_ranges[i].name == name_) {
        buffer_ranges.erase(buffer_ranges.begin() + i);
        break;
      }
    munmap(mapping_, mapping_bytes_);
  }

  const char* name() const { return name_; }
  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return n_; }
  void fill(T value) { std::fill(begin_, end_, value); }  // data and guards
  // Whether every element outside [data(), data() + n) still holds the poison.
  bool guards_hold() const {
    for (const T* e = begin_; e < end_; ++e) {
      if (e == data_) e += n_;
      if (e < end_ && std::memcmp(e, &poison_, sizeof(T)) != 0) return false;
    }
    return true;
  }

 private:
  const char* name_;
  int64_t n_;
  T poison_;
  unsigned char* mapping_;
  size_t mapping_bytes_;
  T *begin_, *end_, *data_;
};

// An output: starts (and its guards stay) at the unwritten pattern of T.
template <typename T>
struct OutputBuffer : GuardedBuffer<T> {
  OutputBuffer(const char* name, int64_t n, int64_t guard, bool misaligned)
      : GuardedBuffer<T>(name, n, guard, unwritten<T>(), misaligned) {}
};

// ---- expectations ------------------------------------------------------------------------------------
struct Expected {  // per output element: the fp64 reference and how far the kernel may be from it
  std::vector<double> value, tolerance;
  explicit Expected(int64_t n = 0) : value(n), tolerance(n) {}
};

inline double activation_reference(convmixer_fast::Activation act, double v) {
  return act == convmixer_fast::Activation::kGelu ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))
                                                  : std::max(v, 0.0);
}

// Rounding error of an fp32 sum whose longest chain of roundings has `depth` steps, of terms whose
// magnitudes add to sum_abs: about two units of fp32 roundoff (2^-24 each) per step.
inline double fp32_sum_error(double depth, double sum_abs) { return 1.2e-7 * depth * sum_abs; }

// Tolerance of y = round_T(scale * act(acc + bias) + shift [+ residual]) with the epilogue in fp32
// and an accumulator `acc_error` away from exact: one unit of T at |y| (the single rounding at the
// store), 1e-6 * (1 + |y|) for the fp32 epilogue (GELU, fmaf), and the accumulator error through
// scale and the activation (slope <= 1.13 for GELU, covered by 1.2).
template <typename T>
double epilogue_tolerance(double y, double acc_error, double scale) {
  return ulp<T>(y) + 1e-6 * (1.0 + std::fabs(y)) + acc_error * std::fabs(scale) * 1.2;
}

// ---- comparing outputs ---------------------------------------------------------------------------------
// Collects, over the launches of one case, outputs that are wrong or unwritten and writes outside
// outputs; the first few problems are described.
class OutputCheck {
 public:
  // where(i): a description of output element i ("b=0 h=3 c=5").
  template <typename T, typename Where>
  void compare(const GuardedBuffer<T>& out, const Expected& expected, const char* order, Where&& where) {
    const char* tensor = out.name();
    if (!out.guards_hold()) problem(format("  writes outside %s (%s block order)\n", tensor, order), nullptr);
    for (int64_t i = 0; i < out.size(); ++i) {
      const T got = out.data()[i];
      const bool not_written = bits_of(got) == DTypeInfo<T>::kUnwritten;
      ++checked_;
      if (!not_written) {
        const double error = std::fabs(as_double(got) - expected.value[i]);
        const double ratio = std::isnan(error) ? INFINITY : error / expected.tolerance[i];
        worst_ratio_ = std::max(worst_ratio_, ratio);
        if (ratio <= 1.0) continue;
      }
      const std::string got_text = not_written ? "never written" : format("got %.7g", as_double(got));
      problem(format("  %s[%s]: %s, want %.7g (tolerance %.2g; %s block order)\n", tensor,
                     where(i).c_str(), got_text.c_str(), expected.value[i], expected.tolerance[i], order),
              not_written ? &unwritten_ : &wrong_);
    }
  }
  // A problem of the case that is not an output value (e.g. a harness precondition).
  void problem(const std::string& line, int64_t* counter) {
    ok_ = false;
    if (counter != nullptr) ++*counter;
    if (++problems_ <= 5) details_ += line;
  }
  // The case's line (then the details): ok / FAIL, name, tags, worst error / tolerance, counts.
  bool print(const std::string& name, const std::string& tags) const {
    const std::string counts =
        wrong_ + unwritten_ > 0
            ? format(", %lld wrong, %lld unwritten (of %lld checked)", static_cast<long long>(wrong_),
                     static_cast<long long>(unwritten_), static_cast<long long>(checked_))
            : "";
    std::printf("%-4s  %-46s %-30s max error/tolerance %.2f%s\n%s", ok_ ? "ok" : "FAIL", name.c_str(),
                tags.c_str(), worst_ratio_, counts.c_str(), details_.c_str());
    return ok_;
  }

 private:
  bool ok_ = true;
  int64_t wrong_ = 0, unwritten_ = 0, checked_ = 0, problems_ = 0;
  double worst_ratio_ = 0;  // max over written outputs of |error| / tolerance
  std::string details_;
};

// ---- command line ------------------------------------------------------------------------------------
// Splits "a,b,c" at the commas.
inline std::vector<std::string> split_fields(const char* text) {
  std::vector<std::string> fields(1);
  for (const char* c = text; *c; ++c) {
    if (*c == ',') fields.emplace_back();
    else fields.back() += *c;
  }
  return fields;
}

// A whole decimal number >= minimum (no sign, no other characters).
inline bool parse_int(const std::string& text, int minimum, int& value) {
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos) return false;
  value = std::atoi(text.c_str());
  return value >= minimum;
}

inline bool parse_dtype(const std::string& text, DTypeName& dtype) {
  for (const DTypeName d : {DTypeName::kF32, DTypeName::kF16, DTypeName::kBF16})
    if (text == dtype_text(d)) return dtype = d, true;
  return false;
}

inline bool parse_activation(const std::string& text, convmixer_fast::Activation& act) {
  using convmixer_fast::Activation;
  for (const Activation a : {Activation::kGelu, Activation::kRelu})
    if (text == activation_text(a)) return act = a, true;
  return false;
}

// main() of a harness, given how it parses (false if malformed), formats (the inverse), draws and
// runs (prints the case's line; false if it failed) a case:
//   PROGRAM                        the fixed case list
//   PROGRAM CASE...                these cases
//   PROGRAM --random COUNT [SEED]  COUNT random cases (seed 7 by default)
// Prints one line per case and a summary ("PASSED: N cases, 0 failed"); exits 1 if a case fails,
// 2 on a bad command line. A case's inputs depend on its text alone (the seed is a hash of it), so
// a case reproduces on its own, from any list.
template <typename Case, size_t kFixedCases>
int run_harness(int argc, char** argv, const char* case_syntax, const char* const (&fixed_cases)[kFixedCases],
                bool (*parse_fields)(const std::vector<std::string>&, Case&), std::string (*format_case)(const Case&),
                Case (*random_case)(std::mt19937&), bool (*run_case)(const Case&, unsigned seed)) {
  auto usage = [&] {
    std::printf("usage: %s                       run the fixed case list\n"
                "       %s CASE...               run these cases\n"
                "       %s --random COUNT [SEED] run COUNT random cases\n%s",
                argv[0], argv[0], argv[0], case_syntax);
    return 2;
  };
  auto parse = [&](const char* text, Case& c) {
    return parse_fields(split_fields(text), c) && format_case(c) == text;
  };
  std::vector<Case> cases;
  if (argc >= 2 && std::strcmp(argv[1], "--random") == 0) {
    int count = 0;
    if (argc < 3 || argc > 4 || !parse_int(argv[2], 1, count)) return usage();
    std::mt19937 rng(argc == 4 ? static_cast<unsigned>(std::strtoul(argv[3], nullptr, 10)) : 7u);
    for (int i = 0; i < count; ++i) cases.push_back(random_case(rng));
  } else {
    std::vector<const char*> texts(argv + 1, argv + argc);
    if (texts.empty()) texts.assign(std::begin(fixed_cases), std::end(fixed_cases));
    for (const char* text : texts) {
      Case c;
      if (!parse(text, c)) {
        std::printf("bad case '%s'\n", text);
        return argc >= 2 ? usage() : 2;
      }
      cases.push_back(c);
    }
  }
  int failed = 0;
  for (const Case& c : cases) {
    const std::string text = format_case(c);
    uint32_t seed = 2166136261u;  // FNV-1a
    for (const char ch : text) seed = (seed ^ static_cast<unsigned char>(ch)) * 16777619u;
    if (!run_case(c, seed)) ++failed;
    std::fflush(stdout);
  }
  std::printf("%s: %zu cases, %d failed\n", failed ? "FAILED" : "PASSED", cases.size(), failed);
  return failed ? 1 : 0;
}

}  // namespace emulation

// ---- the macros that turn the kernel header into host code -----------------------------------------
// (after every system header: they rename CUDA keywords and built-ins)
#define EMULATION_SITE (::emulation::Site{__FILE__, __LINE__})
#undef __global__
#define __global__ __host__
#undef __device__
#define __device__ __host__
#undef __shared__
#define __shared__ static  // a harness of a kernel with `extern __shared__` redefines it as empty
#undef __launch_bounds__
#define __launch_bounds__(...)
// `static alignas(n)` does not parse (alignas must come first); the GNU attribute may follow static.
#define alignas(n) __attribute__((aligned(n)))
#define threadIdx emulated_thread_idx
#define blockIdx emulated_block_idx
#define blockDim emulated_block_dim
#define gridDim emulated_grid_dim
#define __syncthreads() ::emulation::cta.syncthreads(EMULATION_SITE)
#define __syncwarp (::emulation::SyncWarpCall{EMULATION_SITE})
#define __shfl_sync(mask, var, ...) ::emulation::shuffle(EMULATION_SITE, ::emulation::ShuffleMode::kIdx, "__shfl_sync", mask, var, __VA_ARGS__)
#define __shfl_up_sync(mask, var, ...) ::emulation::shuffle(EMULATION_SITE, ::emulation::ShuffleMode::kUp, "__shfl_up_sync", mask, var, __VA_ARGS__)
#define __shfl_down_sync(mask, var, ...) ::emulation::shuffle(EMULATION_SITE, ::emulation::ShuffleMode::kDown, "__shfl_down_sync", mask, var, __VA_ARGS__)
#define __shfl_xor_sync(mask, var, ...) ::emulation::shuffle(EMULATION_SITE, ::emulation::ShuffleMode::kXor, "__shfl_xor_sync", mask, var, __VA_ARGS__)
#define __uint_as_float(v) ::emulation::bit_cast<float>(static_cast<unsigned int>(v))
#define __float_as_uint(v) ::emulation::bit_cast<unsigned int>(static_cast<float>(v))
#define __int_as_float(v) ::emulation::bit_cast<float>(static_cast<int>(v))
#define __float_as_int(v) ::emulation::bit_cast<int>(static_cast<float>(v))
