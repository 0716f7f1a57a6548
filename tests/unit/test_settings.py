"""Each LORAPLEX_* variable is declared by exactly one settings class; upper layers extend the lower ones."""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "registry", "serving", "training", "loadtest", "loraplex")


def _settings_modules() -> list[str]:
    """Modules of the product that define a class whose base's name ends in `Settings` (BaseSettings or one
    of ours), found in the source so that a new settings class is checked without being listed here."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            bases = (b for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for b in node.bases)
            if any((getattr(b, "id", None) or getattr(b, "attr", "")).endswith("Settings") for b in bases):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def _settings_classes() -> list[type[BaseSettings]]:
    for module in _settings_modules():
        importlib.import_module(module)
    out, todo = [], list(BaseSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] in PACKAGES:
            out.append(cls)
    return out


def _declared_env(cls: type[BaseSettings]) -> list[str]:
    """The environment variables of the fields `cls` itself declares (not those it inherits)."""
    prefix = cls.model_config.get("env_prefix", "")
    names = []
    for name in cls.__dict__.get("__annotations__", {}):
        field = cls.model_fields.get(name)
        if field is None:  # a ClassVar or private attribute
            continue
        alias = field.validation_alias
        if isinstance(alias, str):
            names.append(alias)
        elif isinstance(alias, AliasChoices):
            names.extend(a for a in alias.choices if isinstance(a, str))
        else:
            names.append(prefix + name)
    return [n.upper() for n in names]


def test_the_known_settings_classes_are_found():
    names = {c.__name__ for c in _settings_classes()}
    assert {"RegistrySettings", "ServingSettings", "RaySettings", "StackSettings", "VllmPluginSettings"} <= names


def test_each_loraplex_variable_is_declared_once():
    declared = Counter()
    where: dict[str, list[str]] = {}
    for cls in _settings_classes():
        for env in _declared_env(cls):
            declared[env] += 1
            where.setdefault(env, []).append(f"{cls.__module__}.{cls.__qualname__}")
    twice = {env: where[env] for env, n in declared.items() if n > 1 and env.startswith("LORAPLEX_")}
    assert not twice, f"declared by more than one settings class (extend the lower layer's class instead): {twice}"


def test_upper_layers_read_the_lower_layers_variables(monkeypatch):
    from loraplex.settings import StackSettings
    from registry.settings import RegistrySettings
    from serving.settings import ServingSettings

    monkeypatch.setenv("LORAPLEX_BASE_MODEL", "/models/base")
    monkeypatch.setenv("LORAPLEX_MAX_LORA_RANK", "32")
    monkeypatch.setenv("LORAPLEX_S3_BUCKET", "shared-bucket")
    monkeypatch.setenv("LORAPLEX_GATEWAY_PORT", "9001")
    for cls in (RegistrySettings, ServingSettings, StackSettings):
        s = cls()
        assert (s.base_model, s.max_lora_rank, s.s3_bucket) == (Path("/models/base"), 32, "shared-bucket")
    assert ServingSettings().gateway_port == StackSettings().gateway_port == 9001


def test_defaults_are_unchanged(monkeypatch):
    """The variables are public (docs/, CONTRACT.md): the layering must not move a default."""
    from loraplex.settings import StackSettings

    for name in ("BASE_MODEL", "MAX_LORA_RANK", "MAX_UPLOAD_BYTES", "GATEWAY_PORT", "S3_BUCKET"):
        monkeypatch.delenv(f"LORAPLEX_{name}", raising=False)
    s = StackSettings()
    assert (s.base_model, s.max_lora_rank, s.max_upload_bytes, s.gateway_port, s.s3_bucket) == (
        None, 16, 256 * 2**20, 8000, "loraplex")
