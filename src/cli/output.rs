//! What the store-facing commands share: opening the store as the caller, JSON and table output.

use super::GlobalOpts;
use crate::store::{AccountId, Store};
use crate::text::escape_unsafe;
use std::fmt::Write as _;
use std::io::Write as _;

/// The store directory: `--store`, else the default.
pub fn store_dir(g: &GlobalOpts) -> anyhow::Result<std::path::PathBuf> {
    Ok(match &g.store {
        Some(d) => d.clone(),
        None => Store::default_dir()?,
    })
}

/// The opened store (`--store`, else the default directory) and the caller's account.
pub fn open_store(g: &GlobalOpts) -> anyhow::Result<(Store, AccountId)> {
    let store = Store::open(&store_dir(g)?)?;
    let caller = store.resolve_account(g.account.as_deref())?;
    Ok((store, caller))
}

/// The store opened read-only ([`Store::open_read_only`]) and the caller's account: for
/// commands that only read it (export, dump, verify).
pub fn open_store_read_only(g: &GlobalOpts) -> anyhow::Result<(Store, AccountId)> {
    let store = Store::open_read_only(&store_dir(g)?)?;
    let caller = store.resolve_account(g.account.as_deref())?;
    Ok((store, caller))
}

/// Pretty-printed JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    print_out(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// Write to stdout; a closed pipe (`amivm ps | head`) is not an error.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded. Control
/// characters in cells are escaped ([`crate::text::escape_unsafe`]): names and descriptions
/// come from other accounts and must not drive the terminal.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape_unsafe(c).into_owned()).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut l = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            match widths.get(i) {
                Some(w) if i + 1 < n => {
                    let _ = write!(l, "{c:<w$}  ");
                }
                _ => l.push_str(c),
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn table_escapes_control_characters() {
        let t = table(&["A", "B"], &[vec!["x\x1b[2J".into(), "a\r\nb".into()]]);
        assert_eq!(t, "A         B\nx\\x1b[2J  a\\r\\nb\n");
        assert!(!t.contains('\x1b') && !t.contains('\r'));
    }
}
