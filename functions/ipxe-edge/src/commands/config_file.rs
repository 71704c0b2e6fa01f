//! `serve --config FILE`: a TOML file whose keys are `serve`'s flag names (`max-connections =
//! 300`, `listen = ["0.0.0.0:8443", "[::]:8443"]`). Its values become the flags' defaults
//! before the command line is parsed, so the precedence is clap's own: a flag, then its
//! environment variable, then the file, then the built-in default. Every value goes through the
//! flag's own parser first, so a bad one is refused naming the file, the line and the key, before
//! anything is written.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// One value the file sets, and where.
struct Setting {
    key: String,
    values: Vec<String>,
    line: usize,
}

/// A config file, read and checked against the command it configures.
pub struct ConfigFile {
    path: PathBuf,
    settings: Vec<Setting>,
}

/// The `--config FILE` of a `serve` command line, found before clap parses it (its values are
/// needed as defaults).
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let serve_at = args.iter().position(|a| a == "serve")?;
    let mut rest = args[serve_at + 1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--config" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Flags that configure the file itself, not the server.
const NOT_IN_FILE: [&str; 3] = ["config", "print-config", "help"];

impl ConfigFile {
    /// Reads `path` and checks every key and value against `serve` (a subcommand of `cmd`);
    /// the error is one line naming the file, the line and the key.
    pub fn read(path: &Path, cmd: &Command) -> Result<Self, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("--config {shown}: {e}"))?;
        let table: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> =
            toml::from_str(&text).map_err(|e| format!("{shown}: {}", e.to_string().replace('\n', " ")))?;
        let mut cmd = cmd.clone();
        cmd.build();
        let serve = cmd.find_subcommand("serve").expect("serve is a subcommand").clone();
        let mut settings = Vec::new();
        for (key, value) in table {
            let line = text[..key.span().start].matches('\n').count() + 1;
            let key = key.into_inner();
            let at = |what: String| format!("{shown}:{line}: {key}: {what}");
            let arg =
                find_arg(&serve, &cmd, &key).filter(|_| !NOT_IN_FILE.contains(&key.as_str())).ok_or_else(|| {
                    format!(
                        "{shown}:{line}: unknown key {key:?} (the keys are serve's flag names, e.g. max-connections)"
                    )
                })?;
            let values = toml_values(arg, value.into_inner()).map_err(at)?;
            for v in &values {
                if is_flag(arg) {
                    continue;
                }
                check_value(arg, &key, v).map_err(&at)?;
            }
            settings.push(Setting { key, values, line });
        }
        Ok(ConfigFile { path: path.to_path_buf(), settings })
    }

    /// `cmd` with the file's values as its flags' defaults.
    pub fn apply(&self, cmd: Command) -> Command {
        let mut cmd = cmd;
        for setting in &self.settings {
            // Read once per process: leaking the few values is what gives them clap's lifetime.
            let values: Vec<clap::builder::OsStr> = setting
                .values
                .iter()
                .map(|v| {
                    let leaked: &'static str = Box::leak(v.clone().into_boxed_str());
                    leaked.into()
                })
                .collect();
            let long = setting.key.clone();
            let set = move |arg: Arg| arg.default_values(values.clone());
            let in_serve = cmd
                .find_subcommand("serve")
                .is_some_and(|s| s.get_arguments().any(|a| a.get_long() == Some(&long) && !a.is_global_set()));
            cmd = if in_serve {
                cmd.mut_subcommand("serve", |s| {
                    let id = id_of(&s, &long);
                    s.mut_arg(id, set)
                })
            } else {
                let id = id_of(&cmd, &long);
                cmd.mut_arg(id, set)
            };
        }
        cmd
    }

    fn line_of(&self, key: &str) -> Option<usize> {
        self.settings.iter().find(|s| s.key == key).map(|s| s.line)
    }
}

/// `value` through the flag's own parser (a command of that one flag: its rules about other
/// flags are checked when the command line is parsed).
fn check_value(arg: &Arg, key: &str, value: &str) -> Result<(), String> {
    let long: &'static str = Box::leak(key.to_string().into_boxed_str());
    let probe = Command::new("serve")
        .no_binary_name(true)
        .arg(Arg::new(long).long(long).value_parser(arg.get_value_parser().clone()).action(ArgAction::Set));
    probe.try_get_matches_from([OsString::from(format!("--{key}")), OsString::from(value)]).map(drop).map_err(|e| {
        let message = e.to_string();
        message.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string()
    })
}

fn find_arg<'a>(serve: &'a Command, root: &'a Command, key: &str) -> Option<&'a Arg> {
    serve.get_arguments().chain(root.get_arguments()).find(|a| a.get_long() == Some(key) && !a.is_hide_set())
}

fn id_of(cmd: &Command, long: &str) -> String {
    cmd.get_arguments().find(|a| a.get_long() == Some(long)).map(|a| a.get_id().to_string()).unwrap_or_default()
}

fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// A TOML value as the strings clap parses: a boolean for a switch, a list for a flag that is
/// given more than once, text or a number otherwise.
fn toml_values(arg: &Arg, value: toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: toml::Value| match v {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!("expected text or a number, found {}", other.type_str())),
    };
    if is_flag(arg) {
        return match value {
            toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
            other => Err(format!("expected true or false, found {}", other.type_str())),
        };
    }
    let many = matches!(arg.get_action(), ArgAction::Append);
    match value {
        toml::Value::Array(items) if many => items.into_iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("takes one value, not a list".into()),
        other => Ok(vec![scalar(other)?]),
    }
}

/// Flags whose values are not printed: a secret given inline (today's flags name files and
/// addresses only; a future `--…-password` stays out of the output).
fn is_secret(long: &str) -> bool {
    ["-password", "-secret", "-hmac-key", "-api-token"].iter().any(|w| long.ends_with(w))
}

/// `serve --print-config`: every setting `serve` takes, in the order `cmd` (the command as
/// declared) lists them, its effective value from `matches` and where the value came from, one
/// `key = value  # source` line each (TOML, so the output is a config file).
pub fn print_config(cmd: &Command, matches: &ArgMatches, file: Option<&ConfigFile>) -> String {
    let serve = cmd.find_subcommand("serve").expect("serve is a subcommand");
    let serve_matches = matches.subcommand_matches("serve").expect("a serve command line");
    let mut out = String::new();
    let own = serve.get_arguments().filter(|a| !a.is_global_set()).map(|a| (a, serve_matches));
    let globals = cmd.get_arguments().filter(|a| a.is_global_set()).map(|a| (a, matches));
    for (arg, m) in own.chain(globals) {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else { continue };
        if NOT_IN_FILE.contains(&long) || arg.is_hide_set() {
            continue;
        }
        let raw: Vec<String> =
            m.get_raw(id).map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        let value = if raw.is_empty() {
            None
        } else if is_secret(long) {
            Some("\"<redacted>\"".to_string())
        } else if is_flag(arg) {
            Some(raw[0].clone())
        } else if matches!(arg.get_action(), ArgAction::Append) {
            Some(format!("[{}]", raw.iter().map(|v| toml_string(v)).collect::<Vec<_>>().join(", ")))
        } else {
            Some(toml_string(&raw[0]))
        };
        let source = match (m.value_source(id), file.and_then(|f| f.line_of(long).map(|l| (f, l)))) {
            (Some(ValueSource::CommandLine), _) => "flag".to_string(),
            (Some(ValueSource::EnvVariable), _) => "environment".to_string(),
            (Some(ValueSource::DefaultValue), Some((f, line))) => format!("{}:{line}", f.path.display()),
            _ => "default".to_string(),
        };
        out.push('\n');
        match value {
            Some(value) => out.push_str(&format!("{long} = {value}  # {source}")),
            None => out.push_str(&format!("# {long} (not set)")),
        }
    }
    out.trim_start().to_string() + "\n"
}

/// A number or a boolean as itself, anything else as a TOML string.
fn toml_string(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
        v.to_string()
    } else {
        toml::Value::String(v.to_string()).to_string()
    }
}
