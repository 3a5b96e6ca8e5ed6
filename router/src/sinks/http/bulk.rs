//! Reading an OpenSearch / Elasticsearch `_bulk` answer.
//!
//! Why this exists: `_bulk` answers 200 even when some (or all) of its
//! documents were refused; the per-document outcome is in `items`, one per
//! action in request order, flagged by a top-level `"errors": true`. A sink
//! that stops at the status line loses every refused document silently
//! (Fluent Bit's `es` output once did, fluent-bit issue 1468). So a bulk
//! body is settled document by document: taken, sent again (429 and 5xx:
//! the cluster was busy), or dead-lettered with its status (a mapping
//! conflict will not get better by retrying).
//!
//! An answer that cannot be read item by item (not JSON, cut off by the
//! answer size limit, or with a different number of items than documents
//! sent) is treated as a failure of the whole body, which is sent again:
//! duplicates are possible, loss is not.

use serde::Deserialize;
use serde::de::IgnoredAny;

/// What happened to one document of a bulk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Taken,
    /// Busy (429) or failed on the cluster (5xx): send it again.
    Retry(u16),
    /// Refused for good (mapping error, bad document): dead letters.
    Reject(u16),
}

/// The answer, read.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `"errors": false`: every document was taken.
    AllTaken,
    /// Some documents were refused; one `Item` per document sent.
    Items(Vec<Item>),
    /// The answer could not be read item by item; why.
    Unreadable(String),
}

#[derive(Deserialize)]
struct Answer {
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::BTreeMap<String, ItemAnswer>>,
}

#[derive(Deserialize)]
struct ItemAnswer {
    status: u16,
    #[serde(default, rename = "error")]
    _error: Option<IgnoredAny>,
}

/// Reads `answer`, the body of a 2xx reply to a bulk request of `docs`
/// documents.
pub fn read(answer: &[u8], docs: usize) -> Outcome {
    let a: Answer = match serde_json::from_slice(answer) {
        Ok(a) => a,
        Err(e) => {
            // `{"took":..,"errors":false,...` cut off by the size limit is
            // still a clean answer: `errors` comes before `items`.
            if errors_false_prefix(answer) {
                return Outcome::AllTaken;
            }
            return Outcome::Unreadable(format!("bulk answer is not the expected JSON: {e}"));
        }
    };
    if !a.errors {
        return Outcome::AllTaken;
    }
    if a.items.len() != docs {
        return Outcome::Unreadable(format!("bulk answer has {} items for {docs} documents", a.items.len()));
    }
    let mut items = Vec::with_capacity(docs);
    for it in &a.items {
        // One action per item (`index`, `create`, ...); its name does not matter.
        let Some(s) = it.values().next().map(|i| i.status) else {
            return Outcome::Unreadable("bulk answer has an empty item".into());
        };
        items.push(match s {
            200..=299 => Item::Taken,
            429 | 500..=599 => Item::Retry(s),
            _ => Item::Reject(s),
        });
    }
    Outcome::Items(items)
}

/// The answer starts `{"took":<n>,"errors":false` (in either key order),
/// whatever follows.
fn errors_false_prefix(answer: &[u8]) -> bool {
    let head = &answer[..answer.len().min(256)];
    let compact: Vec<u8> = head.iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
    let s = String::from_utf8_lossy(&compact);
    let Some(e) = s.find("\"errors\":false") else {
        return false;
    };
    s.starts_with('{') && s.find("\"items\"").is_none_or(|i| e < i)
}

/// `bulk_<status>`: the reason label of a refused document.
pub fn reason(status: u16) -> &'static str {
    super::client::interned("bulk", status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_opensearch_writes_them() {
        // Shapes from OpenSearch 2.x `_bulk` (trimmed of _shards/_seq_no).
        let clean = br#"{"took":30,"errors":false,"items":[{"index":{"_index":"logs","_id":"a","status":201}}]}"#;
        assert_eq!(read(clean, 1), Outcome::AllTaken);
        let mixed = br#"{"took":4,"errors":true,"items":[
            {"index":{"_index":"logs","_id":"a","status":201,"result":"created"}},
            {"index":{"_index":"logs","_id":"b","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"_index":"logs","_id":"c","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n]"}}},
            {"index":{"_index":"logs","status":503,"error":{"type":"unavailable_shards_exception"}}},
            {"index":{"_index":"logs","status":409,"error":{"type":"version_conflict_engine_exception"}}}
        ]}"#;
        assert_eq!(
            read(mixed, 5),
            Outcome::Items(vec![
                Item::Taken,
                Item::Retry(429),
                Item::Reject(400),
                Item::Retry(503),
                Item::Reject(409)
            ])
        );
        assert!(
            matches!(read(mixed, 4), Outcome::Unreadable(_)),
            "item count must match"
        );
        assert!(matches!(read(b"<html>ok</html>", 1), Outcome::Unreadable(_)));
        assert!(matches!(read(b"{}", 1), Outcome::Unreadable(_)), "no `errors`: unknown");
        assert!(matches!(
            read(br#"{"errors":true,"items":[{}]}"#, 1),
            Outcome::Unreadable(_)
        ));
    }

    #[test]
    fn a_cut_off_answer_is_clean_only_when_it_says_so_before_the_items() {
        let mut long = br#"{"took":30, "errors" : false,"items":[{"index":{"status":201}},"#.to_vec();
        long.extend_from_slice(&b"{\"index\":{\"status\":201}},".repeat(100)[..777]);
        assert_eq!(read(&long, 200), Outcome::AllTaken);
        let mut bad = br#"{"took":30,"errors":true,"items":[{"index":{"status":201}},"#.to_vec();
        bad.extend_from_slice(b"{\"index\":{\"status\":4");
        assert!(matches!(read(&bad, 200), Outcome::Unreadable(_)));
        // `errors:false` inside a document's error text after the items does not count.
        let tricky = br#"{"took":1,"items":[{"index":{"status":400,"error":{"reason":"\"errors\":false"}}}],"err"#;
        assert!(matches!(read(tricky, 1), Outcome::Unreadable(_)));
    }
}
