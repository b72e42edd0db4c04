// cuda_emu_state.h: the emulator's internal state of a block and its threads, shared by the scheduler
// (cuda_emu.cpp: fibers, the grid) and the block-level operations (cuda_emu_block.cpp: barriers, warp
// collectives, shared memory, cp.async). Not part of the kernels' interface (that is cuda_emu.h).
#pragma once

#include <cstdarg>
#include <map>
#include <string>
#include <vector>

#include "cuda_emu.h"

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

extern BlockState* g_block;    // the block being run
extern ThreadState* g_thread;  // the thread being run (null on the host)
#ifdef EMU_TSAN_ON
extern void* g_main_tsan_fiber;
extern char g_bar_sync[2];  // happens-before objects of the barriers (alternating generations)
#endif

// Back to the scheduler until this thread is runnable again (cuda_emu.cpp).
void yield_blocked();
// Block-level pieces the scheduler uses (cuda_emu_block.cpp).
void release_barrier(BlockState& b);
void exit_checks(BlockState& b, ThreadState* t);
void* alloc_filled(size_t bytes, size_t align);
void land_until(ThreadState* t, size_t end);

}  // namespace emu
