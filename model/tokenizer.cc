#include "model/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <string_view>

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
  const int n = t->sp_->PieceSize();
  t->byte_value_.assign(n, -1);
  static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  for (int id = 0; id < n; ++id) {
    if (t->sp_->IsControl(id)) {
      t->control_ids_.emplace(t->sp_->IdToPiece(id), id);
      continue;
    }
    const std::string piece = t->sp_->IdToPiece(id);
    if (t->sp_->IsByte(id)) {
      // "<0xNN>"
      if (piece.size() == 6) t->byte_value_[id] = std::stoi(piece.substr(3, 2), nullptr, 16);
      continue;
    }
    int bytes = 0;
    for (size_t i = 0; i < piece.size();) {
      const bool space = piece.compare(i, kSpace.size(), kSpace) == 0;
      i += space ? kSpace.size() : 1;
      bytes += 1;
    }
    t->max_piece_bytes_ = std::max(t->max_piece_bytes_, bytes);
  }
  return t;
}

std::string Tokenizer::Piece(int32_t id) const {
  if (id < 0 || id >= sp_->PieceSize()) return "";
  return sp_->IdToPiece(id);
}

std::optional<int32_t> Tokenizer::ControlId(std::string_view piece) const {
  auto it = control_ids_.find(piece);
  if (it == control_ids_.end()) return std::nullopt;
  return it->second;
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

std::string Tokenizer::DecodeCompletion(std::span<const int32_t> prompt,
                                        std::span<const int32_t> completion) const {
  IncrementalDetokenizer stream(this, prompt);
  std::string text;
  for (int32_t id : completion) text += stream.Push(id);
  return text + stream.Flush();
}

int Tokenizer::ByteValue(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(byte_value_.size()) ? byte_value_[id] : -1;
}

namespace {
// SentencePiece decodes an incomplete UTF-8 sequence from byte-fallback pieces as U+FFFD.
bool EndsWithReplacementChar(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

// Bytes a UTF-8 character with this lead byte has (0 for a continuation or invalid byte).
int Utf8Length(int lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 0;
}

// Ids of context the first generated token is decoded with (a space or a word boundary
// needs one piece; an incomplete character at the end of the prompt up to three more).
constexpr size_t kPromptContext = 6;
}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer,
                                               std::span<const int32_t> prompt)
    : tok_(tokenizer) {
  const size_t keep = std::min(prompt.size(), kPromptContext);
  ids_.assign(prompt.end() - keep, prompt.end());
  read_offset_ = ids_.size();
  // Byte pieces at the end of the prompt that start a character the prompt does not finish
  // belong to the completion: its first character is only complete once they are decoded
  // with what follows.
  size_t continuation = 0;
  for (size_t i = ids_.size(); i > 0; --i) {
    const int byte = tok_->ByteValue(ids_[i - 1]);
    if (byte < 0) break;
    if ((byte >> 6) == 0x2) {  // 10xxxxxx
      if (++continuation > 3) break;
      continue;
    }
    if (Utf8Length(byte) > static_cast<int>(continuation) + 1) read_offset_ = i - 1;
    break;
  }
}

std::string IncrementalDetokenizer::Push(int32_t id) {
  ids_.push_back(id);
  pushed_ = true;
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
  if (!pushed_) return "";  // the prompt's own incomplete tail is not the completion's
  std::span<const int32_t> all(ids_);
  std::string prefix = tok_->Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_));
  std::string text = tok_->Decode(all.subspan(prefix_offset_));
  prefix_offset_ = read_offset_ = ids_.size();
  return text.size() > prefix.size() ? text.substr(prefix.size()) : "";
}

}  // namespace switchyard
