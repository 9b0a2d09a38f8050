// Helpers shared by the libFuzzer harnesses in fuzz/.
#pragma once

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "model/config.h"

namespace switchyard::fuzz {

// A broken promise of the code under test (a documented invariant that does not hold):
// reported and aborted, so libFuzzer saves the input as a crash.
[[noreturn]] inline void Fail(const std::string& what) {
  std::fprintf(stderr, "\n==FUZZ INVARIANT== %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

#define SY_FUZZ_CHECK(cond, msg)                                                          \
  do {                                                                                    \
    if (!(cond)) ::switchyard::fuzz::Fail(std::string(#cond " does not hold: ") + (msg)); \
  } while (0)

// Errors the parsers promise are kInvalidArgument (malformed input); anything else (an
// internal error, a crash turned into a status) breaks the contract.
inline void CheckInvalidArgument(const absl::Status& s, const std::string& where) {
  if (s.code() != absl::StatusCode::kInvalidArgument) {
    Fail(where + ": expected kInvalidArgument, got " + s.ToString());
  }
}

// With SY_FUZZ_VERBOSE=1 in the environment the harnesses print what each parse returned
// (for checking seeds and reproducing findings: build-fuzz/fuzz/<target> FILE).
inline void Verbose(const std::string& what, const absl::Status& s) {
  static const bool on = [] {
    const char* v = std::getenv("SY_FUZZ_VERBOSE");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  if (on) std::fprintf(stderr, "%s: %s\n", what.c_str(), s.ToString().c_str());
}

// A per-process scratch directory under $TMPDIR (or /tmp), removed at exit. Crashing runs
// leave theirs behind (sy_fuzz.* in the temp directory).
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                        "/sy_fuzz.XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) Fail("mkdtemp " + templ + " failed");
    static std::string removed = templ;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(removed, ec);
    });
    return templ;
  }();
  return dir;
}

// A checked-in model config (models/<name>/config.json) for harnesses that need one.
inline ModelConfig LoadCheckedInConfig(const std::string& name) {
  const std::string path = std::string(SWITCHYARD_SOURCE_ROOT) + "/models/" + name + "/config.json";
  auto cfg = LoadModelConfig(path);
  if (!cfg.ok()) Fail("cannot load " + path + ": " + cfg.status().ToString());
  return *cfg;
}

}  // namespace switchyard::fuzz
