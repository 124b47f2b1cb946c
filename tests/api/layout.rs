//! The module layout reads as the data flow, and imports go one way along it: a module of
//! src/ imports only modules that come before it in [`FLOW`]. A folder (`src/x/`) is one
//! module `x`; its files import each other freely.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every top-level module of src/, upstream first. The small shared helpers come first, then
/// the report's vocabulary (a pure leaf: periods and the CSV parser name no configuration),
/// then the stages in the order data moves through them, then the two other entry points.
const FLOW: [&str; 16] = [
    "text",
    "files",
    "telemetry",
    "dns",
    "report",
    "error",
    "http",
    "auth",
    "config",
    "graph",
    "state",
    "exposition",
    "refresh",
    "serve",
    "backfill",
    "demo",
];

/// `crate::name` references per top-level module.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let entry = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                entry.insert(name);
            }
        }
    }
    graph
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_has_a_place_in_the_flow() {
    let graph = imports();
    let unplaced: Vec<&String> = graph
        .keys()
        .filter(|m| !FLOW.contains(&m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules not in FLOW (add each where it belongs): {unplaced:?}"
    );
}

#[test]
fn imports_go_one_way_along_the_flow() {
    let graph = imports();
    let rank = |m: &str| FLOW.iter().position(|f| *f == m);
    let mut against = Vec::new();
    for (module, uses) in &graph {
        let Some(at) = rank(module) else { continue };
        for used in uses {
            match rank(used) {
                Some(r) if r < at => {}
                _ => against.push(format!("{module} -> {used}")),
            }
        }
    }
    assert!(
        against.is_empty(),
        "imports against the flow ({}): {against:?}",
        FLOW.join(" < ")
    );
}

#[test]
fn the_configuration_holds_data_only() {
    let graph = imports();
    for forbidden in ["graph", "serve", "refresh", "exposition"] {
        assert!(
            !graph["config"].contains(forbidden),
            "config imports {forbidden}: move the type it needs into config, or the code that needs config out of it"
        );
    }
}

#[test]
fn domain_types_live_with_their_owners() {
    let graph = imports();
    // The stages after the configuration take what they need as arguments of their own types,
    // so that they can be driven (and tested) without a resolved configuration.
    for module in ["report", "auth", "graph", "state", "exposition"] {
        assert!(
            !graph[module].contains("config"),
            "{module} imports config; move the type it needs into the module that owns it"
        );
    }
}
