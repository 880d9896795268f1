"""Installs vq3dlib.

Plain ``pip install -e .`` needs no compiler: the C++/CUDA extension is JIT-built on first use
(see ``vq3dlib/_ext.py``). ``VQ3DLIB_BUILD_EXT=1 pip install --no-build-isolation -e .`` prebuilds it.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extension_modules():
    if os.environ.get("VQ3DLIB_BUILD_EXT", "0") != "1":
        return [], {}
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sys.path.insert(0, HERE)
    from vq3dlib._ext import _compile_flags  # the JIT build's flags (-fopenmp, nvcc options), one copy

    include = [os.path.join(HERE, "csrc", "include")]
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    with_cuda = CUDA_HOME is not None and os.environ.get("VQ3DLIB_BUILD_CUDA", "1") == "1"
    cxx, nvcc, parallel = _compile_flags(with_cuda)
    flags = {"cxx": cxx}
    if with_cuda:
        flags["nvcc"] = nvcc
        sources = cpp + sorted(glob.glob("csrc/cuda/*.cu"))
        ext = CUDAExtension(
            "vq3dlib._C", sources, include_dirs=include, extra_compile_args=flags, extra_link_args=parallel
        )
    else:
        ext = CppExtension(
            "vq3dlib._C", cpp, include_dirs=include, extra_compile_args=flags, extra_link_args=parallel
        )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extension_modules()

setup(
    name="vq3dlib",
    version="0.1.0",
    description="Fast building blocks for 3D-aware generative models and a VQ3D reference model.",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vq3dlib", "vq3dlib.*"]),
    package_data={"vq3dlib": ["weights/*.safetensors"]},  # the bundled pretrained models
    install_requires=[
        "torch>=2.4",
        "numpy",
        "einops",
        "timm",
        "kornia",
        "nerfacc",
        "safetensors",
        "pillow",
        "ninja",
        "tqdm",  # progress bars of training and the demo
        "tensorboard",  # the training logs `vq3d demo` and `vq3d train` write to logs/tb
        "imageio",  # MP4 turntables, with its ffmpeg plug-in:
        "imageio-ffmpeg",  # a wheel holding an ffmpeg binary
        "scikit-image",  # marching cubes
        "trimesh",  # GLB / OBJ / PLY meshes with vertex colours
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis", "ruff", "vector-quantize-pytorch", "scikit-image"],
        "bench": ["vector-quantize-pytorch", "psutil"],
        "fid": ["torchvision"],
    },
    entry_points={"console_scripts": ["vq3d=vq3dlib.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
