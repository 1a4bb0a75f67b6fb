//! The gateway function: `POST /mcp` for every tool. Lifecycle, discovery and `tools/list`
//! are answered here; `tools/call` is forwarded to the tool's own function.

include!(concat!(env!("OUT_DIR"), "/registry.rs"));

#[cfg(test)]
mod tests {
    #[test]
    fn every_tool_folder_is_registered() {
        let catalog = super::catalog().expect("catalog builds");
        // Functions compile a validator on its tool's first call: every schema compiles.
        catalog.check().expect("every input schema compiles");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut folders: Vec<String> = std::fs::read_dir(&root)
            .expect("functions/")
            .filter_map(Result::ok)
            .filter(|e| e.path().join("Cargo.toml").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "gateway")
            .collect();
        folders.sort();
        let crates: Vec<&str> = super::TOOL_CRATES.to_vec();
        assert_eq!(
            folders, crates,
            "every tool folder needs its line in gateway/Cargo.toml"
        );
        assert_eq!(catalog.len(), folders.len());
    }
}
