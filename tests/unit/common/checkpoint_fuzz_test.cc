// Robustness of the safetensors reader: truncations, bit flips in the header region and random
// garbage must either fail with a clear status or give a file whose tensors all lie inside it.
// (Run once under -fsanitize=address as well: an out-of-bounds read there fails loudly.)
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/safetensors.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

namespace fs = std::filesystem;

class CheckpointFuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sy_fuzz_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = dir_ / "model.safetensors";
    std::vector<TensorToWrite> tensors = {
        {"model.embed_tokens.weight", DType::kBF16, {4, 3}, std::vector<float>(12, 0.25f)},
        {"model.layers.0.self_attn.q_proj.weight", DType::kF32, {3, 3}, std::vector<float>(9, 1)},
        {"model.norm.weight", DType::kF16, {3}, {1, 2, 3}},
        {"scalar", DType::kF32, {}, {5}},
        {"empty", DType::kF32, {0, 4}, {}},
    };
    ASSERT_TRUE(WriteSafetensors(path_, tensors, {{"format", "pt"}}).ok());
    std::ifstream in(path_, std::ios::binary);
    valid_ = std::string(std::istreambuf_iterator<char>(in), {});
    header_end_ = 8 + (static_cast<uint8_t>(valid_[0]) | static_cast<uint8_t>(valid_[1]) << 8);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `bytes` as the checkpoint and checks that opening it is safe.
  void Check(const std::string& bytes, const std::string& what) {
    {
      std::ofstream out(path_, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path_);
    if (!file.ok()) {
      ++num_failed_;
      EXPECT_NE(file.status().message().find("model.safetensors"), std::string::npos)
          << what << ": " << file.status();
      const absl::StatusCode code = file.status().code();
      EXPECT_TRUE(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kDataLoss)
          << what << ": " << file.status();
      return;
    }
    ++num_opened_;
    uint64_t total_bytes = 0;
    for (const auto& [name, info] : (*file)->tensors()) {
      std::span<const uint8_t> raw = (*file)->RawBytes(name);
      ASSERT_EQ(static_cast<int64_t>(raw.size()), info.num_bytes()) << what << ": " << name;
      total_bytes += raw.size();
      uint64_t sum = 0;
      for (uint8_t b : raw) sum += b;  // touches every byte: ASan or a fault would report
      (void)sum;
    }
    EXPECT_LE(total_bytes, bytes.size()) << what;
    // Loading through a Checkpoint converts each loadable tensor without leaving the file.
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_);
    ASSERT_TRUE(ckpt.ok()) << what << ": " << ckpt.status();
    for (const std::string& name : (*ckpt)->TensorNames()) {
      const TensorInfo* info = (*ckpt)->Find(name);
      std::vector<float> out;
      absl::Status s = (*ckpt)->LoadFloat32(name, info->shape, &out);
      if (DTypeIsLoadable(info->dtype)) {
        EXPECT_TRUE(s.ok()) << what << ": " << s;
        EXPECT_EQ(static_cast<int64_t>(out.size()), info->num_elements()) << what;
      } else {
        EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << what << ": " << s;
      }
    }
  }

  uint64_t NextRandom() {
    rng_ = rng_ * 6364136223846793005ull + 1442695040888963407ull;
    return rng_ >> 33;
  }

  fs::path dir_, path_;
  std::string valid_;
  size_t header_end_ = 0;
  int num_opened_ = 0;
  int num_failed_ = 0;
  uint64_t rng_ = 12345;
};

TEST_F(CheckpointFuzzTest, ValidFileOpens) {
  Check(valid_, "valid");
  EXPECT_EQ(num_opened_, 1);
}

TEST_F(CheckpointFuzzTest, EveryTruncationFailsCleanly) {
  for (size_t n = 0; n < valid_.size(); ++n) Check(valid_.substr(0, n), "truncated");
  // Every strict prefix loses data that the header names: none may open.
  EXPECT_EQ(num_opened_, 0);
  EXPECT_EQ(num_failed_, static_cast<int>(valid_.size()));
}

TEST_F(CheckpointFuzzTest, HeaderBitFlips) {
  for (size_t pos = 0; pos < header_end_; ++pos) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bytes = valid_;
      bytes[pos] = static_cast<char>(bytes[pos] ^ (1 << bit));
      Check(bytes, "flip byte " + std::to_string(pos) + " bit " + std::to_string(bit));
    }
  }
  EXPECT_GT(num_failed_, 0);
}

TEST_F(CheckpointFuzzTest, RandomHeaderBytesAndDigits) {
  const std::string digits = "0123456789-.e[]{},:\" ";
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = valid_;
    const int num_edits = 1 + NextRandom() % 4;
    for (int e = 0; e < num_edits; ++e) {
      size_t pos = NextRandom() % header_end_;
      bytes[pos] = NextRandom() % 2 ? digits[NextRandom() % digits.size()]
                                    : static_cast<char>(NextRandom() & 0xff);
    }
    Check(bytes, "random edit round " + std::to_string(round));
  }
  EXPECT_GT(num_failed_, 0);
}

TEST_F(CheckpointFuzzTest, RandomGarbage) {
  for (int round = 0; round < 500; ++round) {
    std::string bytes(NextRandom() % 256, '\0');
    for (char& ch : bytes) ch = static_cast<char>(NextRandom() & 0xff);
    if (round % 2 == 0 && bytes.size() >= 8) {  // a plausible small length prefix
      const uint64_t n = NextRandom() % (bytes.size() - 7);
      for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    }
    Check(bytes, "garbage round " + std::to_string(round));
  }
}

}  // namespace
}  // namespace switchyard
