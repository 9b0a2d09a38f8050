#include "model/tokenizer.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "model/sentencepiece_shim.h"

namespace switchyard {

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path, int bos_id,
                                                           int eos_id) {
  if (!std::ifstream(path).good()) {
    return absl::NotFoundError(absl::StrCat("cannot read tokenizer ", path));
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->sp_ = std::make_unique<internal::SentencePieceModel>();
  if (std::string err = t->sp_->Load(path); !err.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a SentencePiece model (", err, ")"));
  }
  t->bos_id_ = bos_id;
  t->eos_id_ = eos_id;
  return t;
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text, bool add_bos) const {
  std::vector<int> pieces = sp_->Encode(text);
  std::vector<int32_t> ids;
  ids.reserve(pieces.size() + 1);
  if (add_bos) ids.push_back(bos_id_);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  return ids;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids) const {
  std::vector<int> keep;
  keep.reserve(ids.size());
  const int n = sp_->PieceSize();
  for (int32_t id : ids) {
    if (id == bos_id_ || id == eos_id_ || id < 0 || id >= n || sp_->IsControl(id)) continue;
    keep.push_back(id);
  }
  return sp_->Decode(keep);
}

int Tokenizer::vocab_size() const { return sp_->PieceSize(); }

namespace {
// SentencePiece decodes an incomplete UTF-8 sequence from byte-fallback pieces as U+FFFD.
bool EndsWithReplacementChar(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}
}  // namespace

std::string IncrementalDetokenizer::Push(int32_t id) {
  ids_.push_back(id);
  std::span<const int32_t> all(ids_);
  std::string prefix = tok_->Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_));
  std::string text = tok_->Decode(all.subspan(prefix_offset_));
  if (text.size() > prefix.size() && !EndsWithReplacementChar(text)) {
    std::string delta = text.substr(prefix.size());
    prefix_offset_ = read_offset_;
    read_offset_ = ids_.size();
    // Drop ids that no longer influence decoding so the window stays small.
    if (prefix_offset_ > 64) {
      ids_.erase(ids_.begin(), ids_.begin() + prefix_offset_);
      read_offset_ -= prefix_offset_;
      prefix_offset_ = 0;
    }
    return delta;
  }
  return "";
}

std::string IncrementalDetokenizer::Flush() {
  std::span<const int32_t> all(ids_);
  std::string prefix = tok_->Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_));
  std::string text = tok_->Decode(all.subspan(prefix_offset_));
  prefix_offset_ = read_offset_ = ids_.size();
  return text.size() > prefix.size() ? text.substr(prefix.size()) : "";
}

}  // namespace switchyard
