// Status propagation macros (Debian's abseil 20220623 lacks them).
//
//   absl::Status Load() {
//     RETURN_IF_ERROR(OpenFile());
//     ASSIGN_OR_RETURN(auto header, ParseHeader());
//     ...
//   }
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SY_CONCAT_INNER_(a, b) a##b
#define SY_CONCAT_(a, b) SY_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function when not OK.
#define RETURN_IF_ERROR(expr)                               \
  do {                                                      \
    ::absl::Status sy_status_ = (expr);                     \
    if (!sy_status_.ok()) return sy_status_;                \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); returns its status when not OK, otherwise
// moves the value into `lhs` (which may be a declaration such as `auto x`).
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  SY_ASSIGN_OR_RETURN_IMPL_(SY_CONCAT_(sy_statusor_, __LINE__), lhs, rexpr)

#define SY_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
