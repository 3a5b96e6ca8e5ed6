//! Per-invocation totals, printed as one CloudWatch Embedded Metric Format
//! line (CloudWatch Logs turns it into metrics in `Logferry/Indexer`).

use serde_json::json;

use crate::process::Outcome;

pub const NAMESPACE: &str = "Logferry/Indexer";

/// Counts of one invocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Objects named by the event.
    pub objects: u64,
    pub indexed: u64,
    pub records: u64,
    /// Decompressed bytes read (indexed and quarantined objects).
    pub bytes: u64,
    pub quarantined: u64,
    pub ignored: u64,
    pub missing: u64,
    /// Objects (or messages) reported failed, to be retried.
    pub failed: u64,
}

impl Totals {
    pub fn add(&mut self, outcome: &Outcome) {
        self.objects += 1;
        match outcome {
            Outcome::Indexed {
                records,
                uncompressed_bytes,
                ..
            } => {
                self.indexed += 1;
                self.records += records;
                self.bytes += uncompressed_bytes;
            }
            Outcome::Quarantined { uncompressed_bytes, .. } => {
                self.quarantined += 1;
                self.bytes += uncompressed_bytes;
            }
            Outcome::Ignored => self.ignored += 1,
            Outcome::Missing => self.missing += 1,
        }
    }

    pub fn add_failed(&mut self) {
        self.objects += 1;
        self.failed += 1;
    }

    /// The EMF line (without newline). `timestamp_ms`: now, in ms since the epoch.
    pub fn emf_line(&self, function_name: &str, timestamp_ms: i64) -> String {
        let names = [
            "Objects",
            "Indexed",
            "Records",
            "Bytes",
            "Quarantined",
            "Ignored",
            "Missing",
            "Failed",
        ];
        let metrics: Vec<_> = names
            .iter()
            .map(|n| json!({"Name": n, "Unit": if *n == "Bytes" { "Bytes" } else { "Count" }}))
            .collect();
        json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["FunctionName"]],
                    "Metrics": metrics,
                }],
            },
            "FunctionName": function_name,
            "Objects": self.objects,
            "Indexed": self.indexed,
            "Records": self.records,
            "Bytes": self.bytes,
            "Quarantined": self.quarantined,
            "Ignored": self.ignored,
            "Missing": self.missing,
            "Failed": self.failed,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::QuarantineReason;

    #[test]
    fn emf_line_has_every_metric_as_a_member() {
        let mut t = Totals::default();
        t.add(&Outcome::Indexed {
            records: 10,
            uncompressed_bytes: 100,
            index_key: "k".into(),
        });
        t.add(&Outcome::Quarantined {
            reason: QuarantineReason::Corrupt,
            uncompressed_bytes: 5,
        });
        t.add(&Outcome::Ignored);
        t.add_failed();
        let line = t.emf_line("fn", 1);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        for m in v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metrics")
        {
            let name = m["Name"].as_str().expect("name");
            assert!(v[name].is_u64(), "{name} missing");
        }
        assert_eq!(
            (v["Objects"].as_u64(), v["Records"].as_u64(), v["Bytes"].as_u64()),
            (Some(4), Some(10), Some(105))
        );
        assert_eq!((v["Quarantined"].as_u64(), v["Failed"].as_u64()), (Some(1), Some(1)));
    }
}
