//! Property tests of everything in the plugin that reads Nomad's config payloads: the
//! cty-msgpack decoder and the configs built on it, and hclspec type expressions and schemas.
//!
//! Two kinds of property: arbitrary input never panics (and errors name what was wrong), and
//! round trips are exact. A few seconds in CI (the default case counts below); set
//! `PROPTEST_CASES` to run every property that many times, or `scripts/soak` to run them for
//! minutes on end. Failures found are kept as seeds in `proptest-regressions/` (committed)
//! and replayed first on every run.

use common::env;
use driver::config::{PluginConfig, TaskConfig};
use driver::cty::{self, Obj};
use driver::hclspec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rmpv::Value;

/// `cases` per property by default; `PROPTEST_CASES` overrides it for long runs.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Shrinking a rare failure must not take longer than finding it did.
        max_shrink_iters: 10_000,
        // Seeds of past failures, replayed first on every run (committed).
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/properties.txt"
        )))),
        ..ProptestConfig::default()
    }
}

fn encode(v: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    rmpv::encode::write_value(&mut b, v).unwrap();
    b
}

/// Any msgpack value, nested a few levels, with the shapes cty produces and more.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::F64),
        any::<f32>().prop_map(Value::F32),
        ".{0,12}".prop_map(Value::from),
        "[-+0-9.eE]{0,24}".prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner.clone()), 0..6).prop_map(Value::Map),
            // cty's DynamicPseudoType wrapper: [bin(type json), value]
            inner.prop_map(|v| Value::Array(vec![Value::Binary(b"\"string\"".to_vec()), v])),
        ]
    })
}

/// Map keys: mostly the config keys the decoders look for, sometimes anything.
fn key() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "script", "args", "env", "mode", "guest_env", "runtime_options", "flags",
            "pids_limit", "elide_opts", "languages", "memory_limit", "enable_ai",
            "elide_binary", "enabled", "executor_binary", "runtime_dir", "run_flags",
            "fingerprint_period", "version_timeout", "heap_percent", "fifo_open_timeout",
        ])
        .prop_map(Value::from),
        1 => ".{0,8}".prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
    ]
}

/// Every accessor of an object, on every key it has and one it lacks: none may panic.
fn poke_everything(o: &Obj<'_>) {
    let keys: Vec<String> = o.keys().map(str::to_owned).chain(["nope".into()]).collect();
    let _ = o.deny_unknown(&["script"]);
    for k in &keys {
        let _ = o.string(k);
        let _ = o.bool(k);
        let _ = o.number(k);
        if let Ok(Some(n)) = o.integer(k, -5, 1 << 20) {
            assert!((-5..=1 << 20).contains(&n), "{n} out of the asked range");
        }
        let _ = o.integer(k, i64::MIN, i64::MAX);
        let _ = o.string_list(k);
        let _ = o.string_map(k);
        if let Ok(Some(b)) = o.block(k) {
            poke_everything(&b);
        }
        if let Ok(list) = o.block_list(k) {
            list.iter().for_each(poke_everything);
        }
    }
}

/// A type expression checked the way the plugin checks its schemas: as an attribute's type.
fn check_type(expr: &str) -> Result<(), common::error::FieldError> {
    hclspec::check(&hclspec::object(vec![(
        "x",
        hclspec::attr("x", expr, false),
    )]))
}

proptest! {
    #![proptest_config(config(512))]

    // ---- cty msgpack ------------------------------------------------------------------

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = cty::decode(&bytes) {
            if let Ok(o) = Obj::root(&v, "config") {
                poke_everything(&o);
            }
            let _ = cty::describe(&v);
        }
        let _ = TaskConfig::from_msgpack(&bytes);
        let _ = PluginConfig::from_msgpack(&bytes);
    }

    #[test]
    fn arbitrary_values_never_panic_the_configs(v in any_value()) {
        let bytes = encode(&v);
        prop_assert_eq!(cty::decode(&bytes).unwrap(), v.clone());
        if let Ok(o) = Obj::root(&v, "") {
            poke_everything(&o);
        }
        for r in [TaskConfig::from_msgpack(&bytes).err(), PluginConfig::from_msgpack(&bytes).map(|_| ()).err()]
            .into_iter()
            .flatten()
        {
            prop_assert!(!r.to_string().is_empty());
        }
    }

    /// A task config with every schema key present (as cty sends it) and random values.
    #[test]
    fn task_configs_of_random_values_decode_or_name_the_field(
        values in proptest::collection::vec(any_value(), 9),
    ) {
        let keys = ["args", "elide_opts", "env", "flags", "guest_env", "mode", "pids_limit",
                    "runtime_options", "script"];
        let map = Value::Map(keys.iter().zip(values).map(|(k, v)| (Value::from(*k), v)).collect());
        match TaskConfig::from_msgpack(&encode(&map)) {
            Ok(t) => {
                prop_assert!(!t.script.trim().is_empty());
                for (k, v) in &t.env {
                    prop_assert!(env::check_var(k, v).is_ok());
                }
                prop_assert!(t.pids_limit.unwrap_or(0) <= common::spec::MAX_PIDS_LIMIT);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("config"), "{}", e),
        }
    }

    /// Whole numbers in every encoding cty may use decode exactly.
    #[test]
    fn integers_decode_exactly_in_every_encoding(n in any::<i64>()) {
        let forms = [Value::from(n), Value::from(n.to_string()), Value::from(format!("{n}.0"))];
        for form in forms {
            let map = Value::Map(vec![(Value::from("n"), form.clone())]);
            let o = Obj::root(&map, "config").unwrap();
            prop_assert_eq!(o.integer("n", i64::MIN, i64::MAX).unwrap(), Some(n), "{:?}", form);
        }
    }

    // ---- hclspec -----------------------------------------------------------------------

    #[test]
    fn type_expressions_never_panic(expr in "[a-z(){}\\[\\]=, \\n]{0,64}") {
        let _ = check_type(&expr);
    }

    #[test]
    fn generated_type_expressions_are_accepted(expr in type_expr()) {
        prop_assert_eq!(check_type(&expr), Ok(()), "{}", expr);
    }

    #[test]
    fn generated_schemas_render_and_check_without_panicking(spec in any_spec()) {
        let root = hclspec::object(vec![("x", spec)]);
        let text = hclspec::render(&root);
        prop_assert!(text.starts_with('{'), "{}", text);
        let _ = hclspec::check(&root);
        let mut names = Vec::new();
        hclspec::attribute_names(&root, &mut names);
    }
}

/// HCL type expressions as Nomad schemas write them.
fn type_expr() -> impl Strategy<Value = String> {
    let prim = prop::sample::select(vec!["string", "number", "bool", "any"]).prop_map(String::from);
    prim.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            (
                prop::sample::select(vec!["list", "set", "map"]),
                inner.clone()
            )
                .prop_map(|(c, t)| format!("{c}({t})")),
            proptest::collection::vec(("[a-z_][a-z0-9_]{0,6}", inner.clone()), 0..4).prop_map(
                |attrs| {
                    let body: Vec<String> =
                        attrs.iter().map(|(k, t)| format!("{k} = {t}")).collect();
                    format!("object({{{}}})", body.join(", "))
                }
            ),
            proptest::collection::vec(inner, 0..4)
                .prop_map(|ts| format!("tuple([{}])", ts.join(", "))),
        ]
    })
}

/// Any schema node, valid or not (names may be empty, types garbage).
fn any_spec() -> impl Strategy<Value = common::proto::hclspec::Spec> {
    use hclspec::*;
    let leaf = prop_oneof![
        (
            "[a-z]{0,4}",
            prop_oneof![type_expr(), ".{0,8}"],
            any::<bool>()
        )
            .prop_map(|(n, t, r)| attr(&n, &t, r)),
        ".{0,8}".prop_map(|e| literal(&e)),
        ".{0,8}".prop_map(|s| literal_string(&s)),
        ("[a-z]{0,4}", type_expr(), any::<bool>()).prop_map(|(n, t, r)| block_attrs(&n, &t, r)),
        Just(common::proto::hclspec::Spec { block: None }),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(("[a-z]{1,4}", inner.clone()), 0..4).prop_map(|kv| {
                object(kv.iter().map(|(k, v)| (k.as_str(), v.clone())).collect())
            }),
            proptest::collection::vec(inner.clone(), 0..3).prop_map(array),
            (inner.clone(), inner.clone()).prop_map(|(p, d)| default_(p, d)),
            ("[a-z]{0,4}", any::<bool>(), inner.clone()).prop_map(|(n, r, s)| block(&n, r, s)),
            ("[a-z]{0,4}", any::<u64>(), any::<u64>(), inner.clone())
                .prop_map(|(n, a, b, s)| block_list(&n, a, b, s)),
            ("[a-z]{0,4}", any::<u64>(), any::<u64>(), inner.clone())
                .prop_map(|(n, a, b, s)| block_set(&n, a, b, s)),
            (
                "[a-z]{0,4}",
                proptest::collection::vec("[a-z]{0,3}", 0..3),
                inner
            )
                .prop_map(|(n, l, s)| {
                    let labels: Vec<&str> = l.iter().map(String::as_str).collect();
                    block_map(&n, &labels, s)
                }),
        ]
    })
}
