"""C accelerators, optional: a machine without a C compiler installs the
package anyway and the pure-Python paths run (each module says which)."""

from setuptools import Extension, setup

EXTENSIONS = [
    # the fan-out's per-viewer protect + send(mmsg) (streaming/fanout_batch.py)
    Extension("streaming._fanout", ["streaming/_fanout.c"], optional=True, extra_compile_args=["-O2"]),
]

setup(ext_modules=EXTENSIONS)
