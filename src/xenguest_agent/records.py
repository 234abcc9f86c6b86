"""Records (the agent's dataclasses) without importing ``dataclasses`` at run time.

Why: the facts, settings and results are dataclasses, but the ``dataclasses`` module
imports ``inspect`` (and with it ``ast``, ``dis`` and ``tokenize``), and creating each
class compiles its generated methods with ``exec``.  For a daemon that idles for its
whole life that is a large share of its memory and most of its own start-up
(docs/performance.md has the figures).

The type checker sees the standard library's ``dataclass``, ``field``, ``fields`` and
``replace`` (the ``TYPE_CHECKING`` branch), so every class keeps the dataclass contract
statically.  At run time this module gives the part of that contract the agent uses,
with the semantics of the Python documentation of ``dataclasses``: an ``__init__`` taking
the fields in order with their defaults and default factories, ``__repr__``, ``__eq__``
between instances of the same class, ``__hash__`` from the fields when frozen (and none
when ``eq`` without ``frozen``), ``FrozenInstanceError`` (an ``AttributeError``) on
assignment to a frozen instance, ``__match_args__``, ``replace()`` and ``fields()``;
what the class body defines itself is kept, and an unhashable default is refused.
``tests/test_records.py`` holds each record class of the package against the standard
``dataclasses`` built from the same class body.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError, dataclass, field, fields, replace
else:
    _MISSING = type("_Missing", (), {"__repr__": lambda self: "MISSING"})()

    class FrozenInstanceError(AttributeError):
        """Assignment to a field of a frozen record (as ``dataclasses.FrozenInstanceError``)."""

    class Field:
        __slots__ = ("name", "type", "default", "default_factory")

        def __init__(self, default=_MISSING, default_factory=_MISSING):
            if default is not _MISSING and default_factory is not _MISSING:
                raise ValueError("cannot specify both default and default_factory")
            self.name = None
            self.type = None
            self.default = default
            self.default_factory = default_factory

        def __repr__(self):
            return f"Field(name={self.name!r}, type={self.type!r}, default={self.default!r})"

    def field(*, default=_MISSING, default_factory=_MISSING):
        return Field(default, default_factory)

    def fields(class_or_instance):
        try:
            return class_or_instance.__record_fields__
        except AttributeError:
            raise TypeError("must be called with a record type or instance") from None

    def replace(obj, /, **changes):
        values = {f.name: getattr(obj, f.name) for f in fields(obj)}
        values.update(changes)
        return type(obj)(**values)

    def _is_classvar(annotation):
        text = annotation if isinstance(annotation, str) else repr(annotation)
        return text.startswith(("ClassVar", "typing.ClassVar"))

    def _collect(cls):
        own = []
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            if _is_classvar(annotation):
                continue
            value = cls.__dict__.get(name, _MISSING)
            spec = value if isinstance(value, Field) else Field(value)
            spec.name, spec.type = name, annotation
            if isinstance(value, Field):  # the class attribute is the default, as dataclasses
                if spec.default is _MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, spec.default)
            # unhashable stands for mutable, plain or through field() (3.11 semantics)
            if spec.default is not _MISSING and type(spec.default).__hash__ is None:
                raise ValueError(f"mutable default {type(spec.default)} for field {name} "
                                 "is not allowed: use default_factory")
            own.append(spec)
        inherited = {}
        for base in reversed(cls.__mro__[1:]):
            for spec in base.__dict__.get("__record_fields__", ()):
                inherited[spec.name] = spec
        for spec in own:
            inherited[spec.name] = spec
        specs = tuple(inherited.values())
        seen_default = False
        for spec in specs:
            has_default = spec.default is not _MISSING or spec.default_factory is not _MISSING
            if seen_default and not has_default:
                raise TypeError(f"non-default argument {spec.name!r} follows default argument")
            seen_default = seen_default or has_default
        return specs

    def _make_init(cls, specs, frozen):
        names = tuple(spec.name for spec in specs)
        position = {name: index for index, name in enumerate(names)}
        store = object.__setattr__ if frozen else setattr
        post_init = getattr(cls, "__post_init__", None) is not None

        def __init__(self, *args, **kwargs):
            if len(args) > len(names):
                raise TypeError(f"{cls.__qualname__}.__init__() takes {len(names) + 1} "
                                f"positional arguments but {len(args) + 1} were given")
            values = list(args) + [_MISSING] * (len(names) - len(args))
            for name, value in kwargs.items():
                index = position.get(name)
                if index is None:
                    raise TypeError(f"{cls.__qualname__}.__init__() got an unexpected "
                                    f"keyword argument {name!r}")
                if index < len(args):
                    raise TypeError(f"{cls.__qualname__}.__init__() got multiple values "
                                    f"for argument {name!r}")
                values[index] = value
            missing = []
            for index, spec in enumerate(specs):
                value = values[index]
                if value is _MISSING:
                    if spec.default is not _MISSING:
                        value = spec.default
                    elif spec.default_factory is not _MISSING:
                        value = spec.default_factory()
                    else:
                        missing.append(spec.name)
                        continue
                store(self, spec.name, value)
            if missing:
                raise TypeError(f"{cls.__qualname__}.__init__() missing {len(missing)} "
                                f"required argument(s): {', '.join(map(repr, missing))}")
            if post_init:
                self.__post_init__()

        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        return __init__

    def _values(self):
        return tuple(getattr(self, spec.name) for spec in self.__record_fields__)

    def _repr(self):
        inner = ", ".join(f"{spec.name}={getattr(self, spec.name)!r}"
                          for spec in self.__record_fields__)
        return f"{type(self).__qualname__}({inner})"

    def _eq(self, other):
        if other.__class__ is self.__class__:
            return _values(self) == _values(other)
        return NotImplemented

    def _hash(self):
        return hash(_values(self))

    def _frozen_guard(cls, names):
        def __setattr__(self, name, value):
            if type(self) is cls or name in names:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")
            super(cls, self).__setattr__(name, value)

        def __delattr__(self, name):
            if type(self) is cls or name in names:
                raise FrozenInstanceError(f"cannot delete field {name!r}")
            super(cls, self).__delattr__(name)

        return __setattr__, __delattr__

    def _process(cls, frozen, eq):
        specs = _collect(cls)
        cls.__record_fields__ = specs
        # what the class body defines is kept (__init__, __repr__, __eq__, __match_args__)
        if "__init__" not in cls.__dict__:
            cls.__init__ = _make_init(cls, specs, frozen)
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = _repr
        if "__match_args__" not in cls.__dict__:
            cls.__match_args__ = tuple(spec.name for spec in specs)
        if eq and "__eq__" not in cls.__dict__:
            cls.__eq__ = _eq
        if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
            if eq and frozen:
                cls.__hash__ = _hash
            elif eq:
                cls.__hash__ = None
        if frozen:
            for name in ("__setattr__", "__delattr__"):
                if name in cls.__dict__:
                    raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}")
            names = frozenset(spec.name for spec in specs)
            cls.__setattr__, cls.__delattr__ = _frozen_guard(cls, names)
        return cls

    def dataclass(cls=None, /, *, frozen=False, eq=True):
        def wrap(cls):
            return _process(cls, frozen, eq)
        return wrap if cls is None else wrap(cls)


__all__ = ["FrozenInstanceError", "dataclass", "field", "fields", "replace"]
