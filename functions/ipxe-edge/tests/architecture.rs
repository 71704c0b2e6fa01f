//! The folder table of the architecture chapter (`docs/src/architecture.md`) against the code:
//! every module of `ipxe-edge-core` and `ipxe-edge` is in the table, and every `crate::` path in
//! a module names itself or a module its row allows. A new module, or an import one layer up,
//! fails here until the chapter says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// `folder -> allowed imports`, from the chapter's table.
fn rules() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(format!("{ROOT}/docs/src/architecture.md")).expect("the chapter exists");
    let mut rules = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `functions/")) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let folder = cells[0].trim_matches('`').to_string();
        let allowed = cells[2].split('`').skip(1).step_by(2).map(str::to_string).collect();
        rules.insert(folder, allowed);
    }
    assert!(rules.len() >= 10, "the table lists the folders");
    rules
}

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p);
        }
    }
    files
}

/// The top-level modules a file names with `crate::…`, comments left out.
fn crate_paths(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut found = BTreeSet::new();
    for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn every_module_imports_only_what_its_row_allows() {
    let rules = rules();
    for krate in ["core", "ipxe-edge"] {
        let src = PathBuf::from(format!("{ROOT}/functions/{krate}/src"));
        for entry in std::fs::read_dir(&src).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if ["lib", "main"].contains(&name.as_str()) {
                continue;
            }
            let folder = format!("functions/{krate}/src/{name}");
            let allowed =
                rules.get(&folder).unwrap_or_else(|| panic!("{folder} is not in the architecture chapter's table"));
            for file in rust_files(&path) {
                for used in crate_paths(&file) {
                    assert!(
                        used == name || allowed.contains(&used),
                        "{} imports crate::{used}, which the row of {folder} does not allow",
                        file.display()
                    );
                }
            }
        }
    }
}

#[test]
fn every_row_names_a_module_that_exists() {
    for folder in rules().keys() {
        let dir = Path::new(ROOT).join(folder);
        assert!(dir.is_dir() || dir.with_extension("rs").is_file(), "{folder} does not exist");
    }
}
