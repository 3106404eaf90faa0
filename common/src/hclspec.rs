//! Builders for Nomad's hclspec schema messages, so schemas read like Nomad's Go
//! `hclspec.NewObject(...)` calls.

use crate::proto::hclspec::{self as h, spec::Block as B, Spec};
use std::collections::HashMap;

fn wrap(b: B) -> Spec {
    Spec { block: Some(b) }
}

/// An object whose map keys are the attribute names.
pub fn object(attrs: Vec<(&str, Spec)>) -> Spec {
    let attributes: HashMap<String, Spec> =
        attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    wrap(B::Object(h::Object { attributes }))
}

/// An attribute. `name` must be given explicitly inside `default_` (no implied name there).
pub fn attr(name: &str, ty: &str, required: bool) -> Spec {
    wrap(B::Attr(h::Attr {
        name: name.to_owned(),
        r#type: ty.to_owned(),
        required,
    }))
}

/// `primary` if set, else `default` (an HCL expression literal).
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

/// A string literal, quoted for HCL.
pub fn literal_string(s: &str) -> Spec {
    literal(&format!("{:?}", s))
}

/// An optional or required single nested block.
pub fn block(name: &str, required: bool, nested: Spec) -> Spec {
    wrap(B::BlockValue(Box::new(h::Block {
        name: name.to_owned(),
        required,
        nested: Some(Box::new(nested)),
    })))
}

/// A repeated nested block.
pub fn block_list(name: &str, min_items: u64, max_items: u64, nested: Spec) -> Spec {
    wrap(B::BlockList(Box::new(h::BlockList {
        name: name.to_owned(),
        min_items,
        max_items,
        nested: Some(Box::new(nested)),
    })))
}

/// Every attribute name in a spec tree (for tests and docs).
pub fn attribute_names(spec: &Spec, out: &mut Vec<String>) {
    match spec.block.as_ref() {
        Some(B::Object(o)) => o.attributes.values().for_each(|s| attribute_names(s, out)),
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
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn builders_produce_the_wire_shapes() {
        let s = object(vec![
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
        ]);
        // Round-trips through protobuf, i.e. it is a valid message.
        let bytes = s.encode_to_vec();
        let back = Spec::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, s);
        let mut names = Vec::new();
        attribute_names(&s, &mut names);
        names.sort();
        assert_eq!(names, ["enabled", "n", "script"]);
        assert_eq!(literal_string("/run/x"), literal("\"/run/x\""));
    }
}
