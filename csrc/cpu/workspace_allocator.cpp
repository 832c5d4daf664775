// Why a caching allocator: glibc hands blocks above its mmap threshold (32 MiB at most) straight back to the kernel
// when freed, so every call's workspaces were fresh pages, each faulted in and zeroed by the kernel on first touch:
// at B = 64, T = 256, H = 128 that was about a seventh of a forward+backward. Huge pages (MADV_HUGEPAGE, what c10 does
// for every block under THP_MEM_ALLOC_ENABLE=1) cut the faults 512-fold but not the zeroing; reuse removes both.
#include "cpu/workspace_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace lstm_attn::lstm {
namespace {

constexpr size_t kHuge = size_t(2) << 20;

class WorkspaceAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
#ifdef __linux__
    if (n >= kHuge) {
      const size_t size = (n + kHuge - 1) / kHuge * kHuge;
      void* p = take(size);
      if (p == nullptr) {
        TORCH_CHECK(posix_memalign(&p, kHuge, size) == 0, "lstm_attn: out of memory allocating ", size, " bytes");
        madvise(p, size, MADV_HUGEPAGE);  // advice only: without it, 4 KiB pages
      }
      return {p, new Block{p, size}, &give_back, c10::Device(c10::kCPU)};
    }
#endif
    return c10::GetCPUAllocator()->allocate(n);
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t empty() {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [size, p] : free_) std::free(p);
    free_.clear();
    const auto freed = static_cast<int64_t>(cached_);
    cached_ = 0;
    return freed;
  }

 private:
  struct Block {
    void* p;
    size_t size;
  };

  static void give_back(void* context);

  // A cached block of exactly `size` bytes, or null.
  void* take(size_t size) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = free_.find(size);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= size;
    return p;
  }

  void keep(void* p, size_t size) {
    if (size > kWorkspaceCacheBytes) {  // larger than the whole cache: back to the system, the cache untouched
      std::free(p);
      return;
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    // Room for it by freeing the largest cached blocks first (sizes no longer asked for, in a loop whose shapes
    // change).
    while (cached_ + size > kWorkspaceCacheBytes) {
      const auto largest = std::prev(free_.end());
      std::free(largest->second);
      cached_ -= largest->first;
      free_.erase(largest);
    }
    free_.emplace(size, p);
    cached_ += size;
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

// Never destroyed: tensors freed during the interpreter's exit may still hand blocks back to it.
WorkspaceAllocator& instance() {
  static auto* allocator = new WorkspaceAllocator();
  return *allocator;
}

void WorkspaceAllocator::give_back(void* context) {
  const Block* block = static_cast<const Block*>(context);
  instance().keep(block->p, block->size);
  delete block;
}

}  // namespace

c10::Allocator* workspace_allocator() { return &instance(); }

int64_t empty_workspace_cache() { return instance().empty(); }

}  // namespace lstm_attn::lstm
