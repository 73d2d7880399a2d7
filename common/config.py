"""Job configs: frozen dataclasses that read old or newer saved forms without breaking."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound="JobConfig")


class ConfigWarning(UserWarning):
    """A saved config held fields this version does not know; they were ignored."""


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Base of every job's config: `to_dict` for saving, a tolerant `from_dict` for loading.

    A checkpoint or run folder outlives the code that wrote it: `from_dict` ignores fields it does not
    know (with a ConfigWarning naming them) and gives missing fields their defaults, so adding or
    renaming a field never makes older files unreadable.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], saved: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> C:
        """Build from a saved mapping; unknown keys (other than `ignore`) are dropped with a warning."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(k for k in saved if k not in known and k not in ignore)
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown saved field(s) {', '.join(unknown)}",
                          ConfigWarning, stacklevel=2)
        return cls(**{k: v for k, v in saved.items() if k in known})

    def replace(self: C, **changes) -> C:
        return dataclasses.replace(self, **changes)
