//! Builders for Nomad's hclspec schema messages, so schemas read like Nomad's Go
//! `hclspec.NewObject(...)` calls, plus [`check`] (the conversion rules Nomad applies to a
//! schema, so a bad one fails a unit test instead of every task) and [`render`] (a compact
//! one-line form for logs and tests).
//!
//! ```
//! use driver::hclspec::*;
//! let spec = object(vec![
//!     ("script", attr("script", "string", true)),
//!     ("enabled", default_(attr("enabled", "bool", false), literal("true"))),
//!     ("dir", default_(attr("dir", "string", false), literal_string("/run/x"))),
//! ]);
//! check(&spec).unwrap();
//! assert_eq!(
//!     render(&spec),
//!     r#"{dir = default(attr("dir", string), "/run/x"), enabled = default(attr("enabled", bool), true), script = attr("script", string, required)}"#
//! );
//! ```
//!
//! Rules worth remembering (from Nomad's `plugins/shared/hclspec` decoder, the reader of
//! `proto/plugins/shared/hclspec/hcl_spec.proto`): only a *direct child of an object* gets the
//! map key as its implied name, so an `attr` inside `default_` must carry its name; a literal
//! is an HCL expression (`"true"`, `"[]"`, `"\"text\""` — use [`literal_string`] for text);
//! the root should be an object.

use common::error::FieldError;
use common::proto::hclspec::{self as h, spec::Block as B, Spec};
use std::collections::HashMap;

fn wrap(b: B) -> Spec {
    Spec { block: Some(b) }
}

/// An object whose map keys are the attribute names (and the implied names of its children).
pub fn object(attrs: Vec<(&str, Spec)>) -> Spec {
    let attributes: HashMap<String, Spec> =
        attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    wrap(B::Object(h::Object { attributes }))
}

/// A tuple of values, one per spec.
pub fn array(values: Vec<Spec>) -> Spec {
    wrap(B::Array(h::Array { values }))
}

/// An attribute of type `ty` (an HCL type expression: `string`, `number`, `bool`,
/// `list(string)`, `map(string)`, …). The name may only be left empty for a direct child of
/// [`object`]; inside [`default_`] it must be given.
pub fn attr(name: &str, ty: &str, required: bool) -> Spec {
    wrap(B::Attr(h::Attr {
        name: name.to_owned(),
        r#type: ty.to_owned(),
        required,
    }))
}

/// `primary` if it is set (non-null), else `default` (usually a [`literal`]).
pub fn default_(primary: Spec, default: Spec) -> Spec {
    wrap(B::Default(Box::new(h::Default {
        primary: Some(Box::new(primary)),
        default: Some(Box::new(default)),
    })))
}

/// A literal HCL expression: `"true"`, `"30"`, `"[]"`, `"\"text\""`.
pub fn literal(expr: &str) -> Spec {
    wrap(B::Literal(h::Literal {
        value: expr.to_owned(),
    }))
}

/// A string literal, quoted and escaped for HCL (including `${` and `%{`, which would
/// otherwise start a template).
pub fn literal_string(s: &str) -> Spec {
    literal(&hcl_quote(s))
}

/// `s` as an HCL quoted-string expression.
pub fn hcl_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A single nested block; its value is the nested spec's value, or null when absent.
pub fn block(name: &str, required: bool, nested: Spec) -> Spec {
    wrap(B::BlockValue(Box::new(h::Block {
        name: name.to_owned(),
        required,
        nested: Some(Box::new(nested)),
    })))
}

/// A block whose attributes are free-form, all of element type `ty` (a `map(ty)`).
pub fn block_attrs(name: &str, ty: &str, required: bool) -> Spec {
    wrap(B::BlockAttrs(h::BlockAttrs {
        name: name.to_owned(),
        r#type: ty.to_owned(),
        required,
    }))
}

/// A repeated nested block (a list; empty when absent). `max_items` 0 = unlimited.
pub fn block_list(name: &str, min_items: u64, max_items: u64, nested: Spec) -> Spec {
    wrap(B::BlockList(Box::new(h::BlockList {
        name: name.to_owned(),
        min_items,
        max_items,
        nested: Some(Box::new(nested)),
    })))
}

/// A repeated nested block as a set (deduplicated, unordered). `max_items` 0 = unlimited.
pub fn block_set(name: &str, min_items: u64, max_items: u64, nested: Spec) -> Spec {
    wrap(B::BlockSet(Box::new(h::BlockSet {
        name: name.to_owned(),
        min_items,
        max_items,
        nested: Some(Box::new(nested)),
    })))
}

/// Labelled blocks (`name "label" { … }`) as a map keyed by the labels (at least one).
pub fn block_map(name: &str, labels: &[&str], nested: Spec) -> Spec {
    wrap(B::BlockMap(Box::new(h::BlockMap {
        name: name.to_owned(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        nested: Some(Box::new(nested)),
    })))
}

/// Every attribute name in a spec tree (for tests and docs).
pub fn attribute_names(spec: &Spec, out: &mut Vec<String>) {
    match spec.block.as_ref() {
        Some(B::Object(o)) => o.attributes.values().for_each(|s| attribute_names(s, out)),
        Some(B::Array(a)) => a.values.iter().for_each(|s| attribute_names(s, out)),
        Some(B::Attr(a)) => out.push(a.name.clone()),
        Some(B::Default(d)) => {
            if let Some(p) = d.primary.as_deref() {
                attribute_names(p, out)
            }
        }
        Some(B::BlockValue(b)) => {
            if let Some(n) = b.nested.as_deref() {
                attribute_names(n, out)
            }
        }
        Some(B::BlockList(b)) => {
            if let Some(n) = b.nested.as_deref() {
                attribute_names(n, out)
            }
        }
        Some(B::BlockSet(b)) => {
            if let Some(n) = b.nested.as_deref() {
                attribute_names(n, out)
            }
        }
        Some(B::BlockMap(b)) => {
            if let Some(n) = b.nested.as_deref() {
                attribute_names(n, out)
            }
        }
        Some(B::BlockAttrs(_)) | Some(B::Literal(_)) | None => {}
    }
}

/// A compact one-line rendering, with object keys sorted, e.g.
/// `{a = attr("a", string, required), b = default(attr("b", bool), true)}`.
pub fn render(spec: &Spec) -> String {
    let mut out = String::new();
    render_into(spec, &mut out);
    out
}

fn render_opt(spec: Option<&Spec>, out: &mut String) {
    match spec {
        Some(s) => render_into(s, out),
        None => out.push_str("<nil>"),
    }
}

fn render_into(spec: &Spec, out: &mut String) {
    let req = |r: bool| if r { ", required" } else { "" };
    match spec.block.as_ref() {
        None => out.push_str("<nil>"),
        Some(B::Object(o)) => {
            let mut keys: Vec<&String> = o.attributes.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(" = ");
                render_into(&o.attributes[k], out);
            }
            out.push('}');
        }
        Some(B::Array(a)) => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_into(v, out);
            }
            out.push(']');
        }
        Some(B::Attr(a)) => out.push_str(&format!(
            "attr({:?}, {}{})",
            a.name,
            a.r#type,
            req(a.required)
        )),
        Some(B::BlockValue(b)) => {
            out.push_str(&format!("block({:?}{}, ", b.name, req(b.required)));
            render_opt(b.nested.as_deref(), out);
            out.push(')');
        }
        Some(B::BlockAttrs(b)) => out.push_str(&format!(
            "block_attrs({:?}, {}{})",
            b.name,
            b.r#type,
            req(b.required)
        )),
        Some(B::BlockList(b)) => {
            out.push_str(&format!(
                "block_list({:?}, {}..{}, ",
                b.name, b.min_items, b.max_items
            ));
            render_opt(b.nested.as_deref(), out);
            out.push(')');
        }
        Some(B::BlockSet(b)) => {
            out.push_str(&format!(
                "block_set({:?}, {}..{}, ",
                b.name, b.min_items, b.max_items
            ));
            render_opt(b.nested.as_deref(), out);
            out.push(')');
        }
        Some(B::BlockMap(b)) => {
            out.push_str(&format!("block_map({:?}, {:?}, ", b.name, b.labels));
            render_opt(b.nested.as_deref(), out);
            out.push(')');
        }
        Some(B::Default(d)) => {
            out.push_str("default(");
            render_opt(d.primary.as_deref(), out);
            out.push_str(", ");
            render_opt(d.default.as_deref(), out);
            out.push(')');
        }
        Some(B::Literal(l)) => out.push_str(&l.value),
    }
}

/// Checks a schema the way Nomad's conversion (`hclspecutils`) does: no nil specs, every
/// attribute and block has a name (implied only for direct children of an object), type
/// expressions parse, blocks have a nested spec, block maps have labels, defaults have both
/// halves. The root must be an object. The error's field is where in the spec, e.g.
/// `<root>.elide_opts.nested.languages`.
pub fn check(spec: &Spec) -> Result<(), FieldError> {
    if !matches!(spec.block, Some(B::Object(_))) {
        return Err(FieldError {
            field: "<root>".into(),
            message: "the root spec must be an object".into(),
        });
    }
    check_at(spec, "", "<root>")
}

fn check_at(spec: &Spec, implied: &str, path: &str) -> Result<(), FieldError> {
    let fail = |message: String| {
        Err(FieldError {
            field: path.to_owned(),
            message,
        })
    };
    let name_of = |name: &str, what: &str| -> Result<(), FieldError> {
        if name.is_empty() && implied.is_empty() {
            return Err(FieldError {
                field: path.to_owned(),
                message: format!(
                    "Missing name in {what} spec (only direct children of an object get an implied name)"
                ),
            });
        }
        Ok(())
    };
    let nested = |n: Option<&Spec>| -> Result<(), FieldError> {
        match n {
            None => Err(FieldError {
                field: path.to_owned(),
                message: "Missing spec block (nested)".into(),
            }),
            Some(n) => check_at(n, "", &format!("{path}.nested")),
        }
    };
    match spec.block.as_ref() {
        None => fail("nil spec given".into()),
        Some(B::Object(o)) => {
            let mut keys: Vec<&String> = o.attributes.keys().collect();
            keys.sort();
            for k in keys {
                check_at(&o.attributes[k], k, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Some(B::Array(a)) => {
            for (i, v) in a.values.iter().enumerate() {
                check_at(v, "", &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Some(B::Attr(a)) => {
            name_of(&a.name, "attribute")?;
            check_type(&a.r#type).or_else(fail)
        }
        Some(B::BlockValue(b)) => {
            name_of(&b.name, "block")?;
            nested(b.nested.as_deref())
        }
        Some(B::BlockAttrs(b)) => {
            name_of(&b.name, "block_attrs")?;
            check_type(&b.r#type).or_else(fail)
        }
        Some(B::BlockList(b)) => {
            name_of(&b.name, "block_list")?;
            if b.max_items != 0 && b.min_items > b.max_items {
                return fail(format!(
                    "min_items {} is above max_items {}",
                    b.min_items, b.max_items
                ));
            }
            nested(b.nested.as_deref())
        }
        Some(B::BlockSet(b)) => {
            name_of(&b.name, "block_set")?;
            if b.max_items != 0 && b.min_items > b.max_items {
                return fail(format!(
                    "min_items {} is above max_items {}",
                    b.min_items, b.max_items
                ));
            }
            nested(b.nested.as_deref())
        }
        Some(B::BlockMap(b)) => {
            name_of(&b.name, "block_map")?;
            if b.labels.is_empty() {
                return fail("block_map needs at least one label".into());
            }
            nested(b.nested.as_deref())
        }
        Some(B::Default(d)) => {
            let (Some(p), Some(dv)) = (d.primary.as_deref(), d.default.as_deref()) else {
                return fail("default needs both a primary and a default spec".into());
            };
            check_at(p, "", &format!("{path}.primary"))?;
            check_at(dv, "", &format!("{path}.default"))
        }
        Some(B::Literal(l)) => {
            if l.value.trim().is_empty() {
                fail(
                    "a literal needs an HCL expression, e.g. \"true\", \"[]\" or \"\\\"text\\\"\""
                        .into(),
                )
            } else {
                Ok(())
            }
        }
    }
}

/// Validates an HCL type expression: `string`, `number`, `bool`, `any`, `list(T)`, `set(T)`,
/// `map(T)`, `object({k = T, …})`, `tuple([T, …])`.
fn check_type(expr: &str) -> Result<(), String> {
    let mut p = TypeParser {
        s: expr.as_bytes(),
        i: 0,
        depth: 0,
    };
    let bad = |why: String| format!("type expression {expr:?}: {why}");
    if expr.trim().is_empty() {
        return Err(bad(
            "is empty; give a type such as string or list(string)".into()
        ));
    }
    p.ty().map_err(bad)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(bad(format!("unexpected text at byte {}", p.i)));
    }
    Ok(())
}

/// How deep type expressions may nest (the parser recurses once per level).
const MAX_TYPE_DEPTH: usize = 64;

struct TypeParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl TypeParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn ident(&mut self) -> String {
        self.ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'_' | b'-'))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn ty(&mut self) -> Result<(), String> {
        if self.depth >= MAX_TYPE_DEPTH {
            return Err(format!("nested more than {MAX_TYPE_DEPTH} levels deep"));
        }
        self.depth += 1;
        let r = self.ty_inner();
        self.depth -= 1;
        r
    }

    /// After an item of an object (`}`) or tuple (`]`): a comma, the closing bracket, or for
    /// objects a newline, as HCL separates them.
    fn separator(&mut self, close: u8) -> Result<(), String> {
        let before = self.i;
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(())
            }
            Some(c) if c == close => Ok(()),
            _ if close == b'}' && self.s[before..self.i].contains(&b'\n') => Ok(()),
            _ => Err(format!(
                "expected ',' or '{}' at byte {}",
                close as char, self.i
            )),
        }
    }

    fn ty_inner(&mut self) -> Result<(), String> {
        let word = self.ident();
        match word.as_str() {
            "string" | "number" | "bool" | "any" => Ok(()),
            "list" | "set" | "map" => {
                self.eat(b'(')?;
                self.ty()?;
                self.eat(b')')
            }
            "object" => {
                self.eat(b'(')?;
                self.eat(b'{')?;
                while self.peek() != Some(b'}') {
                    if self.ident().is_empty() {
                        return Err(format!("expected an attribute name at byte {}", self.i));
                    }
                    self.eat(b'=')?;
                    self.ty()?;
                    self.separator(b'}')?;
                }
                self.eat(b'}')?;
                self.eat(b')')
            }
            "tuple" => {
                self.eat(b'(')?;
                self.eat(b'[')?;
                while self.peek() != Some(b']') {
                    self.ty()?;
                    self.separator(b']')?;
                }
                self.eat(b']')?;
                self.eat(b')')
            }
            "" => Err(format!("expected a type at byte {}", self.i)),
            other => Err(format!(
                "unknown type {other:?} (string, number, bool, any, list, set, map, object, tuple)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> Spec {
        object(vec![
            (
                "enabled",
                default_(attr("enabled", "bool", false), literal("true")),
            ),
            ("script", attr("script", "string", true)),
            (
                "opts",
                block(
                    "opts",
                    false,
                    object(vec![("n", attr("n", "number", false))]),
                ),
            ),
            (
                "port",
                block_list(
                    "port",
                    0,
                    2,
                    object(vec![("to", attr("", "number", false))]),
                ),
            ),
            ("labels", block_attrs("labels", "string", false)),
            (
                "mount",
                block_map(
                    "mount",
                    &["name"],
                    object(vec![("ro", attr("ro", "bool", false))]),
                ),
            ),
            (
                "tag",
                block_set("tag", 0, 0, object(vec![("v", attr("v", "string", false))])),
            ),
            (
                "pair",
                array(vec![attr("a", "string", false), literal("1")]),
            ),
        ])
    }

    #[test]
    fn builders_produce_the_wire_shapes() {
        let s = sample();
        // Round-trips through protobuf, i.e. it is a valid message.
        let bytes = s.encode_to_vec();
        let back = Spec::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, s);
        let Some(B::Object(o)) = &s.block else {
            panic!("root is an object")
        };
        let Some(B::Default(d)) = &o.attributes["enabled"].block else {
            panic!("enabled is a default")
        };
        assert_eq!(d.primary.as_deref(), Some(&attr("enabled", "bool", false)));
        assert_eq!(d.default.as_deref(), Some(&literal("true")));
        let Some(B::BlockMap(m)) = &o.attributes["mount"].block else {
            panic!("mount is a block_map")
        };
        assert_eq!(m.labels, ["name"]);
        let mut names = Vec::new();
        attribute_names(&s, &mut names);
        names.sort();
        assert_eq!(names, ["", "a", "enabled", "n", "ro", "script", "v"]);
        check(&s).unwrap();
    }

    #[test]
    fn string_literals_are_hcl_quoted() {
        assert_eq!(literal_string("/run/x"), literal("\"/run/x\""));
        assert_eq!(literal_string(""), literal("\"\""));
        assert_eq!(hcl_quote("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        // Template sequences are escaped so they stay text.
        assert_eq!(
            hcl_quote("${HOME} %{if} $x 100%"),
            r#""$${HOME} %%{if} $x 100%""#
        );
        assert_eq!(hcl_quote("\u{1}"), r#""\u0001""#);
        assert_eq!(hcl_quote("héllo"), "\"héllo\"");
    }

    #[test]
    fn render_is_compact_and_sorted() {
        let s = object(vec![
            (
                "b",
                default_(attr("b", "list(string)", false), literal("[]")),
            ),
            ("a", attr("a", "string", true)),
            (
                "c",
                block("c", false, object(vec![("n", attr("n", "number", false))])),
            ),
        ]);
        assert_eq!(
            render(&s),
            r#"{a = attr("a", string, required), b = default(attr("b", list(string)), []), c = block("c", {n = attr("n", number)})}"#
        );
        assert_eq!(render(&Spec { block: None }), "<nil>");
        let r = render(&sample());
        assert!(
            r.contains(r#"port = block_list("port", 0..2, {to = attr("", number)})"#),
            "{r}"
        );
        assert!(
            r.contains(r#"mount = block_map("mount", ["name"], "#),
            "{r}"
        );
        assert!(r.contains(r#"pair = [attr("a", string), 1]"#), "{r}");
    }

    #[test]
    fn check_applies_nomads_conversion_rules() {
        let cases: Vec<(Spec, &str)> = vec![
            (
                attr("x", "string", false),
                "<root>: the root spec must be an object",
            ),
            (
                object(vec![(
                    "x",
                    default_(attr("", "bool", false), literal("true")),
                )]),
                "<root>.x.primary: Missing name in attribute spec",
            ),
            (
                object(vec![("x", array(vec![attr("", "bool", false)]))]),
                "<root>.x[0]: Missing name in attribute spec",
            ),
            (
                object(vec![(
                    "b",
                    block("b", false, object(vec![("y", attr("y", "strng", false))])),
                )]),
                "<root>.b.nested.y: type expression \"strng\": unknown type",
            ),
            (
                object(vec![("x", attr("x", "", false))]),
                "<root>.x: type expression \"\": is empty",
            ),
            (
                object(vec![("x", attr("x", "list(string", false))]),
                "expected ')'",
            ),
            (
                object(vec![("m", block_map("m", &[], object(vec![])))]),
                "<root>.m: block_map needs at least one label",
            ),
            (
                object(vec![("l", block_list("l", 3, 1, object(vec![])))]),
                "<root>.l: min_items 3 is above max_items 1",
            ),
            (
                object(vec![("x", Spec { block: None })]),
                "<root>.x: nil spec given",
            ),
            (
                object(vec![(
                    "x",
                    default_(attr("x", "string", false), literal("")),
                )]),
                "<root>.x.default: a literal needs an HCL expression",
            ),
            (
                object(vec![(
                    "b",
                    wrap(B::BlockValue(Box::new(h::Block {
                        name: "b".into(),
                        required: false,
                        nested: None,
                    }))),
                )]),
                "<root>.b: Missing spec block",
            ),
        ];
        for (spec, want) in cases {
            let e = check(&spec).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "want {want:?} in {e:?} for {}",
                render(&spec)
            );
        }
        // Implied names: a direct child of an object may leave its name empty.
        check(&object(vec![("x", attr("", "string", false))])).unwrap();
    }

    #[test]
    fn type_expressions() {
        for ok in [
            "string",
            "number",
            "bool",
            "any",
            "list(string)",
            "set(number)",
            "list(map(string))",
            " map( bool ) ",
            "object({a = string, b = list(number)})",
            "object({})",
            "tuple([string, number])",
            "tuple([string, number,])",
            "object({\n  a = string\n  b = number\n})",
        ] {
            assert_eq!(check_type(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "str",
            "list",
            "list()",
            "map(string) x",
            "object({a})",
            "tuple([string",
            "tuple([string number])",
            "object({a = string b = number})",
        ] {
            assert!(check_type(bad).is_err(), "{bad}");
        }
        // Deep nesting is refused, not a stack overflow (the parser recurses per level).
        let deep = format!("{}string{}", "list(".repeat(100_000), ")".repeat(100_000));
        let e = check_type(&deep).unwrap_err();
        assert!(
            e.contains("nested more than 64 levels"),
            "{}",
            &e[e.len() - 60..]
        );
    }
}
