"""The compiled kernels of covidct.preprocessing (covidct/_native.c); the rest of the project's
metadata is in pyproject.toml. Needs a C compiler and the Python headers (`make setup` has them;
the gateway image builds them in its build stage)."""

from setuptools import Extension, setup

COMPILE_ARGS = ["-O3"]

setup(
    ext_modules=[
        Extension("covidct._native", ["covidct/_native.c"], extra_compile_args=COMPILE_ARGS),
    ]
)
