"""Personalised pushes: title, body and deeplink may use the user's custom attributes.

The template language is Jinja2 in its sandbox (docs/decisions/0009-personalisation.md):
`Hello {{ c.firstname | default("there") }}`. `c` holds the attributes of the installation's
custom user id (Custom Data API, without the `u.` prefix); `event`, in an automation's push, the
event that triggered it (`{{ event.attributes.sku }}`, `{{ event.label }}`: its name, label,
attributes and tags). A missing value renders as its default, or as nothing; a template error on
one user's values renders the defaults instead.

Templates come from API callers and are compiled and rendered in worker threads (validation
at the API, once per user at delivery) of a process whose event loop serves everyone, so a
render must be cheap whatever the template says.
Beyond the sandbox's own guards (no private attributes, no mutation of lists and dicts):
- no globals (no `range`, `lipsum`, `namespace`), no macros or call blocks (recursion);
- no value a template builds may exceed MAX_VALUE characters (or MAX_INT_BITS for integers),
  and the operations that take a width or a count are refused before they run when their
  result would be larger, so none allocates more than that;
- a render may iterate loops at most MAX_LOOP_ITERATIONS times in all, and may produce at
  most MAX_WORK characters across every filter, call, operator and printed value;
- the rendered text may not exceed MAX_OUTPUT characters.
Any of these raises TemplateLimitError: a 400 naming the field at the API, a failed push for
the recipient at delivery (never a retry: the same template fails the same way again). The
templates of one document also share MAX_DOCUMENT_TOKENS, which bounds compiling.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from functools import lru_cache, wraps
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from clarion.errors import MalformedParameterError

# The message fields that may be templates.
PERSONALISED_FIELDS = ("title", "body", "deeplink")
# A rendered field may be as long as a stored plain one (the body's schema limit); the whole
# payload of APNs, FCM and Web Push is 4 KiB anyway, so a longer text could never be sent.
MAX_OUTPUT = 4096
# Any string, list or dict a template builds: twice the output, so a text can be built and
# then cut (`| truncate`), while one operation on it stays in the microseconds.
MAX_VALUE = 2 * MAX_OUTPUT
# 4096-bit integers: far beyond any count or price, and their products stay cheap.
MAX_INT_BITS = 4096
# Loop iterations of one render, all loops together: a loop over a list attribute (Batch
# caps arrays at 25 items) or over a short text fits many times over; nested loops over
# long values do not.
MAX_LOOP_ITERATIONS = 1024
# Characters read and produced by every filter, call, operator, subscript and printed value of
# one render: 8x the output. The slowest filters measured (wordwrap, unique) read ~2.5 MB/s,
# so a render that spends it all takes ~13 ms; `Hello {{ c.firstname | default("there") }}`
# spends 16, a loop over 25 tags with a filter or two a few thousand.
MAX_WORK = 8 * MAX_OUTPUT
# Jinja2 tokens in all the templates of one document (a campaign holds up to 200 messages of
# title and body): compiling costs 25-75 us a token (measured on Jinja2 3.1), so a document
# compiles in under a second of a worker thread. A personalised field uses 15-60 tokens.
MAX_DOCUMENT_TOKENS = 16384

_MARKERS = ("{{", "{%", "{#")


class TemplateLimitError(SecurityError):
    """A template went beyond one of this module's limits."""


class _Budget:
    def __init__(self) -> None:
        self.work = MAX_WORK
        self.iterations = MAX_LOOP_ITERATIONS

    def charge(self, characters: int) -> None:
        self.work -= characters
        if self.work < 0:
            raise TemplateLimitError(
                f"the template does more than {MAX_WORK} characters' worth of work"
            )

    def iterate(self) -> None:
        self.iterations -= 1
        if self.iterations < 0:
            raise TemplateLimitError(
                f"the template's loops run more than {MAX_LOOP_ITERATIONS} times in all"
            )
        self.charge(1)


# The budget of the render in progress (renders are synchronous, one per context).
_BUDGET: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def _size(value: Any) -> int:
    """What a value costs to build: characters, items, or an integer's digits' worth."""
    if isinstance(value, str | list | tuple | dict | set | frozenset | bytes):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"an integer beyond {MAX_INT_BITS} bits")
        return 1
    return 1


def _checked(value: Any, *inputs: Any) -> Any:
    """`value`, if it is within MAX_VALUE; its size and the `inputs`' sizes (what the
    operation read) are charged to the render's budget."""
    size = _size(value)
    if size > MAX_VALUE:
        raise TemplateLimitError(f"a value longer than {MAX_VALUE} characters")
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(size + sum(map(_size, inputs)))
    return value


def _refuse_beyond(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise TemplateLimitError(f"{what} would be longer than {MAX_VALUE} characters")


def _number(value: Any) -> int:
    return value if isinstance(value, int) else 0


# printf-style conversions: `%-10s`, `%(name)08.3f`, `%*d`.
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_printf(template: Any) -> None:
    """Refuse a `%` format whose widths or precisions alone exceed MAX_VALUE."""
    if not isinstance(template, str):
        return
    for width, precision in _PRINTF.findall(template):
        for number in (width, precision):
            if number == "*":
                raise TemplateLimitError("'*' widths are not allowed in a push template")
            _refuse_beyond(int(number or 0), "a formatted value")


def _check_str_format(template: str) -> None:
    """The same for `str.format`'s `{:>10}` specs (and no nested `{:{width}}` fields)."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return  # str.format raises the same error
    for _, _, spec, _ in fields:
        if spec and "{" in spec:
            raise TemplateLimitError("nested format fields are not allowed in a push template")
        for number in re.findall(r"\d+", spec or ""):
            _refuse_beyond(int(number), "a formatted value")


def _lines(text: str) -> int:
    return text.count("\n") + 1


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        times = text.count(old)
        if isinstance(count, int) and count >= 0:
            times = min(times, count)
        _refuse_beyond(len(text) + times * (len(new) - len(old)), "the replaced text")


def _check_join(items: Any, separator: Any) -> list[Any]:
    """The items, refused when their joined length would exceed MAX_VALUE."""
    listed = list(items) if isinstance(items, Iterable) else []
    _refuse_beyond(len(listed), "the joined list")
    size = sum(len(item) if isinstance(item, str) else 1 for item in listed)
    if isinstance(separator, str):
        size += len(separator) * max(len(listed) - 1, 0)
    _refuse_beyond(size, "the joined text")
    return listed


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


# Filters whose first argument is a count or a length (by its keyword name).
_COUNT_FILTERS = {
    "batch": "linecount",
    "slice": "slices",
    "truncate": "length",
    "wordwrap": "width",
}


def _precheck_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Refuse a filter whose width or count argument would make a result beyond MAX_VALUE,
    before it allocates. Returns `value` (materialised for `join`)."""
    if name == "center":
        _refuse_beyond(_number(_arg(args, kwargs, 0, "width")), "the centred text")
    elif name == "indent":
        width = _arg(args, kwargs, 0, "width")
        step = len(width) if isinstance(width, str) else _number(width)
        _refuse_beyond(step, "the indentation")
        if isinstance(value, str):
            _refuse_beyond(len(value) + _lines(value) * step, "the indented text")
    elif name == "format":
        _check_printf(value)
    elif name == "replace":
        _check_replace(value, *args[:3])
    elif name == "join":
        return _check_join(value, _arg(args, kwargs, 0, "d"))
    elif name in _COUNT_FILTERS:
        _refuse_beyond(_number(_arg(args, kwargs, 0, _COUNT_FILTERS[name])), name)
    return value


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    # Filters get the context/environment first when they ask for it (jinja_pass_arg,
    # copied by wraps), then the value.
    passes = getattr(function, "jinja_pass_arg", None) is not None

    @wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        lead, (value, *rest) = (args[:1], args[1:]) if passes else ((), args)
        value = _precheck_filter(name, value, tuple(rest), kwargs)
        return _checked(function(*lead, value, *rest, **kwargs), value, *rest)

    return guarded


# str methods whose first argument is the result's width.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _precheck_call(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a str method whose result would exceed MAX_VALUE, before it allocates.
    Returns the arguments to call it with (`join`'s items materialised)."""
    name = getattr(function, "__name__", "")
    owner = getattr(getattr(function, "__wrapped__", function), "__self__", None)
    if isinstance(owner, str):
        if name in _WIDTH_METHODS:
            _refuse_beyond(_number(_arg(args, kwargs, 0, "width")), f"the {name} text")
        elif name == "expandtabs":
            tab = _arg(args, kwargs, 0, "tabsize")
            size = len(owner) + owner.count("\t") * (8 if tab is None else _number(tab))
            _refuse_beyond(size, "the expanded text")
        elif name == "replace":
            _check_replace(owner, *args[:3])
        elif name in ("format", "format_map"):
            _check_str_format(owner)
        elif name == "join" and args:
            args = (_check_join(args[0], owner), *args[1:])
    elif isinstance(owner, int) and name == "to_bytes":
        _refuse_beyond(_number(_arg(args, kwargs, 0, "length")), "the bytes")
    return args


class _Bounded(NodeTransformer):
    """Rewrites a parsed template so its loops, concatenations and printed values are
    counted: each goes through one of the environment's guard filters."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)  # in place: the children are rewritten first
        node.iter = nodes.Filter(node.iter, "_loop", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        items = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(items, "_concat", [], [], None, None, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            item
            if isinstance(item, nodes.TemplateData)
            else nodes.Filter(item, "_printed", [], [], None, None, lineno=item.lineno)
            for item in node.nodes
        ]
        return node


def _loop(items: Any) -> Iterator[Any]:
    budget = _BUDGET.get()
    for item in items:
        if budget is not None:
            budget.iterate()
        yield item


def _concat(items: list[Any]) -> str:
    texts = [str(item) for item in items]
    _refuse_beyond(sum(map(len, texts)), "the concatenated text")
    joined = "".join(texts)
    _checked(joined)
    return joined


def _printed(value: Any) -> Any:
    if isinstance(value, str):
        _checked(value)
    return value


def _refuse_big_int(left: Any, right: Any, *, power: bool) -> None:
    """Refuse an integer product or power whose result would pass MAX_INT_BITS, before
    computing it: a product has at most the sum of its operands' bits, a power `right` times
    the base's."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    bits = left.bit_length() * abs(right) if power else left.bit_length() + right.bit_length()
    if bits > MAX_INT_BITS:
        raise TemplateLimitError(f"an integer beyond {MAX_INT_BITS} bits")


class _PushTemplates(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=ChainableUndefined, autoescape=False)
        self.globals.clear()
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(_loop=_loop, _concat=_concat, _printed=_printed)

    def call_binop(self, context: Context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            if not (isinstance(left, int | float) and isinstance(right, int | float)):
                raise SecurityError("only numbers can be multiplied in a push template")
            _refuse_big_int(left, right, power=False)
        elif operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large in a push template")
            _refuse_big_int(left, right, power=True)
        elif operator_name == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _refuse_beyond(len(left) + len(right), "the sum")
        elif operator_name == "%":
            _check_printf(left)
        return _checked(self.binop_table[operator_name](left, right), left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        args = _precheck_call(__obj, args, kwargs)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        return _checked(super().call(__context, __obj, *args, **kwargs), owner, *args)

    def getitem(self, obj: Any, argument: Any) -> Any:
        # A slice copies: `a[1:]` costs what it returns.
        return _checked(super().getitem(obj, argument))


_ENV = _PushTemplates()


def is_template(text: str | None) -> bool:
    return text is not None and any(marker in text for marker in _MARKERS)


async def check_templates(fields: Iterable[tuple[str, str | None]]) -> None:
    """Refuse (MalformedParameterError naming the field) the templates among one document's
    `(field path, text)` that do not compile, that go beyond the limits, or that fail for a
    user with no attributes (whose push shows the defaults): give it a default instead.

    Compiling is CPU work (up to ~0.1 s for a 4 KiB body), so it runs in a worker thread,
    and all the document's templates share one token and one work budget."""
    templates = [(path, text) for path, text in fields if text is not None and is_template(text)]
    if templates:
        await asyncio.to_thread(_check_all, templates)


def _check_all(templates: Sequence[tuple[str, str]]) -> None:
    tokens = MAX_DOCUMENT_TOKENS
    budget = _Budget()
    for path, text in templates:
        try:
            for _ in _ENV.lex(text):
                tokens -= 1
                if tokens < 0:
                    raise TemplateLimitError(
                        f"the templates hold more than {MAX_DOCUMENT_TOKENS} tokens in all"
                    )
            _render(text, {}, budget, event={})
        except TemplateLimitError as exc:
            raise MalformedParameterError(f"{path}: template too costly: {exc.message}") from None
        except TemplateError as exc:
            raise MalformedParameterError(f"{path}: template error: {exc.message}") from None
        except Exception as exc:
            raise MalformedParameterError(
                f"{path}: template fails for a user with no attributes: {exc}"
            ) from None


def render(
    text: str | None, attributes: Mapping[str, Any], event: Mapping[str, Any] | None = None
) -> str | None:
    """`text` rendered for one user (and, in an automation's push, the event that triggered
    it). If it fails on these values (a filter given the wrong type, say), it is rendered as
    for a user with no attributes and no event: the defaults.
    TemplateLimitError: the template goes beyond a limit for this user."""
    if text is None or not is_template(text):
        return text
    for values, trigger in ((attributes, event or {}), ({}, {})):
        try:
            return _render(text, values, event=trigger)
        except TemplateLimitError:
            raise
        except Exception:
            continue
    return ""


def _render(
    text: str,
    values: Mapping[str, Any],
    budget: _Budget | None = None,
    *,
    event: Mapping[str, Any],
) -> str:
    template = _compiled(text)
    token = _BUDGET.set(budget or _Budget())
    try:
        chunks: list[str] = []
        length = 0
        for chunk in template.generate(c=values, event=event):
            length += len(chunk)
            if length > MAX_OUTPUT:
                raise TemplateLimitError(f"it renders to more than {MAX_OUTPUT} characters")
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        _BUDGET.reset(token)


@lru_cache(maxsize=512)
def _compiled(text: str) -> Template:
    tree = _ENV.parse(text)
    if any(True for _ in tree.find_all((nodes.Macro, nodes.CallBlock))):
        # A macro may call itself: recursion would multiply any per-call bound.
        raise TemplateLimitError("macros are not allowed in a push template")
    return _ENV.from_string(_Bounded().visit(tree))
