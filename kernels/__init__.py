"""qrerank.kernels: Triton kernels for the GPU path (installed from the top-level kernels/ folder).

One file per op, each replacing its torch twin in qrerank/reference.py through qrerank/ops.py.
"""
