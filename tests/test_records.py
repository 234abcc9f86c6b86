"""records.py (the agent's dataclasses without ``import dataclasses``) against the standard library.

Two kinds of evidence, both independent of records.py itself:

* every record class of the package is held against its *twin*: the same module source executed
  a second time with ``xenguest_agent.records`` replaced by the standard ``dataclasses``, so the
  twin has exactly the same annotations, defaults, default factories, decorator flags and
  methods, built by the reference implementation;
* the semantics the Python documentation states for ``dataclasses``
  (https://docs.python.org/3.11/library/dataclasses.html, the section cited at each test), each
  test run once on records.py and once on the standard module, so an expectation that the
  reference does not meet cannot pass as one records.py meets.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import pkgutil
import sys
import types
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Tuple

import pytest

import xenguest_agent
from xenguest_agent import records

PACKAGE = Path(xenguest_agent.__file__).resolve().parent
#: ``python -m xenguest_agent`` runs the CLI when imported; it defines no record
NOT_IMPORTED = {"xenguest_agent.__main__"}


def module_names() -> List[str]:
    names = [info.name for info in pkgutil.walk_packages(xenguest_agent.__path__, "xenguest_agent.")]
    return sorted(set(names) - NOT_IMPORTED)


def record_classes(namespace: object, module: str) -> Iterator[type]:
    """Classes defined in ``module`` (nested ones too) that records.dataclass processed."""
    for value in vars(namespace).values():
        if isinstance(value, type) and value.__module__ == module:
            if "__record_fields__" in value.__dict__:
                yield value
            if value is not namespace:
                yield from record_classes(value, module)


def discovered() -> Dict[str, type]:
    found: Dict[str, type] = {}
    for name in module_names():
        module = importlib.import_module(name)
        for cls in record_classes(module, name):
            found[f"{name}:{cls.__qualname__}"] = cls
    return found


RECORDS = discovered()


def decorated_in_source() -> Dict[str, Tuple[bool, bool]]:
    """Every class the package's source decorates with ``dataclass``, with the (frozen, eq)
    flags written in the decorator (the dataclass defaults, frozen=False and eq=True, when
    absent): read with ast, independently of importing anything."""
    found: Dict[str, Tuple[bool, bool]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        if module in NOT_IMPORTED or path.name == "records.py":
            continue

        def visit(body: List[ast.stmt], prefix: str, module: str) -> None:
            for node in body:
                if not isinstance(node, ast.ClassDef):
                    continue
                qualname = f"{prefix}{node.name}"
                for decorator in node.decorator_list:
                    call = decorator if isinstance(decorator, ast.Call) else None
                    target = call.func if call is not None else decorator
                    if isinstance(target, ast.Name) and target.id == "dataclass" or \
                            isinstance(target, ast.Attribute) and target.attr == "dataclass":
                        flags = {"frozen": False, "eq": True}
                        for keyword in call.keywords if call is not None else ():
                            assert isinstance(keyword.value, ast.Constant), ast.dump(keyword)
                            flags[str(keyword.arg)] = keyword.value.value
                        found[f"{module}:{qualname}"] = (flags["frozen"], flags["eq"])
                visit(node.body, f"{qualname}.", module)

        visit(ast.parse(path.read_text(), str(path)).body, "", module)
    return found


# --- the twins: the same source under the standard dataclasses --------------------------------

STANDARD = types.ModuleType("standard_records")
for _name in ("FrozenInstanceError", "dataclass", "field", "fields", "replace"):
    setattr(STANDARD, _name, getattr(dataclasses, _name))
_TWINS: Dict[str, types.ModuleType] = {}


def twin_module(name: str) -> types.ModuleType:
    """``name``'s source executed again, with ``xenguest_agent.records`` being the standard
    module while it runs (``from xenguest_agent.records import dataclass`` and
    ``from xenguest_agent import records`` both see it); other imports are the real modules."""
    if name in _TWINS:
        return _TWINS[name]
    real = sys.modules[name]
    spec = importlib.util.spec_from_file_location(f"standard_twin.{name}", real.__file__)
    assert spec is not None and spec.loader is not None
    twin = importlib.util.module_from_spec(spec)
    # dataclasses resolves string annotations (ClassVar) in sys.modules[cls.__module__]
    sys.modules[spec.name] = twin
    saved_module, saved_attribute = sys.modules["xenguest_agent.records"], xenguest_agent.records
    sys.modules["xenguest_agent.records"] = STANDARD
    xenguest_agent.records = STANDARD  # type: ignore[attr-defined]
    try:
        spec.loader.exec_module(twin)
    finally:
        sys.modules["xenguest_agent.records"] = saved_module
        xenguest_agent.records = saved_attribute  # type: ignore[attr-defined]
    _TWINS[name] = twin
    return twin


def twin_of(key: str) -> type:
    module, qualname = key.split(":")
    value: Any = twin_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    assert dataclasses.is_dataclass(value), key
    return value  # type: ignore[no-any-return]


def without_name(text: str, cls: type) -> str:
    assert text.startswith(cls.__qualname__ + "("), text
    return text[len(cls.__qualname__):]


def sample(cls: type, tag: str = "") -> Dict[str, str]:
    """A distinct hashable value per field (nothing in a record's __init__ checks types)."""
    return {f.name: f"{f.name}-value{tag}" for f in dataclasses.fields(cls)}


def required(cls: type) -> Dict[str, str]:
    return {f.name: f"{f.name}-value" for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def raises(exception: type, call: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        call(*args, **kwargs)
    except exception:
        return True
    return False


# --- (a) every record class of the package against its twin ---------------------------------

def test_every_decorated_class_is_found_with_the_flags_written_in_its_source() -> None:
    """The walk finds every class the source decorates (so the comparison below is over all of
    them), and the twin built from that source has the decorator's flags."""
    written = decorated_in_source()
    assert len(written) >= 40  # the package's records (facts, config, xapi, ...): not vacuous
    assert sorted(RECORDS) == sorted(written)
    for key, (frozen, eq) in written.items():
        params = twin_of(key).__dataclass_params__  # type: ignore[attr-defined]
        assert (params.frozen, params.eq) == (frozen, eq), key


@pytest.fixture(params=sorted(RECORDS))
def pair(request: pytest.FixtureRequest) -> Tuple[type, type]:
    return RECORDS[request.param], twin_of(request.param)


def test_fields_names_order_types_and_defaults(pair: Tuple[type, type]) -> None:
    real, twin = pair
    ours, theirs = records.fields(real), dataclasses.fields(twin)
    assert [f.name for f in ours] == [f.name for f in theirs]
    assert [f.type for f in ours] == [f.type for f in theirs]
    assert real.__match_args__ == twin.__match_args__  # type: ignore[attr-defined]
    for mine, standard in zip(ours, theirs):
        assert (repr(mine.default) == "MISSING") == (standard.default is dataclasses.MISSING)
        if standard.default is not dataclasses.MISSING:
            assert repr(mine.default) == repr(standard.default), mine.name
        has_factory = standard.default_factory is not dataclasses.MISSING
        assert callable(mine.default_factory) == has_factory, mine.name
        if has_factory:
            assert repr(mine.default_factory()) == repr(standard.default_factory()), mine.name
        # docs, field(): the class attribute is the default, or deleted when there is none
        assert (mine.name in real.__dict__) == (standard.name in twin.__dict__), mine.name
        if standard.name in twin.__dict__:
            assert repr(real.__dict__[mine.name]) == repr(twin.__dict__[standard.name])


def test_construction_repr_eq_and_hash(pair: Tuple[type, type]) -> None:
    real, twin = pair
    values, other = sample(twin), sample(twin, "-other")
    made = {}
    for cls in (real, twin):
        positional, keyword = cls(*values.values()), cls(**values)
        defaults = cls(**required(twin))
        made[cls] = (positional, keyword, defaults, cls(**other))
    for index in range(3):
        assert without_name(repr(made[real][index]), real) == \
            without_name(repr(made[twin][index]), twin)
    params = twin.__dataclass_params__  # type: ignore[attr-defined]
    for cls in (real, twin):
        positional, keyword, _, different = made[cls]
        if params.eq:
            assert positional == keyword
            assert positional != different
        # hashable in both or in neither; equal records hash equally
        assert (cls.__hash__ is None) == (twin.__hash__ is None), cls
        if cls.__hash__ is not None and params.eq:
            assert hash(positional) == hash(keyword)
    if params.eq:  # docs, eq: "Both instances in the comparison must be of the identical type"
        assert made[real][0].__eq__(made[twin][0]) is NotImplemented
        assert made[twin][0].__eq__(made[real][0]) is NotImplemented


def test_frozen_assignment_and_deletion(pair: Tuple[type, type]) -> None:
    real, twin = pair
    frozen = twin.__dataclass_params__.frozen  # type: ignore[attr-defined]
    name = dataclasses.fields(twin)[0].name
    for cls in (real, twin):
        instance = cls(**sample(twin))
        if frozen:
            assert raises(AttributeError, setattr, instance, name, "new"), cls
            assert raises(AttributeError, delattr, instance, name), cls
            assert raises(AttributeError, setattr, instance, "not_a_field", 1), cls
            assert getattr(instance, name) == f"{name}-value"
        else:
            setattr(instance, name, "new")
            assert getattr(instance, name) == "new"
    if frozen:
        with pytest.raises(records.FrozenInstanceError):
            setattr(real(**sample(twin)), name, "new")


def test_replace_agrees(pair: Tuple[type, type]) -> None:
    real, twin = pair
    name = dataclasses.fields(twin)[-1].name
    original_real, original_twin = real(**sample(twin)), twin(**sample(twin))
    changed_real = records.replace(original_real, **{name: "changed"})
    changed_twin = dataclasses.replace(original_twin, **{name: "changed"})
    assert type(changed_real) is real
    assert without_name(repr(changed_real), real) == without_name(repr(changed_twin), twin)
    assert without_name(repr(original_real), real) == without_name(repr(original_twin), twin)
    assert raises(TypeError, records.replace, original_real, no_such_field=1)
    assert raises(TypeError, dataclasses.replace, original_twin, no_such_field=1)


def test_missing_and_extra_arguments(pair: Tuple[type, type]) -> None:
    real, twin = pair
    values = sample(twin)
    first = next(iter(values))
    needs_some = bool(required(twin))
    for cls in (real, twin):
        assert raises(TypeError, cls) == needs_some, cls
        assert raises(TypeError, cls, *values.values(), "one too many"), cls
        assert raises(TypeError, cls, **values, no_such_field=1), cls
        assert raises(TypeError, cls, values[first], **values), cls  # the first one twice
        if needs_some:
            partial = dict(required(twin))
            partial.pop(next(iter(partial)))
            assert raises(TypeError, cls, **partial), cls


# --- (b) the documented semantics, on records.py and on the reference --------------------------

@pytest.fixture(params=["records", "dataclasses"])
def impl(request: pytest.FixtureRequest) -> Any:
    return records if request.param == "records" else dataclasses


def test_default_factory_is_called_for_each_instance(impl: Any) -> None:
    """docs "Default factory functions": called when no value is given for the field."""
    calls: List[int] = []

    def factory() -> List[int]:
        calls.append(1)
        return []

    @impl.dataclass
    class C:
        items: List[int] = impl.field(default_factory=factory)

    a, b = C(), C()
    assert a.items == [] and a.items is not b.items
    assert len(calls) == 2
    given = [1]
    assert C(given).items is given and len(calls) == 2


class Unhashable:
    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("value", [[], {}, set(), bytearray(), Unhashable()],
                         ids=["list", "dict", "set", "bytearray", "unhashable-object"])
def test_unhashable_defaults_are_refused(impl: Any, value: object) -> None:
    """docs "Mutable default values": ValueError for an unhashable default ("Changed in
    version 3.11: Instead of looking for and disallowing objects of type list, dict, or set,
    unhashable objects are now not allowed as default values"), given plainly or as field()'s
    default."""
    with pytest.raises(ValueError):
        @impl.dataclass
        class Plain:
            x: object = value
    with pytest.raises(ValueError):
        @impl.dataclass
        class ThroughField:
            x: object = impl.field(default=value)


def test_default_and_default_factory_together_are_refused(impl: Any) -> None:
    """docs, field(): "It is an error to specify both default and default_factory"."""
    with pytest.raises(ValueError):
        impl.field(default=1, default_factory=int)


def test_non_default_after_default_is_refused(impl: Any) -> None:
    """docs, "Module contents" (``dataclass``): "TypeError will be raised if a field without a
    default value follows a field with a default value. This is true whether this occurs in a
    single class, or as a result of class inheritance"."""
    with pytest.raises(TypeError):
        @impl.dataclass
        class Single:
            x: int = 0
            y: int  # type: ignore[misc]

    @impl.dataclass
    class Base:
        x: int = 0

    with pytest.raises(TypeError):
        @impl.dataclass
        class Derived(Base):
            y: int


def test_eq_compares_as_tuples_of_the_same_class_only(impl: Any) -> None:
    """docs, ``eq``: compares "as if it were a tuple of its fields, in order. Both instances in
    the comparison must be of the identical type"; otherwise NotImplemented (so Python falls
    back to identity)."""
    @impl.dataclass(frozen=True)
    class P:
        x: int
        y: int

    @impl.dataclass(frozen=True)
    class Q:
        x: int
        y: int

    class SubP(P):
        pass

    assert P(1, 2) == P(1, 2) and P(1, 2) != P(2, 1)
    assert P(1, 2).__eq__(Q(1, 2)) is NotImplemented
    assert P(1, 2).__eq__(SubP(1, 2)) is NotImplemented
    assert P(1, 2).__eq__((1, 2)) is NotImplemented
    assert P(1, 2) != Q(1, 2) and P(1, 2) != (1, 2)


def test_hash_follows_eq_and_frozen(impl: Any) -> None:
    """docs, ``unsafe_hash``: eq and frozen both true generate __hash__; "If eq is true and
    frozen is false, __hash__() will be set to None, marking it unhashable"; "If eq is false,
    __hash__() will be left untouched" (object's, by identity)."""
    @impl.dataclass
    class Mutable:
        x: int

    @impl.dataclass(frozen=True)
    class Frozen:
        x: int

    @impl.dataclass(eq=False)
    class Identity:
        x: int

    assert Mutable.__hash__ is None
    with pytest.raises(TypeError):
        hash(Mutable(1))
    assert hash(Frozen(1)) == hash(Frozen(1))
    assert len({Frozen(1), Frozen(1), Frozen(2)}) == 2
    a = Identity(1)
    assert Identity.__hash__ is object.__hash__ and hash(a) == object.__hash__(a)
    assert a != Identity(1)


def test_frozen_instances(impl: Any) -> None:
    """docs "Frozen instances" and FrozenInstanceError ("a subclass of AttributeError"):
    assignment and deletion raise; a class defining __setattr__ or __delattr__ is refused
    (``frozen``: "If __setattr__() or __delattr__() is defined in the class, then TypeError
    is raised")."""
    assert issubclass(impl.FrozenInstanceError, AttributeError)

    @impl.dataclass(frozen=True)
    class F:
        x: int

    f = F(1)
    with pytest.raises(impl.FrozenInstanceError):
        f.x = 2  # type: ignore[misc]
    with pytest.raises(impl.FrozenInstanceError):
        del f.x  # type: ignore[misc]
    assert f.x == 1
    for method in ("__setattr__", "__delattr__"):
        with pytest.raises(TypeError):
            impl.dataclass(frozen=True)(type("G", (), {
                "__annotations__": {"x": "int"}, method: lambda self, *args: None}))


def test_post_init_is_called_after_the_fields_are_set(impl: Any) -> None:
    """docs "Post-init processing": the generated __init__ calls __post_init__; replace() goes
    through __init__, so it is called there too (docs, replace())."""
    seen: List[Tuple[int, int]] = []

    @impl.dataclass(frozen=True)
    class C:
        x: int
        y: int = 5

        def __post_init__(self) -> None:
            seen.append((self.x, self.y))
            object.__setattr__(self, "total", self.x + self.y)

    c = C(1)
    assert seen == [(1, 5)] and c.total == 6  # type: ignore[attr-defined]
    impl.replace(c, y=7)
    assert seen == [(1, 5), (1, 7)]


def test_match_args(impl: Any) -> None:
    """docs, ``match_args``: __match_args__ is the tuple of __init__'s parameters; "If the
    class already defines __match_args__, then __match_args__ will not be generated"."""
    @impl.dataclass
    class C:
        x: int
        y: int = 0

    # what a class pattern ``case C(a, b)`` reads (the match statement needs Python 3.10)
    assert C.__match_args__ == ("x", "y")

    @impl.dataclass
    class Own:
        x: int
        y: int
        __match_args__ = ("y",)

    assert Own.__match_args__ == ("y",)


def test_methods_defined_in_the_class_are_kept(impl: Any) -> None:
    """docs, ``init``/``repr``/``eq``: "If the class already defines __init__() [__repr__(),
    __eq__()], this parameter is ignored"."""
    @impl.dataclass
    class C:
        x: int

        def __init__(self, text: str) -> None:
            self.x = int(text)

        def __repr__(self) -> str:
            return "mine"

        def __eq__(self, other: object) -> bool:
            return True

    c = C("12")
    assert c.x == 12 and repr(c) == "mine" and c == object()


def test_inheritance_order(impl: Any) -> None:
    """docs "Inheritance": fields in reverse MRO order, a redefined field keeping its original
    place with the derived type and default (the docs' Base/C example)."""
    @impl.dataclass
    class Base:
        x: Any = 15.0
        y: int = 0

    @impl.dataclass
    class C(Base):
        z: int = 10
        x: int = 15

    assert [f.name for f in impl.fields(C)] == ["x", "y", "z"]
    assert [f.type for f in impl.fields(C)] == ["int", "int", "int"]
    assert repr(C()) == "test_inheritance_order.<locals>.C(x=15, y=0, z=10)"


def test_class_variables_are_not_fields(impl: Any) -> None:
    """docs "Class variables": a ClassVar annotation is not a field."""
    @impl.dataclass
    class C:
        x: int
        limit: ClassVar[int] = 3

    assert [f.name for f in impl.fields(C)] == ["x"]
    assert C(1).limit == 3 and repr(C(1)).endswith("C(x=1)")


def test_field_class_attributes(impl: Any) -> None:
    """docs, field(): "the class attribute for this field will be replaced by the specified
    default value. If no default is provided, then the class attribute will be deleted"."""
    @impl.dataclass
    class C:
        a: int = impl.field(default=4)
        b: List[int] = impl.field(default_factory=list)

    assert C.__dict__["a"] == 4 and "b" not in C.__dict__


def test_fields_refuses_what_is_not_a_record(impl: Any) -> None:
    """docs, fields(): "Raises TypeError if not passed a dataclass or instance of one"."""
    with pytest.raises(TypeError):
        impl.fields(object())
    with pytest.raises(TypeError):
        impl.fields(int)


def test_replace_makes_a_new_object(impl: Any) -> None:
    """docs, replace(): "Creates a new object of the same type as obj, replacing fields with
    values from changes"."""
    @impl.dataclass(frozen=True)
    class C:
        x: int
        y: int = 2

    c = C(1)
    d = impl.replace(c, y=3)
    assert type(d) is C and (c.x, c.y, d.x, d.y) == (1, 2, 1, 3)


def test_repr_lists_every_field_in_order(impl: Any) -> None:
    """docs, ``repr``: "the name and repr of each field, in the order they are defined"."""
    @impl.dataclass
    class Item:
        name: str
        price: float
        count: int = 0

    assert repr(Item("widget", 3.0, 10)).endswith("Item(name='widget', price=3.0, count=10)")
