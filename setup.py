"""Builds convmixer_fast and its extension convmixer_fast._C.

    pip install --no-build-isolation .

``--no-build-isolation`` builds against the torch already installed (an isolated build would pull a
multi-GB CUDA torch; torch is deliberately not in [build-system].requires). C++ sources
(csrc/*.cpp: the op schemas, their argument checks) are always compiled; the CUDA kernels
(csrc/kernels/*.cu, which need the CUTLASS headers of nvidia-cutlass) only when torch was built with
CUDA and a toolkit is found. Every switch is documented in convmixer_fast/_settings.py.
"""

import glob
import importlib.util
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_settings():
    spec = importlib.util.spec_from_file_location("_settings", os.path.join(ROOT, "convmixer_fast", "_settings.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extension():
    settings = _load_settings()
    toolkit = settings.cuda_toolkit_home()  # before torch.utils.cpp_extension reads CUDA_HOME
    if toolkit:
        os.environ["CUDA_HOME"] = toolkit
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as error:
        raise RuntimeError(
            "building convmixer_fast needs torch installed first (e.g. pip install torch==2.13.0), "
            "then: pip install --no-build-isolation ."
        ) from error
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    cpp_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    cuda_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cu")))
    with_cuda, status = settings.cuda_build_status(torch.version.cuda, CUDA_HOME)
    if with_cuda and not cuda_sources:
        with_cuda, status = False, "off: no CUDA sources in csrc/ yet"
    macros = [("CONVMIXER_FAST_CUDA_STATUS", f'"{status}"')]
    compile_args = {"cxx": list(settings.CXX_FLAGS)}
    if with_cuda:
        macros.append(("CONVMIXER_FAST_WITH_CUDA", "1"))
        macros.append(("CONVMIXER_FAST_CUDA_ARCHS", f'"{",".join(settings.cuda_archs())}"'))
        compile_args["nvcc"] = settings.NVCC_FLAGS + settings.gencode_flags()
        include_dirs = [os.path.join(ROOT, "csrc", "kernels"), *settings.cutlass_include_dirs()]
        extension = CUDAExtension("convmixer_fast._C", cpp_sources + cuda_sources, include_dirs=include_dirs,
                                  define_macros=macros, extra_compile_args=compile_args)
    else:
        extension = CppExtension("convmixer_fast._C", cpp_sources, define_macros=macros, extra_compile_args=compile_args)
    print(f"convmixer_fast._C: CUDA {status}")
    return [extension], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
