#include "model/sentencepiece_shim.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

namespace switchyard::internal {
namespace {

constexpr char kModuleName[] = "libsy_sentencepiece_module.so";

#ifdef SY_SANITIZED_BUILD
// Sanitizer builds. The sanitizer runtimes refuse dlopen(RTLD_DEEPBIND) outright: a
// deep-bound library usually reaches libc's malloc or libstdc++'s operator new before the
// runtime's, and then frees memory on a heap other than the one it came from
// (github.com/google/sanitizers/issues/611). The module is built with the same sanitizer flags
// and, in those builds, routes every operator new/delete of its deep-bound scope (its own and
// SentencePiece's) to the runtime's (sentencepiece_module.cc); SentencePiece's direct
// malloc/free calls stay paired within it. dlmopen(LM_ID_BASE) loads into the main namespace
// exactly as dlopen does, without passing through that check.
void* OpenModule(const char* path) {
  return dlmopen(LM_ID_BASE, path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
}
#else
void* OpenModule(const char* path) {
  return dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
}
#endif

std::vector<std::string> Candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("SWITCHYARD_SPM_MODULE")) paths.push_back(env);
#ifdef SWITCHYARD_SPM_MODULE_PATH
  paths.push_back(SWITCHYARD_SPM_MODULE_PATH);
#endif
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) paths.push_back((exe.parent_path() / kModuleName).string());
  return paths;
}

// Loads the module once per process; returns its API or sets *error.
const SentencePieceApi* LoadModule(std::string* error) {
  static std::once_flag once;
  static const SentencePieceApi* api = nullptr;
  static std::string load_error;
  std::call_once(once, [] {
    std::string tried;
    for (const std::string& path : Candidates()) {
      void* handle = OpenModule(path.c_str());
      if (handle == nullptr) {
        tried += (tried.empty() ? "" : "; ") + std::string(dlerror());
        continue;
      }
      using Entry = const SentencePieceApi* (*)();
      auto entry = reinterpret_cast<Entry>(dlsym(handle, "sy_spm_api"));
      if (entry != nullptr) {
        api = entry();
        return;
      }
      tried += "; " + path + " has no sy_spm_api";
    }
    load_error = "cannot load the SentencePiece module " + std::string(kModuleName) +
                 " (set SWITCHYARD_SPM_MODULE): " + tried;
  });
  if (api == nullptr) *error = load_error;
  return api;
}

}  // namespace

SentencePieceModel::SentencePieceModel() = default;

SentencePieceModel::~SentencePieceModel() {
  if (api_ != nullptr && model_ != nullptr) api_->destroy(model_);
}

std::string SentencePieceModel::Load(const std::string& path) {
  std::string error;
  api_ = LoadModule(&error);
  if (api_ == nullptr) return error;
  if (model_ == nullptr) model_ = api_->create();
  return api_->load(model_, path);
}

std::vector<int> SentencePieceModel::Encode(const std::string& text) const {
  return api_->encode(model_, text);
}
std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  return api_->decode(model_, ids);
}
int SentencePieceModel::PieceSize() const { return api_->piece_size(model_); }
bool SentencePieceModel::IsControl(int id) const { return api_->is_control(model_, id); }
bool SentencePieceModel::IsByte(int id) const { return api_->is_byte(model_, id); }
std::string SentencePieceModel::IdToPiece(int id) const { return api_->id_to_piece(model_, id); }

}  // namespace switchyard::internal
