// A narrow wrapper over sentencepiece::SentencePieceProcessor, loaded in isolation.
//
// Debian's libsentencepiece carries (and exports) its own copy of protobuf-lite 3.14, which
// clashes with libprotobuf 3.21 in any process that also links gRPC: each library's
// references bind to the other's symbols and the process crashes at start-up. So the
// SentencePiece library is never linked into our binaries. It is linked into a small module
// (sentencepiece_module.cc -> libsy_sentencepiece_module.so) that SentencePieceModel
// dlopen()s with RTLD_LOCAL | RTLD_DEEPBIND, so the module's references resolve to its own
// copy first and its symbols never enter the process's global scope.
//
// The module is found at SWITCHYARD_SPM_MODULE (environment), else the build tree's path
// compiled in, else beside the executable.
#pragma once

#include <memory>
#include <string>
#include <vector>

// SY_SANITIZED_BUILD: built with AddressSanitizer or ThreadSanitizer (GCC or clang), whose
// runtimes change how the module may be loaded (sentencepiece_shim.cc, sentencepiece_module.cc).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SY_SANITIZED_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SY_SANITIZED_BUILD 1
#endif
#endif

namespace switchyard::internal {

// The functions the module exports (through sy_spm_api()). Plain C++ types only: the module
// and the binary share one C++ runtime; only protobuf must stay apart.
struct SentencePieceApi {
  void* (*create)();
  void (*destroy)(void* model);
  std::string (*load)(void* model, const std::string& path);  // "" on success, else the error
  std::vector<int> (*encode)(const void* model, const std::string& text);
  std::string (*decode)(const void* model, const std::vector<int>& ids);
  int (*piece_size)(const void* model);
  bool (*is_control)(const void* model, int id);
  bool (*is_byte)(const void* model, int id);
  std::string (*id_to_piece)(const void* model, int id);
};

class SentencePieceModel {
 public:
  SentencePieceModel();
  ~SentencePieceModel();
  // Returns an empty string on success, otherwise what went wrong (module or model file).
  std::string Load(const std::string& path);
  std::vector<int> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int>& ids) const;
  int PieceSize() const;
  bool IsControl(int id) const;
  bool IsByte(int id) const;  // a byte-fallback piece "<0xNN>"
  std::string IdToPiece(int id) const;

 private:
  const SentencePieceApi* api_ = nullptr;
  void* model_ = nullptr;
};

}  // namespace switchyard::internal
