"""The compiled parts of forumcast; everything else is in pyproject.toml.

Each extension is optional: where no C compiler or Python headers exist,
`pip install` still succeeds and the module's pure-Python fallback runs
(each importer says which path it uses). Build in a checkout without
installing: `python3 setup.py build_ext --inplace`.
"""

from setuptools import Extension, setup

EXTENSIONS = [
    # the fan-out: per viewer header + SRTP protect + send(mmsg), one call per lane packet
    # (streaming/fanout_batch.py; without it, Downtrack.forward per viewer)
    Extension("streaming._fanout", ["streaming/_fanout.c"], optional=True, extra_compile_args=["-O2"]),
    # the load tester's receive side: recvmmsg + RTP counting (streaming/rtp_count.py falls back)
    Extension("streaming._rtp_rx", ["streaming/_rtp_rx.c"], optional=True),
]

setup(ext_modules=EXTENSIONS)
