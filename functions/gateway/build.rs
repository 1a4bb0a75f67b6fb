//! Generates the gateway's tool registry from the tool dependencies in Cargo.toml, so adding a
//! tool is one folder plus one dependency line.

use std::fmt::Write as _;

fn main() {
    println!("cargo::rerun-if-changed=Cargo.toml");
    let manifest = std::fs::read_to_string("Cargo.toml").expect("read Cargo.toml");
    let doc: toml_edit::DocumentMut = manifest.parse().expect("Cargo.toml is valid TOML");
    let deps = doc
        .get("dependencies")
        .and_then(toml_edit::Item::as_table_like)
        .expect("Cargo.toml has [dependencies]");
    // A tool is a path dependency on a sibling folder (`path = "../<tool>"`).
    let mut tools: Vec<String> = deps
        .iter()
        .filter(|(_, item)| {
            item.as_table_like()
                .and_then(|t| t.get("path"))
                .and_then(toml_edit::Item::as_str)
                .is_some_and(|p| p.starts_with("../"))
        })
        .map(|(name, _)| name.to_owned())
        .collect();
    tools.sort();
    let mut code = String::from(
        "/// Every tool in the deployment, registered from Cargo.toml by build.rs.\n\
         pub fn catalog() -> Result<tollgate::Catalog, tollgate::catalog::CatalogError> {\n\
         \x20   let catalog = tollgate::Catalog::new();\n",
    );
    for t in &tools {
        let _ = writeln!(
            code,
            "    let catalog = catalog.register({}::tool())?;",
            t.replace('-', "_")
        );
    }
    code.push_str("    Ok(catalog)\n}\n\n/// Tool crate names, in registration order.\npub const TOOL_CRATES: &[&str] = &[");
    for t in &tools {
        let _ = write!(code, "\"{t}\", ");
    }
    code.push_str("];\n");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("registry.rs");
    std::fs::write(out, code).expect("write registry");
}
