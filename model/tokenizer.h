// SentencePiece tokenizer (tokenizer.model) with the model's BOS/EOS ids, and an incremental
// detokenizer for streaming.
//
//   ASSIGN_OR_RETURN(auto tok, Tokenizer::Load("models/brown-moe/tokenizer.model", 1, 2));
//   std::vector<int32_t> ids = tok->Encode("The jury said", /*add_bos=*/true);
//   IncrementalDetokenizer stream(tok.get());
//   for (int32_t id : generated) std::cout << stream.Push(id);
//   std::cout << stream.Flush();
//
// Thread-safe after Load (SentencePiece's processor is read-only once loaded).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace switchyard::internal {
class SentencePieceModel;
}

namespace switchyard {

class Tokenizer {
 public:
  // Errors: kNotFound when `path` cannot be read, kInvalidArgument when it is not a
  // SentencePiece model (message names the path).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path, int bos_id,
                                                         int eos_id);
  ~Tokenizer();

  std::vector<int32_t> Encode(const std::string& text, bool add_bos) const;
  // Decodes ids to text, dropping BOS/EOS and other control ids.
  std::string Decode(std::span<const int32_t> ids) const;
  int vocab_size() const;
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }

 private:
  Tokenizer() = default;
  std::unique_ptr<internal::SentencePieceModel> sp_;
  int bos_id_ = 1;
  int eos_id_ = 2;
};

// Turns a stream of generated ids into text deltas whose concatenation equals
// Decode(all ids), never emitting half of a UTF-8 character (byte-fallback pieces of one
// character are held back until the character is complete). Keeps a small window of ids, so
// the cost per token does not grow with the length of the output. Not thread-safe.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer* tokenizer) : tok_(tokenizer) {}
  // Appends one id and returns the text it completes (possibly empty).
  std::string Push(int32_t id);
  // Returns whatever is still held back (an incomplete character decodes as U+FFFD).
  std::string Flush();

 private:
  const Tokenizer* tok_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
};

}  // namespace switchyard
