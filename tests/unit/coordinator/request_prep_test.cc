// Request validation and defaults (docs/api.md): every rejection is INVALID_ARGUMENT naming the
// field.
#include "coordinator/request_prep.h"

#include <string>

#include "gtest/gtest.h"

namespace switchyard {
namespace {

ModelContext Model() {
  ModelContext model;
  model.vocab_size = 100;
  model.max_model_len = 32;
  model.eos_token_ids = {2};
  return model;
}

v1::GenerateRequest Tokens(std::vector<int32_t> ids) {
  v1::GenerateRequest request;
  for (int32_t id : ids) request.mutable_token_ids()->add_ids(id);
  return request;
}

void ExpectInvalid(const v1::GenerateRequest& request, const std::string& field) {
  absl::StatusOr<PreparedRequest> prepared = PrepareRequest(request, Model(), 1);
  ASSERT_FALSE(prepared.ok()) << "expected a rejection naming " << field;
  EXPECT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument) << prepared.status();
  EXPECT_NE(prepared.status().message().find(field), absl::string_view::npos)
      << prepared.status();
}

TEST(RequestPrepTest, ResolvesDefaults) {
  absl::StatusOr<PreparedRequest> prepared = PrepareRequest(Tokens({5, 6}), Model(), 1234);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->sampling.temperature, 1.0f);
  EXPECT_EQ(prepared->sampling.top_p, 1.0f);
  EXPECT_EQ(prepared->sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(prepared->sampling.seed, 1234u);
  EXPECT_FALSE(prepared->sampling.has_seed);
  // Default 256 clamped to the 30 tokens left in a 32-token context.
  EXPECT_EQ(prepared->stop.max_tokens, 30);
  EXPECT_EQ(prepared->stop.eos_token_ids, (std::vector<int32_t>{2}));
  EXPECT_TRUE(prepared->skip_special_tokens);
  // The stop checker comes ready, built from the resolved config.
  ASSERT_TRUE(prepared->checker.has_value());
  EXPECT_FALSE(prepared->checker->finished());
}

TEST(RequestPrepTest, KeepsExplicitValues) {
  v1::GenerateRequest request = Tokens({5});
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_seed(99);
  request.mutable_stopping()->set_max_tokens(4);
  absl::StatusOr<PreparedRequest> prepared = PrepareRequest(request, Model(), 1);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->sampling.temperature, 0.0f);
  EXPECT_EQ(prepared->sampling.seed, 99u);
  EXPECT_TRUE(prepared->sampling.has_seed);
  EXPECT_EQ(prepared->stop.max_tokens, 4);
}

TEST(RequestPrepTest, RejectsBadInputs) {
  ExpectInvalid(v1::GenerateRequest(), "input");
  ExpectInvalid(Tokens({}), "input");
  ExpectInvalid(Tokens({5, 100}), "token_ids.ids[1]");
  ExpectInvalid(Tokens({-1}), "token_ids.ids[0]");
  ExpectInvalid(Tokens(std::vector<int32_t>(32, 5)), "context");
  v1::GenerateRequest text;
  text.set_text("hello");  // no tokenizer in this model context
  ExpectInvalid(text, "text");
}

TEST(RequestPrepTest, RejectsBadLimits) {
  v1::GenerateRequest request = Tokens({5, 6});
  request.mutable_stopping()->set_max_tokens(31);  // 2 + 31 > 32
  ExpectInvalid(request, "max_tokens");
  request.mutable_stopping()->set_max_tokens(0);
  ExpectInvalid(request, "max_tokens");
  request.mutable_stopping()->set_max_tokens(4);
  request.mutable_stopping()->set_min_tokens(5);
  ExpectInvalid(request, "min_tokens");
}

TEST(RequestPrepTest, RejectsBadSampling) {
  v1::GenerateRequest request = Tokens({5});
  request.mutable_sampling()->set_top_p(0.0f);
  ExpectInvalid(request, "top_p");
  request = Tokens({5});
  request.mutable_sampling()->set_logprobs(21);
  ExpectInvalid(request, "logprobs");
  request = Tokens({5});
  request.mutable_sampling()->set_temperature(-1.0f);
  ExpectInvalid(request, "temperature");
  request = Tokens({5});
  request.mutable_stopping()->add_stop("");
  ExpectInvalid(request, "stop");
}

}  // namespace
}  // namespace switchyard
