//! The configuration table of the book (`docs/src/reference/configuration.md`) against the code:
//! every `serve` and global flag with its environment variable, default and range as clap declares
//! them, and every environment variable the Lambda functions read, with the ranges their parser
//! accepts. A flag or variable added, renamed or re-ranged without the table fails here.

use clap::CommandFactory;
use ipxe_edge::commands::Cli;
use ipxe_edge_core::lambda::config::{BootConfig, RedeemConfig};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    variables: BTreeSet<String>,
    flag: Option<String>,
    default: String,
    range: Option<(i64, i64)>,
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn table() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/src/reference/configuration.md");
    let text = std::fs::read_to_string(path).expect("the configuration chapter exists");
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| environment")) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 4, "row with fewer than 4 cells: {line}");
        let range = backticked(cells[3]).first().map(|r| {
            let (a, b) = r.split_once("..=").unwrap_or_else(|| panic!("range {r:?} is not A..=B: {line}"));
            (a.parse().unwrap(), b.parse().unwrap())
        });
        rows.push(Row {
            variables: backticked(cells[0]).into_iter().collect(),
            flag: backticked(cells[1]).first().cloned(),
            // A default in backticks is a value; words describe the absence of one.
            default: if cells[2].starts_with('`') { backticked(cells[2])[0].clone() } else { String::new() },
            range,
        });
    }
    assert!(rows.len() > 20, "the table has rows");
    rows
}

/// Flags of `serve` and the global ones, as clap declares them (hidden ones excluded).
fn flags() -> BTreeMap<String, (Option<String>, String)> {
    let mut cli = Cli::command();
    cli.build();
    let serve = cli.find_subcommand("serve").expect("serve exists").clone();
    let mut out = BTreeMap::new();
    for arg in serve.get_arguments().filter(|a| !a.is_hide_set() && a.get_long().is_some()) {
        let long = format!("--{}", arg.get_long().unwrap());
        if long == "--help" || long == "--version" {
            continue;
        }
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let default = arg.get_default_values().iter().map(|v| v.to_string_lossy()).collect::<Vec<_>>().join(",");
        out.insert(long, (env, default));
    }
    out
}

/// Whether `ipxe-edge serve FLAG VALUE` parses.
fn parses(flag: &str, value: i64) -> bool {
    Cli::command().try_get_matches_from(["ipxe-edge", "serve", flag, &value.to_string()]).is_ok()
}

#[test]
fn every_flag_is_in_the_table_as_declared() {
    let rows = table();
    let flags = flags();
    let documented: BTreeSet<String> = rows.iter().filter_map(|r| r.flag.clone()).collect();
    let declared: BTreeSet<String> = flags.keys().cloned().collect();
    assert_eq!(documented, declared, "flags in the table vs flags of serve");
    for row in rows.iter().filter(|r| r.flag.is_some()) {
        let flag = row.flag.as_ref().unwrap();
        let (env, default) = &flags[flag];
        if let Some(env) = env {
            assert!(row.variables.contains(env), "{flag}: its variable {env} is not in the row {row:?}");
        }
        assert_eq!(&row.default, default, "{flag}: default");
        if let Some((start, end)) = row.range {
            assert!(parses(flag, start) && parses(flag, end), "{flag}: {start} and {end} are accepted");
            assert!(!parses(flag, end + 1), "{flag}: {} is refused", end + 1);
            if start > 0 {
                assert!(!parses(flag, start - 1), "{flag}: {} is refused", start - 1);
            }
        }
    }
}

/// The variables a function's configuration reads, found by asking it.
fn read_by(parse: impl Fn(&dyn Fn(&str) -> Option<String>)) -> BTreeSet<String> {
    let asked = RefCell::new(BTreeSet::new());
    let base = |name: &str| -> Option<String> {
        asked.borrow_mut().insert(name.to_string());
        match name {
            "BUCKET" | "TABLE" | "SCRATCH_BUCKET" => Some("b".into()),
            "SECRETS_BASE_URL" => Some("https://s.example".into()),
            "TOKEN_KEYS" => Some("k".into()),
            "SCRATCH_BOUNDARY_ARN" => Some("arn:aws:iam::1:policy/p".into()),
            _ => None,
        }
    };
    parse(&base);
    asked.into_inner()
}

#[test]
fn every_variable_of_the_functions_is_in_the_table_with_its_range() {
    let rows = table();
    let mut read = read_by(|l| drop(BootConfig::from_lookup(l)));
    read.extend(read_by(|l| drop(RedeemConfig::from_lookup(l))));
    let documented: BTreeSet<String> = rows.iter().flat_map(|r| r.variables.iter().cloned()).collect();
    let missing: Vec<&String> = read.difference(&documented).collect();
    assert!(missing.is_empty(), "variables the functions read that the table lacks: {missing:?}");
    // The rest are the CLI's and `serve`'s, or read by the AWS SDK and the log filter.
    for extra in documented.difference(&read) {
        assert!(
            extra.starts_with("IPXE_EDGE_") || extra.starts_with("AWS_") || extra == "RUST_LOG",
            "{extra} is in the table but nothing reads it"
        );
    }
    for row in rows.iter().filter(|r| r.range.is_some()) {
        let (start, end) = row.range.unwrap();
        for name in row.variables.iter().filter(|v| read.contains(*v)) {
            let with = |value: i64| {
                let name = name.clone();
                move |n: &str| -> Option<String> {
                    match n {
                        _ if n == name => Some(value.to_string()),
                        "BUCKET" | "TABLE" => Some("b".into()),
                        "SECRETS_BASE_URL" => Some("https://s.example".into()),
                        "TOKEN_KEYS" => Some("k".into()),
                        _ => None,
                    }
                }
            };
            let accepts = |value: i64| {
                let lookup = with(value);
                BootConfig::from_lookup(&lookup).is_ok() && RedeemConfig::from_lookup(&lookup).is_ok()
            };
            assert!(accepts(start) && accepts(end), "{name}: {start} and {end} are accepted");
            assert!(!accepts(end + 1), "{name}: {} is refused", end + 1);
            if start > 0 {
                assert!(!accepts(start - 1), "{name}: {} is refused", start - 1);
            }
        }
    }
}
