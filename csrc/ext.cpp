// convmixer_fast._C: the compiled extension. Ops register into the "convmixer_fast" namespace
// through torch.library (TORCH_LIBRARY_FRAGMENT, so the Python-defined Triton ops of the same
// namespace can load before or after it). The module itself has no Python functions.
#include <Python.h>

#include <string>

#include <torch/library.h>

#ifndef CONVMIXER_FAST_CUDA_STATUS
#define CONVMIXER_FAST_CUDA_STATUS "off: not configured by setup.py"
#endif
#ifndef CONVMIXER_FAST_CUDA_ARCHS
#define CONVMIXER_FAST_CUDA_ARCHS ""
#endif

namespace convmixer_fast {

// Defined in build/generated/build_stamp.cpp, which setup.py writes: the digest of what this _C is
// compiled from (_settings.sources_digest: csrc/'s files, setup.py, the flags), torch.__version__.
extern const char kSourcesDigest[];
extern const char kTorchVersion[];

// "cuda=1;archs=80,90a;sources=<digest>;torch=<version>;status=<what CUDA was built for, or why
// not>" (archs: the sm_ targets of the CUDA kernels, machine code only, no PTX; empty without them).
std::string build_info() {
#ifdef CONVMIXER_FAST_WITH_CUDA
  const char* with_cuda = "1";
  const char* archs = CONVMIXER_FAST_CUDA_ARCHS;
#else
  const char* with_cuda = "0";
  const char* archs = "";
#endif
  return std::string("cuda=") + with_cuda + ";archs=" + archs + ";sources=" + kSourcesDigest +
         ";torch=" + kTorchVersion + ";status=" + CONVMIXER_FAST_CUDA_STATUS;
}

}  // namespace convmixer_fast

TORCH_LIBRARY_FRAGMENT(convmixer_fast, m) {
  m.def("build_info() -> str", &convmixer_fast::build_info);
}

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
