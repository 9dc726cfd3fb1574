"""What kind of statement is this: DDL, data change, index DDL, transaction control, or a
statement that cannot run inside a transaction block. Pure decisions over `sqlparser.Statement`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemad.sqlparser import Statement


class Kind(enum.StrEnum):
    DDL = "ddl"
    DATA_CHANGE = "data_change"
    INDEX_DDL = "index_ddl"
    TRANSACTION_CONTROL = "transaction_control"
    QUERY = "query"
    OTHER = "other"


_DATA_CHANGE_NODES = frozenset({"insert_stmt", "update_stmt", "delete_stmt", "merge_stmt", "copy_stmt"})
_QUERY_NODES = frozenset({"select_stmt", "explain_stmt"})
_OTHER_NODES = frozenset({"do_stmt", "variable_set_stmt", "call_stmt", "notify_stmt", "lock_stmt"})

# Nodes that PostgreSQL refuses inside a transaction block, whatever their options.
_NEVER_IN_TRANSACTION: dict[str, str] = {
    "vacuum_stmt": "VACUUM",
    "createdb_stmt": "CREATE DATABASE",
    "dropdb_stmt": "DROP DATABASE",
    "alter_system_stmt": "ALTER SYSTEM",
    "create_table_space_stmt": "CREATE TABLESPACE",
    "drop_table_space_stmt": "DROP TABLESPACE",
}


def kind(stmt: Statement) -> Kind:
    """The statement's category; index DDL wins over plain DDL."""
    if stmt.node == "index_stmt" or stmt.node == "reindex_stmt":
        return Kind.INDEX_DDL
    if stmt.node == "drop_stmt" and stmt.drop_type == "INDEX":
        return Kind.INDEX_DDL
    if stmt.node == "transaction_stmt":
        return Kind.TRANSACTION_CONTROL
    if stmt.node in _DATA_CHANGE_NODES:
        return Kind.DATA_CHANGE
    if stmt.node in _QUERY_NODES:
        return Kind.QUERY
    if stmt.node in _OTHER_NODES:
        return Kind.OTHER
    return Kind.DDL


def not_in_transaction_reason(stmt: Statement) -> str | None:
    """Why ``stmt`` cannot run inside a transaction block, or None if it can."""
    if stmt.node in _NEVER_IN_TRANSACTION:
        return f"{_NEVER_IN_TRANSACTION[stmt.node]} cannot run inside a transaction block"
    if stmt.concurrent:
        return f"{stmt.command} CONCURRENTLY cannot run inside a transaction block"
    if stmt.node == "cluster_stmt" and not stmt.has_relation:
        return "CLUSTER without a table cannot run inside a transaction block"
    return None
