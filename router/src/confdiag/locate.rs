//! Maps a config path (`sinks.archive.flush_interval`) to a line and column.
//!
//! Why a second parse with `toml_edit`: component tables are deserialized by
//! `type` after env expansion, which loses serde's spans; `toml_edit` keeps the
//! span of every key, so an error can still say `logferry.toml:24:1`.

use toml_edit::{Document, Item, TableLike};

/// One step of a config path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// 1-based (line, column) of the deepest element of `path` found in `text`.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let doc = Document::parse(text).ok()?;
    let mut best = None;
    let mut item: &Item = doc.as_item();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let Some(table) = as_table_like(item) else { break };
                let Some((key, next)) = table.get_key_value(k) else {
                    break;
                };
                if let Some(span) = key.span().or_else(|| next.span()) {
                    best = Some(span.start);
                }
                item = next;
            }
            Seg::Index(i) => {
                let span = match item {
                    Item::Value(toml_edit::Value::Array(a)) => a.get(*i).and_then(|v| v.span()),
                    Item::ArrayOfTables(a) => a.get(*i).and_then(|t| t.span()),
                    _ => None,
                };
                if let Some(span) = span {
                    best = Some(span.start);
                }
                break;
            }
        }
    }
    best.map(|offset| line_col(text, offset))
}

fn as_table_like(item: &Item) -> Option<&dyn TableLike> {
    item.as_table_like()
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn finds_keys_in_tables_inline_tables_and_arrays() {
        let text = "[global]\ndata_dir = \"/x\"\n\n[sinks.archive]\ntype = \"file\"\ninputs = [\"a\", \"b\"]\nflush_interval = \"1x\"\nbuffer = { max_size = 3 }\n";
        assert_eq!(
            locate(text, &[k("sinks"), k("archive"), k("flush_interval")]),
            Some((7, 1))
        );
        assert_eq!(
            locate(text, &[k("sinks"), k("archive"), k("inputs"), Seg::Index(1)]),
            Some((6, 16))
        );
        assert_eq!(
            locate(text, &[k("sinks"), k("archive"), k("buffer"), k("max_size")]),
            Some((8, 12))
        );
        // Unknown key: the deepest known parent.
        assert_eq!(locate(text, &[k("sinks"), k("archive"), k("nope")]), Some((4, 8)));
    }
}
