#include "model/safetensors.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bf16.h"
#include "common/progress.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using nlohmann::json;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

// ---- Synthetic safetensors files -------------------------------------------------------------

// A fresh directory per test, so tests never see one another's files.
std::string TestDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string dir = absl::StrCat(::testing::TempDir(), "/safetensors_test/",
                                 info->test_suite_name(), ".", info->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  ASSERT_TRUE(out.good()) << path;
}

// The on-disk layout: 8-byte little-endian header length, header text, data region. Like the
// reference writer, pads the header with spaces to a multiple of 8 bytes unless told not to,
// so the data region is aligned.
std::string Serialize(std::string header, const std::string& data, bool pad = true) {
  if (pad) header.resize((header.size() + 7) / 8 * 8, ' ');
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Lays the tensors out in order, each starting on an 8-byte boundary (gaps are allowed, and
// keep every element aligned), with offsets matching their byte sizes.
std::string BuildFile(const std::vector<Tensor>& tensors, const json& metadata = nullptr) {
  json header = json::object();
  std::string data;
  for (const Tensor& t : tensors) {
    data.resize((data.size() + 7) / 8 * 8, '\0');
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  return Serialize(header.dump(), data);
}

Tensor Bf16Tensor(const std::string& name, std::vector<int64_t> shape,
                  const std::vector<float>& values) {
  std::vector<uint16_t> bits;
  for (float v : values) bits.push_back(FloatToBf16(v));
  return {name, "BF16", std::move(shape), Bytes(bits)};
}

// Writes `contents` as DIR/model.safetensors and returns its path.
std::string WriteSingle(const std::string& dir, const std::string& contents) {
  std::string path = dir + "/model.safetensors";
  WriteFile(path, contents);
  return path;
}

// Writes a header (given as JSON text) with `data_size` zero bytes of data and opens it.
absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenWithHeader(const std::string& header,
                                                                size_t data_size,
                                                                std::string* path) {
  *path = WriteSingle(TestDir(), Serialize(header, std::string(data_size, '\0')));
  return SafetensorsFile::Open(*path);
}

// ---- Valid files -----------------------------------------------------------------------------

TEST(SafetensorsFileTest, ReadsBf16F16F32Values) {
  const std::string dir = TestDir();
  // F16 bit patterns: 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800.
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x3800};
  const std::vector<float> f32 = {1.25f, -3.5f, 1e-3f, 42.0f};
  const std::string path =
      WriteSingle(dir, BuildFile({Bf16Tensor("a.bf16", {2, 3}, {1, -2, 0.5f, 3, 4.25f, -0.125f}),
                                  {"b.f16", "F16", {3}, Bytes(f16)},
                                  {"c.f32", "F32", {2, 2}, Bytes(f32)}},
                                 json{{"format", "pt"}}));

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  const auto& tensors = (*file)->tensors();
  ASSERT_EQ(tensors.size(), 3u);  // __metadata__ is not a tensor

  const TensorView& a = tensors.at("a.bf16");
  EXPECT_EQ(a.name, "a.bf16");
  EXPECT_EQ(a.file, path);
  EXPECT_EQ(a.dtype, DType::kBF16);
  EXPECT_THAT(a.shape, ElementsAre(2, 3));
  EXPECT_EQ(a.nbytes, 12u);
  EXPECT_EQ(a.numel(), 6);
  const auto* abits = static_cast<const uint16_t*>(a.data);
  std::vector<float> avals;
  for (int i = 0; i < 6; ++i) avals.push_back(Bf16ToFloat(abits[i]));
  EXPECT_THAT(avals, ElementsAre(1, -2, 0.5f, 3, 4.25f, -0.125f));

  const TensorView& b = tensors.at("b.f16");
  EXPECT_EQ(b.dtype, DType::kF16);
  EXPECT_EQ(b.nbytes, 6u);
  const auto* bbits = static_cast<const uint16_t*>(b.data);
  EXPECT_EQ(HalfToFloat(bbits[0]), 1.0f);
  EXPECT_EQ(HalfToFloat(bbits[1]), -2.0f);
  EXPECT_EQ(HalfToFloat(bbits[2]), 0.5f);

  const TensorView& c = tensors.at("c.f32");
  EXPECT_EQ(c.dtype, DType::kF32);
  EXPECT_THAT(c.shape, ElementsAre(2, 2));
  EXPECT_EQ(c.nbytes, 16u);
  std::vector<float> cvals(4);
  std::memcpy(cvals.data(), c.data, 16);
  EXPECT_THAT(cvals, ElementsAre(1.25f, -3.5f, 1e-3f, 42.0f));
}

TEST(SafetensorsFileTest, AcceptsScalarsAndEmptyTensors) {
  const std::string dir = TestDir();
  // Two empty tensors at the same offset occupy no bytes, so they do not overlap.
  const std::string path = WriteSingle(dir, BuildFile({{"empty1", "F32", {0, 4}, ""},
                                                       {"empty2", "BF16", {3, 0}, ""},
                                                       Bf16Tensor("scalar", {}, {7.0f})}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().at("empty1").nbytes, 0u);
  const TensorView& s = (*file)->tensors().at("scalar");
  EXPECT_TRUE(s.shape.empty());
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(Bf16ToFloat(*static_cast<const uint16_t*>(s.data)), 7.0f);
}

TEST(SafetensorsCheckpointTest, OpensSingleFileDirectory) {
  const std::string dir = TestDir();
  WriteSingle(dir, BuildFile({Bf16Tensor("x", {2}, {1, 2}), Bf16Tensor("y", {1}, {3})}));
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->dir(), dir);
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("x", "y"));
  EXPECT_TRUE((*ckpt)->Has("x"));
  EXPECT_FALSE((*ckpt)->Has("z"));
  auto y = (*ckpt)->Get("y", {1});
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Bf16ToFloat(*static_cast<const uint16_t*>(y->data)), 3.0f);
  // An empty expected shape means "any shape".
  EXPECT_TRUE((*ckpt)->Get("x").ok());
}

// ---- Malformed files -------------------------------------------------------------------------

TEST(SafetensorsFileTest, MissingFileIsNotFound) {
  const std::string path = TestDir() + "/nope.safetensors";
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr(path));
}

TEST(SafetensorsFileTest, TruncatedFile) {
  const std::string path = WriteSingle(TestDir(), std::string("\x10\0\0\0\0", 5));
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path), HasSubstr("truncated")));

  const std::string empty = WriteSingle(TestDir(), "");
  auto file2 = SafetensorsFile::Open(empty);
  EXPECT_EQ(file2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file2.status().message(), AllOf(HasSubstr(empty), HasSubstr("truncated")));
}

TEST(SafetensorsFileTest, HeaderLengthPastEndOfFile) {
  std::string contents =
      Serialize(R"({"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}})", "xx");
  contents.resize(contents.size() - 10);  // cut into the header
  const std::string path = WriteSingle(TestDir(), contents);
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path), HasSubstr("header length"), HasSubstr("past the end")));
}

TEST(SafetensorsFileTest, HugeHeaderLengthDoesNotOverflow) {
  const std::string path = WriteSingle(TestDir(), std::string(8, '\xff') + "{}");
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path), HasSubstr("past the end")));
}

TEST(SafetensorsFileTest, InvalidJson) {
  std::string path;
  auto file = OpenWithHeader(R"({"a": {"dtype": "BF16",)", 0, &path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path), HasSubstr("not valid JSON")));
}

TEST(SafetensorsFileTest, HeaderNotAnObject) {
  std::string path;
  auto file = OpenWithHeader("[1, 2, 3]", 0, &path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path), HasSubstr("not a JSON object")));
}

TEST(SafetensorsFileTest, UnknownDtype) {
  for (const std::string dtype : {"I64", "F8_E4M3", "bf16"}) {
    std::string path;
    auto file = OpenWithHeader(absl::StrCat(R"({"ids": {"dtype": ")", dtype,
                                            R"(", "shape": [1], "data_offsets": [0, 8]}})"),
                               8, &path);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << dtype;
    EXPECT_THAT(file.status().message(),
                AllOf(HasSubstr(path), HasSubstr("tensor ids"), HasSubstr("'" + dtype + "'")));
  }
}

TEST(SafetensorsFileTest, MissingOrMistypedFields) {
  struct Case {
    const char* entry;
    const char* error;
  };
  const Case cases[] = {
      {R"({"shape": [1], "data_offsets": [0, 2]})", "has no dtype"},
      {R"({"dtype": 5, "shape": [1], "data_offsets": [0, 2]})", "dtype that is not a string"},
      {R"({"dtype": "BF16", "data_offsets": [0, 2]})", "has no shape"},
      {R"({"dtype": "BF16", "shape": 1, "data_offsets": [0, 2]})", "shape that is not an array"},
      {R"({"dtype": "BF16", "shape": [1.5], "data_offsets": [0, 2]})", "non-integer dimension"},
      {R"({"dtype": "BF16", "shape": ["1"], "data_offsets": [0, 2]})", "non-integer dimension"},
      {R"({"dtype": "BF16", "shape": [1]})", "has no data_offsets"},
      {R"({"dtype": "BF16", "shape": [1], "data_offsets": [0]})", "data_offsets [0]"},
      {R"({"dtype": "BF16", "shape": [1], "data_offsets": [0, 2, 4]})", "data_offsets [0,2,4]"},
      {R"({"dtype": "BF16", "shape": [1], "data_offsets": [-2, 2]})", "data_offsets [-2,2]"},
      {R"({"dtype": "BF16", "shape": [1], "data_offsets": "0-2"})", "data_offsets \"0-2\""},
      {R"([1, 2])", "not an object"},
  };
  for (const Case& c : cases) {
    std::string path;
    auto file = OpenWithHeader(absl::StrCat(R"({"w.weight": )", c.entry, "}"), 8, &path);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << c.entry;
    EXPECT_THAT(file.status().message(),
                AllOf(HasSubstr(path), HasSubstr("tensor w.weight"), HasSubstr(c.error)))
        << c.entry;
  }
}

TEST(SafetensorsFileTest, NegativeDimension) {
  std::string path;
  auto file = OpenWithHeader(R"({"w": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}})",
                             8, &path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path), HasSubstr("tensor w"), HasSubstr("negative dimension")));
}

TEST(SafetensorsFileTest, ShapeTooLargeToAddress) {
  std::string path;
  // 2^32 * 2^32 elements wraps a 64-bit count to 0, which would "match" empty offsets.
  auto file = OpenWithHeader(
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0,
      &path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path), HasSubstr("tensor w"), HasSubstr("too large")));
}

TEST(SafetensorsFileTest, EndBeforeBegin) {
  std::string path;
  auto file =
      OpenWithHeader(R"({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [8, 4]}})", 8, &path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path), HasSubstr("tensor w"), HasSubstr("end < begin")));
}

TEST(SafetensorsFileTest, SizeDisagreesWithShape) {
  std::string path;
  // BF16 [2, 3] needs 12 bytes; the offsets span 10.
  auto file = OpenWithHeader(
      R"({"w.weight": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 10]}})", 12, &path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path), HasSubstr("tensor w.weight"), HasSubstr("spanning 10 bytes"),
                    HasSubstr("needs 12")));
}

TEST(SafetensorsFileTest, OffsetsPastEndOfData) {
  std::string path;
  // F32 [4] = 16 bytes, but the data region holds only 12.
  auto file = OpenWithHeader(
      R"({"w.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 12, &path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path), HasSubstr("tensor w.weight"),
                    HasSubstr("past the end of the data region (12 bytes)")));
}

TEST(SafetensorsFileTest, OverlappingTensors) {
  std::string path;
  auto file = OpenWithHeader(R"({
      "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
      "c": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                             20, &path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path), HasSubstr("tensor c"), HasSubstr("overlaps tensor a")));
}

TEST(SafetensorsFileTest, AdjacentTensorsDoNotOverlap) {
  std::string path;
  auto file = OpenWithHeader(R"({
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
      "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                             16, &path);
  EXPECT_TRUE(file.ok()) << file.status();
}

TEST(SafetensorsFileTest, MisalignedTensor) {
  const std::string header = R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  const std::string path =
      WriteSingle(TestDir(), Serialize(header, std::string(4, '\0'), /*pad=*/false));
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path), HasSubstr("tensor w"), HasSubstr("not aligned")));
}

// ---- Checkpoint lookups ----------------------------------------------------------------------

TEST(SafetensorsCheckpointTest, NoCheckpointInDirectory) {
  const std::string dir = TestDir();
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(ckpt.status().message(),
              HasSubstr("no model.safetensors or model.safetensors.index.json in " + dir));
}

TEST(SafetensorsCheckpointTest, MalformedSingleFileNamesIt) {
  const std::string dir = TestDir();
  const std::string path = WriteSingle(dir, std::string(3, 'x'));
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ckpt.status().message(), AllOf(HasSubstr(path), HasSubstr("truncated")));
}

TEST(SafetensorsCheckpointTest, GetMissingTensor) {
  const std::string dir = TestDir();
  WriteSingle(dir, BuildFile({Bf16Tensor("x", {2}, {1, 2})}));
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto t = (*ckpt)->Get("model.norm.weight");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.status().message(), dir + ": missing tensor model.norm.weight");
}

TEST(SafetensorsCheckpointTest, GetWithWrongShape) {
  const std::string dir = TestDir();
  const std::string path =
      WriteSingle(dir, BuildFile({Bf16Tensor("w.weight", {2, 3}, {1, 2, 3, 4, 5, 6})}));
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto t = (*ckpt)->Get("w.weight", {3, 2});
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.status().message(), path + ": tensor w.weight has shape [2, 3], expected [3, 2]");
  // A rank mismatch is a mismatch too.
  auto t2 = (*ckpt)->Get("w.weight", {6});
  EXPECT_EQ(t2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t2.status().message(), HasSubstr("has shape [2, 3], expected [6]"));
  EXPECT_TRUE((*ckpt)->Get("w.weight", {2, 3}).ok());
}

TEST(SafetensorsCheckpointTest, AccessedRecordsOnlyNamesAskedFor) {
  const std::string dir = TestDir();
  WriteSingle(dir, BuildFile({Bf16Tensor("a", {1}, {1}), Bf16Tensor("b", {1}, {2}),
                              Bf16Tensor("c", {1}, {3})}));
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->Accessed().empty());
  EXPECT_TRUE((*ckpt)->Has("b"));  // Has() is not an access
  ASSERT_TRUE((*ckpt)->Get("a").ok());
  ASSERT_TRUE((*ckpt)->Get("a", {1}).ok());
  EXPECT_FALSE((*ckpt)->Get("c", {5}).ok());  // asked for, even though refused
  EXPECT_FALSE((*ckpt)->Get("zzz").ok());     // asked for, even though absent
  EXPECT_THAT((*ckpt)->Accessed(), UnorderedElementsAre("a", "c", "zzz"));
}

TEST(SafetensorsCheckpointTest, PrefetchTouchesWithAndWithoutProgress) {
  const std::string dir = TestDir();
  // Larger than one progress chunk, and starting mid-page, to exercise the chunk/page walk.
  std::vector<float> big((size_t{5} << 20) / 4 + 3, 0.5f);
  WriteSingle(dir, BuildFile({Bf16Tensor("small", {3}, {1, 2, 3}),
                              {"big", "F32", {static_cast<int64_t>(big.size())}, Bytes(big)},
                              {"empty", "F32", {0}, ""}}));
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<TensorView> views;
  for (const std::string& name : (*ckpt)->Names()) views.push_back(*(*ckpt)->Get(name));
  (*ckpt)->Prefetch(views, nullptr);
  ByteProgress progress("prefetch", 6 + big.size() * 4);
  (*ckpt)->Prefetch(views, &progress);
  progress.Finish();
  EXPECT_EQ(static_cast<const float*>(views[0].data)[big.size() - 1], 0.5f);  // "big" sorts first
}

// ---- Sharded checkpoints ---------------------------------------------------------------------

json WeightMap(const std::vector<std::pair<std::string, std::string>>& entries) {
  json wm = json::object();
  for (const auto& [tensor, file] : entries) wm[tensor] = file;
  return json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}};
}

// Two shards: s1 holds a and b, s2 holds c.
std::string WriteShards() {
  const std::string dir = TestDir();
  WriteFile(dir + "/s1.safetensors",
            BuildFile({Bf16Tensor("a", {2}, {1, 2}), Bf16Tensor("b", {1}, {3})}));
  WriteFile(dir + "/s2.safetensors", BuildFile({Bf16Tensor("c", {1, 1}, {4})}));
  return dir;
}

TEST(SafetensorsCheckpointTest, ShardedViaIndex) {
  const std::string dir = WriteShards();
  WriteFile(dir + "/model.safetensors.index.json",
            WeightMap({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}})
                .dump());
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("a", "b", "c"));
  auto b = (*ckpt)->Get("b", {1});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->file, dir + "/s1.safetensors");
  EXPECT_EQ(Bf16ToFloat(*static_cast<const uint16_t*>(b->data)), 3.0f);
  auto c = (*ckpt)->Get("c", {1, 1});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->file, dir + "/s2.safetensors");
  EXPECT_EQ(Bf16ToFloat(*static_cast<const uint16_t*>(c->data)), 4.0f);
}

TEST(SafetensorsCheckpointTest, IndexTakesPrecedenceOverSingleFile) {
  const std::string dir = WriteShards();
  WriteSingle(dir, BuildFile({Bf16Tensor("only_in_single", {1}, {9})}));
  WriteFile(dir + "/model.safetensors.index.json", WeightMap({{"c", "s2.safetensors"}}).dump());
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("c"));  // s1 is never opened
}

TEST(SafetensorsCheckpointTest, IndexNamesTensorItsShardLacks) {
  const std::string dir = WriteShards();
  const std::string index = dir + "/model.safetensors.index.json";
  WriteFile(index, WeightMap({{"a", "s1.safetensors"}, {"c", "s1.safetensors"}}).dump());
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ckpt.status().message(),
              AllOf(HasSubstr(index), HasSubstr("tensor c"), HasSubstr("s1.safetensors")));
}

TEST(SafetensorsCheckpointTest, IndexNamesMissingShard) {
  const std::string dir = WriteShards();
  const std::string index = dir + "/model.safetensors.index.json";
  WriteFile(index, WeightMap({{"a", "s1.safetensors"}, {"d", "s3.safetensors"}}).dump());
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(ckpt.status().message(),
              AllOf(HasSubstr(index), HasSubstr(dir + "/s3.safetensors"), HasSubstr("tensor d")));
}

TEST(SafetensorsCheckpointTest, MalformedShardNamesShardAndIndex) {
  const std::string dir = WriteShards();
  const std::string index = dir + "/model.safetensors.index.json";
  WriteFile(dir + "/bad.safetensors", "abc");
  WriteFile(index, WeightMap({{"a", "s1.safetensors"}, {"x", "bad.safetensors"}}).dump());
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ckpt.status().message(),
              AllOf(HasSubstr(index), HasSubstr(dir + "/bad.safetensors"), HasSubstr("truncated")));
}

TEST(SafetensorsCheckpointTest, DuplicateTensorAcrossShards) {
  const std::string dir = WriteShards();
  WriteFile(dir + "/s3.safetensors", BuildFile({Bf16Tensor("a", {2}, {5, 6})}));
  // The index is consistent (each name is in the file it names), but s1 also holds an "a".
  WriteFile(dir + "/model.safetensors.index.json",
            WeightMap({{"b", "s1.safetensors"}, {"a", "s3.safetensors"}}).dump());
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ckpt.status().message(),
              AllOf(HasSubstr("tensor a"), HasSubstr(dir + "/s1.safetensors"),
                    HasSubstr(dir + "/s3.safetensors")));
}

TEST(SafetensorsCheckpointTest, MalformedIndex) {
  struct Case {
    std::string text;
    const char* error;
  };
  const Case cases[] = {
      {"{not json", "not valid JSON"},
      {"[]", "not a JSON object"},
      {R"({"metadata": {}})", "no weight_map"},
      {R"({"weight_map": []})", "no weight_map"},
      {R"({"weight_map": {}})", "weight_map is empty"},
      {R"({"weight_map": {"a": 3}})", "tensor a is not a file name"},
      // An index may not reach outside its directory (fuzz/README.md).
      {R"({"weight_map": {"a": "../../etc/passwd"}})", "not a path"},
      {R"({"weight_map": {"a": "/etc/passwd"}})", "not a path"},
      {R"({"weight_map": {"a": ".."}})", "not a path"},
  };
  for (const Case& c : cases) {
    const std::string dir = WriteShards();
    const std::string index = dir + "/model.safetensors.index.json";
    WriteFile(index, c.text);
    auto ckpt = SafetensorsCheckpoint::Open(dir);
    EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(ckpt.status().message(), AllOf(HasSubstr(index), HasSubstr(c.error))) << c.text;
  }
}

// ---- The checkpoints shipped in the repository -----------------------------------------------

TEST(RealCheckpointTest, BrownMoe) {
  const std::string dir = SWITCHYARD_SOURCE_ROOT "/models/brown-moe";
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names().size(), 127u);  // 4 layers x 31 + embed, norm, lm_head
  auto w1 = (*ckpt)->Get("model.layers.0.block_sparse_moe.experts.0.w1.weight", {512, 256});
  ASSERT_TRUE(w1.ok()) << w1.status();
  EXPECT_EQ(w1->dtype, DType::kBF16);
  EXPECT_EQ(w1->nbytes, 512u * 256 * 2);
  EXPECT_EQ(w1->file, dir + "/model.safetensors");
  auto norm = (*ckpt)->Get("model.norm.weight", {256});
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_THAT((*ckpt)->Accessed(),
              UnorderedElementsAre("model.layers.0.block_sparse_moe.experts.0.w1.weight",
                                   "model.norm.weight"));

  // The checkpoint holds exactly the parameters its config.json describes.
  auto cfg = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  int64_t total = 0;
  for (const std::string& name : (*ckpt)->Names()) {
    auto t = (*ckpt)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->dtype, DType::kBF16) << name;
    total += t->numel();
  }
  EXPECT_EQ(total, cfg->TotalParams());
}

TEST(RealCheckpointTest, TinyOddSharded) {
  const std::string dir = SWITCHYARD_SOURCE_ROOT "/models/tiny-odd";
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names().size(), 78u);
  auto lm_head = (*ckpt)->Get("lm_head.weight", {4096, 96});
  ASSERT_TRUE(lm_head.ok()) << lm_head.status();
  EXPECT_EQ(lm_head->file, dir + "/model-00001-of-00002.safetensors");
  auto norm = (*ckpt)->Get("model.norm.weight", {96});
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_EQ(norm->file, dir + "/model-00002-of-00002.safetensors");
  EXPECT_EQ(norm->dtype, DType::kBF16);
  auto expert = (*ckpt)->Get("model.layers.1.block_sparse_moe.experts.4.w2.weight", {96, 144});
  ASSERT_TRUE(expert.ok()) << expert.status();
  EXPECT_EQ(expert->file, dir + "/model-00002-of-00002.safetensors");
  (*ckpt)->Prefetch({*lm_head, *norm, *expert}, nullptr);
}

}  // namespace
}  // namespace switchyard
