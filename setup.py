"""Packaging for unified_vision: metadata from settings.ini, plus the compiled `kernels/` extension.

The C++ (CPU) sources under kernels/csrc are always compiled. The CUDA sources are compiled when
torch sees a CUDA toolkit (CUDA_HOME) and either a GPU is present or UV_FORCE_CUDA=1 is set, so CI
can compile them on a machine without a GPU. UV_NO_EXTENSION=1 skips the extension entirely (the
package then falls back to its pure-PyTorch reference ops with one warning). UV_SANITIZE=1 compiles the C++
sources with AddressSanitizer and UndefinedBehaviorSanitizer, for `kernels/sanitize.sh` (never for use).
"""
import glob, os
from configparser import ConfigParser
from setuptools import setup, find_packages

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
meta = cfg["DEFAULT"]


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def extension_modules():
    """The `unified_vision._C` extension, or nothing when there is no source or it is switched off."""
    if _flag("UV_NO_EXTENSION"):
        return [], {}
    cpp = sorted(glob.glob("kernels/csrc/**/*.cpp", recursive=True))
    if not cpp:
        return [], {}
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension, BuildExtension, CUDA_HOME

    cuda = sorted(glob.glob("kernels/csrc/**/*.cu", recursive=True))
    use_cuda = (bool(cuda) and CUDA_HOME is not None and (torch.cuda.is_available() or _flag("UV_FORCE_CUDA"))
                and not _flag("UV_SANITIZE"))       # the sanitizer build is CPU only
    # torch >= 2.10 headers need C++20; -fopenmp makes at::parallel_for (inlined from the ATen
    # headers) really parallel, and the OpenMP runtime it links is torch's own libgomp.so.1.
    args = {"cxx": ["-O3", "-std=c++20", "-fopenmp"]}
    link = ["-fopenmp"]
    if _flag("UV_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        args["cxx"] = ["-O1"] + sanitize + args["cxx"][1:]
        link += sanitize
    kw = dict(include_dirs=[os.path.abspath("kernels/csrc")], extra_compile_args=args, extra_link_args=link)
    if use_cuda:
        args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-std=c++20"]
        ext = CUDAExtension("unified_vision._C", cpp + cuda, define_macros=[("WITH_CUDA", None)], **kw)
    else:
        ext = CppExtension("unified_vision._C", cpp, **kw)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
requirements = [r for r in meta.get("requirements", "").split() if r]

setup(
    name=meta["lib_name"],
    version=meta["version"],
    description=meta["description"],
    author=meta["author"],
    license=meta["license"],
    python_requires=">=" + meta["min_python"],
    packages=find_packages(include=["unified_vision", "unified_vision.*"]),
    include_package_data=True,
    install_requires=requirements,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
    entry_points={"console_scripts": ["uv-pipeline=unified_vision.cli:main"]},
)
