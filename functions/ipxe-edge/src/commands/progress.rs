//! Upload progress on a terminal: a bar per step on stderr, and a line naming where each file
//! was stored.

use crate::ops::upload::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use ipxe_edge_core::domain::model::Asset;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

/// Draws bars only when stderr is a terminal; names stored files either way.
#[derive(Default)]
pub struct TerminalProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for TerminalProgress {
    fn begin(&self, what: &'static str, len: u64) {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(len);
            bar.set_style(
                ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        } else {
            ProgressBar::hidden()
        };
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            bar.inc(bytes);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }

    fn stored(&self, path: &Path, asset: &Asset, already: bool) {
        if already {
            eprintln!("{}: already stored as {}", path.display(), asset.key);
        } else {
            eprintln!("{}: stored as {} ({} bytes)", path.display(), asset.key, asset.size);
        }
    }
}
