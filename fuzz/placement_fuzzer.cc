// Fuzzes ParsePlacement (coordinator/placement.h), the parser behind LoadPlacementFile
// (--placement FILE): the input is the text of a placement file. It is parsed against the two
// checked-in models under several --ep/--pp layouts (the file must agree with the flags, so one
// layout alone would refuse most inputs). A parsed plan is checked against the documented
// rules (stages contiguous and covering every layer, rank lists sorted, distinct, non-empty, in
// [0, ep)), used the way the launcher uses it (ShardFor on every rank, Footprints,
// CheckDeviceMemory), and written back with PlacementToJson, which must parse to an equal plan.
// Errors must be kInvalidArgument.
#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/placement.h"
#include "fuzz/fuzz_common.h"

namespace sy = switchyard;
using switchyard::fuzz::Fail;

namespace {

struct Layout {
  const sy::ModelConfig* cfg;
  int ep, pp;
};

std::vector<Layout>& Layouts() {
  static sy::ModelConfig brown = sy::fuzz::LoadCheckedInConfig("brown-moe");  // 4 layers, 8 experts
  static sy::ModelConfig odd = sy::fuzz::LoadCheckedInConfig("tiny-odd");     // 3 layers, 6 experts
  static std::vector<Layout> layouts = {
      {&brown, 1, 1}, {&brown, 2, 2}, {&brown, 4, 1}, {&brown, 3, 4}, {&odd, 2, 3}, {&odd, 5, 1},
  };
  return layouts;
}

void CheckPlan(const sy::PlacementPlan& plan, const Layout& l, const std::string& what) {
  const int L = l.cfg->num_hidden_layers, E = l.cfg->num_local_experts;
  SY_FUZZ_CHECK(plan.ep == l.ep && plan.pp == l.pp, what);
  SY_FUZZ_CHECK(static_cast<int>(plan.stage_layers.size()) == l.pp, what);
  int prev = 0;
  for (const auto& [b, e] : plan.stage_layers) {
    SY_FUZZ_CHECK(b == prev && e > b, what + ": stages not contiguous and non-empty");
    prev = e;
  }
  SY_FUZZ_CHECK(prev == L, what + ": stages do not cover every layer");
  SY_FUZZ_CHECK(static_cast<int>(plan.expert_ranks.size()) == L, what);
  for (const auto& layer : plan.expert_ranks) {
    SY_FUZZ_CHECK(static_cast<int>(layer.size()) == E, what);
    for (const auto& ranks : layer) {
      SY_FUZZ_CHECK(!ranks.empty(), what + ": empty rank list");
      for (size_t i = 0; i < ranks.size(); ++i) {
        SY_FUZZ_CHECK(ranks[i] >= 0 && ranks[i] < l.ep, what + ": rank out of range");
        SY_FUZZ_CHECK(i == 0 || ranks[i - 1] < ranks[i], what + ": ranks not sorted/distinct");
      }
    }
  }
  for (int layer = 0; layer < L; ++layer) {
    const int s = plan.StageOfLayer(layer);
    SY_FUZZ_CHECK(s >= 0 && s < l.pp, what + ": layer in no stage");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Layouts();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const Layout& l : Layouts()) {
    const std::string what = "ep " + std::to_string(l.ep) + " pp " + std::to_string(l.pp) +
                             " layers " + std::to_string(l.cfg->num_hidden_layers);
    auto plan = sy::ParsePlacement(text, "placement.json", *l.cfg, l.ep, l.pp);
    sy::fuzz::Verbose("ParsePlacement " + what, plan.status());
    if (!plan.ok()) {
      sy::fuzz::CheckInvalidArgument(plan.status(), "ParsePlacement " + what);
      continue;
    }
    CheckPlan(*plan, l, what);

    // As the launcher uses it: every rank's shard, the footprints, the memory check.
    std::vector<sy::ShardSpec> shards;
    for (int r = 0; r < plan->world_size(); ++r) shards.push_back(plan->ShardFor(r, *l.cfg));
    SY_FUZZ_CHECK(shards.front().has_embedding && shards.back().has_head, what);
    const auto footprints = sy::Footprints(*plan, *l.cfg, /*bytes_per_param=*/2);
    SY_FUZZ_CHECK(static_cast<int>(footprints.size()) == plan->world_size(), what);
    (void)sy::CheckDeviceMemory(footprints, uint64_t{1} << 20);

    // PlacementToJson promises: "Parsing it back gives an equal plan."
    const std::string back_text = sy::PlacementToJson(*plan).dump();
    auto back = sy::ParsePlacement(back_text, "round-trip", *l.cfg, l.ep, l.pp);
    if (!back.ok()) Fail(what + ": PlacementToJson output refused: " + back.status().ToString());
    if (back->stage_layers != plan->stage_layers || back->expert_ranks != plan->expert_ranks) {
      Fail(what + ": PlacementToJson does not round-trip: " + back_text);
    }
  }
  return 0;
}
