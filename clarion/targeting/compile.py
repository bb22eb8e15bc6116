"""A parsed query as one boolean SQL clause over `installations`, alike on SQLite and PostgreSQL.

Each leaf is an EXISTS over the row-per-attribute tables, correlated on the installation's
custom id or install id (docs/decisions/0008-targeting-sql.md). Every leaf is two-valued (true or
false, never NULL), so that `$not` is an exact complement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    SQLColumnExpression,
    String,
    and_,
    false,
    func,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from clarion.custom_data.models import AttributeKind, ProfileAttribute, ProfileTag
from clarion.events.models import TrackedEvent
from clarion.sdk.models import Installation
from clarion.targeting.query import (
    ORDERING,
    AllOf,
    AnyOf,
    AttributeTest,
    Comparison,
    EventTest,
    NativeKind,
    NativeTest,
    Negation,
    Node,
    Op,
    TagOp,
    TagTest,
    Value,
)


class Bytewise(FunctionElement[str]):
    """Text ordered byte by byte. SQLite's default; PostgreSQL's order depends on the database's
    collation (en_US puts 'a' < 'B'), so `$gt` on strings would differ between the two."""

    type = String()
    inherit_cache = True
    name = "bytewise"


@compiles(Bytewise)
def _bytewise_sqlite(element: Bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.clauses, **kw)} COLLATE BINARY)"


@compiles(Bytewise, "postgresql")
def _bytewise_postgresql(element: Bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)} COLLATE "C")'


def compare(op: Op, left: SQLColumnExpression[Any], right: Any) -> ColumnElement[bool]:
    """`left <op> right`; `right` is a list for $in and $notIn."""
    # The comparison dunders of a Column[Any] are typed as returning Any, hence the annotation.
    result: ColumnElement[bool]
    if op is Op.EQ:
        result = left == right
    elif op is Op.NEQ:
        result = left != right
    elif op is Op.GT:
        result = left > right
    elif op is Op.GTE:
        result = left >= right
    elif op is Op.LT:
        result = left < right
    elif op is Op.LTE:
        result = left <= right
    elif op is Op.IN:
        result = left.in_(right)
    elif op is Op.NIN:
        result = left.not_in(right)
    else:
        raise AssertionError(op)
    return result


def holds(op: Op, left: float, right: list[float]) -> bool:
    """The same comparison in Python (is `$count` satisfied by zero occurrences?)."""
    if op is Op.IN:
        return left in right
    if op is Op.NIN:
        return left not in right
    value = right[0]
    return {
        Op.EQ: left == value,
        Op.NEQ: left != value,
        Op.GT: left > value,
        Op.GTE: left >= value,
        Op.LT: left < value,
        Op.LTE: left <= value,
    }[op]


def _any(conditions: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    return or_(false(), *conditions)


def _all(conditions: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    return and_(true(), *conditions)


_NUMBER_KINDS = (AttributeKind.INTEGER, AttributeKind.FLOAT, AttributeKind.DATE)
_TEXT_KINDS = (AttributeKind.STRING, AttributeKind.URL)


@dataclass(frozen=True, slots=True)
class QueryCompiler:
    """Compiles for one app at one instant: relative dates resolve against `now`."""

    app_id: int
    now: datetime

    def node(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, AllOf):
            return _all([self.node(child) for child in node.children])
        if isinstance(node, AnyOf):
            return _any([self.node(child) for child in node.children])
        if isinstance(node, Negation):
            return not_(self.node(node.child))
        if isinstance(node, AttributeTest):
            return self.attribute(node)
        if isinstance(node, NativeTest):
            return self.native(node)
        if isinstance(node, TagTest):
            return self.tags(node)
        return self.event(node)

    # c. / u.: profile_attributes rows of the installation's custom id.

    def _attribute_rows(self, name: str, *conditions: ColumnElement[bool]) -> ColumnElement[bool]:
        row = ProfileAttribute
        return (
            select(row.app_id)
            .where(
                row.app_id == self.app_id,
                row.custom_id == Installation.custom_id,
                row.name == name,
                *conditions,
            )
            .exists()
        )

    def _attribute_equals(self, values: tuple[Value, ...]) -> ColumnElement[bool] | None:
        """A row condition: the attribute equals one of the (non-null) values, each compared
        with the attributes of its own type. None when every value is null."""
        row = ProfileAttribute
        flags = [float(v.flag) for v in values if v.flag is not None]
        numbers = [v.number for v in values if v.number is not None]
        texts = [v.text for v in values if v.text is not None]
        text_dates = [
            v.date.resolve(self.now).timestamp()
            for v in values
            if v.text is not None and v.date is not None
        ]
        if not (flags or numbers or texts):
            return None
        groups: list[ColumnElement[bool]] = []
        if flags:
            groups.append((row.kind == AttributeKind.BOOLEAN) & row.number_value.in_(flags))
        if numbers:
            groups.append(row.kind.in_(_NUMBER_KINDS) & row.number_value.in_(numbers))
        if texts:
            groups.append(row.kind.in_(_TEXT_KINDS) & row.text_value.in_(texts))
        if text_dates:
            groups.append((row.kind == AttributeKind.DATE) & row.number_value.in_(text_dates))
        return _any(groups)

    def _attribute_order(self, op: Op, value: Value) -> ColumnElement[bool]:
        row = ProfileAttribute
        # Booleans have no order: `$gt: true` matches nothing, as a comparison across types.
        groups: list[ColumnElement[bool]] = []
        if value.number is not None:  # numbers, and dates as Unix seconds
            groups.append(row.kind.in_(_NUMBER_KINDS) & compare(op, row.number_value, value.number))
        if value.text is not None:
            text = compare(op, Bytewise(row.text_value), value.text)
            groups.append(row.kind.in_(_TEXT_KINDS) & text)
            if value.date is not None:
                at = value.date.resolve(self.now).timestamp()
                groups.append((row.kind == AttributeKind.DATE) & compare(op, row.number_value, at))
        return _any(groups)

    def attribute(self, test: AttributeTest) -> ColumnElement[bool]:
        # Conditions on the attribute's one row share a single EXISTS; negations ($neq,
        # $notIn, $exists: false) are NOT EXISTS, so an absent attribute satisfies them.
        on_row: list[ColumnElement[bool]] = []
        clauses: list[ColumnElement[bool]] = []
        absent = not_(self._attribute_rows(test.name))
        for comparison in test.comparisons:
            op = comparison.op
            if op is Op.EXISTS:
                clauses.append(self._attribute_rows(test.name) if comparison.present else absent)
                continue
            if op in ORDERING:
                on_row.append(self._attribute_order(op, comparison.values[0]))
                continue
            equals = self._attribute_equals(comparison.values)
            has_null = any(v.is_null for v in comparison.values)
            if equals is not None and not has_null and op in (Op.EQ, Op.IN):
                on_row.append(equals)
                continue
            matches = _any(
                ([self._attribute_rows(test.name, equals)] if equals is not None else [])
                + ([absent] if has_null else [])
            )
            clauses.append(matches if op in (Op.EQ, Op.IN) else not_(matches))
        if on_row:
            clauses.append(self._attribute_rows(test.name, *on_row))
        return _all(clauses)

    # b.: columns of the installation.

    def _native_reading(self, kind: NativeKind, value: Value) -> Any:
        if kind is NativeKind.TEXT:
            return value.text
        if kind is NativeKind.LANGUAGE:
            return None if value.text is None else value.text.lower().replace("_", "-")
        if kind is NativeKind.REGION:
            return None if value.text is None else value.text.upper()
        if kind is NativeKind.DATE:
            return None if value.date is None else value.date.resolve(self.now)
        return value.flag

    def native(self, test: NativeTest) -> ColumnElement[bool]:
        column: ColumnElement[Any] = getattr(Installation, test.column)
        expression = column
        if test.kind is NativeKind.LANGUAGE:
            expression = func.lower(func.replace(column, "_", "-"))
        # Regions are stored upper-case (the SDK API normalises them): compared as they are,
        # the planner knows how many installations a region holds.
        clauses: list[ColumnElement[bool]] = []
        for comparison in test.comparisons:
            op = comparison.op
            if op is Op.EXISTS:
                clauses.append(column.is_not(None) if comparison.present else column.is_(None))
                continue
            readings = [
                r
                for r in (self._native_reading(test.kind, v) for v in comparison.values)
                if r is not None
            ]
            if op in ORDERING:
                if not readings or test.kind is NativeKind.BOOL:
                    clauses.append(false())  # another type, null or a boolean: no order
                    continue
                left = expression
                if test.kind in (NativeKind.TEXT, NativeKind.LANGUAGE, NativeKind.REGION):
                    left = Bytewise(expression)
                clauses.append(column.is_not(None) & compare(op, left, readings[0]))
                continue
            options: list[ColumnElement[bool]] = []
            if readings:
                options.append(column.is_not(None) & expression.in_(readings))
            if any(v.is_null for v in comparison.values):
                options.append(column.is_(None))
            matches = _any(options)
            clauses.append(matches if op in (Op.EQ, Op.IN) else not_(matches))
        return _all(clauses)

    # t. / ut.: profile_tags rows of the installation's custom id.

    def tags(self, test: TagTest) -> ColumnElement[bool]:
        tag = ProfileTag

        def rows(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
            return (
                select(tag.app_id)
                .where(
                    tag.app_id == self.app_id,
                    tag.custom_id == Installation.custom_id,
                    tag.collection == test.collection,
                    *conditions,
                )
                .exists()
            )

        if test.op is TagOp.EXISTS:
            return rows() if test.present else not_(rows())
        if test.op is TagOp.CONTAINS_ANY:
            return rows(tag.tag.in_(test.tags))
        # One EXISTS per tag: each is a primary-key lookup (app, custom id, collection, tag).
        return _all([rows(tag.tag == value) for value in test.tags])

    # e. / ue.: tracked_events of the installation (SDK) or of its custom id (server).

    def event(self, test: EventTest) -> ColumnElement[bool]:
        event = TrackedEvent
        key = event.custom_id if test.per_user else event.install_id
        owner = Installation.custom_id if test.per_user else Installation.install_id
        where: list[ColumnElement[bool]] = [
            event.app_id == self.app_id,
            key == owner,
            event.name == test.name,
        ]
        for comparison in test.label:
            texts = [v.text for v in comparison.values if v.text is not None]
            options: list[ColumnElement[bool]] = []
            if texts:
                options.append(event.label.is_not(None) & event.label.in_(texts))
            if any(v.is_null for v in comparison.values):
                options.append(event.label.is_(None))
            matches = _any(options)
            where.append(matches if comparison.op in (Op.EQ, Op.IN) else not_(matches))
        occurred = select(key).where(*where).exists()

        having: list[ColumnElement[bool]] = []
        for comparison in test.count:
            # Whole numbers bound as integers: PostgreSQL compares count(*) with a float as
            # numeric, a cast per group.
            numbers = [
                int(v.number) if v.number.is_integer() else v.number
                for v in comparison.values
                if v.number is not None
            ]
            having.append(self._aggregate(comparison, func.count(), numbers))
        for aggregate, comparisons in ((func.min, test.first), (func.max, test.last)):
            for comparison in comparisons:
                dates = [v.date.resolve(self.now) for v in comparison.values if v.date is not None]
                having.append(self._aggregate(comparison, aggregate(event.occurred_at), dates))

        clauses: list[ColumnElement[bool]] = []
        if test.exists is not None:
            clauses.append(occurred if test.exists else not_(occurred))
        elif not having:
            clauses.append(occurred)
        if having:
            # Grouped by the correlated key: one group when the installation has occurrences,
            # none otherwise, so the aggregates never see an empty set (no NULL min/max).
            aggregated = select(key).where(*where).group_by(key).having(_all(having)).exists()
            zero_counts = not test.first and not test.last
            for comparison in test.count:
                numbers = [v.number for v in comparison.values if v.number is not None]
                zero_counts = zero_counts and holds(comparison.op, 0, numbers)
            clauses.append(or_(aggregated, not_(occurred)) if zero_counts else aggregated)
        return _all(clauses)

    @staticmethod
    def _aggregate(
        comparison: Comparison, aggregate: ColumnElement[Any], values: list[Any]
    ) -> ColumnElement[bool]:
        if comparison.op in (Op.IN, Op.NIN):
            return compare(comparison.op, aggregate, values)
        return compare(comparison.op, aggregate, values[0])
