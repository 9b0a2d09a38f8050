// SentencePiece tokenizer (tokenizer.model) with the model's BOS/EOS ids, and an incremental
// detokenizer for streaming.
//
//   ASSIGN_OR_RETURN(auto tok, Tokenizer::Load("models/brown-moe/tokenizer.model", 1, 2));
//   std::vector<int32_t> ids = tok->Encode("The jury said", /*add_bos=*/true);
//   IncrementalDetokenizer stream(tok.get(), ids);  // the prompt gives the first token context
//   for (int32_t id : generated) std::cout << stream.Push(id);
//   std::cout << stream.Flush();
//
// Thread-safe after Load (SentencePiece's processor is read-only once loaded).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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
  // The text of a completion in its prompt's context: what IncrementalDetokenizer streams
  // (see there), in one call.
  std::string DecodeCompletion(std::span<const int32_t> prompt,
                               std::span<const int32_t> completion) const;
  int vocab_size() const;
  // The byte a byte-fallback piece ("<0x41>") stands for; -1 for every other id.
  int ByteValue(int32_t id) const;
  // The most input bytes one piece can cover ("\u2581" counts as the one space it stands
  // for). A text longer than context x max_piece_bytes() cannot fit the context (save
  // whitespace a normalizer collapses): it is refused without tokenizing.
  int max_piece_bytes() const { return max_piece_bytes_; }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  // The piece of `id` as the model spells it ("<s>", "\u2581the"); empty outside the vocabulary.
  std::string Piece(int32_t id) const;
  // The id of a control piece ("<s>", "</s>", "<|im_start|>" when the model has it): special
  // tokens of a chat template, which Encode never produces from text.
  std::optional<int32_t> ControlId(std::string_view piece) const;

 private:
  Tokenizer() = default;
  std::unique_ptr<internal::SentencePieceModel> sp_;
  std::vector<int16_t> byte_value_;
  std::map<std::string, int32_t, std::less<>> control_ids_;  // piece -> id, control pieces  // per id: the byte of a byte-fallback piece, else -1
  int max_piece_bytes_ = 1;
  int bos_id_ = 1;
  int eos_id_ = 2;
};

// Turns a stream of generated ids into text deltas, never emitting half of a UTF-8 character
// (byte-fallback pieces of one character are held back until the character is complete).
// The text of a completion is Decode(prompt + completion) with Decode(prompt) removed from
// its front, the convention of other LLM servers: decoded in the prompt's context, the first
// token keeps its leading space ("The jury said that" + "▁the" streams " the"). A prompt
// that ends inside a UTF-8 character (token ids ending in byte pieces) counts those pieces as
// part of the completion's first character. With an empty prompt the deltas add up to
// Decode(completion). Keeps a small window of ids, so the cost per token does not grow with
// the length of the prompt or of the output. Not thread-safe.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer* tokenizer, std::span<const int32_t> prompt = {});
  // Appends one id and returns the text it completes (possibly empty).
  std::string Push(int32_t id);
  // Returns whatever is still held back (an incomplete character decodes as U+FFFD).
  std::string Flush();

 private:
  const Tokenizer* tok_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
  bool pushed_ = false;
};

}  // namespace switchyard
