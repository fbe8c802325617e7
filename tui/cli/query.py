"""``--query``: a JMESPath expression, as az's, over the JSON document a command prints.

The expression is the operator's own, and still bounded, like every input: at most
:data:`QUERY_MAX_LENGTH` characters of plain text, parsed (and its function names checked) before the
command does anything, and evaluated within a budget of :data:`QUERY_MAX_STEPS` steps. A step is a node
of the expression visited, a value that a flatten (``[]``) copies, a value given to a function or compared
with ``==``, counted as it is reached; so an expression that doubles its result at every pipe
(``[@, @] | [@, @][] | ...``) ends in one clear error, not in a full memory. The result is at most
:data:`QUERY_MAX_DEPTH` levels deep and within the same kind of budget, so printing it is bounded too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath import functions as jmespath_functions
from jmespath.visitor import Options, TreeInterpreter

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.text import check_printable

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode

#: the longest expression accepted (the ACR docs' are a few dozen characters)
QUERY_MAX_LENGTH = 2048
#: steps of work one evaluation may take (a query over 1,000 rules takes a few thousand)
QUERY_MAX_STEPS = 1_000_000
#: how deeply nested a result may be (the documents themselves are 4 levels deep)
QUERY_MAX_DEPTH = 64
#: characters of a string counted as one step (so strings that double at every pipe are bounded too)
_CHARS_PER_STEP = 64

_FIELD = "query"


class QueryTooCostly(Exception):
    """The expression's evaluation went over :data:`QUERY_MAX_STEPS`."""


class _Budget:
    def __init__(self, steps: int) -> None:
        self.left = steps

    def spend(self, steps: int = 1) -> None:
        self.left -= steps
        if self.left < 0:
            raise QueryTooCostly

    def weigh(self, *values: Any) -> None:
        """Spend a step per value inside ``values`` (shared ones as often as they are reached), without
        recursion; refuse nesting deeper than QUERY_MAX_DEPTH, and anything that is not JSON data."""
        stack: list[tuple[Any, int]] = [(v, 1) for v in values]
        while stack:
            value, depth = stack.pop()
            if depth > QUERY_MAX_DEPTH:
                raise ValidationError(f"the result of --query is nested deeper than {QUERY_MAX_DEPTH} levels",
                                      field=_FIELD)
            if isinstance(value, str):
                self.spend(1 + len(value) // _CHARS_PER_STEP)
                continue
            self.spend()
            if isinstance(value, dict):
                stack.extend((v, depth + 1) for v in value.values())
            elif isinstance(value, list):
                stack.extend((v, depth + 1) for v in value)
            elif value is not None and not isinstance(value, (bool, int, float)):  # `&name` outside a function
                raise ValidationError("--query has an expression reference (&...) where a value belongs: one is "
                                      "only an argument of sort_by(), max_by(), min_by() or map()", field=_FIELD)


class _BoundedFunctions(jmespath_functions.Functions):
    """JMESPath's functions, each call paying for its arguments and its result."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget

    def call_function(self, function_name: str, resolved_args: Iterable[Any]) -> Any:
        args = list(resolved_args)
        self.budget.weigh(*(a for a in args if isinstance(a, (str, list, dict))))
        result = super().call_function(function_name, args)
        self.budget.weigh(result)
        return result


class _BoundedInterpreter(TreeInterpreter):
    """JMESPath's interpreter with every step paid for from one budget."""

    def __init__(self, budget: _Budget) -> None:
        super().__init__(Options(custom_functions=_BoundedFunctions(budget)))
        self.budget = budget

    def visit(self, node: _TreeNode, *args: Any, **kwargs: Any) -> Any:
        self.budget.spend()
        return super().visit(node, *args, **kwargs)

    def visit_comparator(self, node: _TreeNode, value: Any) -> Any:
        if node["value"] not in ("eq", "ne"):  # orderings: numbers and strings only
            return super().visit_comparator(node, value)
        left = self.visit(node["children"][0], value)
        right = self.visit(node["children"][1], value)
        self.budget.weigh(left, right)  # comparing two nested values walks them both
        return self.COMPARATOR_FUNC[node["value"]](left, right)

    def visit_flatten(self, node: _TreeNode, value: Any) -> Any:
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        self.budget.spend(sum(len(e) if isinstance(e, list) else 1 for e in base))  # before copying them
        merged: list[Any] = []
        for element in base:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged


def _function_names(parsed: _TreeNode) -> list[str]:
    names: list[str] = []
    stack = [parsed]
    while stack:
        node = stack.pop()
        if node.get("type") == "function_expression":
            names.append(node["value"])
        stack.extend(child for child in node.get("children", ()) if isinstance(child, dict))
    return names


class Query:
    """A parsed ``--query`` expression."""

    def __init__(self, expression: str) -> None:
        check_printable(expression, _FIELD, "--query", max_length=QUERY_MAX_LENGTH)
        if not expression.strip():
            raise ValidationError("--query is empty: give a JMESPath expression, e.g. --query sourceRepository",
                                  field=_FIELD)
        try:
            self.parsed = jmespath.compile(expression)
        except jmespath_errors.LexerError as exc:
            raise ValidationError(f"--query is not a JMESPath expression: {exc.message} at character "
                                  f"{exc.lexer_position + 1}", field=_FIELD) from None
        except jmespath_errors.IncompleteExpressionError:
            raise ValidationError("--query is not a JMESPath expression: it ends too early", field=_FIELD) from None
        except jmespath_errors.ParseError as exc:
            raise ValidationError(f"--query is not a JMESPath expression: {exc.msg.lower()} at character "
                                  f"{exc.lex_position + 1}", field=_FIELD) from None
        except RecursionError:
            raise ValidationError("--query is nested too deeply", field=_FIELD) from None
        except jmespath_errors.JMESPathError as exc:
            raise ValidationError(f"--query is not a JMESPath expression: {exc}", field=_FIELD) from None
        known = _BoundedFunctions.FUNCTION_TABLE
        unknown = sorted({name for name in _function_names(self.parsed.parsed) if name not in known})
        if unknown:
            raise ValidationError(f"--query calls {', '.join(f'{n}()' for n in unknown)}, which JMESPath does not "
                                  f"have (its functions: {', '.join(sorted(known))})", field=_FIELD)
        self.expression = expression

    def search(self, document: Any) -> Any:
        """The expression applied to ``document``, or a ValidationError saying why it cannot be."""
        budget = _Budget(QUERY_MAX_STEPS)
        try:
            result = _BoundedInterpreter(budget).visit(self.parsed.parsed, document)
            _Budget(QUERY_MAX_STEPS).weigh(result)  # what is printed is bounded too
        except QueryTooCostly:
            raise ValidationError(f"--query takes more than {QUERY_MAX_STEPS:,} steps to evaluate (each value it "
                                  f"reaches, copies, compares or passes to a function is one); simplify it",
                                  field=_FIELD) from None
        except RecursionError:
            raise ValidationError("--query is nested too deeply", field=_FIELD) from None
        except jmespath_errors.JMESPathTypeError as exc:
            raise ValidationError(f"--query: {exc.function_name}() takes {', '.join(exc.expected_types)}, not a "
                                  f"{exc.actual_type}", field=_FIELD) from None
        except (ValueError, TypeError, ArithmeticError) as exc:
            # JMESPathError (a wrong number of arguments) is a ValueError; the rest come from Python itself: a
            # slice step of 0, an ordering of a string and a number, ceil() of an infinite literal
            raise ValidationError(f"--query cannot be evaluated: {exc}", field=_FIELD) from None
        return result
