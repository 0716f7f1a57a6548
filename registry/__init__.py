"""The registry: tenants, API keys, immutable adapter and model versions and aliases on S3.

Synchronous (boto3); the async gateway calls it from threads. Imports nothing of loraplex but `common`,
and, lazily, torch (adapter health at upload) and transformers (the no-op probe).
"""

from __future__ import annotations

from registry.adapter_registry import AdapterInfo, AdapterRegistry
from registry.base_spec import BaseModelSpec
from registry.cache import ArtifactCache
from registry.manifest import Manifest
from registry.model_registry import ModelManifest, ModelRegistry
from registry.settings import RegistrySettings
from registry.store import ObjectStore
from registry.tenants import Tenant, TenantRegistry
from registry.validation import AdapterValidator

__all__ = ["ArtifactCache", "AdapterInfo", "AdapterRegistry", "AdapterValidator", "BaseModelSpec", "Manifest",
           "ModelManifest", "ModelRegistry", "ObjectStore", "RegistrySettings", "Tenant", "TenantRegistry"]
