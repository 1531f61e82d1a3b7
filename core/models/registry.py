"""The architecture registry: HF `architectures` name -> its family description.

A family is a class in core/models/families/, registered with @register; it inherits from
its nearest neighbour and overrides only what differs. Everything else (the forward in
layers/, quantize's calibration, GGUF names, counts) reads the ModelSpec a family builds
and the few names it declares.
"""

from ..errors import ModelError

_BY_ARCH: dict[str, type] = {}
_BY_NAME: dict[str, type] = {}


def register(cls):
    """Class decorator: the family answers for each name in cls.architectures."""
    _BY_NAME[cls.name] = cls
    for arch in cls.architectures:
        _BY_ARCH[arch] = cls
    return cls


def _load_all() -> None:
    from . import families  # noqa: F401  (importing registers every family)


def family(name: str):
    _load_all()
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ModelError(f"unknown model family '{name}'") from None


def families() -> list:
    _load_all()
    return list(_BY_NAME.values())


def supported_architectures() -> list[str]:
    _load_all()
    return sorted(_BY_ARCH)


def family_for_config(config: dict):
    _load_all()
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in _BY_ARCH:
            return _BY_ARCH[arch]
    model_type = config.get("model_type", "")
    for cls in _BY_NAME.values():
        if cls.model_type == model_type:
            return cls
    got = ", ".join(archs) or model_type or "unknown"
    raise ModelError(f"unsupported architecture '{got}': supported are {', '.join(supported_architectures())}")
