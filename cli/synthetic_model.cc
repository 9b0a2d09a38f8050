// `switchyard make-synthetic-model`: a Mixtral-shaped checkpoint with seeded random weights,
// for benchmarks and tests that need real shapes but not real weights.
//
//   switchyard make-synthetic-model --preset mixtral-8x7b --layers 2 --out /tmp/mx2 --seed 7
//
// Writes into --out:
// - config.json: the preset's dimensions (Hugging Face Mixtral fields), num_hidden_layers N;
// - model.safetensors: the Hugging Face Mixtral tensor names and shapes, bf16; matrices drawn
//   from N(0, 0.02) (an initialised model's scale), norm weights 1.0. Each value is a pure
//   function of (seed, tensor, index), so any thread count writes the same file. Tensors are
//   generated and written in chunks: memory stays at a few chunk buffers whatever the size;
// - tokenizer.model: a copy of --tokenizer (default models/brown-moe/tokenizer.model, skipped
//   with a note when absent). It is a placeholder: brown-moe's 4096-piece SentencePiece model,
//   not Mixtral's 32000; ids it does not know decode to nothing. Benchmarks feed token ids, so
//   the mismatch does not matter there.
//
// --router-skew S (default 0) makes the routers prefer a few experts, as trained routers do
// on real text: the embedding rows share a direction, and router row e of layer l carries
// -S * ln(1 + ((e + l) mod experts)) along it, so expert (experts - l mod experts) mod experts
// is the hottest of layer l; the output projections (o_proj, w2) are then drawn 1000x smaller
// so the residual stream keeps that direction through the layers (the arithmetic, and so the
// speed, is unchanged). For the expert-load planner and the rebalancing measurements.
//
// Presets: mixtral-8x7b (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, 8 experts
// top-2, vocab 32000, rope_theta 1e6, rms_norm_eps 1e-5, 32768 positions; 32 layers unless
// --layers) and tiny (hidden 64, intermediate 128, 4 heads, 2 KV heads, 4 experts top-2,
// vocab 4096; 2 layers unless --layers).
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/log.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "common/bf16.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "model/config.h"
#include "nlohmann/json.hpp"

namespace switchyard::cli {
namespace {

using nlohmann::json;

struct Preset {
  int hidden = 0, intermediate = 0, heads = 0, kv_heads = 0, experts = 0, top_k = 0, vocab = 0;
  int layers = 0, max_positions = 0;
  double rope_theta = 1e6, rms_norm_eps = 1e-5;
};

// A shape of model/config.h's presets (ModelPreset).
Preset FromConfig(const ModelConfig& c) {
  return {.hidden = c.hidden_size,
          .intermediate = c.intermediate_size,
          .heads = c.num_attention_heads,
          .kv_heads = c.num_key_value_heads,
          .experts = c.num_local_experts,
          .top_k = c.num_experts_per_tok,
          .vocab = c.vocab_size,
          .layers = c.num_hidden_layers,
          .max_positions = c.max_position_embeddings,
          .rope_theta = c.rope_theta,
          .rms_norm_eps = c.rms_norm_eps};
}

const Preset kTiny{.hidden = 64,
                   .intermediate = 128,
                   .heads = 4,
                   .kv_heads = 2,
                   .experts = 4,
                   .top_k = 2,
                   .vocab = 4096,
                   .layers = 2,
                   .max_positions = 1024};

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  bool ones = false;  // a norm weight
  // With --router-skew: the embedding's rows share a direction u (every hidden state keeps a
  // component along it through the residual stream), and router row e of layer l adds
  // -skew * ln(1 + rank) along u, rank = (e + l) mod experts: every token's router prefers
  // the same few experts, the hottest a different one in each layer.
  enum class Shift { kNone, kEmbedding, kRouter } shift = Shift::kNone;
  int layer = 0;
  // An output projection (o_proj, w2): with --router-skew drawn 1000x smaller, so that what the
  // layers add to the residual stream never drowns the embedding's shared direction (random
  // attention and expert outputs are far larger than embedding rows at this scale).
  bool output = false;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::vector<Tensor> MixtralTensors(const Preset& p) {
  const int64_t H = p.hidden, F = p.intermediate, V = p.vocab, E = p.experts;
  const int64_t D = H / p.heads, kv = D * p.kv_heads;
  std::vector<Tensor> t;
  t.push_back({"model.embed_tokens.weight", {V, H}, false, Tensor::Shift::kEmbedding});
  for (int l = 0; l < p.layers; ++l) {
    const std::string pre = absl::StrCat("model.layers.", l, ".");
    t.push_back({pre + "input_layernorm.weight", {H}, true});
    t.push_back({pre + "self_attn.q_proj.weight", {H, H}});
    t.push_back({pre + "self_attn.k_proj.weight", {kv, H}});
    t.push_back({pre + "self_attn.v_proj.weight", {kv, H}});
    t.push_back({pre + "self_attn.o_proj.weight", {H, H}, false, Tensor::Shift::kNone, l, true});
    t.push_back({pre + "post_attention_layernorm.weight", {H}, true});
    t.push_back({pre + "block_sparse_moe.gate.weight", {E, H}, false, Tensor::Shift::kRouter, l});
    for (int e = 0; e < p.experts; ++e) {
      const std::string ep = absl::StrCat(pre, "block_sparse_moe.experts.", e, ".");
      t.push_back({ep + "w1.weight", {F, H}});
      t.push_back({ep + "w2.weight", {H, F}, false, Tensor::Shift::kNone, l, true});
      t.push_back({ep + "w3.weight", {F, H}});
    }
  }
  t.push_back({"model.norm.weight", {H}, true});
  t.push_back({"lm_head.weight", {V, H}});
  return t;
}

json ConfigJson(const Preset& p) {
  return {{"architectures", {"MixtralForCausalLM"}},
          {"model_type", "mixtral"},
          {"vocab_size", p.vocab},
          {"hidden_size", p.hidden},
          {"intermediate_size", p.intermediate},
          {"num_hidden_layers", p.layers},
          {"num_attention_heads", p.heads},
          {"num_key_value_heads", p.kv_heads},
          {"num_local_experts", p.experts},
          {"num_experts_per_tok", p.top_k},
          {"max_position_embeddings", p.max_positions},
          {"rms_norm_eps", p.rms_norm_eps},
          {"rope_theta", p.rope_theta},
          {"sliding_window", nullptr},
          {"tie_word_embeddings", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"hidden_act", "silu"},
          {"router_aux_loss_coef", 0.02},
          {"torch_dtype", "bfloat16"},
          {"initializer_range", 0.02}};
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Approximately N(0, 1): the sum of four 16-bit uniforms (Irwin-Hall, n = 4), centred and
// scaled to unit variance. Smooth and bounded (|z| < 3.5), enough for synthetic weights.
float NormalFromHash(uint64_t h) {
  float s = 0.0f;
  for (int i = 0; i < 4; ++i) s += static_cast<float>((h >> (16 * i)) & 0xffff) * (1.0f / 65536);
  return (s - 2.0f) * 1.7320508f;  // sqrt(12 / 4)
}

constexpr int64_t kChunk = int64_t{1} << 22;  // elements per generated chunk (8 MiB of bf16)

// The shared direction u of --router-skew: +-1 per hidden unit (a pure function of the seed).
float Direction(uint64_t seed, int64_t h) {
  return (SplitMix64(seed ^ 0x5ca1ab1eull ^ SplitMix64(static_cast<uint64_t>(h))) & 1) ? 1.0f
                                                                                       : -1.0f;
}

// What --router-skew adds to element i of `t` (0 without skew).
float SkewShift(const Tensor& t, int64_t i, uint64_t seed, float stddev, double skew) {
  if (skew == 0 || t.shift == Tensor::Shift::kNone) return 0.0f;
  const int64_t H = t.shape[1];
  const int64_t row = i / H, h = i % H;
  if (t.shift == Tensor::Shift::kEmbedding) {
    // Half the random part's scale: after RMSNorm a hidden state has about 0.45 per element
    // along u, and tokens still differ (the routers see more than the shared part).
    return 0.5f * stddev * Direction(seed, h);
  }
  const int64_t experts = t.shape[0];
  const int64_t rank = (row + t.layer) % experts;
  return static_cast<float>(-skew * std::log1p(static_cast<double>(rank)) / (0.45 * H)) *
         Direction(seed, h);
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<Tensor>& tensors,
                              uint64_t seed, float stddev, double skew) {
  json header = json::object();
  uint64_t offset = 0;
  for (const Tensor& t : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * 2;
    header[t.name] = {
        {"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  header["__metadata__"] = {{"format", "pt"}, {"generator", "switchyard make-synthetic-model"}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError("cannot write " + path);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));

  ByteProgress progress("writing " + path, offset);
  std::vector<uint16_t> buf(kChunk);
  const uint16_t one = FloatToBf16(1.0f);
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    const Tensor& t = tensors[ti];
    const uint64_t key = SplitMix64(seed ^ SplitMix64(ti + 1));
    const float scale = skew != 0 && t.output ? stddev * 1e-3f : stddev;
    const int64_t n = t.numel();
    for (int64_t base = 0; base < n; base += kChunk) {
      const int64_t c = std::min(kChunk, n - base);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < c; ++i) {
        buf[i] =
            t.ones ? one
                   : FloatToBf16(
                         scale * NormalFromHash(SplitMix64(key + static_cast<uint64_t>(base + i))) +
                         SkewShift(t, base + i, seed, stddev, skew));
      }
      out.write(reinterpret_cast<const char*>(buf.data()), c * 2);
      if (!out) return absl::ResourceExhaustedError("write failed (disk full?): " + path);
      progress.Add(static_cast<uint64_t>(c) * 2);
    }
  }
  progress.Finish();
  out.close();
  if (!out) return absl::ResourceExhaustedError("write failed (disk full?): " + path);
  return absl::OkStatus();
}

struct Args {
  std::string preset = "mixtral-8x7b";
  int layers = 0;  // 0: the preset's
  std::string out;
  uint64_t seed = 0;
  double router_skew = 0;
  std::string tokenizer = "models/brown-moe/tokenizer.model";
};

int Run(const Args& a) {
  Preset p = a.preset == "tiny" ? kTiny : FromConfig(*ModelPreset(a.preset));
  if (a.layers > 0) p.layers = a.layers;
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(a.out, ec);
  if (ec) {
    spdlog::error("cannot create {}: {}", a.out, ec.message());
    return 1;
  }
  const std::vector<Tensor> tensors = MixtralTensors(p);
  uint64_t params = 0;
  for (const Tensor& t : tensors) params += static_cast<uint64_t>(t.numel());
  spdlog::info("{}, {} layers: {} parameters, {} of bf16", a.preset, p.layers, params,
               ByteProgress::FormatBytes(2.0 * params));
  {
    std::ofstream cfg(a.out + "/config.json");
    cfg << ConfigJson(p).dump(2) << "\n";
    if (!cfg) {
      spdlog::error("cannot write {}/config.json", a.out);
      return 1;
    }
  }
  const absl::Status st = WriteSafetensors(a.out + "/model.safetensors", tensors, a.seed,
                                           /*stddev=*/0.02f, a.router_skew);
  if (!st.ok()) {
    spdlog::error("{}", st.message());
    return 1;
  }
  if (fs::exists(a.tokenizer)) {
    fs::copy_file(a.tokenizer, a.out + "/tokenizer.model", fs::copy_options::overwrite_existing,
                  ec);
    if (ec) {
      spdlog::error("copying {}: {}", a.tokenizer, ec.message());
      return 1;
    }
    spdlog::info("tokenizer.model: placeholder copy of {} (its vocabulary is not the model's)",
                 a.tokenizer);
  } else {
    spdlog::info("{} not found; no tokenizer.model written (token ids only)", a.tokenizer);
  }
  std::printf("wrote %s\n", a.out.c_str());
  return 0;
}

}  // namespace

void RegisterMakeSyntheticModel(CLI::App& app, Action* action) {
  static Args args;  // CLI11 binds options to storage that outlives parsing
  Args* a = &args;
  CLI::App* cmd = app.add_subcommand(
      "make-synthetic-model", "Write a Mixtral-shaped checkpoint with seeded random weights");
  cmd->add_option("--preset", a->preset, "mixtral-8x7b or tiny")
      ->check(CLI::IsMember({"mixtral-8x7b", "tiny"}));
  cmd->add_option("--layers", a->layers, "Decoder layers (default: the preset's)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--out", a->out, "Output directory (created)")->required();
  cmd->add_option("--seed", a->seed, "Seed of the weights");
  cmd->add_option("--router-skew", a->router_skew,
                  "Make every router prefer a few experts: router logit bias -S*ln(1+rank), "
                  "the hottest expert a different one per layer (0: plain random weights)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--tokenizer", a->tokenizer,
                  "SentencePiece model copied as a placeholder tokenizer");
  cmd->callback([a, action] { *action = [a] { return Run(*a); }; });
}

}  // namespace switchyard::cli
