#include "buffer_pool.h"

#include <cerrno>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>

namespace l0fast {
namespace {

// L0FAST_BUFFER_CACHE_MB (default 1024) in bytes; a value that is not a whole number >= 0 raises, naming it.
size_t cap_from_environment() {
  const char* env = std::getenv("L0FAST_BUFFER_CACHE_MB");
  if (env == nullptr) return size_t(1024) << 20;
  char* end = nullptr;
  errno = 0;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(end != env && *end == '\0' && errno == 0 && mb >= 0 && mb < (1ll << 40),
                    "L0FAST_BUFFER_CACHE_MB must be a whole number of MiB >= 0 (0: keep no idle buffers), got '", env, "'");
  return static_cast<size_t>(mb) << 20;
}

constexpr size_t kMinPooledBytes = size_t(1) << 16;
constexpr size_t kAlignment = 64;

class BufferPool {
 public:
  BufferPool() : cap_bytes_(cap_from_environment()) {}

  // A buffer of at least `bytes`: an idle one within 25% of the size, else new.
  void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if (it->bytes >= bytes && it->bytes <= bytes + bytes / 4) {
          void* ptr = it->ptr;
          idle_bytes_ -= it->bytes;
          live_[ptr] = it->bytes;
          idle_.erase(it);
          return ptr;
        }
      }
    }
    void* ptr = std::aligned_alloc(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
    TORCH_CHECK(ptr != nullptr, "l0fast: out of memory allocating ", bytes, " bytes");
    std::lock_guard<std::mutex> lock(mutex_);
    live_[ptr] = bytes;
    return ptr;
  }

  // Keep a freed buffer for reuse, dropping the oldest beyond the cap.
  void release(void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = live_.find(ptr);
    const size_t bytes = it->second;
    live_.erase(it);
    if (bytes > cap_bytes_) {
      std::free(ptr);
      return;
    }
    idle_.push_back({ptr, bytes});
    idle_bytes_ += bytes;
    while (idle_bytes_ > cap_bytes_) {
      idle_bytes_ -= idle_.front().bytes;
      std::free(idle_.front().ptr);
      idle_.pop_front();
    }
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };
  std::mutex mutex_;
  std::deque<Block> idle_;
  std::unordered_map<void*, size_t> live_;
  size_t idle_bytes_ = 0;
  size_t cap_bytes_ = 0;
};

// Never destroyed: tensors may outlive static destruction at interpreter exit.
BufferPool& pool() {
  static BufferPool* instance = new BufferPool();
  return *instance;
}

}  // namespace

at::Tensor empty_recycled(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(options.dtype().toScalarType());
  if (bytes < kMinPooledBytes) return at::empty(sizes, options);
  void* ptr = pool().acquire(bytes);
  return at::from_blob(ptr, sizes, [](void* p) { pool().release(p); }, options);
}

}  // namespace l0fast
