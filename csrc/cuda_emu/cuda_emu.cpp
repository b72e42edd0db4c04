// cuda_emu.cpp: the block scheduler of the CUDA-on-CPU emulation (see cuda_emu.h): fibers, the grid, the
// runtime API. What a block's threads do together is cuda_emu_block.cpp; mma.sync is cuda_emu_mma.cpp.

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

#include "cuda_emu_state.h"

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
// fibers (the state they run with: cuda_emu_state.h)

BlockState* g_block = nullptr;
ThreadState* g_thread = nullptr;
static void* g_sched_sp = nullptr;
static void (*g_body)(void*) = nullptr;
static void* g_body_ctx = nullptr;
static std::vector<ThreadState*> g_pool;  // fibers (and their stacks) reused across blocks
#ifdef EMU_ASAN
static const void* g_main_stack_bottom = nullptr;
static size_t g_main_stack_size = 0;
#endif
#ifdef EMU_TSAN_ON
void* g_main_tsan_fiber = nullptr;
char g_bar_sync[2];        // happens-before objects of the barriers (alternating generations)
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

void yield_blocked() { switch_to_scheduler(false); }

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
