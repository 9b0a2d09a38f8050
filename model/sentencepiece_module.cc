// The SentencePiece module: the only code that links libsentencepiece. Loaded with dlopen by
// sentencepiece_shim.cc (see there for why).
#include <sentencepiece_processor.h>

#include "model/sentencepiece_shim.h"

#ifdef SY_SANITIZED_BUILD
#include <dlfcn.h>

#include <cstdlib>
#include <new>

// Sanitizer builds only (see OpenModule in sentencepiece_shim.cc). Deep-bound, this module's
// and SentencePiece's calls to operator new/delete would reach libstdc++'s, which allocate
// with malloc; the program frees the vectors and strings it gets from here with the runtime's
// operator delete, and AddressSanitizer would report every one as an alloc-dealloc mismatch
// (it does, with clang's runtime linked into the executable). These definitions come first in
// the deep-bound scope and forward to the scalar and array new/delete the program itself uses:
// the first in the main program's search order (the sanitizer runtime's).
namespace {
struct ProgramOperators {
  void* (*scalar_new)(std::size_t);
  void* (*array_new)(std::size_t);
  void (*scalar_delete)(void*);
  void (*array_delete)(void*);
};

const ProgramOperators& Program() {
  // dlopen/dlsym allocate with malloc, never operator new: no recursion into this.
  static const ProgramOperators ops = [] {
    void* program = dlopen(nullptr, RTLD_NOW);
    auto symbol = [program](const char* name) {
      void* fn = program != nullptr ? dlsym(program, name) : nullptr;
      if (fn == nullptr) std::abort();  // the runtime always defines them
      return fn;
    };
    return ProgramOperators{reinterpret_cast<void* (*)(std::size_t)>(symbol("_Znwm")),
                            reinterpret_cast<void* (*)(std::size_t)>(symbol("_Znam")),
                            reinterpret_cast<void (*)(void*)>(symbol("_ZdlPv")),
                            reinterpret_cast<void (*)(void*)>(symbol("_ZdaPv"))};
  }();
  return ops;
}

void* NoThrow(void* (*allocate)(std::size_t), std::size_t n) noexcept {
  try {
    return allocate(n);
  } catch (...) {
    return nullptr;
  }
}
}  // namespace

void* operator new(std::size_t n) { return Program().scalar_new(n); }
void* operator new[](std::size_t n) { return Program().array_new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return NoThrow(Program().scalar_new, n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return NoThrow(Program().array_new, n);
}
void operator delete(void* p) noexcept { Program().scalar_delete(p); }
void operator delete[](void* p) noexcept { Program().array_delete(p); }
void operator delete(void* p, std::size_t) noexcept { Program().scalar_delete(p); }
void operator delete[](void* p, std::size_t) noexcept { Program().array_delete(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { Program().scalar_delete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { Program().array_delete(p); }
#endif  // SY_SANITIZED_BUILD

namespace {

using switchyard::internal::SentencePieceApi;
using Processor = sentencepiece::SentencePieceProcessor;

void* Create() { return new Processor(); }
void Destroy(void* m) { delete static_cast<Processor*>(m); }
std::string Load(void* m, const std::string& path) {
  auto st = static_cast<Processor*>(m)->Load(path);
  return st.ok() ? std::string() : st.ToString();
}
std::vector<int> Encode(const void* m, const std::string& text) {
  std::vector<int> ids;
  static_cast<const Processor*>(m)->Encode(text, &ids).IgnoreError();  // fails only unloaded
  return ids;
}
std::string Decode(const void* m, const std::vector<int>& ids) {
  std::string out;
  static_cast<const Processor*>(m)->Decode(ids, &out).IgnoreError();
  return out;
}
int PieceSize(const void* m) { return static_cast<const Processor*>(m)->GetPieceSize(); }
bool IsControl(const void* m, int id) { return static_cast<const Processor*>(m)->IsControl(id); }

bool IsByte(const void* m, int id) { return static_cast<const Processor*>(m)->IsByte(id); }
std::string IdToPiece(const void* m, int id) {
  return static_cast<const Processor*>(m)->IdToPiece(id);
}

const SentencePieceApi kApi = {Create,    Destroy,   Load,   Encode,   Decode,
                               PieceSize, IsControl, IsByte, IdToPiece};

}  // namespace

extern "C" __attribute__((visibility("default"))) const SentencePieceApi* sy_spm_api() {
  return &kApi;
}
