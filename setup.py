"""Build script. Metadata lives in pyproject.toml; this file exists for the optional CUDA extension.

The extension `qrerank._topk` (csrc/, a later milestone) will be declared here and built only when a
CUDA toolkit is found (CUDA_HOME or nvcc on PATH), never depending on torch.cuda.is_available().
Until then, and on every machine without a toolkit, this builds a pure-Python wheel or editable install.
"""

from setuptools import setup

setup()
