"""The shipped conformance suite on the docker engine: every chunk in a container of the test image
with OpenTelemetry added (``otel_image``), as the suite's tracing test asks of the workers.

The containers get madhatter (and with it the suite's pipelines) from the engine, and see the
test's ``tmp_path`` read-only, as the suite asks of every engine's workers.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from madhatter.testing import EngineConformance


@pytest.mark.usefixtures("madhatter_containers")  # and none is left behind by any test
class TestDocker(EngineConformance):
    engine = "docker"

    @pytest.fixture
    def engine_options(self, otel_image: str, tmp_path: pathlib.Path) -> dict[str, Any]:
        return {"image": otel_image, "mounts": [str(tmp_path)]}
