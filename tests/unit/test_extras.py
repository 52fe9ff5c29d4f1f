"""Optional engines import their libraries through require_extra, which names the extra."""

from __future__ import annotations

import pytest

from madhatter import MissingExtraError
from madhatter.engines import require_extra


def test_a_missing_extra_names_the_pip_install() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'madhatter\[dask\]'"):
        require_extra("madhatter_no_such_module", extra="dask")


def test_a_broken_dependency_inside_the_extra_is_not_hidden(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "half_installed.py").write_text("import madhatter_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="madhatter_missing_dependency"):
        require_extra("half_installed", extra="dask")
