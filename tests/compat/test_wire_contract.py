"""Our proto/ against Nomad v2.0.5's plugin wire contract, kept as data.

`nomad-2.0.5-wire.tsv` lists every message, enum, field (number, type, label, oneof), enum
value, reserved number/name and RPC (request, response, streaming) of Nomad v2.0.5's plugin
protos; its header says where it comes from and how it was produced. This test compiles our
re-typed proto/ to a descriptor set with grpcio-tools, lists the same rows from it, and
requires both lists to be equal: a field renumbered, retyped, relabelled, moved in or out of a
oneof, or an RPC whose streaming or types changed, fails here before any agent sees it.
Ours may only add rows, and only those in DOCUMENTED_EXTRAS, each with its reason.

    python3 -m pytest -v tests/compat/test_wire_contract.py
"""

from __future__ import annotations

import os

from google.protobuf import descriptor_pb2

from protoset import HERE, NOMAD_PROTOS, protoc

REFERENCE = os.path.join(HERE, "nomad-2.0.5-wire.tsv")
COLUMNS = ["kind", "package", "parent", "name", "number", "type", "label", "oneof"]
REFERENCE_COMMIT = "5c8612bba6eb8e44cc3fc434125cb1b13463c309"  # hashicorp/nomad v2.0.5

Row = tuple[str, ...]

# Rows proto/ has that Nomad 2.0.5 has not (e.g. a field older agents still send), row -> why.
# None today: proto/ is exactly 2.0.5's contract (older agents simply never send newer fields).
DOCUMENTED_EXTRAS: dict[Row, str] = {}

FieldProto = descriptor_pb2.FieldDescriptorProto
SCALAR_NAMES = {number: name[len("TYPE_"):].lower() for name, number in FieldProto.Type.items()}
# Repeated fields of these types are packed on the wire by default in proto3.
NOT_PACKABLE = {FieldProto.TYPE_STRING, FieldProto.TYPE_BYTES, FieldProto.TYPE_MESSAGE,
                FieldProto.TYPE_GROUP}
STREAMING = {(False, False): "unary", (False, True): "server_streaming",
             (True, False): "client_streaming", (True, True): "bidi_streaming"}


def reference_rows() -> list[Row]:
    rows = []
    header_seen = False
    with open(REFERENCE) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith("#") or not line:
                continue
            cells = tuple(line.split("\t"))
            assert len(cells) == len(COLUMNS), f"{REFERENCE}:{lineno}: {len(cells)} columns"
            if not header_seen:
                assert list(cells) == COLUMNS, f"{REFERENCE}:{lineno}: not the column header"
                header_seen = True
                continue
            rows.append(cells)
    return rows


def wire_rows(descriptor_set: descriptor_pb2.FileDescriptorSet, files: list[str]) -> list[Row]:
    """The rows of `files` (names inside the set), in the TSV's format."""
    messages = {}

    def index(prefix, nested):
        for m in nested:
            messages[f"{prefix}.{m.name}"] = m
            index(f"{prefix}.{m.name}", m.nested_type)

    for f in descriptor_set.file:
        index("." + f.package, f.message_type)

    rows: list[Row] = []
    by_name = {f.name: f for f in descriptor_set.file}
    for name in files:
        file = by_name[name]
        pkg, proto3 = file.package, file.syntax == "proto3"

        def type_name(field):
            if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
                return field.type_name.lstrip(".")
            return SCALAR_NAMES[field.type]

        def field_row(parent, message, field):
            entry = messages.get(field.type_name)
            if field.label == FieldProto.LABEL_REPEATED and entry and entry.options.map_entry:
                key, value = entry.field
                typ, label = f"map<{type_name(key)},{type_name(value)}>", "map"
            elif field.label == FieldProto.LABEL_REPEATED:
                typ = type_name(field)
                packed = field.options.packed if field.options.HasField("packed") else proto3
                label = "repeated packed" if packed and field.type not in NOT_PACKABLE \
                    else "repeated"
            else:
                typ = type_name(field)
                label = "optional" if field.proto3_optional or not proto3 else "singular"
            oneof = "-"
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = message.oneof_decl[field.oneof_index].name
            return ("field", pkg, parent, field.name, str(field.number), typ, label, oneof)

        def add_enum(path, enum):
            rows.append(("enum", pkg, "-", path, "-", "-", "-", "-"))
            rows.extend(("enum_value", pkg, path, v.name, str(v.number), "-", "-", "-")
                        for v in enum.value)
            for r in enum.reserved_range:  # inclusive in enums
                span = str(r.start) if r.end == r.start else f"{r.start}-{r.end}"
                rows.append(("reserved", pkg, path, "-", span, "-", "-", "-"))
            rows.extend(("reserved", pkg, path, n, "-", "-", "-", "-") for n in enum.reserved_name)

        def add_message(path, message):
            if message.options.map_entry:
                return  # shown as its map<key,value> field
            rows.append(("message", pkg, "-", path, "-", "-", "-", "-"))
            rows.extend(field_row(path, message, f) for f in message.field)
            for r in message.reserved_range:  # end exclusive in messages
                span = str(r.start) if r.end == r.start + 1 else f"{r.start}-{r.end - 1}"
                rows.append(("reserved", pkg, path, "-", span, "-", "-", "-"))
            rows.extend(("reserved", pkg, path, n, "-", "-", "-", "-")
                        for n in message.reserved_name)
            for e in message.enum_type:
                add_enum(f"{path}.{e.name}", e)
            for m in message.nested_type:
                add_message(f"{path}.{m.name}", m)

        for e in file.enum_type:
            add_enum(e.name, e)
        for m in file.message_type:
            add_message(m.name, m)
        for service in file.service:
            rows.append(("service", pkg, "-", service.name, "-", "-", "-", "-"))
            for method in service.method:
                signature = f"{method.input_type.lstrip('.')} -> {method.output_type.lstrip('.')}"
                streaming = STREAMING[(method.client_streaming, method.server_streaming)]
                rows.append(("rpc", pkg, service.name, method.name, "-", signature, streaming, "-"))
    return rows


def our_rows(tmp_path) -> list[Row]:
    out = os.path.join(tmp_path, "proto.pb")
    protoc("--include_imports", f"--descriptor_set_out={out}", *NOMAD_PROTOS)
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    with open(out, "rb") as f:
        descriptor_set.ParseFromString(f.read())
    return wire_rows(descriptor_set, NOMAD_PROTOS)


def row_key(row: Row) -> Row:
    """What a row is about (a field by its name, a reserved span by its number...)."""
    kind, pkg, parent, name, number = row[:5]
    return (kind, pkg, parent, name, number if kind == "reserved" else "")


def describe(rows: set[Row], other: list[Row], other_name: str) -> str:
    others = {row_key(r): r for r in other}
    lines = []
    for row in sorted(rows):
        lines.append("  " + "\t".join(row))
        near = others.get(row_key(row))
        lines.append(f"      {other_name}: " + ("\t".join(near) if near else "absent"))
    return "\n".join(lines)


def test_reference_is_whole():
    with open(REFERENCE) as f:
        head = f.read(2000)
    assert REFERENCE_COMMIT in head and "MPL-2.0" in head, "the TSV must name its source"
    rows = reference_rows()
    assert len(rows) == len(set(rows)), "duplicate rows in the TSV"
    kinds = {(r[0], r[1]) for r in rows}
    for pkg in ("hashicorp.nomad.plugins.base.proto", "hashicorp.nomad.plugins.drivers.proto"):
        assert ("rpc", pkg) in kinds and ("field", pkg) in kinds, pkg
    for pkg in ("hashicorp.nomad.plugins.shared.hclspec", "hashicorp.nomad.plugins.shared.structs"):
        assert ("field", pkg) in kinds, pkg


def test_proto_dir_carries_nomad_2_0_5_wire_contract(tmp_path):
    reference = reference_rows()
    ours = our_rows(str(tmp_path))
    for row, why in DOCUMENTED_EXTRAS.items():
        assert why and row in ours and row not in reference, f"stale DOCUMENTED_EXTRAS: {row}"
    missing = set(reference) - set(ours)
    extra = set(ours) - set(reference) - set(DOCUMENTED_EXTRAS)
    problems = []
    if missing:
        problems.append("Nomad 2.0.5 has, proto/ has not (or not the same):\n"
                        + describe(missing, ours, "ours"))
    if extra:
        problems.append("proto/ has, Nomad 2.0.5 has not (document it in DOCUMENTED_EXTRAS "
                        "with the reason, or fix proto/):\n" + describe(extra, reference, "2.0.5"))
    assert not problems, "\n".join(problems)

