// Host check of the fused epilogue's activations (csrc/kernels/common.cuh: activate, apply_epilogue,
// which every CUDA kernel ends with) on the special values the kernels' harnesses never feed them
// (their inputs are finite): NaN, infinities and signed zeros, against torch's GELU and ReLU.
// tests/test_cuda_emulation.py builds and runs it; by hand, from the repository root:
//
//   nvcc -std=c++17 -Xcompiler -fno-strict-aliasing -I csrc/kernels \
//       tests/cuda_emulation/epilogue_host.cu -o epilogue_host
//   ./epilogue_host                  # the fixed case list below
//   ./epilogue_host relu,nan         # chosen cases
//   ./epilogue_host --random 100 7   # 100 random cases from seed 7
//
// A case is ACT,VALUE: ACT gelu | relu, VALUE nan | inf | -inf | 0 | -0 or a decimal number. Per
// case, VALUE through activate<ACT>, and through apply_epilogue<ACT> as the accumulator and as the
// bias (the other 0.25; scale 1.5, shift -0.5), against torch's activation in double: a NaN stays
// NaN (fmaxf, like PTX max.f32, returns its other operand: a ReLU built on it turned NaN into 0);
// ReLU is exact, -0 included (torch.relu keeps it); a finite GELU is within ops/gelu.py's bound;
// GELU of an infinity is NaN, as torch's on the CPU gives (inf * 0 in its formula, and in ours).
#include "emulation.h"

#include "common.cuh"

namespace {

using convmixer_fast::Activation;
using emulation::activation_text;

struct Case {
  Activation act = Activation::kGelu;
  std::string value;  // as written: nan, inf, -inf, -0, or a decimal
};

const char* const kFixedCases[] = {
    "relu,nan", "gelu,nan", "relu,inf", "relu,-inf", "gelu,inf", "gelu,-inf", "relu,0", "relu,-0",
    "gelu,0",   "gelu,-0",  "relu,1.5", "relu,-1.5", "gelu,1.5", "gelu,-1.5", "gelu,30",  "gelu,-30",
};

float parse_value(const std::string& text) { return std::strtof(text.c_str(), nullptr); }  // (nan, inf too)

bool parse_case(const std::vector<std::string>& fields, Case& c) {
  if (fields.size() != 2 || !emulation::parse_activation(fields[0], c.act)) return false;
  char* end = nullptr;
  std::strtof(fields[1].c_str(), &end);
  c.value = fields[1];
  return !fields[1].empty() && *end == '\0';
}

std::string format_case(const Case& c) { return std::string(activation_text(c.act)) + "," + c.value; }

Case random_case(std::mt19937& rng) {
  Case c;
  c.act = rng() % 2 ? Activation::kGelu : Activation::kRelu;
  const char* const specials[] = {"nan", "inf", "-inf", "0", "-0"};
  if (rng() % 4 == 0) {
    c.value = specials[rng() % 5];
  } else {
    char text[32];
    std::snprintf(text, sizeof(text), "%.6g", std::uniform_real_distribution<double>(-40.0, 40.0)(rng));
    c.value = text;
  }
  return c;
}

// torch's activation of z, in double; NaN where torch gives NaN.
double expected_activation(Activation act, double z) {
  if (act == Activation::kRelu) return z < 0.0 ? 0.0 : z;  // NaN and -0 pass through
  if (std::isinf(z)) return std::nan("");
  return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
}

// Whether `got` is what `expected` says of an activation of `z`: NaN for NaN; `exact` (and every
// infinity): the same value and sign (signed zeros too); else within 2e-6 of |expected| plus 1e-6
// of |z| + 1 (GELU's bound, ops/gelu.py: 2^-21.2 |z|, and the epilogue's fp32 roundings).
bool agrees(float got, double expected, double z, bool exact) {
  if (std::isnan(expected) || std::isnan(got)) return std::isnan(expected) && std::isnan(got);
  if (exact || std::isinf(expected)) {
    return got == static_cast<float>(expected) && std::signbit(got) == std::signbit(expected);
  }
  return std::fabs(got - expected) <= 2e-6 * std::fabs(expected) + 1e-6 * (std::fabs(z) + 1.0);
}

template <Activation kAct>
bool run_case_of(const Case& c) {
  constexpr float kBias = 0.25f, kScale = 1.5f, kShift = -0.5f;
  const float z = parse_value(c.value);
  const float activated = convmixer_fast::activate<kAct>(z);
  // The value as the accumulator, then as the bias: the kernel adds them in fp32 either way.
  const float through_acc = convmixer_fast::apply_epilogue<kAct>(z, kBias, kScale, kShift);
  const float through_bias = convmixer_fast::apply_epilogue<kAct>(kBias, z, kScale, kShift);
  const float pre = z + kBias;
  const double expected = kScale * expected_activation(kAct, pre) + kShift;
  const bool ok = agrees(activated, expected_activation(kAct, z), z, kAct == Activation::kRelu)
                  && agrees(through_acc, expected, pre, false) && agrees(through_bias, expected, pre, false);
  std::printf("%-12s act %-13.6g epilogue %-13.6g %-13.6g %s\n", format_case(c).c_str(), activated, through_acc,
              through_bias, ok ? "ok" : "FAILED");
  return ok;
}

bool run_case(const Case& c, unsigned /*seed: the value is the case*/) {
  return c.act == Activation::kGelu ? run_case_of<Activation::kGelu>(c) : run_case_of<Activation::kRelu>(c);
}

}  // namespace

int main(int argc, char** argv) {
  return emulation::run_harness(argc, argv, "CASE: ACT,VALUE (ACT gelu|relu; VALUE nan|inf|-inf|-0|a decimal)\n",
                                kFixedCases, parse_case, format_case, random_case, run_case);
}
