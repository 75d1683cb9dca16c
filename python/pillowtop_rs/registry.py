"""The pillow registry: ``settings.PILLOWTOPS`` in CommCare's shape.

``PILLOWTOPS`` maps a *section* to a list of *entries*. An entry is either

* a dotted path (legacy): the pillow's name is the last component and the object at that path
  is called with no arguments (CommCare's ``_get_pillow_instance``); or
* a dict ``{"name": ..., "class": ..., "instance": ..., "params": {...}}``: ``class`` is required
  (CommCare asserts it) and ``name`` defaults to it. With ``instance`` (a dotted path to a
  factory) the pillow is built by ``instance(name, **params)``, where ``params`` is a deep copy of
  the entry's ``params`` overlaid with the runtime options (``num_processes``, ``process_num``,
  ``processor_chunk_size``, ``dedicated_migration_process``, ``exclude_ucrs``), exactly as
  CommCare's ``PillowConfig.get_instance(**kwargs)`` does. Without ``instance`` the ``class`` is
  called with no arguments. ``class`` is imported only when asked for (``PillowConfig.get_class``),
  so entries that still name CommCare's ``pillowtop.pillow.interface.ConstructedPillow`` work.

``LOCAL_PILLOWTOPS`` is appended per section, as CommCare's ``settings.py`` does; because a
settings file copied from CommCare may already have merged it into ``PILLOWTOPS``, an entry that is
already present in its section is not appended twice.

Deliberate differences from CommCare (documented decisions):

* A malformed entry (not a string or a dict, a dict without ``class``, an unknown key, ``params``
  that is not a dict, a path without a dot) raises ``ConfigurationError`` naming the section and
  the entry's index, when the settings are read, not an ``AssertionError`` later.
* Two different entries with the same pillow name raise ``ConfigurationError`` (CommCare's older
  code took the first, newer memoised code the last: the name was ambiguous either way).
* A factory that cannot be imported, that does not accept the options given, or that returns
  something other than a :class:`pillowtop_rs.Pillow` raises ``ConfigurationError`` naming the
  pillow, before anything runs.
* A ``class`` that cannot be imported raises ``ConfigurationError`` when the pillow is built, also
  when an ``instance`` factory builds it (CommCare never imports it then), except CommCare's own
  ``pillowtop.pillow.interface.ConstructedPillow``.
* An unknown name raises ``PillowNotFoundError`` listing the known names (as newer CommCare does).

This module does not import Django at module level: the functions read ``django.conf.settings``
only when no explicit mapping is passed.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pillowtop_rs.exceptions import ConfigurationError, PillowNotFoundError

if TYPE_CHECKING:
    from pillowtop_rs import Pillow

#: The runtime options ``run_ptop`` passes to a pillow factory (CommCare's names).
RUNTIME_OPTIONS = (
    "num_processes",
    "process_num",
    "processor_chunk_size",
    "dedicated_migration_process",
    "exclude_ucrs",
)

_ENTRY_KEYS = frozenset({"name", "class", "instance", "params"})

Settings = Mapping[str, Iterable[Any]]


@dataclass(frozen=True)
class PillowConfig:
    """One entry of ``PILLOWTOPS`` (CommCare's ``PillowConfig`` namedtuple, same field names)."""

    section: str
    name: str
    class_name: str
    instance_generator: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Position of the entry in its section (for error messages).
    index: int = 0

    def describe(self) -> str:
        """``section 'core' entry 3 (xform-pillow)``: how errors name this entry."""
        return f"PILLOWTOPS section {self.section!r} entry {self.index} ({self.name})"

    def get_class(self) -> Any:
        """Import the entry's ``class``."""
        return _import(self.class_name, f"{self.describe()}: class")

    def get_instance(self, **kwargs: Any) -> Any:
        """Build the pillow: ``instance(name, **params, **kwargs)``, or ``class()``.

        Returns whatever the factory returns (CommCare's contract); ``get_pillow_by_name`` checks
        that it is a :class:`pillowtop_rs.Pillow`.
        """
        if self.instance_generator:
            factory = _import(self.instance_generator, f"{self.describe()}: instance")
            params = copy.deepcopy(dict(self.params))
            params.update(kwargs)
            _check_call(factory, (self.name,), params, self.describe())
            return factory(self.name, **params)
        cls = self.get_class()
        _check_call(cls, (), {}, self.describe())
        return cls()


def _import(path: str, what: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ConfigurationError(f"{what} {path!r} is not a dotted path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(f"{what} {path!r} cannot be imported: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ConfigurationError(
            f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}"
        ) from e


def _check_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> None:
    if not callable(fn):
        raise ConfigurationError(f"{what}: {fn!r} is not callable")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigurationError(
            f"{what}: {getattr(fn, '__qualname__', fn)!r} cannot be called with "
            f"{len(args)} positional argument(s) and options {sorted(kwargs)}: {e}"
        ) from e


def get_pillow_config_from_setting(section: str, entry: Any, index: int = 0) -> PillowConfig:
    """Parse one entry (CommCare's function of the same name), validating its shape."""
    where = f"PILLOWTOPS section {section!r} entry {index}"
    if isinstance(entry, str):
        if "." not in entry.strip(".") or entry != entry.strip():
            raise ConfigurationError(f"{where}: {entry!r} is not a dotted path to a pillow")
        return PillowConfig(section, entry.rsplit(".", 1)[1], entry, None, {}, index)
    if not isinstance(entry, Mapping):
        raise ConfigurationError(
            f"{where}: expected a dotted path or a dict with name/class/instance/params, "
            f"got {type(entry).__name__} {entry!r}"
        )
    unknown = sorted(str(k) for k in entry if k not in _ENTRY_KEYS)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {unknown} (allowed: class, instance, name, params)"
        )
    if "class" not in entry:
        raise ConfigurationError(f"{where}: the dict has no 'class' ({dict(entry)!r})")
    class_name = entry["class"]
    if not isinstance(class_name, str) or "." not in class_name:
        raise ConfigurationError(f"{where}: 'class' must be a dotted path, got {class_name!r}")
    name = entry.get("name", class_name)
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    instance = entry.get("instance")
    if instance is not None and (not isinstance(instance, str) or "." not in instance):
        raise ConfigurationError(
            f"{where} ({name}): 'instance' must be a dotted path, got {instance!r}"
        )
    params = entry.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise ConfigurationError(
            f"{where} ({name}): 'params' must be a dict with string keys, got {params!r}"
        )
    return PillowConfig(section, name, class_name, instance or None, dict(params), index)


def merge_local_pillowtops(pillowtops: Settings, local: Settings | None) -> dict[str, list[Any]]:
    """Return ``PILLOWTOPS`` with ``LOCAL_PILLOWTOPS`` appended (entries already there skipped)."""
    if not isinstance(pillowtops, Mapping):
        raise ConfigurationError(
            f"PILLOWTOPS must be a dict of section -> list of pillows, got "
            f"{type(pillowtops).__name__}"
        )
    merged: dict[str, list[Any]] = {}
    for source, mapping in (("PILLOWTOPS", pillowtops), ("LOCAL_PILLOWTOPS", local or {})):
        if not isinstance(mapping, Mapping):
            raise ConfigurationError(
                f"{source} must be a dict of section -> list of pillows, got "
                f"{type(mapping).__name__}"
            )
        for section, entries in mapping.items():
            if not isinstance(section, str):
                raise ConfigurationError(f"{source}: section {section!r} is not a string")
            if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Iterable):
                raise ConfigurationError(
                    f"{source} section {section!r} must be a list of pillows, got "
                    f"{type(entries).__name__} {entries!r}"
                )
            target = merged.setdefault(section, [])
            for entry in entries:
                if source == "LOCAL_PILLOWTOPS" and entry in target:
                    continue
                target.append(entry)
    return merged


def _settings() -> tuple[Settings, Settings | None]:
    from django.conf import settings

    return getattr(settings, "PILLOWTOPS", {}), getattr(settings, "LOCAL_PILLOWTOPS", None)


def get_all_pillow_configs(
    pillowtops: Settings | None = None, local_pillowtops: Settings | None = None
) -> list[PillowConfig]:
    """Every configured pillow, in settings order; validates the whole setting.

    Reads ``settings.PILLOWTOPS`` and ``settings.LOCAL_PILLOWTOPS`` unless ``pillowtops`` is given.
    """
    if pillowtops is None:
        pillowtops, local_pillowtops = _settings()
    configs: list[PillowConfig] = []
    seen: dict[str, PillowConfig] = {}
    for section, entries in merge_local_pillowtops(pillowtops, local_pillowtops).items():
        for index, entry in enumerate(entries):
            config = get_pillow_config_from_setting(section, entry, index)
            previous = seen.get(config.name)
            if previous is not None:
                if (previous.class_name, previous.instance_generator, previous.params) == (
                    config.class_name,
                    config.instance_generator,
                    config.params,
                ):
                    continue
                raise ConfigurationError(
                    f"pillow name {config.name!r} is configured twice: "
                    f"{previous.describe()} and {config.describe()}"
                )
            seen[config.name] = config
            configs.append(config)
    return configs


def get_pillow_configs_by_section(
    pillowtops: Settings | None = None, local_pillowtops: Settings | None = None
) -> dict[str, list[PillowConfig]]:
    """Return the configured pillows grouped by section (``run_ptop --pillow-key``)."""
    sections: dict[str, list[PillowConfig]] = {}
    for config in get_all_pillow_configs(pillowtops, local_pillowtops):
        sections.setdefault(config.section, []).append(config)
    return sections


def get_pillow_config_by_name(
    name: str, pillowtops: Settings | None = None, local_pillowtops: Settings | None = None
) -> PillowConfig:
    """Return the entry named ``name``; else ``PillowNotFoundError`` listing the known names."""
    configs = get_all_pillow_configs(pillowtops, local_pillowtops)
    for config in configs:
        if config.name == name:
            return config
    known = "\n\t".join(c.name for c in configs) or "(none: PILLOWTOPS is empty)"
    raise PillowNotFoundError(
        f"No pillow found with name {name}. These are the names found:\n\t{known}"
    )


#: CommCare's generic pillow class: its entries name it while their factory builds the pillow, so
#: a settings file copied from CommCare keeps working without CommCare's package installed.
COMMCARE_PILLOW_CLASSES = frozenset({"pillowtop.pillow.interface.ConstructedPillow"})


def build_pillow(config: PillowConfig, **options: Any) -> Pillow:
    """Build the pillow of ``config`` with the runtime ``options``; check it is a ``Pillow``.

    The entry's ``class`` must exist too (a typo there is a mistake), except CommCare's
    ``ConstructedPillow`` (see ``COMMCARE_PILLOW_CLASSES``).
    """
    from pillowtop_rs import Pillow

    if config.instance_generator and config.class_name not in COMMCARE_PILLOW_CLASSES:
        config.get_class()

    pillow = config.get_instance(**options)
    if not isinstance(pillow, Pillow):
        raise ConfigurationError(
            f"{config.describe()}: {config.instance_generator or config.class_name} returned "
            f"{type(pillow).__module__}.{type(pillow).__qualname__}, not a pillowtop_rs.Pillow"
        )
    return pillow


def get_pillow_by_name(name: str, **options: Any) -> Pillow:
    """Build the pillow named ``name`` (CommCare's ``get_pillow_by_name(name, **kwargs)``).

    ``options`` are the runtime options (see ``RUNTIME_OPTIONS``) and override the entry's
    ``params``. Building a pillow has no side effects: no connection, no checkpoint row.
    """
    return build_pillow(get_pillow_config_by_name(name), **options)


__all__ = [
    "RUNTIME_OPTIONS",
    "COMMCARE_PILLOW_CLASSES",
    "PillowConfig",
    "build_pillow",
    "get_all_pillow_configs",
    "get_pillow_by_name",
    "get_pillow_config_by_name",
    "get_pillow_config_from_setting",
    "get_pillow_configs_by_section",
    "merge_local_pillowtops",
]
