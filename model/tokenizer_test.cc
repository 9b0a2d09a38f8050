#include "model/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <random>

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

// What a server must return as the completion of `prompt`: the full decode with the prompt's
// decode removed from its front (the prompt minus a trailing incomplete character).
std::string Expected(const Tokenizer& tok, std::vector<int32_t> prompt,
                     const std::vector<int32_t>& completion) {
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), completion.begin(), completion.end());
  // Drop trailing byte pieces that start a character the prompt does not finish.
  size_t cont = 0;
  for (size_t i = prompt.size(); i > 0; --i) {
    const int b = tok.ByteValue(prompt[i - 1]);
    if (b < 0) break;
    if ((b >> 6) == 2) {
      ++cont;
      continue;
    }
    const int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 0xE ? 3 : 4;
    if (len > static_cast<int>(cont) + 1) prompt.resize(i - 1);
    break;
  }
  const std::string head = tok.Decode(prompt);
  const std::string full = tok.Decode(all);
  EXPECT_EQ(full.compare(0, head.size(), head), 0) << "'" << head << "' not a prefix of '" << full
                                                   << "'";
  return full.substr(head.size());
}

// Streams `completion` after `prompt`; returns the concatenated deltas, checking each delta
// is valid UTF-8.
std::string Stream(const Tokenizer& tok, const std::vector<int32_t>& prompt,
                   const std::vector<int32_t>& completion) {
  IncrementalDetokenizer stream(&tok, prompt);
  std::string joined;
  for (int32_t id : completion) {
    std::string delta = stream.Push(id);
    EXPECT_TRUE(IsValidUtf8(delta)) << "split character in delta '" << delta << "'";
    joined += delta;
  }
  return joined + stream.Flush();
}

TEST(IncrementalDetokenizer, FirstTokenKeepsItsLeadingSpace) {
  auto tok = LoadBrown();
  std::vector<int32_t> prompt = tok->Encode("The jury said that", true);
  std::vector<int32_t> completion = tok->Encode("the first time", false);
  EXPECT_EQ(Stream(*tok, prompt, completion), " the first time");
  EXPECT_EQ(tok->DecodeCompletion(prompt, completion), " the first time");
  // Without a prompt (or with BOS only) the text is Decode(completion), as before.
  EXPECT_EQ(Stream(*tok, {}, completion), "the first time");
  EXPECT_EQ(Stream(*tok, {1}, completion), "the first time");
}

TEST(IncrementalDetokenizer, CompletionIsFullDecodeMinusPromptDecode) {
  auto tok = LoadBrown();
  const std::vector<std::string> prompts = {
      "The jury said that",       // ends at a word
      "The jury sa",              // ends mid-word
      "The jury said ",           // ends in a space
      "The jury said  ",          // ends in two spaces
      "Le café",                  // ends in a two-byte character (byte fallback)
      "It was ☃",                 // ends in a three-byte character
      "Party 🎉",                 // ends in a four-byte character
      "x",                        // one piece
  };
  const std::vector<std::string> continuations = {
      " the first time", "id that", "é and ☃ snow", "日本語", "🎉!", "  two spaces", ".", "ing well",
  };
  int cases = 0;
  for (const std::string& p : prompts) {
    std::vector<int32_t> prompt = tok->Encode(p, true);
    for (const std::string& c : continuations) {
      // The completion as a model would produce it: the ids of prompt + continuation after
      // the prompt's own ids (or, where encoding merges across the seam, the continuation's).
      std::vector<int32_t> whole = tok->Encode(p + c, true);
      std::vector<int32_t> completion;
      if (std::equal(prompt.begin(), prompt.end(), whole.begin())) {
        completion.assign(whole.begin() + prompt.size(), whole.end());
      } else {
        completion = tok->Encode(c, false);
      }
      EXPECT_EQ(Stream(*tok, prompt, completion), Expected(*tok, prompt, completion))
          << "prompt '" << p << "' continuation '" << c << "'";
      ++cases;
    }
  }
  EXPECT_EQ(cases, 64);
}

TEST(IncrementalDetokenizer, TokenIdPromptsEndingInsideACharacter) {
  auto tok = LoadBrown();
  // "☃" is E2 98 83 in three byte pieces; "🎉" four. Cut the prompt after each byte.
  for (const std::string ch : {"☃", "🎉", "é"}) {
    std::vector<int32_t> ids = tok->Encode("snow " + ch + " falls", true);
    std::vector<int32_t> bytes;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (tok->ByteValue(ids[i]) >= 0) bytes.push_back(static_cast<int32_t>(i));
    }
    ASSERT_GE(bytes.size(), 2u) << ch;
    for (int32_t cut : bytes) {
      std::vector<int32_t> prompt(ids.begin(), ids.begin() + cut + 1);
      std::vector<int32_t> completion(ids.begin() + cut + 1, ids.end());
      const std::string got = Stream(*tok, prompt, completion);
      EXPECT_EQ(got, Expected(*tok, prompt, completion)) << ch << " cut after id " << cut;
      if (cut != bytes.back()) {
        // The character completes in the completion: it is streamed there, whole.
        EXPECT_EQ(got, ch + " falls") << ch << " cut after id " << cut;
      }
    }
  }
}

TEST(IncrementalDetokenizer, RandomIdsAfterEveryPromptAddUp) {
  auto tok = LoadBrown();
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> any(3, tok->vocab_size() - 1);
  const std::vector<std::string> prompts = {"The jury", "The jury ", "naïve", "snow ☃"};
  for (const std::string& p : prompts) {
    std::vector<int32_t> prompt = tok->Encode(p, true);
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<int32_t> completion(1 + trial % 12);
      for (int32_t& id : completion) id = any(rng);
      EXPECT_EQ(Stream(*tok, prompt, completion), Expected(*tok, prompt, completion))
          << "prompt '" << p << "' trial " << trial;
    }
  }
}

TEST(IncrementalDetokenizer, EosRightAfterAnIncompletePromptEmitsNothing) {
  auto tok = LoadBrown();
  std::vector<int32_t> ids = tok->Encode("☃", true);
  std::vector<int32_t> prompt(ids.begin(), ids.end() - 1);  // ends with E2 98
  IncrementalDetokenizer stream(tok.get(), prompt);
  EXPECT_EQ(stream.Flush(), "");
}

TEST(Tokenizer, MaxPieceBytesBoundsEveryPiece) {
  auto tok = LoadBrown();
  EXPECT_GE(tok->max_piece_bytes(), 4);
  EXPECT_LE(tok->max_piece_bytes(), 64);
  // No text tokenizes into fewer pieces than its bytes over the longest piece.
  const std::string text = "The Fulton County Grand Jury said Friday an investigation of recent";
  EXPECT_GE(static_cast<int>(tok->Encode(text, false).size()) * tok->max_piece_bytes(),
            static_cast<int>(text.size()));
  EXPECT_EQ(tok->ByteValue(tok->Encode("☃", false).back()), 0x83);
  EXPECT_EQ(tok->ByteValue(1), -1);
}

}  // namespace
}  // namespace switchyard
