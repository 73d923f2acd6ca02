// Status helpers used everywhere on the CPU side.
//
// The installed abseil (20220623) has no RETURN_IF_ERROR / ASSIGN_OR_RETURN, so they are defined
// here once, with the CUDA, cuBLAS and NCCL variants that turn a library error code into an
// absl::Status naming the call site. SY_CHECK aborts on a broken invariant; SY_DCHECK only in debug
// builds.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define SY_INTERNAL_CONCAT_INNER(a, b) a##b
#define SY_INTERNAL_CONCAT(a, b) SY_INTERNAL_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define SY_RETURN_IF_ERROR(expr)                              \
  do {                                                        \
    ::absl::Status sy_status_ = (expr);                       \
    if (!sy_status_.ok()) return sy_status_;                  \
  } while (0)

// `SY_ASSIGN_OR_RETURN(auto x, Foo());` declares x from an absl::StatusOr<T>, or returns its error.
#define SY_ASSIGN_OR_RETURN(lhs, expr) \
  SY_INTERNAL_ASSIGN_OR_RETURN(SY_INTERNAL_CONCAT(sy_statusor_, __LINE__), lhs, expr)
#define SY_INTERNAL_ASSIGN_OR_RETURN(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()

#define SY_CHECK(cond)                                                                \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

#define SY_CHECK_OK(expr)                                                               \
  do {                                                                                  \
    ::absl::Status sy_status_ = (expr);                                                 \
    if (!sy_status_.ok()) {                                                             \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__,                           \
                   sy_status_.ToString().c_str());                                      \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

#ifdef NDEBUG
#define SY_DCHECK(cond) \
  do {                  \
  } while (0)
#else
#define SY_DCHECK(cond) SY_CHECK(cond)
#endif

// CUDA runtime, cuBLAS and NCCL calls: an error becomes absl::InternalError("file:line: call: msg").
// These expand only in translation units that include the library's header first.
#define SY_CUDA_RETURN_IF_ERROR(expr)                                                      \
  do {                                                                                     \
    cudaError_t sy_err_ = (expr);                                                          \
    if (sy_err_ != cudaSuccess) {                                                          \
      return ::absl::InternalError(::absl::StrCat(__FILE__, ":", __LINE__, ": ", #expr,    \
                                                  ": ", cudaGetErrorName(sy_err_), ": ",   \
                                                  cudaGetErrorString(sy_err_)));           \
    }                                                                                      \
  } while (0)

#define SY_CUBLAS_RETURN_IF_ERROR(expr)                                                    \
  do {                                                                                     \
    cublasStatus_t sy_err_ = (expr);                                                       \
    if (sy_err_ != CUBLAS_STATUS_SUCCESS) {                                                \
      return ::absl::InternalError(::absl::StrCat(__FILE__, ":", __LINE__, ": ", #expr,    \
                                                  ": cublas status ",                      \
                                                  static_cast<int>(sy_err_)));             \
    }                                                                                      \
  } while (0)

#define SY_NCCL_RETURN_IF_ERROR(expr)                                                      \
  do {                                                                                     \
    ncclResult_t sy_err_ = (expr);                                                         \
    if (sy_err_ != ncclSuccess && sy_err_ != ncclInProgress) {                             \
      return ::absl::InternalError(::absl::StrCat(__FILE__, ":", __LINE__, ": ", #expr,    \
                                                  ": ", ncclGetErrorString(sy_err_), ": ", \
                                                  ncclGetLastError(nullptr)));             \
    }                                                                                      \
  } while (0)
