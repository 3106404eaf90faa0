//! Reading Nomad's cty-msgpack payloads (`SetConfigRequest.msgpack_config`,
//! `TaskConfig.msgpack_driver_config`) with errors that name the field.
//!
//! What cty emits (protocol doc §3.3): objects as maps with every schema key present, nil for
//! absent values, numbers as the smallest int, a float64, or — when not exactly representable —
//! a decimal *string*; lists/sets/tuples as arrays; `any`-typed values as `[bin(type), value]`.

use rmpv::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CtyError {
    #[error("the config payload is not valid msgpack: {0}")]
    Msgpack(String),
    #[error("{field}: expected {expected}, got {got}")]
    Type {
        field: String,
        expected: &'static str,
        got: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{field}: unknown key; remove it (valid keys: {valid})")]
    UnknownKey { field: String, valid: String },
}

/// Decodes one msgpack value (an empty payload is an empty object).
pub fn decode(bytes: &[u8]) -> Result<Value, CtyError> {
    if bytes.is_empty() {
        return Ok(Value::Map(Vec::new()));
    }
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd).map_err(|e| CtyError::Msgpack(e.to_string()))?;
    if !rd.is_empty() {
        return Err(CtyError::Msgpack(format!(
            "{} trailing bytes after the value",
            rd.len()
        )));
    }
    Ok(v)
}

/// Strips cty's DynamicPseudoType wrapper `[bin(type json), value]`.
fn unwrap_dynamic(v: &Value) -> &Value {
    if let Value::Array(a) = v {
        if a.len() == 2 && matches!(a[0], Value::Binary(_)) {
            return &a[1];
        }
    }
    v
}

fn describe(v: &Value) -> String {
    match v {
        Value::Nil => "null".into(),
        Value::Boolean(b) => format!("bool {b}"),
        Value::Integer(i) => format!("number {i}"),
        Value::F32(f) => format!("number {f}"),
        Value::F64(f) => format!("number {f}"),
        Value::String(s) => format!("string {:?}", s.as_str().unwrap_or("<invalid utf-8>")),
        Value::Binary(_) => "binary data".into(),
        Value::Array(_) => "a list".into(),
        Value::Map(_) => "an object".into(),
        Value::Ext(..) => "an unknown value".into(),
    }
}

/// A typed view of one cty object, remembering its path for error messages.
pub struct Obj<'a> {
    path: String,
    entries: &'a [(Value, Value)],
}

impl<'a> Obj<'a> {
    /// The root object of a payload; `path` is the name shown in errors (e.g. "config").
    pub fn root(v: &'a Value, path: &str) -> Result<Self, CtyError> {
        Self::from_value(v, path.to_owned())
    }

    fn from_value(v: &'a Value, path: String) -> Result<Self, CtyError> {
        match unwrap_dynamic(v) {
            Value::Map(entries) => Ok(Obj { path, entries }),
            // A block may arrive as a one-element list of objects.
            Value::Array(a) if a.len() == 1 => Self::from_value(&a[0], path),
            other => Err(CtyError::Type {
                field: path,
                expected: "a block/object",
                got: describe(other),
            }),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// Rejects keys outside `known` (Nomad never sends them; this guards our own callers).
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), CtyError> {
        for (k, _) in self.entries {
            let name = k.as_str().unwrap_or("");
            if !known.contains(&name) {
                return Err(CtyError::UnknownKey {
                    field: self.field(name),
                    valid: known.join(", "),
                });
            }
        }
        Ok(())
    }

    /// The raw value of `key`; None when absent or nil.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| unwrap_dynamic(v))
            .filter(|v| !v.is_nil())
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, CtyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => {
                s.as_str()
                    .map(|s| Some(s.to_owned()))
                    .ok_or_else(|| CtyError::Invalid {
                        field: self.field(key),
                        message: "is not valid UTF-8".into(),
                    })
            }
            Some(other) => Err(self.type_err(key, "a string", other)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, CtyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.as_str() == Some("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.as_str() == Some("false") => Ok(Some(false)),
            Some(other) => Err(self.type_err(key, "a bool", other)),
        }
    }

    pub fn number(&self, key: &str) -> Result<Option<f64>, CtyError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => number_of(v)
                .map(Some)
                .ok_or_else(|| self.type_err(key, "a number", v)),
        }
    }

    /// A whole number in `min..=max`.
    pub fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, CtyError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::Integer(i) => i
                .as_i64()
                .map(|i| i as f64)
                .or(i.as_u64().map(|u| u as f64)),
            other => number_of(other),
        }
        .ok_or_else(|| self.type_err(key, "a whole number", v))?;
        if n.fract() != 0.0 || !n.is_finite() {
            return Err(CtyError::Invalid {
                field: self.field(key),
                message: format!("must be a whole number, got {n}"),
            });
        }
        if n < min as f64 || n > max as f64 {
            return Err(CtyError::Invalid {
                field: self.field(key),
                message: format!("must be between {min} and {max}, got {n}"),
            });
        }
        Ok(Some(n as i64))
    }

    pub fn string_list(&self, key: &str) -> Result<Vec<String>, CtyError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match unwrap_dynamic(v) {
                    Value::String(s) => {
                        s.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| CtyError::Invalid {
                                field: format!("{}[{i}]", self.field(key)),
                                message: "is not valid UTF-8".into(),
                            })
                    }
                    other => Err(CtyError::Type {
                        field: format!("{}[{i}]", self.field(key)),
                        expected: "a string",
                        got: describe(other),
                    }),
                })
                .collect(),
            Some(other) => Err(self.type_err(key, "a list of strings", other)),
        }
    }

    /// A map of strings, given as a map or as a list of maps (merged in order).
    pub fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, CtyError> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Array(items)) => {
                let mut out = BTreeMap::new();
                for item in items {
                    out.extend(self.one_string_map(key, unwrap_dynamic(item))?);
                }
                Ok(out)
            }
            Some(v) => self.one_string_map(key, v),
        }
    }

    fn one_string_map(&self, key: &str, v: &Value) -> Result<BTreeMap<String, String>, CtyError> {
        match v {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| {
                    let k = k.as_str().unwrap_or_default().to_owned();
                    match unwrap_dynamic(v) {
                        Value::String(s) => Ok((k, s.as_str().unwrap_or_default().to_owned())),
                        Value::Integer(i) => Ok((k, i.to_string())),
                        Value::F64(f) => Ok((k, f.to_string())),
                        Value::Boolean(b) => Ok((k, b.to_string())),
                        other => Err(CtyError::Type {
                            field: format!("{}.{k}", self.field(key)),
                            expected: "a string",
                            got: describe(other),
                        }),
                    }
                })
                .collect(),
            other => Err(self.type_err(key, "a map of strings", other)),
        }
    }

    /// A nested block: None when absent (nil or an empty list).
    pub fn block(&self, key: &str) -> Result<Option<Obj<'a>>, CtyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) if a.is_empty() => Ok(None),
            Some(Value::Array(a)) if a.len() > 1 => Err(CtyError::Invalid {
                field: self.field(key),
                message: format!("only one {key} block is allowed, got {}", a.len()),
            }),
            Some(v) => Obj::from_value(v, self.field(key)).map(Some),
        }
    }

    fn type_err(&self, key: &str, expected: &'static str, got: &Value) -> CtyError {
        CtyError::Type {
            field: self.field(key),
            expected,
            got: describe(got),
        }
    }
}

/// cty numbers: any int width, float64, or a decimal string such as "0.1" or "512".
fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => i.as_f64(),
        Value::F64(f) => Some(*f),
        Value::F32(f) => Some(f64::from(*f)),
        Value::String(s) => s
            .as_str()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    fn obj(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    #[test]
    fn numbers_accept_int_float_and_decimal_strings() {
        let v = obj(vec![
            ("a", Value::from(5u8)),
            ("b", Value::from(1.25f64)),
            ("c", s("0.1")),
            ("d", s("512")),
            ("e", Value::from(70000u32)),
            ("f", Value::from(-3i8)),
        ]);
        let bytes = enc(&v);
        let root = decode(&bytes).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        assert_eq!(o.number("a").unwrap(), Some(5.0));
        assert_eq!(o.number("b").unwrap(), Some(1.25));
        assert_eq!(o.number("c").unwrap(), Some(0.1));
        assert_eq!(o.integer("d", 0, 1000).unwrap(), Some(512));
        assert_eq!(o.integer("e", 0, i64::MAX).unwrap(), Some(70000));
        assert_eq!(o.integer("f", -10, 0).unwrap(), Some(-3));
        let e = o.integer("b", 0, 10).unwrap_err().to_string();
        assert!(e.contains("config.b") && e.contains("whole"), "{e}");
        let e = o.integer("d", 0, 100).unwrap_err().to_string();
        assert!(e.contains("between 0 and 100"), "{e}");
    }

    #[test]
    fn nil_is_absent_and_wrong_types_name_the_field() {
        let v = obj(vec![
            ("x", Value::Nil),
            ("y", Value::from(3u8)),
            ("z", s("abc")),
        ]);
        let root = decode(&enc(&v)).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        assert_eq!(o.string("x").unwrap(), None);
        assert_eq!(o.string_list("x").unwrap(), Vec::<String>::new());
        let e = o.string("y").unwrap_err().to_string();
        assert_eq!(e, "config.y: expected a string, got number 3");
        let e = o.number("z").unwrap_err().to_string();
        assert!(
            e.contains("config.z: expected a number, got string \"abc\""),
            "{e}"
        );
        let e = o.string_list("y").unwrap_err().to_string();
        assert!(e.contains("config.y"), "{e}");
    }

    #[test]
    fn blocks_arrive_as_object_or_list_and_dynamic_values_unwrap() {
        let inner = obj(vec![("n", Value::from(1u8))]);
        for block in [inner.clone(), Value::Array(vec![inner.clone()])] {
            let v = obj(vec![("b", block)]);
            let root = decode(&enc(&v)).unwrap();
            let o = Obj::root(&root, "config").unwrap();
            let b = o.block("b").unwrap().unwrap();
            assert_eq!(b.number("n").unwrap(), Some(1.0));
            assert_eq!(b.field("n"), "config.b.n");
        }
        let v = obj(vec![("b", Value::Array(vec![])), ("c", Value::Nil)]);
        let root = decode(&enc(&v)).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        assert!(o.block("b").unwrap().is_none());
        assert!(o.block("c").unwrap().is_none());
        let dynv = Value::Array(vec![Value::Binary(b"\"string\"".to_vec()), s("hi")]);
        let v = obj(vec![("d", dynv)]);
        let root = decode(&enc(&v)).unwrap();
        assert_eq!(
            Obj::root(&root, "")
                .unwrap()
                .string("d")
                .unwrap()
                .as_deref(),
            Some("hi")
        );
    }

    #[test]
    fn maps_lists_unknown_keys_and_bad_payloads() {
        let v = obj(vec![
            ("env", obj(vec![("A", s("1")), ("B", s("two"))])),
            ("args", Value::Array(vec![s("-x"), s("y")])),
            ("bad", Value::Array(vec![s("ok"), Value::from(1u8)])),
        ]);
        let root = decode(&enc(&v)).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        let m = o.string_map("env").unwrap();
        assert_eq!(m["B"], "two");
        assert_eq!(o.string_list("args").unwrap(), vec!["-x", "y"]);
        let e = o.string_list("bad").unwrap_err().to_string();
        assert!(e.contains("config.bad[1]"), "{e}");
        let e = o.deny_unknown(&["env", "args"]).unwrap_err().to_string();
        assert!(e.contains("config.bad: unknown key"), "{e}");
        assert!(decode(&[0x92, 0x01]).is_err());
        assert!(decode(&[0x01, 0x02]).is_err());
        assert!(matches!(decode(&[]).unwrap(), Value::Map(m) if m.is_empty()));
    }
}
