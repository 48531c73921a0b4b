"""The one part of the build pyproject.toml cannot state without an experimental table: the exposition parser's byte
loops (ingest/_scan.c), plain C over buffers built by the install (gcc and the Python headers), so nothing compiles at
run time. Optional: a node agent installs where there is no compiler; only the collector's parser imports it."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("aifmon.ingest._scan", ["ingest/_scan.c"], optional=True,
                             extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
