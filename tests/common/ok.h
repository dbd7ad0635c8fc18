#pragma once
// ASSERT_TRUE(ok(result)): on failure, gtest prints the error the engine
// gave, not just "false". must(result): the value, or the error as the
// test's failure.

#include <gtest/gtest.h>

#include <stdexcept>

#include "baton/result.h"

namespace baton::test {

template <typename T>
::testing::AssertionResult ok(const Result<T>& r) {
  if (r) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << r.error().to_string();
}

/// The value of a call a test cannot go on without; its error, as the test's
/// failure (gtest reports the exception), instead of dereferencing nothing.
template <typename T>
T must(Result<T> r) {
  if (!r) throw std::runtime_error(r.error().to_string());
  return std::move(*r);
}

}  // namespace baton::test
