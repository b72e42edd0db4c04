// cuda_emu_block.cpp: what the threads of one emulated block do together: barriers, warp collectives, shared
// memory and cp.async (the scheduler that runs them is cuda_emu.cpp; their state, cuda_emu_state.h).
#include <cstring>

#include "cuda_emu_state.h"

namespace emu {

// ---------------------------------------------------------------------------------------------------------
// barriers and warp collectives

void release_barrier(BlockState& b) {
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

void exit_checks(BlockState& b, ThreadState* t) {
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

void* alloc_filled(size_t bytes, size_t align) {
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

void land_until(ThreadState* t, size_t end) {
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

}  // namespace emu
