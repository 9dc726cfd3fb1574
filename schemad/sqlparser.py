"""The one module that talks to libpg_query (through postgast, BSD-2).

It turns SQL text into neutral value objects (`Statement`, `IndexDef`) so that the rest of
the pure core never sees the binding's parse tree. To swap the binding, rewrite this file.
Statement locations from libpg_query are UTF-8 byte offsets, but a syntax error's cursor
position is already a 1-based character count; everything leaving this module is in
characters (`str` indices).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported where used: loading the binding (libpg_query, protobuf) costs ~30 ms, and
    # a run whose files are all in the parse cache (`parsecache`) never needs it.
    from postgast import pg_query_pb2 as pb

# Functions whose value changes per row: a column added with one of these as default
# forces a full table rewrite under ACCESS EXCLUSIVE.
_VOLATILE_FUNCTIONS = frozenset(
    {
        "random", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4",
        "clock_timestamp", "timeofday", "nextval", "setseed", "txid_current",
    }
)
_SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"})


class SqlSyntaxError(Exception):
    """The parser rejected the text; ``offset`` is a 0-based character index into it."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True, slots=True, kw_only=True)
class AlterCmd:
    """One subcommand of ``ALTER TABLE``, reduced to what lock-safety rules need."""

    subtype: str  # e.g. "AddConstraint", "SetNotNull", "AlterColumnType", "AddColumn", "DropColumn"
    column: str | None = None
    constraint_type: str | None = None  # "FOREIGN", "CHECK", "PRIMARY", "UNIQUE", ...
    not_valid: bool = False
    volatile_default: bool = False
    concurrent: bool = False
    using_index: bool = False  # ADD CONSTRAINT ... USING INDEX: no index is built


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexDef:
    """A ``CREATE INDEX`` statement as data; name and table come from the parse tree."""

    name: str | None
    schema: str | None
    table: str
    unique: bool
    method: str
    columns: tuple[str, ...]
    include: tuple[str, ...]
    predicate: str | None
    concurrent: bool
    if_not_exists: bool
    only: bool
    source: str = field(repr=False)  # the statement text, kept for rendering


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """One top-level statement with its position in the source text (characters)."""

    start: int
    end: int
    text: str
    node: str  # the parse node's name, e.g. "create_stmt", "index_stmt"
    command: str  # human form, e.g. "CREATE TABLE", "ALTER TABLE", "CREATE INDEX"
    relation: str | None = None  # target relation as written (schema.table or table)
    concurrent: bool = False
    drop_type: str | None = None  # for DROP: "TABLE", "INDEX", ...
    rename_type: str | None = None
    transaction_kind: str | None = None  # for BEGIN/COMMIT/...: "BEGIN", "COMMIT", ...
    has_relation: bool = True  # CLUSTER/VACUUM without a target act on the whole database
    alter_cmds: tuple[AlterCmd, ...] = ()
    index: IndexDef | None = None
    tokens_digest: str = ""
    objects: tuple[str, ...] = ()  # for DROP: every target as written (schema.name or name)
    new_name: str | None = None  # for ALTER ... RENAME TO: the new name


class _Offsets:
    """Byte → character offset conversion for one source text."""

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self.ascii = len(self.data) == len(text)
        self._map: list[int] = []
        if not self.ascii:
            for i, ch in enumerate(text):
                self._map.extend([i] * len(ch.encode("utf-8")))
            self._map.append(len(text))

    def char(self, byte_offset: int) -> int:
        byte_offset = max(0, min(byte_offset, len(self.data)))
        return byte_offset if self.ascii else self._map[byte_offset]


def parse(text: str) -> list[Statement]:
    """Split and describe every top-level statement of ``text``.

    :raises SqlSyntaxError: with the character offset of the offending token.
    """
    import postgast

    offsets = _Offsets(text)
    try:
        tree = postgast.parse(text)
    except postgast.PgQueryError as exc:
        # cursorpos counts characters (PostgreSQL's scanner_errposition), not bytes.
        pos = min(exc.cursorpos - 1, len(text)) if exc.cursorpos > 0 else len(text)
        raise SqlSyntaxError(_one_line(exc.message), pos) from None
    size = len(offsets.data)
    bounds = [(raw.stmt_location, raw.stmt_location + raw.stmt_len if raw.stmt_len else size) for raw in tree.stmts]
    digests = _token_digests(text, offsets, bounds)
    out: list[Statement] = []
    for raw, (b_start, b_end), digest in zip(tree.stmts, bounds, digests, strict=True):
        start, end = offsets.char(b_start), offsets.char(b_end)
        stmt_text = text[start:end].strip()
        out.append(_describe(raw.stmt, start=start, end=end, text=stmt_text, digest=digest))
    return out


def _one_line(message: str) -> str:
    """After an unterminated literal or comment libpg_query quotes the rest of the input: keep one line."""
    head, newline, _rest = message.partition("\n")
    if not newline:
        return message
    return head + ('..."' if 'near "' in head else "...")


_EMPTY_DIGEST = hashlib.sha256().hexdigest()


def _token_digests(text: str, offsets: _Offsets, bounds: list[tuple[int, int]]) -> list[str]:
    """The checksum digest of each statement (byte ranges ``bounds``, in order): sha256 over
    its tokens without comments, each followed by 0x1f; keywords and unquoted identifiers
    lowercased (PostgreSQL folds them). Recorded in ledgers: the bytes hashed never change.

    One pass over the scanner's tokens, which come in order like the statements.
    """
    import postgast
    from postgast import pg_query_pb2 as pb

    try:
        tokens = postgast.scan(text).tokens
    except postgast.PgQueryError:
        return [_EMPTY_DIGEST] * len(bounds)
    comments = (pb.SQL_COMMENT, pb.C_COMMENT)
    ident = pb.IDENT
    data = offsets.data
    ascii_only = offsets.ascii
    per_stmt: list[list[bytes]] = [[] for _ in bounds]
    i = 0
    n = len(bounds)
    for tok in tokens:
        start = tok.start
        while i < n and start >= bounds[i][1]:
            i += 1
        if i == n:
            break
        if start < bounds[i][0] or tok.token in comments:
            continue
        raw = data[start : tok.end]
        fold = tok.keyword_kind != pb.NO_KEYWORD or (tok.token == ident and not raw.startswith(b'"'))
        if ascii_only:
            per_stmt[i].append(raw.lower() if fold else raw)
        else:
            decoded = raw.decode("utf-8", errors="replace")
            per_stmt[i].append((decoded.lower() if fold else decoded).encode("utf-8"))
    return [hashlib.sha256(b"\x1f".join(parts) + b"\x1f").hexdigest() if parts else _EMPTY_DIGEST for parts in per_stmt]


def _qualified(rv: pb.RangeVar) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname


def _drop_target(obj: pb.Node) -> str:
    """A DROP target as dotted text: ``schema.name`` for relations, the type name for types."""
    if obj.HasField("list"):
        return ".".join(item.string.sval for item in obj.list.items if item.HasField("string"))
    if obj.HasField("type_name"):
        return ".".join(n.string.sval for n in obj.type_name.names)
    if obj.HasField("string"):
        return str(obj.string.sval)
    return ""


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    name: str = enum.Name(value)
    return name.removeprefix(prefix)


def _has_volatile_call(msg: Any) -> bool:
    import postgast
    from postgast import pg_query_pb2 as pb

    for _field, obj in postgast.walk(msg):
        if isinstance(obj, pb.FuncCall):
            fname = obj.funcname[-1].string.sval if obj.funcname else ""
            if fname.lower() in _VOLATILE_FUNCTIONS:
                return True
    return False


def _alter_cmd(cmd: pb.AlterTableCmd) -> AlterCmd:
    from postgast import pg_query_pb2 as pb

    subtype = _enum_name(pb.AlterTableType, cmd.subtype, "AT_")
    definition = getattr(cmd, "def")
    constraint_type = None
    not_valid = False
    volatile = False
    concurrent = False
    using_index = False
    if definition.HasField("constraint"):
        con = definition.constraint
        constraint_type = _enum_name(pb.ConstrType, con.contype, "CONSTR_")
        not_valid = con.skip_validation
        using_index = bool(con.indexname)
    elif definition.HasField("column_def"):
        coldef = definition.column_def
        type_name = coldef.type_name.names[-1].string.sval if coldef.type_name.names else ""
        volatile = type_name.lower() in _SERIAL_TYPES and subtype == "AddColumn"
        for c in coldef.constraints:
            if c.constraint.contype == pb.CONSTR_DEFAULT and _has_volatile_call(c.constraint.raw_expr):
                volatile = True
        if coldef.HasField("raw_default") and _has_volatile_call(coldef.raw_default):
            volatile = True
    elif definition.HasField("partition_cmd"):
        concurrent = definition.partition_cmd.concurrent
    column = cmd.name or (definition.column_def.colname if definition.HasField("column_def") else None)
    return AlterCmd(
        subtype=subtype,
        column=column or None,
        constraint_type=constraint_type,
        not_valid=not_valid,
        volatile_default=volatile,
        concurrent=concurrent,
        using_index=using_index,
    )


def _expr_sql(expr: pb.Node) -> str:
    """Deparse one expression by wrapping it in ``SELECT``."""
    import postgast
    from postgast import pg_query_pb2 as pb

    select = pb.Node(select_stmt=pb.SelectStmt(target_list=[pb.Node(res_target=pb.ResTarget(val=expr))]))
    sql: str = postgast.deparse(pb.ParseResult(stmts=[pb.RawStmt(stmt=select)]))
    return sql.removeprefix("SELECT ")


def _elem_sql(elem: pb.IndexElem) -> str:
    from postgast import pg_query_pb2 as pb

    text = f'"{elem.name}"' if elem.name and elem.name != elem.name.lower() else elem.name
    if elem.HasField("expr"):
        text = f"({_expr_sql(elem.expr)})"
    if elem.collation:
        text += " COLLATE " + ".".join(n.string.sval for n in elem.collation)
    if elem.opclass:
        text += " " + ".".join(n.string.sval for n in elem.opclass)
    if elem.ordering == pb.SORTBY_DESC:
        text += " DESC"
    if elem.nulls_ordering == pb.SORTBY_NULLS_FIRST:
        text += " NULLS FIRST"
    elif elem.nulls_ordering == pb.SORTBY_NULLS_LAST:
        text += " NULLS LAST"
    return text


def _index_def(stmt: pb.IndexStmt, text: str) -> IndexDef:
    return IndexDef(
        name=stmt.idxname or None,
        schema=stmt.relation.schemaname or None,
        table=stmt.relation.relname,
        unique=stmt.unique,
        method=stmt.access_method or "btree",
        columns=tuple(_elem_sql(p.index_elem) for p in stmt.index_params),
        include=tuple(_elem_sql(p.index_elem) for p in stmt.index_including_params),
        predicate=_expr_sql(stmt.where_clause) if stmt.HasField("where_clause") else None,
        concurrent=stmt.concurrent,
        if_not_exists=stmt.if_not_exists,
        only=not stmt.relation.inh,
        source=text,
    )


_COMMANDS: dict[str, str] = {
    "create_stmt": "CREATE TABLE",
    "alter_table_stmt": "ALTER TABLE",
    "index_stmt": "CREATE INDEX",
    "drop_stmt": "DROP",
    "reindex_stmt": "REINDEX",
    "vacuum_stmt": "VACUUM",
    "transaction_stmt": "TRANSACTION",
    "insert_stmt": "INSERT",
    "update_stmt": "UPDATE",
    "delete_stmt": "DELETE",
    "merge_stmt": "MERGE",
    "copy_stmt": "COPY",
    "rename_stmt": "RENAME",
    "createdb_stmt": "CREATE DATABASE",
    "dropdb_stmt": "DROP DATABASE",
    "alter_system_stmt": "ALTER SYSTEM",
    "create_table_space_stmt": "CREATE TABLESPACE",
    "drop_table_space_stmt": "DROP TABLESPACE",
    "cluster_stmt": "CLUSTER",
    "create_function_stmt": "CREATE FUNCTION",
    "do_stmt": "DO",
    "view_stmt": "CREATE VIEW",
    "create_enum_stmt": "CREATE TYPE",
    "alter_enum_stmt": "ALTER TYPE",
    "select_stmt": "SELECT",
    "create_subscription_stmt": "CREATE SUBSCRIPTION",
    "drop_subscription_stmt": "DROP SUBSCRIPTION",
    "alter_database_set_stmt": "ALTER DATABASE",
    "alter_database_stmt": "ALTER DATABASE",
}


def _describe(node: pb.Node, *, start: int, end: int, text: str, digest: str) -> Statement:
    from postgast import pg_query_pb2 as pb

    kind = node.WhichOneof("node") or "unknown"
    inner = getattr(node, kind)
    command = _COMMANDS.get(kind, kind.removesuffix("_stmt").replace("_", " ").upper())
    base: dict[str, Any] = {"start": start, "end": end, "text": text, "node": kind, "tokens_digest": digest}
    if kind == "index_stmt":
        index = _index_def(inner, text)
        return Statement(
            **base, command=command, relation=_qualified(inner.relation), concurrent=inner.concurrent, index=index
        )
    if kind == "alter_table_stmt":
        cmds = tuple(_alter_cmd(c.alter_table_cmd) for c in inner.cmds)
        objtype = _enum_name(pb.ObjectType, inner.objtype, "OBJECT_")
        return Statement(
            **base,
            command=f"ALTER {objtype.replace('_', ' ')}",
            relation=_qualified(inner.relation),
            concurrent=any(c.concurrent for c in cmds),
            alter_cmds=cmds,
        )
    if kind == "create_stmt":
        return Statement(**base, command=command, relation=_qualified(inner.relation))
    if kind == "drop_stmt":
        drop_type = _enum_name(pb.ObjectType, inner.remove_type, "OBJECT_")
        return Statement(
            **base, command=f"DROP {drop_type.replace('_', ' ')}", drop_type=drop_type, concurrent=inner.concurrent,
            objects=tuple(_drop_target(o) for o in inner.objects),
        )
    if kind == "reindex_stmt":
        concurrent = any(p.def_elem.defname == "concurrently" for p in inner.params)
        return Statement(**base, command=command, concurrent=concurrent)
    if kind == "transaction_stmt":
        tkind = _enum_name(pb.TransactionStmtKind, inner.kind, "TRANS_STMT_")
        return Statement(**base, command=tkind.replace("_", " "), transaction_kind=tkind)
    if kind == "rename_stmt":
        rtype = _enum_name(pb.ObjectType, inner.rename_type, "OBJECT_")
        return Statement(
            **base, command=f"ALTER {rtype} RENAME", rename_type=rtype,
            relation=_qualified(inner.relation) if inner.HasField("relation") else None, new_name=inner.newname or None,
        )
    if kind == "cluster_stmt":
        return Statement(**base, command=command, has_relation=inner.HasField("relation"))
    if kind in ("insert_stmt", "update_stmt", "delete_stmt", "merge_stmt"):
        return Statement(**base, command=command, relation=_qualified(inner.relation))
    return Statement(**base, command=command)


def render_index(
    index: IndexDef,
    *,
    name: str | None = None,
    concurrently: bool = True,
    schema: str | None = None,
    table: str | None = None,
    only: bool = False,
) -> str:
    """The ``CREATE INDEX`` to send: never ``IF NOT EXISTS``; optionally under another name,
    on another table (a partition, a scratch copy) or ``ON ONLY`` a partitioned parent."""
    import postgast
    from postgast import pg_query_pb2 as pb

    tree = postgast.parse(index.source)
    stmt = tree.stmts[0].stmt.index_stmt
    stmt.concurrent = concurrently
    stmt.if_not_exists = False
    if name is not None:
        stmt.idxname = name
    if table is not None:
        stmt.relation.relname = table
        stmt.relation.schemaname = schema or ""
    if only:
        stmt.relation.inh = False
    return str(postgast.deparse(pb.ParseResult(version=tree.version, stmts=[pb.RawStmt(stmt=tree.stmts[0].stmt)])))


def canonical_index(sql: str, *, default_schema: str = "public") -> str:
    """A comparable form of an index definition: no name, no CONCURRENTLY/IF NOT EXISTS, schema explicit."""
    import postgast
    from postgast import pg_query_pb2 as pb

    tree = postgast.parse(sql)
    stmt = tree.stmts[0].stmt.index_stmt
    stmt.concurrent = False
    stmt.if_not_exists = False
    stmt.idxname = "_"
    if not stmt.relation.schemaname:
        stmt.relation.schemaname = default_schema
    if not stmt.access_method:
        stmt.access_method = "btree"
    return str(postgast.deparse(pb.ParseResult(version=tree.version, stmts=[pb.RawStmt(stmt=tree.stmts[0].stmt)])))


def index_shape(sql: str) -> str:
    """An index definition with its name and table blanked out: two definitions with equal
    shapes index the same columns/expressions the same way (compare server-rendered forms,
    e.g. two ``pg_get_indexdef`` results, so that implicit casts are spelled alike)."""
    import postgast
    from postgast import pg_query_pb2 as pb

    tree = postgast.parse(sql)
    stmt = tree.stmts[0].stmt.index_stmt
    stmt.concurrent = False
    stmt.if_not_exists = False
    stmt.idxname = ""
    stmt.relation.schemaname = ""
    stmt.relation.relname = "_"
    stmt.relation.inh = True
    if not stmt.access_method:
        stmt.access_method = "btree"
    return str(postgast.deparse(pb.ParseResult(version=tree.version, stmts=[pb.RawStmt(stmt=tree.stmts[0].stmt)])))


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL, always (identifiers from files are never trusted)."""
    return '"' + name.replace('"', '""') + '"'
