#pragma once
// std::vector storage on 64-byte boundaries: a 512-bit load from an address that is not a multiple of 64 touches
// two cache lines.
#include <cstddef>
#include <new>
#include <vector>

namespace kvlab {

template <class T>
struct AlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t ALIGN{64};
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), ALIGN)); }
  void deallocate(T* p, size_t) { ::operator delete(p, ALIGN); }
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
};

template <class T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

}  // namespace kvlab
