// The SentencePiece module: the only code that links libsentencepiece. Loaded with dlopen by
// sentencepiece_shim.cc (see there for why).
#include <sentencepiece_processor.h>

#include "model/sentencepiece_shim.h"

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
