#include "model/sentencepiece_shim.h"

#include <sentencepiece_processor.h>

namespace switchyard::internal {

struct SentencePieceModel::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceModel::SentencePieceModel() : impl_(std::make_unique<Impl>()) {}
SentencePieceModel::~SentencePieceModel() = default;

std::string SentencePieceModel::Load(const std::string& path) {
  auto st = impl_->sp.Load(path);
  return st.ok() ? std::string() : st.ToString();
}

std::vector<int> SentencePieceModel::Encode(const std::string& text) const {
  std::vector<int> ids;
  impl_->sp.Encode(text, &ids).IgnoreError();  // fails only when no model is loaded
  return ids;
}

std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  std::string out;
  impl_->sp.Decode(ids, &out).IgnoreError();
  return out;
}

int SentencePieceModel::PieceSize() const { return impl_->sp.GetPieceSize(); }
bool SentencePieceModel::IsControl(int id) const { return impl_->sp.IsControl(id); }

}  // namespace switchyard::internal
