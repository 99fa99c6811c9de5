"""Both framework callbacks refuse an object that is not a tikmix.Controller, naming what it lacks."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_callback_refuses_a_non_controller(framework):
    module = pytest.importorskip(f"tikmix.integrations.{framework}")
    with pytest.raises(TypeError, match="controller must be a tikmix.Controller; it has no 'boundaries'"):
        module.TikmixCallback(object())
