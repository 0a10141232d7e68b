"""Base model for everything decoded from CNI JSON.

Go's encoding/json matches object keys to struct fields case-insensitively and
keeps unknown keys out of the struct; runtimes rely on the first, and the spec
requires plugins to pass unknown keys through. `CNIModel` does both: keys are
folded onto the declared aliases case-insensitively, and unknown keys are kept
as extras and written back unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


class CNIModel(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        strict=True,
        populate_by_name=True,
        alias_generator=to_camel,
        validate_assignment=False,
        defer_build=True,  # a cold plugin start builds only the validators its verb uses (~50 ms less CPU)
    )
    _key_map: ClassVar[dict[str, str] | None] = None

    @classmethod
    def _keys(cls) -> dict[str, str]:
        cached = cls.__dict__.get("_key_map_cache")
        if cached is None:
            cached = {}
            for name, field in cls.model_fields.items():
                alias = field.alias or name
                cached[alias.lower()] = alias
                cached[name.lower()] = alias
            for alias in list(cached.values()):
                cached[alias] = alias  # the exact spelling: found without lower()
            cls._key_map_cache = cached  # type: ignore[attr-defined]
        return cached

    @model_validator(mode="before")
    @classmethod
    def _fold_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        keys = cls._keys()
        for key in data:
            if keys.get(key) != key and (not isinstance(key, str) or keys.get(key.lower(), key) != key):
                break
        else:
            return data  # every key already spelled as declared (or unknown): nothing to fold
        out: dict[str, Any] = {}
        for key, value in data.items():
            canon = keys.get(key.lower(), key) if isinstance(key, str) else key
            if canon in out and key != canon:
                continue  # an exact-case key already won
            out[canon] = value
        return out

    def dump(self) -> dict[str, Any]:
        """JSON-ready dict with the wire names, unset optionals omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
