"""Triton kernels: tensors in, tensors out. Installed as `coreai_opt_gpu.kernels`.

Each public launcher has a numpy twin of the same name in `coreai_opt_gpu.reference`.
Nothing here is imported by `import coreai_opt_gpu`; the dispatch layer imports a kernel module
on first use, after the test suite had its chance to set TRITON_INTERPRET.
"""
