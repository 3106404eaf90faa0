//! Reading Nomad's cty-msgpack payloads (`SetConfigRequest.msgpack_config`,
//! `TaskConfig.msgpack_driver_config`) with errors that name the field.
//!
//! What cty emits (go-cty's `cty/msgpack` encoder, which Nomad uses for these fields): objects as maps with every schema key present, nil for
//! absent values, numbers as the smallest int, a float64, or — when not exactly representable —
//! a decimal *string* ("0.1"); lists/sets/tuples as arrays; maps/objects as maps; `any`-typed
//! values as `[bin(type json), value]`. Nested blocks may be one object or a list of objects.
//!
//! ```
//! # use driver::cty::{decode, Obj};
//! let bytes = [0x81, 0xa1, b'n', 0xa3, b'0', b'.', b'5']; // {"n": "0.5"}
//! let value = decode(&bytes).unwrap();
//! let root = Obj::root(&value, "config").unwrap();
//! assert_eq!(root.number("n").unwrap(), Some(0.5));
//! let err = root.integer("n", 0, 10).unwrap_err().to_string();
//! assert_eq!(err, "config.n: must be a whole number, got 0.5");
//! ```

use common::error::FieldError;
use rmpv::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CtyError {
    #[error("the config payload is not valid msgpack ({0}); Nomad sends cty msgpack, so this is a bug in the caller")]
    Msgpack(String),
    #[error("{field}: expected {expected}, got {got}")]
    Type {
        field: String,
        expected: &'static str,
        got: String,
    },
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{field}: unknown key; remove it (valid keys: {valid})")]
    UnknownKey { field: String, valid: String },
}

/// Decodes one msgpack value. An empty payload (what Nomad sends when there is no config) is
/// an empty object; trailing bytes are an error.
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

/// Strips cty's DynamicPseudoType wrapper `[bin(type json), value]` (repeatedly, although cty
/// never nests it).
pub fn unwrap_dynamic(mut v: &Value) -> &Value {
    while let Value::Array(a) = v {
        if a.len() == 2 && matches!(a[0], Value::Binary(_)) {
            v = &a[1];
        } else {
            break;
        }
    }
    v
}

/// A short description of a value for "expected X, got Y" messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Nil => "null".into(),
        Value::Boolean(b) => format!("bool {b}"),
        Value::Integer(i) => format!("number {i}"),
        Value::F32(f) => format!("number {f}"),
        Value::F64(f) => format!("number {f}"),
        Value::String(s) => match s.as_str() {
            Some(s) if s.chars().count() > 60 => {
                format!("string {:?}…", s.chars().take(60).collect::<String>())
            }
            Some(s) => format!("string {s:?}"),
            None => "a string that is not valid UTF-8".into(),
        },
        Value::Binary(_) => "binary data".into(),
        Value::Array(a) => format!("a list of {} item(s)", a.len()),
        Value::Map(_) => "an object".into(),
        Value::Ext(..) => "an unknown value".into(),
    }
}

/// A cty number, exact when it is an integer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

/// cty numbers: any int width, float64 (or float32), or a decimal string such as "0.1" or
/// "512". Non-finite values are not numbers a config can use.
fn number_of(v: &Value) -> Option<Num> {
    match v {
        Value::Integer(i) => i
            .as_i64()
            .map(i128::from)
            .or_else(|| i.as_u64().map(i128::from))
            .map(Num::Int),
        Value::F64(f) if f.is_finite() => Some(Num::Float(*f)),
        Value::F32(f) if f.is_finite() => Some(Num::Float(f64::from(*f))),
        Value::String(s) => {
            let t = s.as_str()?.trim();
            if let Some(i) = exact_integer(t) {
                return Some(Num::Int(i));
            }
            // Rust also parses "inf"/"NaN"; only finite decimal text is a cty number.
            let looks_decimal = t
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
            if !looks_decimal {
                return None;
            }
            t.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Num::Float)
        }
        _ => None,
    }
}

/// A decimal text ("512", "-3", "512.000", "1e3", "15e-1" is not) whose value is a whole
/// number, computed exactly: parsing through f64 would round integers beyond 2^53 (fuzzing
/// found "-15296986149359219.0" read as ...220). None when it is not a whole number that
/// fits an i128, or not decimal text at all.
fn exact_integer(t: &str) -> Option<i128> {
    let (negative, rest) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits × 10^(exp − len(frac))
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let shift = i64::from(exp) - frac.len() as i64;
    let digits = if shift < 0 {
        // The last -shift digits must all be zeros for a whole number.
        let cut = usize::try_from(-shift).ok()?;
        if cut > digits.len() {
            return digits.is_empty().then_some(0);
        }
        let (keep, drop) = digits.split_at(digits.len() - cut);
        if !drop.bytes().all(|b| b == b'0') {
            return None;
        }
        keep
    } else {
        digits
    };
    let mut n: i128 = 0;
    for b in digits.bytes() {
        n = n.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    if shift > 0 {
        n = n.checked_mul(10i128.checked_pow(u32::try_from(shift).ok()?)?)?;
    }
    Some(if negative { -n } else { n })
}

/// The number as the user would have written it, for messages.
fn number_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.as_str().unwrap_or_default().trim().to_owned(),
        Value::Integer(i) => i.to_string(),
        Value::F64(f) => f.to_string(),
        Value::F32(f) => f.to_string(),
        other => describe(other),
    }
}

/// A typed view of one cty object, remembering its path for error messages.
#[derive(Debug, Clone)]
pub struct Obj<'a> {
    path: String,
    entries: &'a [(Value, Value)],
}

impl<'a> Obj<'a> {
    /// The root object of a payload; `path` prefixes field names in errors (e.g. "config"
    /// gives "config.script"; "" gives "script"). A nil root reads as an empty object.
    pub fn root(v: &'a Value, path: &str) -> Result<Self, CtyError> {
        if v.is_nil() {
            return Ok(Obj {
                path: path.to_owned(),
                entries: &[],
            });
        }
        Self::from_value(v, path.to_owned())
    }

    fn from_value(v: &'a Value, path: String) -> Result<Self, CtyError> {
        match unwrap_dynamic(v) {
            Value::Map(entries) => Ok(Obj { path, entries }),
            // A block may arrive as a one-element list of objects.
            Value::Array(a) if a.len() == 1 => Self::from_value(&a[0], path),
            other => Err(CtyError::Type {
                field: if path.is_empty() {
                    "the config".to_owned()
                } else {
                    path
                },
                expected: "a block/object",
                got: describe(other),
            }),
        }
    }

    /// This object's path ("" for an unnamed root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path of `key` inside this object, as errors name it.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// The keys present (in payload order), including those whose value is nil.
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .map(|(k, _)| k.as_str().unwrap_or("<non-string key>"))
    }

    /// Rejects keys outside `known` (Nomad never sends them; this guards our own callers).
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), CtyError> {
        for name in self.keys() {
            if !known.contains(&name) {
                return Err(CtyError::UnknownKey {
                    field: self.field(name),
                    valid: known.join(", "),
                });
            }
        }
        Ok(())
    }

    /// The raw value of `key` (DynamicPseudoType unwrapped); None when absent or nil.
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
            Some(v) => string_of(v, || self.field(key)).map(Some),
        }
    }

    /// A bool (cty also converts the strings "true" and "false").
    pub fn bool(&self, key: &str) -> Result<Option<bool>, CtyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.as_str() == Some("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.as_str() == Some("false") => Ok(Some(false)),
            Some(other) => Err(self.type_err(key, "a bool", other)),
        }
    }

    /// Any number (int, float64 or decimal string), as f64.
    pub fn number(&self, key: &str) -> Result<Option<f64>, CtyError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match number_of(v) {
                Some(Num::Int(i)) => Ok(Some(i as f64)),
                Some(Num::Float(f)) => Ok(Some(f)),
                None => Err(self.type_err(key, "a number", v)),
            },
        }
    }

    /// A whole number in `min..=max`. Exact for integers of any width (also when sent as a
    /// decimal string); a fraction or a value outside the range is an error naming both.
    pub fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, CtyError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match number_of(v) {
            None => return Err(self.type_err(key, "a whole number", v)),
            Some(Num::Int(i)) => i,
            Some(Num::Float(f)) if f.fract() != 0.0 => {
                return Err(CtyError::Invalid(FieldError::new(
                    self.field(key),
                    format!("must be a whole number, got {}", number_text(v)),
                )))
            }
            // Saturates for huge values, which the range check below then rejects.
            Some(Num::Float(f)) => f as i128,
        };
        if n < i128::from(min) || n > i128::from(max) {
            let range = if max == i64::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            return Err(CtyError::Invalid(FieldError::new(
                self.field(key),
                format!("must be {range}, got {}", number_text(v)),
            )));
        }
        Ok(Some(n as i64))
    }

    /// A list (or set or tuple) of strings; absent means empty.
    pub fn string_list(&self, key: &str) -> Result<Vec<String>, CtyError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| string_of(unwrap_dynamic(v), || format!("{}[{i}]", self.field(key))))
                .collect(),
            Some(other) => Err(self.type_err(key, "a list of strings", other)),
        }
    }

    /// A map of strings, given as a map or as a list of maps (merged in order, later keys
    /// win); absent means empty. Numbers and bools are turned into their text, as cty's
    /// conversion to `map(string)` does.
    pub fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, CtyError> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Array(items)) => {
                let mut out = BTreeMap::new();
                for (i, item) in items.iter().enumerate() {
                    let field = format!("{}[{i}]", self.field(key));
                    out.extend(one_string_map(&field, unwrap_dynamic(item))?);
                }
                Ok(out)
            }
            Some(v) => one_string_map(&self.field(key), v),
        }
    }

    /// A single nested block: None when absent (nil or an empty list); one object or a list
    /// of one object otherwise.
    pub fn block(&self, key: &str) -> Result<Option<Obj<'a>>, CtyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) if a.is_empty() => Ok(None),
            Some(Value::Array(a)) if a.len() > 1 => Err(CtyError::Invalid(FieldError::new(
                self.field(key),
                format!(
                    "only one {key} block is allowed, got {}; merge them into one",
                    a.len()
                ),
            ))),
            Some(v) => Obj::from_value(v, self.field(key)).map(Some),
        }
    }

    /// A repeated nested block: a list of objects (one object alone counts as a list of one);
    /// absent means empty. Items are named `key[i]` in errors.
    pub fn block_list(&self, key: &str) -> Result<Vec<Obj<'a>>, CtyError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match unwrap_dynamic(v) {
                    Value::Map(entries) => Ok(Obj {
                        path: format!("{}[{i}]", self.field(key)),
                        entries,
                    }),
                    other => Err(CtyError::Type {
                        field: format!("{}[{i}]", self.field(key)),
                        expected: "a block/object",
                        got: describe(other),
                    }),
                })
                .collect(),
            Some(v) => Obj::from_value(v, self.field(key)).map(|o| vec![o]),
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

fn string_of(v: &Value, field: impl FnOnce() -> String) -> Result<String, CtyError> {
    match v {
        Value::String(s) => s.as_str().map(str::to_owned).ok_or_else(|| {
            CtyError::Invalid(FieldError::new(
                field(),
                "is not valid UTF-8; use UTF-8 text",
            ))
        }),
        other => Err(CtyError::Type {
            field: field(),
            expected: "a string",
            got: describe(other),
        }),
    }
}

fn one_string_map(field: &str, v: &Value) -> Result<BTreeMap<String, String>, CtyError> {
    let Value::Map(entries) = v else {
        return Err(CtyError::Type {
            field: field.to_owned(),
            expected: "a map of strings",
            got: describe(v),
        });
    };
    entries
        .iter()
        .map(|(k, v)| {
            let k = string_of(k, || format!("{field} (a key)"))?;
            let value = match unwrap_dynamic(v) {
                Value::Integer(i) => i.to_string(),
                Value::F64(f) => f.to_string(),
                Value::Boolean(b) => b.to_string(),
                other => string_of(other, || format!("{field}.{k}"))?,
            };
            Ok((k, value))
        })
        .collect()
}

/// Builders for payloads shaped exactly as cty encodes them, shared by this crate's tests.
#[cfg(test)]
pub(crate) mod payload {
    use rmpv::Value;

    pub fn enc(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    }

    pub fn s(x: &str) -> Value {
        Value::from(x)
    }

    /// An object as cty encodes it: keys sorted bytewise.
    pub fn obj(mut pairs: Vec<(&str, Value)>) -> Value {
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        Value::Map(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    pub fn strs(xs: &[&str]) -> Value {
        Value::Array(xs.iter().map(|x| s(x)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::payload::{enc, obj, s};
    use super::*;

    fn dynamic(ty: &str, v: Value) -> Value {
        Value::Array(vec![Value::Binary(ty.as_bytes().to_vec()), v])
    }

    /// Encodes with rmp's low-level writers, choosing each int form the way cty's encoder
    /// (vmihailenco/msgpack, compact ints) does.
    fn cty_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        rmp::encode::write_map_len(&mut b, 8).unwrap();
        for (k, n) in [
            ("a_fix", 5i64),
            ("b_u8", 200),
            ("c_u16", 60_000),
            ("d_u32", 4_000_000_000),
            ("e_neg", -3),
            ("f_i16", -1_000),
        ] {
            rmp::encode::write_str(&mut b, k).unwrap();
            rmp::encode::write_sint(&mut b, n).unwrap();
        }
        rmp::encode::write_str(&mut b, "g_u64").unwrap();
        rmp::encode::write_u64(&mut b, u64::MAX).unwrap();
        rmp::encode::write_str(&mut b, "h_f64").unwrap();
        rmp::encode::write_f64(&mut b, 0.5).unwrap();
        b
    }

    #[test]
    fn integers_of_every_width_are_exact() {
        let bytes = cty_bytes();
        assert_eq!(bytes[0], 0x88);
        let root = decode(&bytes).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        let full = |k| o.integer(k, i64::MIN, i64::MAX).unwrap();
        assert_eq!(full("a_fix"), Some(5));
        assert_eq!(full("b_u8"), Some(200));
        assert_eq!(full("c_u16"), Some(60_000));
        assert_eq!(full("d_u32"), Some(4_000_000_000));
        assert_eq!(full("e_neg"), Some(-3));
        assert_eq!(full("f_i16"), Some(-1_000));
        let e = o.integer("g_u64", 0, i64::MAX).unwrap_err().to_string();
        assert_eq!(
            e,
            "config.g_u64: must be at least 0, got 18446744073709551615"
        );
        assert_eq!(o.number("h_f64").unwrap(), Some(0.5));
        let e = o.integer("h_f64", 0, 10).unwrap_err().to_string();
        assert_eq!(e, "config.h_f64: must be a whole number, got 0.5");
        let e = o.integer("e_neg", 0, i64::MAX).unwrap_err().to_string();
        assert_eq!(e, "config.e_neg: must be at least 0, got -3");
    }

    #[test]
    fn decimal_text_integers_are_exact() {
        for (text, want) in [
            ("512", Some(512)),
            ("-3", Some(-3)),
            ("+7", Some(7)),
            ("512.000", Some(512)),
            ("-15296986149359219.0", Some(-15_296_986_149_359_219)),
            ("1e3", Some(1000)),
            ("1.5e3", Some(1500)),
            ("15e-1", None),
            ("1500e-2", Some(15)),
            ("0.0", Some(0)),
            ("0e-999", Some(0)),
            (".5", None),
            ("5.", Some(5)),
            ("0.1", None),
            ("1e400", None),
            ("", None),
            ("-", None),
            (".", None),
            ("e5", None),
            ("1e", None),
            ("abc", None),
            (
                "99999999999999999999999",
                Some(99_999_999_999_999_999_999_999),
            ),
        ] {
            assert_eq!(exact_integer(text), want, "{text}");
        }
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
            ("g", s("9007199254740993")),
            ("h", s("1e3")),
            ("i", s("99999999999999999999999")),
            ("j", s("512.0")),
            ("k", s("inf")),
            ("l", Value::F64(f64::INFINITY)),
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
        // Beyond f64's 53-bit mantissa, still exact.
        assert_eq!(
            o.integer("g", 0, i64::MAX).unwrap(),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(o.integer("h", 0, 5000).unwrap(), Some(1000));
        assert_eq!(o.integer("j", 0, 5000).unwrap(), Some(512));
        let e = o.integer("i", 0, i64::MAX).unwrap_err().to_string();
        assert_eq!(
            e,
            "config.i: must be at least 0, got 99999999999999999999999"
        );
        let e = o.integer("b", 0, 10).unwrap_err().to_string();
        assert_eq!(e, "config.b: must be a whole number, got 1.25");
        let e = o.integer("c", 0, 10).unwrap_err().to_string();
        assert_eq!(e, "config.c: must be a whole number, got 0.1");
        let e = o.integer("d", 0, 100).unwrap_err().to_string();
        assert_eq!(e, "config.d: must be between 0 and 100, got 512");
        let e = o.number("k").unwrap_err().to_string();
        assert_eq!(e, "config.k: expected a number, got string \"inf\"");
        assert!(o.number("l").is_err());
    }

    #[test]
    fn nil_is_absent_and_wrong_types_name_the_field() {
        let v = obj(vec![
            ("x", Value::Nil),
            ("y", Value::from(3u8)),
            ("z", s("abc")),
            ("b", s("true")),
        ]);
        let root = decode(&enc(&v)).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        assert_eq!(o.string("x").unwrap(), None);
        assert_eq!(o.bool("x").unwrap(), None);
        assert_eq!(o.number("x").unwrap(), None);
        assert_eq!(o.integer("x", 0, 1).unwrap(), None);
        assert!(o.block("x").unwrap().is_none());
        assert!(o.block_list("x").unwrap().is_empty());
        assert!(o.string_map("x").unwrap().is_empty());
        assert_eq!(o.string_list("x").unwrap(), Vec::<String>::new());
        assert_eq!(o.string("missing").unwrap(), None);
        assert_eq!(o.bool("b").unwrap(), Some(true));
        let e = o.string("y").unwrap_err().to_string();
        assert_eq!(e, "config.y: expected a string, got number 3");
        let e = o.number("z").unwrap_err().to_string();
        assert_eq!(e, "config.z: expected a number, got string \"abc\"");
        let e = o.integer("z", 0, 1).unwrap_err().to_string();
        assert_eq!(e, "config.z: expected a whole number, got string \"abc\"");
        let e = o.bool("z").unwrap_err().to_string();
        assert_eq!(e, "config.z: expected a bool, got string \"abc\"");
        let e = o.string_list("y").unwrap_err().to_string();
        assert_eq!(e, "config.y: expected a list of strings, got number 3");
        let e = o.block("y").unwrap_err().to_string();
        assert_eq!(e, "config.y: expected a block/object, got number 3");
    }

    #[test]
    fn blocks_arrive_as_object_or_list_and_paths_nest() {
        let inner = obj(vec![("n", Value::from(1u8)), ("s", Value::from(2u8))]);
        for block in [
            inner.clone(),
            Value::Array(vec![inner.clone()]),
            dynamic("[\"object\",{}]", inner.clone()),
        ] {
            let v = obj(vec![("b", block)]);
            let root = decode(&enc(&v)).unwrap();
            let o = Obj::root(&root, "config").unwrap();
            let b = o.block("b").unwrap().unwrap();
            assert_eq!(b.path(), "config.b");
            assert_eq!(b.number("n").unwrap(), Some(1.0));
            let e = b.string("s").unwrap_err().to_string();
            assert_eq!(e, "config.b.s: expected a string, got number 2");
        }
        let v = obj(vec![
            ("empty", Value::Array(vec![])),
            ("two", Value::Array(vec![inner.clone(), inner.clone()])),
        ]);
        let root = decode(&enc(&v)).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        assert!(o.block("empty").unwrap().is_none());
        let e = o.block("two").unwrap_err().to_string();
        assert!(
            e.starts_with("config.two: only one two block is allowed, got 2"),
            "{e}"
        );
        let list = o.block_list("two").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].field("n"), "config.two[1].n");
    }

    #[test]
    fn dynamic_values_unwrap_everywhere() {
        let v = obj(vec![
            ("d", dynamic("\"string\"", s("hi"))),
            (
                "l",
                dynamic("[\"list\",\"string\"]", Value::Array(vec![s("a"), s("b")])),
            ),
            ("n", dynamic("\"number\"", s("0.25"))),
        ]);
        let root = decode(&enc(&v)).unwrap();
        let o = Obj::root(&root, "").unwrap();
        assert_eq!(o.string("d").unwrap().as_deref(), Some("hi"));
        assert_eq!(o.string_list("l").unwrap(), ["a", "b"]);
        assert_eq!(o.number("n").unwrap(), Some(0.25));
        // An unnamed root names fields bare.
        assert_eq!(
            o.integer("n", 0, 1).unwrap_err().to_string(),
            "n: must be a whole number, got 0.25"
        );
    }

    #[test]
    fn maps_and_lists() {
        let v = obj(vec![
            (
                "env",
                obj(vec![
                    ("A", s("1")),
                    ("B", s("two")),
                    ("C", Value::from(3u8)),
                ]),
            ),
            (
                "envs",
                Value::Array(vec![
                    obj(vec![("A", s("1")), ("B", s("x"))]),
                    obj(vec![("B", s("y"))]),
                ]),
            ),
            (
                "bad_map",
                Value::Array(vec![obj(vec![("K", Value::Array(vec![]))])]),
            ),
            ("args", Value::Array(vec![s("-x"), s("y")])),
            ("bad", Value::Array(vec![s("ok"), Value::from(1u8)])),
        ]);
        let root = decode(&enc(&v)).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        let m = o.string_map("env").unwrap();
        assert_eq!(m["B"], "two");
        assert_eq!(m["C"], "3");
        let m = o.string_map("envs").unwrap();
        assert_eq!((m["A"].as_str(), m["B"].as_str()), ("1", "y"));
        let e = o.string_map("bad_map").unwrap_err().to_string();
        assert_eq!(
            e,
            "config.bad_map[0].K: expected a string, got a list of 0 item(s)"
        );
        let e = o.string_map("args").unwrap_err().to_string();
        assert_eq!(
            e,
            "config.args[0]: expected a map of strings, got string \"-x\""
        );
        assert_eq!(o.string_list("args").unwrap(), vec!["-x", "y"]);
        let e = o.string_list("bad").unwrap_err().to_string();
        assert_eq!(e, "config.bad[1]: expected a string, got number 1");
        // {"utf": ["\xff\xfe"]}: a str whose bytes are not UTF-8.
        let mut b = vec![0x81, 0xa3];
        b.extend_from_slice(b"utf");
        b.extend_from_slice(&[0x91, 0xa2, 0xff, 0xfe]);
        let root = decode(&b).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        let e = o.string_list("utf").unwrap_err().to_string();
        assert!(e.starts_with("config.utf[0]: is not valid UTF-8"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_payloads() {
        let v = obj(vec![("env", Value::Nil), ("colour", s("blue"))]);
        let root = decode(&enc(&v)).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        let e = o.deny_unknown(&["env", "args"]).unwrap_err().to_string();
        assert_eq!(
            e,
            "config.colour: unknown key; remove it (valid keys: env, args)"
        );
        o.deny_unknown(&["env", "colour"]).unwrap();
        assert_eq!(o.keys().collect::<Vec<_>>(), ["colour", "env"]);

        let e = decode(&[0x92, 0x01]).unwrap_err().to_string();
        assert!(e.contains("not valid msgpack"), "{e}");
        let e = decode(&[0x01, 0x02]).unwrap_err().to_string();
        assert!(e.contains("1 trailing bytes"), "{e}");
        assert!(matches!(decode(&[]).unwrap(), Value::Map(m) if m.is_empty()));
        let nil = decode(&[0xc0]).unwrap();
        assert_eq!(Obj::root(&nil, "config").unwrap().keys().count(), 0);
        let e = Obj::root(&Value::from(1u8), "").unwrap_err().to_string();
        assert_eq!(e, "the config: expected a block/object, got number 1");
    }

    #[test]
    fn the_protocol_doc_example_decodes() {
        // §3.3: command="/bin/app", args=["-x"], env_file default "", no limits, one port.
        let mut b = vec![0x85, 0xa4];
        b.extend_from_slice(b"args");
        b.extend_from_slice(&[0x91, 0xa2]);
        b.extend_from_slice(b"-x");
        b.push(0xa7);
        b.extend_from_slice(b"command");
        b.push(0xa8);
        b.extend_from_slice(b"/bin/app");
        b.push(0xa8);
        b.extend_from_slice(b"env_file");
        b.push(0xa0);
        b.push(0xa6);
        b.extend_from_slice(b"limits");
        b.push(0xc0);
        b.push(0xa4);
        b.extend_from_slice(b"port");
        b.extend_from_slice(&[0x91, 0x82, 0xa5]);
        b.extend_from_slice(b"label");
        b.push(0xa4);
        b.extend_from_slice(b"http");
        b.push(0xa2);
        b.extend_from_slice(b"to");
        b.extend_from_slice(&[0xcd, 0x1f, 0x90]);
        let root = decode(&b).unwrap();
        let o = Obj::root(&root, "config").unwrap();
        o.deny_unknown(&["args", "command", "env_file", "limits", "port"])
            .unwrap();
        assert_eq!(o.string("command").unwrap().as_deref(), Some("/bin/app"));
        assert_eq!(o.string_list("args").unwrap(), ["-x"]);
        assert_eq!(o.string("env_file").unwrap().as_deref(), Some(""));
        assert!(o.block("limits").unwrap().is_none());
        let ports = o.block_list("port").unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].string("label").unwrap().as_deref(), Some("http"));
        assert_eq!(ports[0].integer("to", 0, 65535).unwrap(), Some(8080));
    }
}
