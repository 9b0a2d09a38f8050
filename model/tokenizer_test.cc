#include "model/tokenizer.h"

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

const std::string kRoot = SWITCHYARD_SOURCE_ROOT;

std::unique_ptr<Tokenizer> LoadBrown() {
  auto t = Tokenizer::Load(kRoot + "/models/brown-moe/tokenizer.model", 1, 2);
  EXPECT_TRUE(t.ok()) << t.status();
  return std::move(t).value();
}

bool IsValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    int extra = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xe ? 2 : (c >> 3) == 0x1e ? 3 : -1;
    if (extra < 0 || i + extra >= s.size() + (extra == 0)) return false;
    for (int k = 1; k <= extra; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += extra + 1;
  }
  return true;
}

TEST(Tokenizer, EncodesFixturePromptsExactly) {
  auto tok = LoadBrown();
  std::ifstream in(kRoot + "/tests/data/brown-moe.json");
  auto j = nlohmann::json::parse(in);
  for (const auto& g : j["generate"]) {
    std::vector<int32_t> want = g["prompt_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->Encode(g["prompt"].get<std::string>(), true), want) << g["prompt"];
    std::vector<int32_t> cont = g["greedy_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->Decode(cont), g["greedy_text"].get<std::string>());
  }
}

TEST(Tokenizer, DecodeDropsBosAndEos) {
  auto tok = LoadBrown();
  auto ids = tok->Encode("the jury", true);
  ASSERT_EQ(ids.front(), 1);
  ids.push_back(2);
  EXPECT_EQ(tok->Decode(ids), "the jury");
}

TEST(Tokenizer, MissingFileIsNotFound) {
  auto t = Tokenizer::Load("/nonexistent/tokenizer.model", 1, 2);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(t.status().message()), testing::HasSubstr("/nonexistent/tokenizer.model"));
}

TEST(Tokenizer, GarbageFileIsInvalidArgument) {
  std::string path = testing::TempDir() + "/garbage.model";
  std::ofstream(path) << "this is not a protobuf";
  auto t = Tokenizer::Load(path, 1, 2);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()), testing::HasSubstr(path));
}

TEST(IncrementalDetokenizer, ConcatenationEqualsFullDecodeAndNeverSplitsUtf8) {
  auto tok = LoadBrown();
  // Characters outside the Brown corpus vocabulary go through byte fallback: one id per byte.
  const std::string text = "The naïve café — ☃ snow 日本語 and 🎉 done. It's 1234 and 56.";
  std::vector<int32_t> ids = tok->Encode(text, false);
  ASSERT_GT(ids.size(), 20u);
  IncrementalDetokenizer stream(tok.get());
  std::string joined;
  int held_back = 0;
  for (int32_t id : ids) {
    std::string delta = stream.Push(id);
    if (delta.empty()) ++held_back;
    EXPECT_TRUE(IsValidUtf8(delta)) << "split character in delta '" << delta << "'";
    joined += delta;
  }
  joined += stream.Flush();
  EXPECT_EQ(joined, tok->Decode(ids));
  EXPECT_EQ(joined, text);
  EXPECT_GT(held_back, 0) << "expected multi-byte characters to be held back";
}

TEST(IncrementalDetokenizer, FlushReleasesIncompleteCharacter) {
  auto tok = LoadBrown();
  std::vector<int32_t> ids = tok->Encode("☃", false);
  ASSERT_GE(ids.size(), 3u);  // byte fallback: E2 98 83
  IncrementalDetokenizer stream(tok.get());
  std::string out;
  for (size_t i = 0; i + 1 < ids.size(); ++i) out += stream.Push(ids[i]);
  EXPECT_EQ(out, "");
  EXPECT_FALSE(stream.Flush().empty());
}

}  // namespace
}  // namespace switchyard
