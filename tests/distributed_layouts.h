// The EP x PP layouts the distributed equality tests open, and their uneven placement with
// replicas (tests/distributed_test.cc on CPU ranks, tests/distributed_cuda_test.cc on a GPU).
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace switchyard::testing_layouts {

struct Layout {
  int ep, pp;
  bool uneven = false;  // a placement file with replicated and unevenly spread experts
};

// Every EP x PP = world with PP <= layers, each EP > 1 layout also with the uneven placement.
inline std::vector<Layout> LayoutsFor(int world, int layers) {
  std::vector<Layout> out;
  for (int pp = 1; pp <= world; ++pp) {
    if (world % pp == 0 && pp <= layers) {
      out.push_back({world / pp, pp});
      if (world / pp > 1) out.push_back({world / pp, pp, true});
    }
  }
  return out;
}

// Expert 0 on every EP rank; the first half of the others on rank 0 (which then does most of
// the work), the rest on e % ep; the last expert on ranks 0 and ep - 1; in layer 0, expert 1
// moved to the last rank. Written by every rank to its own file (same content).
inline std::string UnevenPlacementFile(const Layout& layout, int experts, int rank) {
  nlohmann::json per_expert = nlohmann::json::object();
  for (int e = 0; e < experts; ++e) {
    std::vector<int> ranks;
    if (e == 0) {
      for (int r = 0; r < layout.ep; ++r) ranks.push_back(r);
    } else if (e == experts - 1) {
      ranks = {0, layout.ep - 1};
    } else {
      ranks = {e < experts / 2 ? 0 : e % layout.ep};
    }
    per_expert[std::to_string(e)] = ranks;
  }
  const nlohmann::json plan = {
      {"ep", layout.ep},
      {"pp", layout.pp},
      {"experts", per_expert},
      {"layer_experts", {{"0", {{"1", {layout.ep - 1}}}}}}};
  const std::string path = ::testing::TempDir() + "/uneven-placement-" + std::to_string(rank) +
                           "-" + std::to_string(layout.ep) + "x" + std::to_string(layout.pp) +
                           ".json";
  std::ofstream(path) << plan.dump();
  return path;
}

}  // namespace switchyard::testing_layouts
