// main() for GoogleTest binaries that run under mpirun: every rank runs every test; a test
// fails the run when it fails on any rank (mpirun returns non-zero). Output from ranks other
// than 0 is kept only for failures.
#include <mpi.h>

#include "gtest/gtest.h"

namespace {
// Silences the default printer on ranks other than 0 except for failures.
class FailuresOnlyPrinter : public testing::EmptyTestEventListener {
 public:
  explicit FailuresOnlyPrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
    }
  }

 private:
  int rank_;
};
}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailuresOnlyPrinter(rank));
  }
  int result = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_Allreduce(&result, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  // Every test skipped (no GPU, say) and none failed: CTest's "skipped" code (77), so the
  // run shows Skipped with the reasons in the output rather than Passed.
  const testing::UnitTest& unit = *testing::UnitTest::GetInstance();
  if (any_failed == 0 && unit.test_to_run_count() > 0 &&
      unit.skipped_test_count() == unit.test_to_run_count()) {
    return 77;
  }
  return any_failed;
}
