//! KPL aggregated records: many log records in one Kinesis record, in the
//! format of the Kinesis Producer Library (`aggregation.md` in
//! awslabs/amazon-kinesis-producer): the magic `F3 89 9A C2`, an
//! `AggregatedRecord` protobuf, and the MD5 of that protobuf. KCL, the
//! Lambda event source's deaggregation libraries and `aws-kinesis-agg`
//! read each log record back with its own partition key.
//!
//! Why aggregate: Kinesis bills and throttles per record (1,000 records a
//! second per shard), and log records are small. Why the sizes are counted
//! as records are added: a Kinesis record holds at most 1 MiB, outer
//! partition key included, and finding out after encoding would mean
//! splitting again. Kinesis puts the whole aggregate on the shard of its
//! outer partition key (here, its first log record's key), as the KPL does
//! when it does not know the shard map.

use std::collections::HashMap;

use md5::{Digest, Md5};
use prost::Message;
use prost::encoding::encoded_len_varint as varint;

/// The first bytes of every aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// The KPL's `messages.proto` (proto2: `required` fields are always
/// written, a zero index too).
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<UserRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UserRecord {
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    pub data: Vec<u8>,
}

/// Bytes an aggregate adds around its protobuf: magic and MD5.
const OVERHEAD: usize = MAGIC.len() + 16;

/// One aggregate being filled.
#[derive(Debug, Default)]
pub struct Aggregate {
    msg: AggregatedRecord,
    keys: HashMap<String, u64>,
    /// `msg.encoded_len()`, kept as records are added.
    proto_len: usize,
}

impl Aggregate {
    pub fn is_empty(&self) -> bool {
        self.msg.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.msg.records.len()
    }

    /// The outer partition key: the first record's.
    pub fn key(&self) -> Option<&str> {
        self.msg.partition_key_table.first().map(String::as_str)
    }

    /// Size as Kinesis counts it (data and outer partition key).
    pub fn size(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        OVERHEAD + self.proto_len + self.key().map_or(0, str::len)
    }

    /// Size once `data` under `key` is added.
    pub fn size_with(&self, key: &str, data: &[u8]) -> usize {
        let (index, new_key) = match self.keys.get(key) {
            Some(&i) => (i, 0),
            None => (
                self.msg.partition_key_table.len() as u64,
                1 + varint(key.len() as u64) + key.len(),
            ),
        };
        // Field 1 (always written, proto2 `required`) and field 3.
        let rec_len = 1 + varint(index) + 1 + varint(data.len() as u64) + data.len();
        let entry = 1 + varint(rec_len as u64) + rec_len;
        let outer_key = if self.is_empty() {
            key.len()
        } else {
            self.key().map_or(0, str::len)
        };
        OVERHEAD + self.proto_len + new_key + entry + outer_key
    }

    pub fn push(&mut self, key: &str, data: &[u8]) {
        let next = self.msg.partition_key_table.len() as u64;
        let index = match self.keys.get(key) {
            Some(&i) => i,
            None => {
                self.keys.insert(key.to_string(), next);
                self.msg.partition_key_table.push(key.to_string());
                next
            }
        };
        self.msg.records.push(UserRecord {
            partition_key_index: index,
            explicit_hash_key_index: None,
            data: data.to_vec(),
        });
        self.proto_len = self.msg.encoded_len();
    }

    /// The Kinesis record: outer partition key and data. Leaves `self`
    /// empty.
    pub fn finish(&mut self) -> (String, Vec<u8>) {
        let agg = std::mem::take(self);
        let key = agg.msg.partition_key_table.first().cloned().unwrap_or_default();
        let proto = agg.msg.encode_to_vec();
        let mut out = Vec::with_capacity(OVERHEAD + proto.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&proto);
        out.extend_from_slice(&Md5::digest(&proto));
        (key, out)
    }
}

/// Reads an aggregated record back: `(partition key, data)` per log
/// record. `None` when the magic or the MD5 is wrong, or the protobuf does
/// not parse. For tests and tools.
pub fn deaggregate(data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let body = data.strip_prefix(&MAGIC)?;
    let split = body.len().checked_sub(16)?;
    let (proto, digest) = body.split_at(split);
    if Md5::digest(proto).as_slice() != digest {
        return None;
    }
    let msg = AggregatedRecord::decode(proto).ok()?;
    msg.records
        .into_iter()
        .map(|r| {
            let key = msg
                .partition_key_table
                .get(usize::try_from(r.partition_key_index).ok()?)?;
            Some((key.clone(), r.data))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_known_aggregate_round_trips_byte_for_byte() {
        let mut a = Aggregate::default();
        a.push("k0", b"one\n");
        a.push("k1", b"two\n");
        a.push("k0", b"three\n");
        let predicted = a.size();
        let (key, data) = a.finish();
        assert!(a.is_empty());
        assert_eq!(key, "k0");
        assert_eq!(predicted, data.len() + key.len());
        assert_eq!(&data[..4], &MAGIC);
        // Field 1 (key table) "k0", "k1"; field 3 records; index 0 written.
        let proto = &data[4..data.len() - 16];
        let expected: &[u8] = &[
            0x0a, 2, b'k', b'0', 0x0a, 2, b'k', b'1', //
            0x1a, 8, 0x08, 0, 0x1a, 4, b'o', b'n', b'e', b'\n', //
            0x1a, 8, 0x08, 1, 0x1a, 4, b't', b'w', b'o', b'\n', //
            0x1a, 10, 0x08, 0, 0x1a, 6, b't', b'h', b'r', b'e', b'e', b'\n',
        ];
        assert_eq!(proto, expected);
        let back = deaggregate(&data).unwrap();
        assert_eq!(
            back,
            vec![
                ("k0".to_string(), b"one\n".to_vec()),
                ("k1".to_string(), b"two\n".to_vec()),
                ("k0".to_string(), b"three\n".to_vec()),
            ]
        );
    }

    #[test]
    fn a_corrupted_aggregate_is_refused() {
        let mut a = Aggregate::default();
        a.push("k", b"data");
        let (_, mut data) = a.finish();
        assert!(deaggregate(&data).is_some());
        let mid = data.len() / 2;
        data[mid] ^= 1;
        assert!(deaggregate(&data).is_none(), "MD5 must catch a flipped bit");
        assert!(deaggregate(b"\xF3\x89\x9A").is_none());
    }

    proptest! {
        /// The size predicted before each push is the size of the
        /// finished record, to the byte, whatever the keys and lengths
        /// (varint boundaries at 128 and 16384 included).
        #[test]
        fn predicted_sizes_are_exact(
            recs in proptest::collection::vec((0u8..4, prop_oneof![0usize..200, 100usize..20_000]), 1..40)
        ) {
            let mut a = Aggregate::default();
            let mut want = Vec::new();
            for (k, len) in recs {
                let key = format!("key-{}", "x".repeat(k as usize * 50));
                let data = vec![b'a' + k; len];
                let predicted = a.size_with(&key, &data);
                a.push(&key, &data);
                prop_assert_eq!(predicted, a.size());
                want.push((key, data));
            }
            let size = a.size();
            let (key, data) = a.finish();
            prop_assert_eq!(size, key.len() + data.len());
            prop_assert_eq!(deaggregate(&data).unwrap(), want);
        }
    }
}
