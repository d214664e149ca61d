"""The compiled parts of forumcast; everything else is in pyproject.toml.

Each extension is optional: where no C compiler or Python headers exist,
`pip install` still succeeds and the module's pure-Python fallback runs
(each importer says which path it uses). Build in a checkout without
installing: `python3 setup.py build_ext --inplace`.
"""

from setuptools import Extension, setup

EXTENSIONS = [
    # the load tester's receive side: recvmmsg + RTP counting (streaming/rtp_count.py falls back)
    Extension("streaming._rtp_rx", ["streaming/_rtp_rx.c"], optional=True),
]

setup(ext_modules=EXTENSIONS)
