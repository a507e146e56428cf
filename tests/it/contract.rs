//! The schema matches the contract: `schema.graphql` is what `export-schema` prints, and every
//! type, field, argument, enum value and union member of the contract (a copy of the schema in
//! `shared/API.md`, kept in `tests/contract.graphql`) exists with the same type and nullability.

use async_graphql::parser::parse_schema;
use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
use std::collections::BTreeMap;

/// Flattens an SDL document to `name -> shape` entries that can be compared one by one.
fn shapes(sdl: &str) -> BTreeMap<String, String> {
    let doc = parse_schema(sdl).expect("valid SDL");
    let mut out = BTreeMap::new();
    for def in doc.definitions {
        let TypeSystemDefinition::Type(t) = def else {
            continue;
        };
        let t = t.node;
        let name = t.name.node.to_string();
        match t.kind {
            TypeKind::Scalar => {
                out.insert(name, "scalar".into());
            }
            TypeKind::Object(o) => {
                out.insert(name.clone(), "type".into());
                for f in o.fields {
                    let f = f.node;
                    out.insert(format!("{name}.{}", f.name.node), f.ty.node.to_string());
                    for a in f.arguments {
                        let a = a.node;
                        out.insert(
                            format!("{name}.{}({})", f.name.node, a.name.node),
                            a.ty.node.to_string(),
                        );
                    }
                }
            }
            TypeKind::InputObject(o) => {
                out.insert(name.clone(), "input".into());
                for f in o.fields {
                    let f = f.node;
                    out.insert(format!("{name}.{}", f.name.node), f.ty.node.to_string());
                }
            }
            TypeKind::Enum(e) => {
                out.insert(name.clone(), "enum".into());
                for v in e.values {
                    out.insert(format!("{name}::{}", v.node.value.node), "value".into());
                }
            }
            TypeKind::Union(u) => {
                out.insert(name.clone(), "union".into());
                for m in u.members {
                    out.insert(format!("{name}|{}", m.node), "member".into());
                }
            }
            TypeKind::Interface(_) => {
                out.insert(name, "interface".into());
            }
        }
    }
    out
}

#[test]
fn schema_file_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let committed = std::fs::read_to_string(path).expect("schema.graphql exists");
    assert!(
        committed == session_server::graphql::sdl(),
        "schema.graphql is out of date: run `cargo run -- export-schema -o schema.graphql`"
    );
}

#[test]
fn schema_has_every_name_of_the_contract() {
    let contract = shapes(include_str!("../contract.graphql"));
    let ours = shapes(&session_server::graphql::sdl());
    let mut problems = vec![];
    for (key, shape) in &contract {
        match ours.get(key) {
            None => problems.push(format!("missing {key} ({shape})")),
            Some(s) if s != shape => {
                problems.push(format!("{key}: contract says {shape}, schema has {s}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "schema deviates from the contract:\n{}",
        problems.join("\n")
    );
    assert!(
        contract.len() > 150,
        "the contract fixture looks truncated ({} entries)",
        contract.len()
    );
}
