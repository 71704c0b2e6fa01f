//! The template renderer with its invariant as the oracle: whatever the template and the
//! gateway's values, an answered script has the template's shape (same words per line, same
//! chaining and comment words, balanced quotes, no control character).
#![no_main]

use arbitrary::Arbitrary;
use ipxe_edge_core::domain::render::{render, Vars};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    lines: Vec<String>,
    a: String,
    b: String,
}

fn words(line: &str) -> Vec<&str> {
    line.split(' ').collect()
}

fn special(word: &str) -> bool {
    word == "&&" || word == "||" || word.starts_with('#')
}

fuzz_target!(|input: Input| {
    let lines: Vec<String> = input.lines.into_iter().filter(|l| !l.contains('\n')).take(8).collect();
    let template: String =
        std::iter::once("#!ipxe").chain(lines.iter().map(String::as_str)).map(|l| format!("{l}\n")).collect();
    let mut vars = Vars::new();
    if vars.set("a", input.a.as_str()).is_err() || vars.set("b", input.b.as_str()).is_err() {
        return;
    }
    let Ok(out) = render(&template, &vars) else { return };
    let out_lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(out_lines.len(), lines.len());
    for (rendered, shape) in out_lines.iter().zip(&lines) {
        let shape = shape.replace("${a}", "X").replace("${b}", "X");
        assert!(!rendered.chars().any(|c| c.is_control()));
        assert_eq!(rendered.matches('"').count() % 2, 0);
        assert_eq!(words(rendered).len(), words(&shape).len(), "{rendered:?} from {shape:?}");
        let ours: Vec<bool> = words(rendered).into_iter().map(special).collect();
        let theirs: Vec<bool> = words(&shape).into_iter().map(special).collect();
        assert_eq!(ours, theirs);
    }
});
