"""Run pytest against a copy of fastrnn on PYTHONPATH rather than the editable install.

`make sanitize` builds an ASan/UBSan extension into a copy of the package. Run as a script
(its own folder, not the checkout, heads sys.path; `python -c`/`-m` would put the checkout's
fastrnn/ first), with setuptools' editable finder removed as well, so the copy is what loads;
the check below refuses to run the tests on anything else.
"""
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]

import fastrnn._ext  # noqa: E402

if "build-asan" not in fastrnn._ext.__file__:
    sys.exit(f"expected the sanitizer build, got {fastrnn._ext.__file__}")

import pytest  # noqa: E402

sys.exit(pytest.main(sys.argv[1:]))
