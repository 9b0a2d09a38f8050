// A narrow wrapper over sentencepiece::SentencePieceProcessor. SentencePiece's header declares
// `absl::string_view` as std::string_view, which clashes with Debian's abseil (built with its
// own string_view), so the library is included in exactly one translation unit that uses no
// abseil header: sentencepiece_shim.cc.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace switchyard::internal {

class SentencePieceModel {
 public:
  SentencePieceModel();
  ~SentencePieceModel();
  // Returns an empty string on success, otherwise the library's error text.
  std::string Load(const std::string& path);
  std::vector<int> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int>& ids) const;
  int PieceSize() const;
  bool IsControl(int id) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace switchyard::internal
