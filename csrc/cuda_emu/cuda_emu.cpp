// cuda_emu.cpp: the block scheduler (fibers), barriers, warp collectives, shared memory, cp.async and
// mma.sync of the CUDA-on-CPU emulation (see cuda_emu.h).
#include "cuda_emu.h"

// Fiber switch: callee-saved registers on the stack, stack pointers swapped (x86-64 System V). Not swapcontext:
// that makes a signal-mask system call per switch, and under ASan its interceptor clears the whole stack's
// shadow each time; the sanitizer fiber annotations below are what the sanitizers need.
extern "C" void emu_ctx_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .globl emu_ctx_switch
  .type emu_ctx_switch,@function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_ctx_switch, .-emu_ctx_switch
)");

#include <cstdarg>
#include <map>
#include <random>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__) || defined(EMU_TSAN)
#define EMU_TSAN_ON 1
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif

namespace emu {

Current* g_cur = nullptr;
uint3 thread_idx() { return g_cur->thread_idx; }
uint3 block_idx() { return g_cur->block_idx; }
dim3 block_dim() { return g_cur->block_dim; }
dim3 grid_dim() { return g_cur->grid_dim; }
int lane_id() { return g_cur->lane; }

static int g_errors = 0;
static std::map<std::string, int> g_report_count;

void report(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  ++g_errors;
  int& n = g_report_count[fmt];
  if (++n <= 5) {
    if (g_cur)
      fprintf(stderr, "EMU ERROR [block (%u,%u,%u) thread (%u,%u,%u)]: %s\n", g_cur->block_idx.x, g_cur->block_idx.y,
              g_cur->block_idx.z, g_cur->thread_idx.x, g_cur->thread_idx.y, g_cur->thread_idx.z, buf);
    else
      fprintf(stderr, "EMU ERROR: %s\n", buf);
  } else if (n == 6) {
    fprintf(stderr, "EMU ERROR: (further reports of this kind suppressed)\n");
  }
}

void fatal(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "EMU FATAL: %s\n", buf);
  fflush(stderr);
  abort();
}

int error_count() { return g_errors; }

// ---------------------------------------------------------------------------------------------------------
// device properties (an H100 SXM: 132 SMs, sm_90, 227 KB of shared memory per block opt-in)
static int env_int(const char* name, int dflt) {
  const char* s = getenv(name);
  return s && *s ? atoi(s) : dflt;
}
static const size_t kStaticSmemLimit = 48 * 1024;
static size_t optin_smem() { return static_cast<size_t>(env_int("ARSEG_EMU_SMEM_OPTIN", 232448)); }

static cudaError_t g_last_error = cudaSuccess;
static std::map<const void*, int> g_max_dyn_smem;

}  // namespace emu

using namespace emu;

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = env_int("ARSEG_EMU_SM_COUNT", 132); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = env_int("ARSEG_EMU_CC_MAJOR", 9); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(optin_smem()); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "error";
  }
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > optin_smem()) return g_last_error = cudaErrorInvalidValue;
    g_max_dyn_smem[func] = value;
  }
  return cudaSuccess;
}

namespace emu {

// ---------------------------------------------------------------------------------------------------------
// fibers

enum class St { Runnable, AtBarrier, AtWarp, Done };

struct ThreadState {
  Current cur;
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack = nullptr;
  size_t stack_size = 0;
  St state = St::Runnable;
  const char* wait_file = nullptr;
  int wait_line = 0;
  unsigned bar_gen = 0;
  // cp.async queue without allocations on the fiber (reserved by the host when the fiber is created):
  // copies [landed, group_end[first_group]) ... are committed groups, [group_end.back(), size) uncommitted.
  std::vector<CpCopy> copies;
  std::vector<size_t> group_end;
  size_t first_group = 0, landed = 0;
  size_t pending() const { return copies.size() - landed; }
  size_t groups_in_flight() const { return group_end.size() - first_group; }
#ifdef EMU_ASAN
  void* fake_stack = nullptr;
#endif
#ifdef EMU_TSAN_ON
  void* tsan_fiber = nullptr;
#endif
};

struct WarpState {
  int arrived = 0;
  unsigned mask = 0;
  const char* kind = nullptr;
  const char* file = nullptr;
  int line = 0;
  CollectiveFn fn = nullptr;
  void* data[32] = {};
};

struct SharedAlloc {
  void* ptr;
  size_t bytes;
};

struct BlockState {
  std::vector<ThreadState*> threads;
  int nthreads = 0, live = 0, nwarps = 0;
  int bar_arrived = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  unsigned bar_gen = 0;
  std::vector<WarpState> warps;
  void* dyn = nullptr;
  size_t dyn_bytes = 0;
  std::map<const void*, SharedAlloc> statics;
  size_t static_bytes = 0;
};

static BlockState* g_block = nullptr;
static ThreadState* g_thread = nullptr;
static void* g_sched_sp = nullptr;
static void (*g_body)(void*) = nullptr;
static void* g_body_ctx = nullptr;
static std::vector<ThreadState*> g_pool;  // fibers (and their stacks) reused across blocks
#ifdef EMU_ASAN
static const void* g_main_stack_bottom = nullptr;
static size_t g_main_stack_size = 0;
#endif
#ifdef EMU_TSAN_ON
static void* g_main_tsan_fiber = nullptr;
static char g_bar_sync[2];        // happens-before objects of the barriers (alternating generations)
static char g_launch_sync;        // host -> every thread of a launch
static char g_launch_end_sync;    // every thread of a launch -> host
static char g_block_sync;         // host's set-up of a block (shared memory, thread state) -> its threads
static char g_stack_sync[1024];   // a pooled fiber stack: its previous user -> its next
#endif

static void switch_to_scheduler(bool exiting) {
  ThreadState* t = g_thread;
#ifdef EMU_TSAN_ON
  __tsan_switch_to_fiber(g_main_tsan_fiber, 1 /* no sync */);
#endif
#ifdef EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &t->fake_stack, g_main_stack_bottom, g_main_stack_size);
#endif
  (void)exiting;
  emu_ctx_switch(&t->sp, g_sched_sp);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(t->fake_stack, nullptr, nullptr);
#endif
}

static void fiber_entry() {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_main_stack_bottom, &g_main_stack_size);
#endif
  ThreadState* t = g_thread;
#ifdef EMU_TSAN_ON
  __tsan_acquire(&g_launch_sync);
  __tsan_acquire(&g_block_sync);
  __tsan_acquire(&g_stack_sync[t->cur.linear]);
#endif
  g_body(g_body_ctx);
  t = g_thread;
#ifdef EMU_TSAN_ON
  __tsan_release(&g_launch_end_sync);
  __tsan_release(&g_stack_sync[t->cur.linear]);
#endif
  t->state = St::Done;
  switch_to_scheduler(true);
  fatal("a finished fiber was resumed");
}

static void run_fiber(ThreadState* t) {
  g_thread = t;
  g_cur = &t->cur;
#ifdef EMU_TSAN_ON
  __tsan_switch_to_fiber(t->tsan_fiber, 1 /* no sync */);
#endif
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t->stack, t->stack_size);
#endif
  emu_ctx_switch(&g_sched_sp, t->sp);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g_cur = nullptr;
  g_thread = nullptr;
}

static void yield_blocked() { switch_to_scheduler(false); }

// ---------------------------------------------------------------------------------------------------------
// barriers and warp collectives

static void release_barrier(BlockState& b) {
  for (ThreadState* t : b.threads)
    if (t->state == St::AtBarrier) t->state = St::Runnable;
  b.bar_arrived = 0;
  b.bar_file = nullptr;
  ++b.bar_gen;
}

void syncthreads(const char* file, int line) {
  BlockState& b = *g_block;
  ThreadState* t = g_thread;
  if (b.bar_arrived == 0) {
    b.bar_file = file;
    b.bar_line = line;
  } else if (b.bar_line != line || strcmp(b.bar_file, file) != 0) {
    report("__syncthreads at %s:%d while other threads of the block wait at %s:%d (divergent barrier)", file, line,
           b.bar_file, b.bar_line);
  }
  t->state = St::AtBarrier;
  t->wait_file = file;
  t->wait_line = line;
  const unsigned gen = b.bar_gen;
#ifdef EMU_TSAN_ON
  __tsan_release(&g_bar_sync[gen & 1]);
#endif
  if (++b.bar_arrived == b.live) release_barrier(b);
  yield_blocked();  // also after the release: the scheduler picks the next thread by its order
#ifdef EMU_TSAN_ON
  __tsan_acquire(&g_bar_sync[gen & 1]);
#endif
  (void)gen;
}

static void exit_checks(BlockState& b, ThreadState* t) {
  // a lane leaving while its warp waits in a collective that includes it
  WarpState& w = b.warps[t->cur.warp];
  if (w.arrived > 0 && (w.mask >> t->cur.lane & 1u))
    report("thread exits while its warp waits for it in %s at %s:%d (deadlock on a GPU)", w.kind, w.file, w.line);
  const size_t pending = t->pending();
  if (pending)
    report("thread exits with %zu cp.async copies never waited for (cp.async.wait_group missing)", pending);
}

void syncwarp(const char* file, int line, unsigned mask) {
  struct Nothing {} n;
  warp_collective("__syncwarp", file, line, mask, &n, [](void* const*, unsigned) {});
}

void warp_collective(const char* kind, const char* file, int line, unsigned mask, void* data, CollectiveFn fn) {
  BlockState& b = *g_block;
  ThreadState* t = g_thread;
  WarpState& w = b.warps[t->cur.warp];
  const int lane = t->cur.lane;
  const int warp_size = std::min(32, b.nthreads - t->cur.warp * 32);
  const unsigned existing = warp_size == 32 ? 0xffffffffu : ((1u << warp_size) - 1u);
  if (!(mask >> lane & 1u)) report("%s at %s:%d: the calling lane %d is not in its mask %08x", kind, file, line, lane, mask);
  if (mask & ~existing) report("%s at %s:%d: mask %08x names lanes the warp does not have", kind, file, line, mask);
  if (w.arrived == 0) {
    w.mask = mask;
    w.kind = kind;
    w.file = file;
    w.line = line;
    w.fn = fn;
    for (auto& d : w.data) d = nullptr;
  } else {
    if (w.mask != mask)
      report("%s at %s:%d: mask %08x differs from the warp's pending collective's %08x", kind, file, line, mask,
             w.mask);
    if (w.line != line || strcmp(w.file, file) != 0 || strcmp(w.kind, kind) != 0)
      report("lane %d reaches %s at %s:%d while lanes of its warp wait in %s at %s:%d (divergent warp)", lane, kind,
             file, line, w.kind, w.file, w.line);
  }
  w.data[lane] = data;
  t->state = St::AtWarp;
  t->wait_file = file;
  t->wait_line = line;
  if (++w.arrived == __builtin_popcount(w.mask & existing)) {
    w.fn(w.data, w.mask & existing);
    w.arrived = 0;
    for (int l = 0; l < warp_size; ++l) {
      ThreadState* u = b.threads[t->cur.warp * 32 + l];
      if ((w.mask >> l & 1u) && u->state == St::AtWarp) u->state = St::Runnable;
    }
  }
  yield_blocked();
}

// ---------------------------------------------------------------------------------------------------------
// shared memory

static void* alloc_filled(size_t bytes, size_t align) {
  void* p = nullptr;
  if (align < 16) align = 16;
  if (posix_memalign(&p, align, bytes ? bytes : 1) != 0) fatal("out of memory");
  memset(p, 0xff, bytes);  // garbage: NaN in every float type, -1 in ints
  return p;
}

void* dynamic_shared(size_t align) {
  if (align > 128 || (align & (align - 1))) report("dynamic shared memory aligned to %zu bytes (the emulator gives 128)", align);
  return g_block->dyn;
}

void* static_shared(const void* tag, size_t bytes, size_t align) {
  BlockState& b = *g_block;
  auto it = b.statics.find(tag);
  if (it == b.statics.end()) {
    // Allocated at the first thread's first use; for ThreadSanitizer the allocation is the host's (as if made
    // before the block started), so it orders nothing between the block's threads.
#ifdef EMU_TSAN_ON
    __tsan_switch_to_fiber(g_main_tsan_fiber, 1);
#endif
    void* p = alloc_filled(bytes, align);
    it = b.statics.emplace(tag, SharedAlloc{p, bytes}).first;
    b.static_bytes += bytes;
#ifdef EMU_TSAN_ON
    __tsan_release(&it->second);
    __tsan_switch_to_fiber(g_thread->tsan_fiber, 1);
#endif
  }
#ifdef EMU_TSAN_ON
  __tsan_acquire(&it->second);
#endif
  return it->second.ptr;
}

bool is_shared(const void* p, size_t bytes) {
  const BlockState& b = *g_block;
  auto in = [&](const void* base, size_t n) {
    const char* c = static_cast<const char*>(p);
    const char* s = static_cast<const char*>(base);
    return c >= s && c + bytes <= s + n;
  };
  if (b.dyn && in(b.dyn, b.dyn_bytes)) return true;
  for (auto& kv : b.statics)
    if (in(kv.second.ptr, kv.second.bytes)) return true;
  return false;
}

void check_atomic_address(const void* p, size_t align, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % align) report("%s on a misaligned address %p", what, p);
}

// ---------------------------------------------------------------------------------------------------------
// cp.async: queued per thread, landing at cp.async.wait_group

void cp_async(void* dst, const void* src, int cp_size, int src_bytes, const char* file, int line) {
  if (cp_size != 4 && cp_size != 8 && cp_size != 16) report("cp.async at %s:%d: cp-size %d", file, line, cp_size);
  if (src_bytes < 0 || src_bytes > cp_size)
    report("cp.async at %s:%d: src-size %d outside [0, %d]", file, line, src_bytes, cp_size);
  if (!is_shared(dst, cp_size))
    report("cp.async at %s:%d: destination %p (+%d) is not inside this block's shared memory", file, line, dst,
           cp_size);
  if (reinterpret_cast<uintptr_t>(dst) % cp_size)
    report("cp.async at %s:%d: shared address %p not aligned to %d bytes", file, line, dst, cp_size);
  if (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % cp_size)
    report("cp.async at %s:%d: global address %p not aligned to %d bytes", file, line, src, cp_size);
#ifdef EMU_ASAN
  if (src_bytes > 0 && __asan_region_is_poisoned(const_cast<void*>(src), src_bytes)) {
    fprintf(stderr, "EMU: cp.async at %s:%d reads %d bytes at %p outside any allocation:\n", file, line, src_bytes,
            src);
    __asan_report_error(__builtin_frame_address(0), __builtin_frame_address(0), __builtin_frame_address(0),
                        __asan_region_is_poisoned(const_cast<void*>(src), src_bytes), 0, src_bytes);
  }
#endif
  mem_fill(dst, 0xff, cp_size);  // in flight: garbage until the wait
  ThreadState* t = g_thread;
  if (t->copies.size() == t->copies.capacity()) fatal("cp.async: more than %zu copies in flight", t->copies.size());
  t->copies.push_back({dst, src, cp_size, src_bytes, file, line});
}

void cp_async_commit() {
  ThreadState* t = g_thread;
  if (t->group_end.size() == t->group_end.capacity()) fatal("cp.async: too many groups in flight");
  t->group_end.push_back(t->copies.size());
}

static void land_until(ThreadState* t, size_t end) {
  for (; t->landed < end; ++t->landed) {
    const CpCopy& c = t->copies[t->landed];
    if (c.src_bytes > 0) mem_copy(c.dst, c.src, c.src_bytes);
    if (c.src_bytes < c.size) mem_fill(static_cast<char*>(c.dst) + c.src_bytes, 0, c.size - c.src_bytes);
  }
  if (t->landed == t->copies.size() && t->first_group == t->group_end.size()) {  // empty: reuse the storage
    t->copies.clear();
    t->group_end.clear();
    t->first_group = t->landed = 0;
  }
}

void cp_async_wait(int pending) {
  ThreadState* t = g_thread;
  while (static_cast<int>(t->groups_in_flight()) > pending) land_until(t, t->group_end[t->first_group++]);
}

// ---------------------------------------------------------------------------------------------------------
// the grid

static size_t stack_size() {
#ifdef EMU_ASAN
  return 1 << 20;
#elif defined(EMU_TSAN_ON)
  return 1 << 20;
#else
  return 256 << 10;
#endif
}

static ThreadState* pooled(int i) {
  while (static_cast<int>(g_pool.size()) <= i) {
    ThreadState* t = new ThreadState;
    t->stack_size = stack_size();
    t->stack = static_cast<char*>(malloc(t->stack_size));
    t->copies.reserve(16384);
    t->group_end.reserve(4096);
    g_pool.push_back(t);
  }
  return g_pool[i];
}

enum class Order { Forward, Reverse, Random };
static Order order() {
  const char* s = getenv("ARSEG_EMU_ORDER");
  if (!s || !strcmp(s, "fwd")) return Order::Forward;
  if (!strcmp(s, "rev")) return Order::Reverse;
  return Order::Random;
}
static std::mt19937& rng() {
  static std::mt19937 r(env_int("ARSEG_EMU_SEED", 1));
  return r;
}

static long g_blocks_run = 0, g_threads_run = 0;
long blocks_run() { return g_blocks_run; }

static void run_block(BlockState& b, const Cfg& c, uint3 bid) {
  const int nt = b.nthreads;
  b.threads.resize(nt);
  for (int i = 0; i < nt; ++i) {
    ThreadState* t = pooled(i);
    b.threads[i] = t;
    t->state = St::Runnable;
    t->copies.clear();
    t->group_end.clear();
    t->first_group = t->landed = 0;
    t->cur.block_idx = bid;
    t->cur.block_dim = c.block;
    t->cur.grid_dim = c.grid;
    t->cur.thread_idx = {static_cast<unsigned>(i % c.block.x), static_cast<unsigned>(i / c.block.x % c.block.y),
                         static_cast<unsigned>(i / (c.block.x * c.block.y))};
    t->cur.linear = i;
    t->cur.lane = i & 31;
    t->cur.warp = i >> 5;
    {  // initial frame: six callee-saved registers (0), then "return" into fiber_entry with rsp % 16 == 8
      uintptr_t top = (reinterpret_cast<uintptr_t>(t->stack) + t->stack_size) & ~uintptr_t(15);
      void** sp = reinterpret_cast<void**>(top - 8 * 8);
      for (int r = 0; r < 6; ++r) sp[r] = nullptr;
      sp[6] = reinterpret_cast<void*>(&fiber_entry);
      sp[7] = nullptr;  // fiber_entry never returns
      t->sp = sp;
    }
#ifdef EMU_TSAN_ON
    t->tsan_fiber = __tsan_create_fiber(0);
#endif
  }
#ifdef EMU_TSAN_ON
  __tsan_release(&g_block_sync);
#endif
  b.live = nt;
  b.nwarps = (nt + 31) / 32;
  b.warps.assign(b.nwarps, WarpState{});
  const Order ord = order();
  int next = 0;
  int done = 0;
  while (done < nt) {
    // pick a runnable thread by the order
    int pick = -1;
    if (ord == Order::Random) {
      std::vector<int> r;
      for (int i = 0; i < nt; ++i)
        if (b.threads[i]->state == St::Runnable) r.push_back(i);
      if (!r.empty()) pick = r[rng()() % r.size()];
    } else {
      for (int k = 0; k < nt; ++k) {
        const int i = ord == Order::Forward ? (next + k) % nt : (nt - 1 - ((next + k) % nt));
        if (b.threads[i]->state == St::Runnable) {
          pick = i;
          next = (next + k + 1) % nt;
          break;
        }
      }
    }
    if (pick < 0) {
      // nobody can run: a deadlock (divergent barrier or collective)
      std::map<std::string, int> where;
      for (ThreadState* t : b.threads) {
        if (t->state == St::Done) continue;
        char buf[512];
        snprintf(buf, sizeof buf, "%s at %s:%d", t->state == St::AtBarrier ? "__syncthreads" : "warp collective",
                 t->wait_file, t->wait_line);
        ++where[buf];
      }
      std::string s;
      for (auto& kv : where) s += "\n    " + std::to_string(kv.second) + " threads in " + kv.first;
      fatal("deadlock in block (%u,%u,%u): %d of %d threads finished;%s", bid.x, bid.y, bid.z, done, nt, s.c_str());
    }
    ThreadState* t = b.threads[pick];
    run_fiber(t);
    if (t->state == St::Done) {
      ++done;
      --b.live;
      g_cur = &t->cur;
      exit_checks(b, t);
      g_cur = nullptr;
      if (b.bar_arrived > 0 && b.bar_arrived == b.live) {
        report("threads exited while %d threads of the block wait at __syncthreads %s:%d", b.bar_arrived,
               b.bar_file, b.bar_line);
        release_barrier(b);
      }
      land_until(t, t->copies.size());  // copies still in flight land eventually (reported above)
#ifdef EMU_TSAN_ON
      __tsan_destroy_fiber(t->tsan_fiber);
      t->tsan_fiber = nullptr;
#endif
    }
  }
  ++g_blocks_run;
  g_threads_run += nt;
}

cudaError_t run_grid(const void* kernel, const Cfg& c, void (*body)(void*), void* ctx) {
  const long long threads = 1LL * c.block.x * c.block.y * c.block.z;
  if (threads < 1 || threads > 1024 || c.block.z > 64 || c.grid.x < 1 || c.grid.y < 1 || c.grid.z < 1 ||
      c.grid.y > 65535 || c.grid.z > 65535 || c.grid.x > 2147483647u) {
    report("launch: invalid configuration grid (%u,%u,%u) block (%u,%u,%u)", c.grid.x, c.grid.y, c.grid.z,
           c.block.x, c.block.y, c.block.z);
    g_last_error = cudaErrorInvalidConfiguration;
    return g_last_error;
  }
  if (c.smem > kStaticSmemLimit) {
    auto it = g_max_dyn_smem.find(kernel);
    if (it == g_max_dyn_smem.end() || static_cast<size_t>(it->second) < c.smem) {
      report("launch: %zu bytes of dynamic shared memory without cudaFuncAttributeMaxDynamicSharedMemorySize",
             c.smem);
      g_last_error = cudaErrorInvalidValue;
      return g_last_error;
    }
  }
  if (getenv("ARSEG_EMU_VERBOSE"))
    fprintf(stderr, "EMU launch: grid (%u,%u,%u) block (%u,%u,%u) dynamic smem %zu\n", c.grid.x, c.grid.y, c.grid.z,
            c.block.x, c.block.y, c.block.z, c.smem);
#ifdef EMU_TSAN_ON
  if (!g_main_tsan_fiber) g_main_tsan_fiber = __tsan_get_current_fiber();
  __tsan_release(&g_launch_sync);
#endif
  g_body = body;
  g_body_ctx = ctx;
  const long max_blocks = env_int("ARSEG_EMU_MAX_BLOCKS", 0);  // 0: all
  long run = 0;
  size_t static_max = 0;
  std::vector<void*> deferred;
  for (unsigned bz = 0; bz < c.grid.z; ++bz)
    for (unsigned by = 0; by < c.grid.y; ++by)
      for (unsigned bx = 0; bx < c.grid.x; ++bx) {
        if (max_blocks && run >= max_blocks) continue;
        ++run;
        BlockState b;
        b.nthreads = static_cast<int>(threads);
        b.dyn_bytes = c.smem;
        b.dyn = c.smem ? alloc_filled(c.smem, 128) : nullptr;
        g_block = &b;
        run_block(b, c, {bx, by, bz});
        g_block = nullptr;
        static_max = std::max(static_max, b.static_bytes);
        if (b.static_bytes > kStaticSmemLimit)
          report("block uses %zu bytes of static shared memory (> 48 KB: does not compile for a GPU)",
                 b.static_bytes);
        if (b.static_bytes + b.dyn_bytes > optin_smem())
          report("block uses %zu + %zu bytes of shared memory (> %zu per block)", b.static_bytes, b.dyn_bytes,
                 optin_smem());
#ifdef EMU_TSAN_ON
        // freed after the grid (the host has no happens-before with a block's threads until then, and blocks
        // must not be ordered with each other)
        deferred.push_back(b.dyn);
        for (auto& kv : b.statics) deferred.push_back(kv.second.ptr);
#else
        free(b.dyn);
        for (auto& kv : b.statics) free(kv.second.ptr);
#endif
      }
#ifdef EMU_TSAN_ON
  __tsan_acquire(&g_launch_end_sync);
  for (void* p : deferred) free(p);
#endif
  if (getenv("ARSEG_EMU_VERBOSE")) fprintf(stderr, "EMU   static smem %zu bytes per block\n", static_max);
  return cudaSuccess;
}

}  // namespace emu
