"""The registry: decorator registration, entry-point discovery (lazy), duplicate names naming both owners."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pytest

from entropyctl import EntropyController, create_controller, register_controller
from entropyctl.config import ControllerConfig
from entropyctl.controllers import registry
from entropyctl.controllers.aer import AERController
from entropyctl.controllers.fixed import FixedController


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run a test against a copy of the registry, restored afterwards."""
    registry._ensure_discovered()
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    yield


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, *points: metadata.EntryPoint) -> None:
    def entry_points(group: str | None = None, **_: Any) -> list[metadata.EntryPoint]:
        return [p for p in points if p.group == group]

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_discovered", False)


class EchoConfig(ControllerConfig):
    name: Literal["echo"] = "echo"


class EchoController(FixedController):
    """Echo: a test double."""

    config_class = EchoConfig  # type: ignore[assignment]

    def _alpha(self) -> float:
        return 0.0

    def plan(self, outcome):  # type: ignore[no-untyped-def]
        return self.uniform_plan(outcome, 0.0, 0.2, 0.2)


def test_available_controllers_are_sorted_with_descriptions() -> None:
    table = registry.available_controllers()
    assert list(table) == sorted(table)
    assert table["aer"].startswith("AER:")
    assert all(description for description in table.values())


def test_lookup_of_classes() -> None:
    assert registry.get_controller_class("aer") is AERController
    with pytest.raises(KeyError, match="unknown controller 'x' \\(available: aer, clip_cov, clip_higher"):
        registry.get_config_class("x")


def test_register_controller_decorator(isolated_registry: None) -> None:
    register_controller("echo")(EchoController)
    assert "echo" in registry.available_controllers()
    assert isinstance(create_controller({"name": "echo"}), EchoController)
    register_controller("echo")(EchoController)  # the same class again: harmless


def test_duplicate_decorator_names_both_owners(isolated_registry: None) -> None:
    with pytest.raises(registry.RegistryError) as info:
        register_controller("aer", config=_aer_like_config())(EchoController)
    message = str(info.value)
    assert "'aer' is registered twice" in message
    assert "entropyctl.controllers.aer.AERController" in message and "test_registry.EchoController" in message


def _aer_like_config() -> type[ControllerConfig]:
    class OtherAER(ControllerConfig):
        name: Literal["aer"] = "aer"

    return OtherAER


def test_config_name_literal_must_match(isolated_registry: None) -> None:
    with pytest.raises(registry.RegistryError, match="must declare `name: Literal\\['other'\\]"):
        register_controller("other")(EchoController)
    with pytest.raises(registry.RegistryError, match="must subclass"):
        register_controller("other", config=EchoConfig)(object)  # type: ignore[type-var]


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real importable module defining a controller, for entry points to point at."""
    (tmp_path / "fake_entropy_plugin.py").write_text(
        textwrap.dedent('''
        from typing import Literal
        from entropyctl.config import ControllerConfig
        from entropyctl.controllers.fixed import OpenLoopController

        class MineConfig(ControllerConfig):
            name: Literal["mine"] = "mine"

        class MineController(OpenLoopController):
            """Mine: a plugin."""
            config_class = MineConfig
            def plan(self, outcome):
                return self.uniform_plan(outcome, 0.0, 0.2, 0.2)

        class AerConfig(ControllerConfig):
            name: Literal["aer"] = "aer"

        class AerImpostor(MineController):
            """Claims the built-in name."""
            config_class = AerConfig
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fake_entropy_plugin"
    sys.modules.pop("fake_entropy_plugin", None)


def test_entry_point_is_discovered_lazily(
    isolated_registry: None, monkeypatch: pytest.MonkeyPatch, plugin_module: str
) -> None:
    point = metadata.EntryPoint("mine", f"{plugin_module}:MineController", registry.ENTRY_POINT_GROUP)
    fake_entry_points(monkeypatch, point)
    assert plugin_module not in sys.modules  # nothing loaded before the first lookup
    controller = create_controller({"name": "mine"})
    assert type(controller).__name__ == "MineController" and controller.name == "mine"
    assert registry.available_controllers()["mine"] == "Mine: a plugin."


def test_entry_point_claiming_a_builtin_name_names_both_owners(
    isolated_registry: None, monkeypatch: pytest.MonkeyPatch, plugin_module: str
) -> None:
    point = metadata.EntryPoint("aer", f"{plugin_module}:AerImpostor", registry.ENTRY_POINT_GROUP)
    fake_entry_points(monkeypatch, point)
    with pytest.raises(registry.RegistryError) as info:
        registry.available_controllers()
    message = str(info.value)
    assert "'aer' is registered twice" in message
    assert "entropyctl.controllers.aer.AERController" in message
    assert f"{plugin_module}:AerImpostor" in message


def test_two_plugins_with_one_name_name_both(
    isolated_registry: None, monkeypatch: pytest.MonkeyPatch, plugin_module: str
) -> None:
    first = metadata.EntryPoint("mine", f"{plugin_module}:MineController", registry.ENTRY_POINT_GROUP)
    second = metadata.EntryPoint("mine", "other_package.module:Mine", registry.ENTRY_POINT_GROUP)
    fake_entry_points(monkeypatch, first, second)
    with pytest.raises(
        registry.RegistryError, match=f"by {plugin_module}:MineController .* and by other_package"
    ):
        registry.available_controllers()


def test_broken_plugin_is_named(isolated_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    point = metadata.EntryPoint("broken", "no_such_module_xyz:Thing", registry.ENTRY_POINT_GROUP)
    fake_entry_points(monkeypatch, point)
    with pytest.raises(
        registry.RegistryError, match="cannot load controller plugin 'broken'.*no_such_module_xyz"
    ):
        registry.available_controllers()


def test_every_controller_subclasses_the_api() -> None:
    for name in registry.available_controllers():
        assert issubclass(registry.get_controller_class(name), EntropyController)
