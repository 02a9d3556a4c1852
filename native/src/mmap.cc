// Read-only file mappings handed out as zero-copy ArrayBuffers (safetensors weights are viewed in place).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <napi.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "bindings.h"

namespace kvlab::bind {
namespace {

// One mmap of a whole file, freed when the last ArrayBuffer over it and its handle are collected.
struct Mapping {
  void* base;
  size_t size;
  std::atomic<long> refs;
};

void unref(Mapping* m) {
  if (m->refs.fetch_sub(1) == 1) {
    if (m->size) munmap(m->base, m->size);
    delete m;
  }
}

void release_region(napi_env, void*, void* hint) { unref(static_cast<Mapping*>(hint)); }

Mapping* map_file(Napi::Env env, const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    Napi::Error::New(env, "cannot open " + path + ": " + std::strerror(errno)).ThrowAsJavaScriptException();
    return nullptr;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    close(fd);
    Napi::Error::New(env, "cannot stat " + path + ": " + std::strerror(e)).ThrowAsJavaScriptException();
    return nullptr;
  }
  void* base = nullptr;
  if (st.st_size > 0) {
    // Private and writable: a stray write into a weight view copies that page instead of faulting,
    // and never reaches the file.
    base = mmap(nullptr, size_t(st.st_size), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
      const int e = errno;
      close(fd);
      Napi::Error::New(env, "cannot mmap " + path + ": " + std::strerror(e)).ThrowAsJavaScriptException();
      return nullptr;
    }
  }
  close(fd);
  return new Mapping{base, size_t(st.st_size), {1}};
}

Napi::Value region(Napi::Env env, Mapping* m, double offset, double length, const std::string& what) {
  if (!(offset >= 0 && length >= 0 && offset + length <= double(m->size)) || offset != std::floor(offset) || length != std::floor(length)) {
    Napi::RangeError::New(env, "region [" + std::to_string(long(offset)) + ", +" + std::to_string(long(length)) + ") outside " + what + " (" +
                                   std::to_string(m->size) + " bytes)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (length == 0) return Napi::ArrayBuffer::New(env, 0);
  m->refs.fetch_add(1);
  napi_value ab;
  const napi_status s = napi_create_external_arraybuffer(env, static_cast<uint8_t*>(m->base) + size_t(offset), size_t(length), release_region, m, &ab);
  if (s != napi_ok) {
    m->refs.fetch_sub(1);
    Napi::Error::New(env, "external ArrayBuffers are not supported by this runtime").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (length >= (1 << 20)) madvise(reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(m->base) + size_t(offset)) & ~uintptr_t(4095)), size_t(length), MADV_WILLNEED);
  return Napi::Value(env, ab);
}

// mapFile(path) -> handle (an external with the file size as `size`)
Napi::Value MapFileFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  Mapping* m = map_file(env, path);
  if (!m) return env.Undefined();
  auto handle = Napi::External<Mapping>::New(env, m, [](Napi::Env, Mapping* mm) { unref(mm); });
  return handle;
}

// mapRegion(handle, offset, length) -> ArrayBuffer over the mapping (zero copy)
Napi::Value MapRegionFn(const Napi::CallbackInfo& info) {
  Mapping* m = info[0].As<Napi::External<Mapping>>().Data();
  return region(info.Env(), m, info[1].As<Napi::Number>().DoubleValue(), info[2].As<Napi::Number>().DoubleValue(), "the mapped file");
}

// mappedSize(handle) -> bytes
Napi::Value MappedSizeFn(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(info[0].As<Napi::External<Mapping>>().Data()->size));
}

// alignOffset(buffer: ArrayBuffer, alignment) -> bytes from the buffer's start to its first address that is a
// multiple of alignment (V8 never moves an ArrayBuffer's backing store).
Napi::Value AlignOffsetFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsArrayBuffer() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "alignOffset(buffer: ArrayBuffer, alignment: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const uintptr_t at = reinterpret_cast<uintptr_t>(info[0].As<Napi::ArrayBuffer>().Data());
  const uint32_t alignment = info[1].As<Napi::Number>().Uint32Value();
  if (alignment == 0 || (alignment & (alignment - 1))) {
    Napi::RangeError::New(env, "alignOffset: alignment must be a power of two").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, double((alignment - at % alignment) % alignment));
}

// mapRegions(path, [[offset, length], ...]) -> ArrayBuffer[] viewing the file through one mmap.
Napi::Value MapRegionsFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array regions = info[1].As<Napi::Array>();
  Mapping* m = map_file(env, path);
  if (!m) return env.Undefined();
  Napi::Array out = Napi::Array::New(env, regions.Length());
  for (uint32_t i = 0; i < regions.Length(); i++) {
    Napi::Array r = regions.Get(i).As<Napi::Array>();
    Napi::Value ab = region(env, m, r.Get(0u).As<Napi::Number>().DoubleValue(), r.Get(1u).As<Napi::Number>().DoubleValue(), path);
    if (env.IsExceptionPending()) break;
    out.Set(i, ab);
  }
  unref(m);
  return out;
}

}  // namespace

void register_mmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mapFile", Napi::Function::New(env, MapFileFn));
  exports.Set("mapRegion", Napi::Function::New(env, MapRegionFn));
  exports.Set("mappedSize", Napi::Function::New(env, MappedSizeFn));
  exports.Set("alignOffset", Napi::Function::New(env, AlignOffsetFn));
  exports.Set("mapRegions", Napi::Function::New(env, MapRegionsFn));
}

}  // namespace kvlab::bind
