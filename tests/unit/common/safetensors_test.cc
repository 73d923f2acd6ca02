// safetensors reading/writing, dtype conversion, sharded checkpoints and validation.
#include "common/safetensors.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common/tensor_names.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

namespace fs = std::filesystem;

fs::path TempDir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() /
                 ("sy_safetensors_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Writes 8-byte length + header text + data by hand, for malformed files.
void WriteRaw(const fs::path& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << data;
}

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(DTypeConversionTest, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBFloat16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBFloat16(1.0f + 0x1p-8f), 0x3F80);             // tie, 0x3F80 is even
  EXPECT_EQ(FloatToBFloat16(1.0f + 3 * 0x1p-8f), 0x3F82);         // tie, rounds up to even
  EXPECT_EQ(FloatToBFloat16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);  // above the tie
  EXPECT_EQ(FloatToBFloat16(0.1f), 0x3DCD);                       // 0x3DCCCCCD rounds up
  EXPECT_EQ(FloatToBFloat16(3.14159f), 0x4049);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
  EXPECT_EQ(BFloat16ToFloat(0x3DCD), 0.10009765625f);
  EXPECT_EQ(BFloat16ToFloat(0x4049), 3.140625f);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::infinity()), 0x7F80);
}

TEST(DTypeConversionTest, HalfRoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(0.1f), 0x2E66);
  EXPECT_EQ(FloatToHalf(3.14159f), 0x4248);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);  // largest half
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);             // tie with 65536 rounds to inf
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3C00);      // tie, even
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3C02);  // tie, up to even
  EXPECT_EQ(FloatToHalf(0x1p-24f), 0x0001);             // smallest subnormal
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);             // tie with zero
  EXPECT_EQ(FloatToHalf(1.5f * 0x1p-25f), 0x0001);
  EXPECT_EQ(FloatToHalf(0x1p-14f), 0x0400);             // smallest normal
  EXPECT_EQ(FloatToHalf(0x1p-14f - 0x1p-25f), 0x0400);  // rounds up into the normals
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(HalfToFloat(0x0001), 0x1p-24f);
  EXPECT_EQ(HalfToFloat(0x03FF), 1023 * 0x1p-24f);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x2E66), 0.0999755859375f);
  EXPECT_EQ(HalfToFloat(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::nanf("")))));
}

class RoundTripTest : public ::testing::TestWithParam<DType> {};

TEST_P(RoundTripTest, WriteThenLoad) {
  const DType dtype = GetParam();
  fs::path dir = TempDir(std::string("roundtrip_") + std::string(DTypeName(dtype)));
  const std::vector<float> values = {1.0f, -2.5f, 0.1f, 3.14159f, 65504.0f, 1e-8f};
  std::vector<float> expected;
  switch (dtype) {
    case DType::kF32:
      expected = values;
      break;
    case DType::kBF16:
      expected = {1.0f, -2.5f, 0.10009765625f, 3.140625f, 65536.0f, BFloat16ToFloat(0x322C)};
      break;
    default:
      expected = {1.0f, -2.5f, 0.0999755859375f, 3.140625f, 65504.0f, 0.0f};
      break;
  }
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors",
                               {{"a", dtype, {2, 3}, values}, {"b", dtype, {1}, {7.0f}}},
                               {{"format", "pt"}})
                  .ok());
  // Header padded so that the data area starts 8-byte aligned; tensors packed back to back.
  std::string bytes = ReadAll(dir / "model.safetensors");
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes.data(), 8);
  EXPECT_EQ((8 + header_bytes) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_bytes + 7 * DTypeSize(dtype));

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->tensors().at("a").dtype, dtype);
  EXPECT_EQ((*file)->tensors().at("a").shape, std::vector<int64_t>({2, 3}));
  EXPECT_EQ((*file)->RawBytes("b").size(), static_cast<size_t>(DTypeSize(dtype)));

  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<float> out;
  const int64_t shape[] = {2, 3};
  ASSERT_TRUE((*ckpt)->LoadFloat32("a", shape, &out).ok());
  ASSERT_EQ(out.size(), expected.size());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], expected[i]) << i;
  EXPECT_EQ((*ckpt)->bytes_loaded(), static_cast<uint64_t>(6 * DTypeSize(dtype)));
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, RoundTripTest,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16));

TEST(CheckpointTest, LoadRowsCountsOnlyThoseBytes) {
  fs::path dir = TempDir("rows");
  std::vector<float> values(12);
  for (int i = 0; i < 12; ++i) values[i] = static_cast<float>(i);
  ASSERT_TRUE(
      WriteSafetensors(dir / "model.safetensors", {{"w", DType::kBF16, {4, 3}, values}}).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const int64_t shape[] = {4, 3};
  std::vector<float> out;
  ASSERT_TRUE((*ckpt)->LoadFloat32Rows("w", shape, 1, 3, &out).ok());
  EXPECT_EQ(out, std::vector<float>({3, 4, 5, 6, 7, 8}));
  EXPECT_EQ((*ckpt)->bytes_loaded(), 2u * 3 * 2);
  ASSERT_TRUE((*ckpt)->LoadFloat32Rows("w", shape, 2, 2, &out).ok());
  EXPECT_TRUE(out.empty());
  ASSERT_TRUE((*ckpt)->LoadFloat32("w", shape, &out).ok());
  EXPECT_EQ(out, values);
  EXPECT_EQ((*ckpt)->bytes_loaded(), 12u + 24u);

  absl::Status s = (*ckpt)->LoadFloat32Rows("w", shape, 3, 5, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  const int64_t wrong[] = {3, 4};
  s = (*ckpt)->LoadFloat32("w", wrong, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), "tensor w: shape [4,3], config expects [3,4]");
  s = (*ckpt)->LoadFloat32("nope", wrong, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  fs::remove_all(dir);
}

TEST(CheckpointTest, Sharded) {
  fs::path dir = TempDir("sharded");
  ASSERT_TRUE(WriteSafetensors(dir / "model-00001-of-00002.safetensors",
                               {{"x", DType::kF32, {2}, {1, 2}}, {"y", DType::kF16, {1}, {3}}})
                  .ok());
  ASSERT_TRUE(
      WriteSafetensors(dir / "model-00002-of-00002.safetensors", {{"z", DType::kBF16, {2}, {4, 5}}})
          .ok());
  auto write_index = [&](const std::string& text) {
    std::ofstream(dir / "model.safetensors.index.json") << text;
  };
  write_index(R"({"metadata": {"total_size": 14}, "weight_map": {
      "x": "model-00001-of-00002.safetensors", "y": "model-00001-of-00002.safetensors",
      "z": "model-00002-of-00002.safetensors"}})");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->TensorNames(), std::vector<std::string>({"x", "y", "z"}));
  ASSERT_NE((*ckpt)->Find("z"), nullptr);
  EXPECT_EQ((*ckpt)->Find("z")->dtype, DType::kBF16);
  EXPECT_EQ((*ckpt)->Find("w"), nullptr);
  std::vector<float> out;
  const int64_t two[] = {2};
  ASSERT_TRUE((*ckpt)->LoadFloat32("z", two, &out).ok());
  EXPECT_EQ(out, std::vector<float>({4, 5}));

  write_index(R"({"weight_map": {"x": "model-00002-of-00002.safetensors"}})");
  auto wrong_shard = Checkpoint::Open(dir);
  EXPECT_EQ(wrong_shard.status().code(), absl::StatusCode::kInvalidArgument);
  write_index(R"({"weight_map": {"x": "../model-00001-of-00002.safetensors"}})");
  EXPECT_EQ(Checkpoint::Open(dir).status().code(), absl::StatusCode::kInvalidArgument);
  write_index(R"({"weight_map": {"x": "missing.safetensors"}})");
  EXPECT_EQ(Checkpoint::Open(dir).status().code(), absl::StatusCode::kNotFound);
  write_index("not json");
  EXPECT_EQ(Checkpoint::Open(dir).status().code(), absl::StatusCode::kInvalidArgument);

  // The same tensor in two shards.
  ASSERT_TRUE(
      WriteSafetensors(dir / "model-00002-of-00002.safetensors", {{"x", DType::kBF16, {2}, {4, 5}}})
          .ok());
  write_index(R"({"weight_map": {"x": "model-00001-of-00002.safetensors",
                                 "y": "model-00002-of-00002.safetensors"}})");
  absl::Status s = Checkpoint::Open(dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("'x'"), std::string::npos) << s;

  fs::remove_all(dir);
  fs::create_directories(dir);
  EXPECT_EQ(Checkpoint::Open(dir).status().code(), absl::StatusCode::kNotFound);
  fs::remove_all(dir);
}

TEST(SafetensorsFileTest, MalformedFilesFailWithTheFileName) {
  fs::path dir = TempDir("malformed");
  const fs::path path = dir / "bad.safetensors";
  auto open_code = [&]() {
    absl::Status s = SafetensorsFile::Open(path).status();
    EXPECT_NE(s.message().find("bad.safetensors"), std::string::npos) << s;
    return s.code();
  };
  EXPECT_EQ(SafetensorsFile::Open(dir / "absent.safetensors").status().code(),
            absl::StatusCode::kNotFound);
  std::ofstream(path) << "abc";
  EXPECT_EQ(open_code(), absl::StatusCode::kDataLoss);
  WriteRaw(path, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "12345678");
  ASSERT_TRUE(SafetensorsFile::Open(path).ok());
  WriteRaw(path, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234");  // short
  EXPECT_EQ(open_code(), absl::StatusCode::kDataLoss);
  WriteRaw(path, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", "12345678");
  EXPECT_EQ(open_code(), absl::StatusCode::kInvalidArgument);  // not JSON
  WriteRaw(path, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678");
  EXPECT_EQ(open_code(), absl::StatusCode::kInvalidArgument);  // size mismatch
  WriteRaw(path, R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", "12345678");
  EXPECT_EQ(open_code(), absl::StatusCode::kInvalidArgument);  // unknown dtype
  WriteRaw(path, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "12345678");
  EXPECT_EQ(open_code(), absl::StatusCode::kInvalidArgument);
  WriteRaw(path, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "12345678");
  EXPECT_EQ(open_code(), absl::StatusCode::kInvalidArgument);
  WriteRaw(path,
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           "12345678");
  EXPECT_EQ(open_code(), absl::StatusCode::kInvalidArgument);  // overlap
  WriteRaw(path, R"({"__metadata__":{"k":1}})", "");
  EXPECT_EQ(open_code(), absl::StatusCode::kInvalidArgument);
  {
    std::ofstream out(path, std::ios::binary);
    const char length[8] = {0, 0, 0, 0, 0, 0, 0, 0x10};  // 2^60-byte header
    out.write(length, 8);
  }
  EXPECT_EQ(open_code(), absl::StatusCode::kInvalidArgument);
  fs::remove_all(dir);
}

TEST(SafetensorsFileTest, OtherDTypesOpenButDoNotLoad) {
  fs::path dir = TempDir("int64");
  WriteRaw(dir / "model.safetensors", R"({"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})",
           "12345678");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_NE((*ckpt)->Find("ids"), nullptr);
  EXPECT_EQ((*ckpt)->Find("ids")->dtype, DType::kI64);
  std::vector<float> out;
  const int64_t shape[] = {1};
  absl::Status s = (*ckpt)->LoadFloat32("ids", shape, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("ids"), std::string::npos) << s;
  EXPECT_NE(s.message().find("I64"), std::string::npos) << s;
  fs::remove_all(dir);
}

TEST(WriteSafetensorsTest, RejectsInconsistentTensors) {
  fs::path dir = TempDir("write_bad");
  EXPECT_FALSE(
      WriteSafetensors(dir / "a.safetensors", {{"a", DType::kF32, {2, 2}, {1, 2, 3}}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir / "a.safetensors",
                                {{"a", DType::kF32, {1}, {1}}, {"a", DType::kF32, {1}, {1}}})
                   .ok());
  fs::remove_all(dir);
}

// A tiny Llama config whose expected tensors are written, then disturbed.
TEST(ValidateCheckpointTest, ListsMissingExtraAndWrongShape) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(R"({"model_type": "llama",
      "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
      "intermediate_size": 6})");
  ASSERT_TRUE(config.ok()) << config.status();
  fs::path dir = TempDir("validate");
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& spec : ExpectedTensors(*config)) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    tensors.push_back({spec.name, DType::kBF16, spec.shape, std::vector<float>(n, 0.5f)});
  }
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", tensors).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  EXPECT_TRUE(ValidateCheckpoint(*config, **ckpt).ok()) << ValidateCheckpoint(*config, **ckpt);

  std::vector<TensorToWrite> broken;
  for (TensorToWrite& t : tensors) {
    if (t.name == "model.layers.0.mlp.up_proj.weight") continue;  // missing
    if (t.name == "model.norm.weight") t.shape = {2, 4};          // wrong shape
    broken.push_back(t);
  }
  broken.push_back({"model.layers.0.mlp.extra.weight", DType::kF32, {1}, {1}});
  broken.push_back({"vision_model.x", DType::kF32, {1}, {1}});  // not ignored for llama
  broken.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::kF32, {1}, {1}});
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", broken).ok());
  ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  absl::Status s = ValidateCheckpoint(*config, **ckpt);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  const std::string m(s.message());
  EXPECT_NE(m.find("1 missing: model.layers.0.mlp.up_proj.weight"), std::string::npos) << m;
  EXPECT_NE(m.find("model.norm.weight: shape [2,4], config expects [8]"), std::string::npos) << m;
  EXPECT_NE(m.find("2 extra: model.layers.0.mlp.extra.weight, vision_model.x"), std::string::npos)
      << m;
  EXPECT_EQ(m.find("inv_freq"), std::string::npos) << m;
  fs::remove_all(dir);
}

TEST(ValidateCheckpointTest, Llama4IgnoresVisionTensors) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(R"({"model_type": "llama4",
      "text_config": {"model_type": "llama4_text", "vocab_size": 10, "hidden_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
      "intermediate_size": 6, "intermediate_size_mlp": 12, "num_local_experts": 2,
      "num_experts_per_tok": 1}})");
  ASSERT_TRUE(config.ok()) << config.status();
  fs::path dir = TempDir("validate_llama4");
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& spec : ExpectedTensors(*config)) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    tensors.push_back({spec.name, DType::kF32, spec.shape, std::vector<float>(n, 0.5f)});
  }
  tensors.push_back({"vision_model.patch_embedding.linear.weight", DType::kF32, {2}, {1, 2}});
  tensors.push_back({"multi_modal_projector.linear_1.weight", DType::kF32, {2}, {1, 2}});
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", tensors).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  absl::Status s = ValidateCheckpoint(*config, **ckpt);
  EXPECT_TRUE(s.ok()) << s;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace switchyard
