//! A scripted endpoint for the record sinks' tests: it speaks the AWS JSON
//! 1.1 protocol the SDK uses for `PutRecordBatch` and `PutRecords`,
//! records every call's records (partition key, decoded data) and answers
//! each call as the script says (accept, reject some records, fail).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;

#[derive(Debug, Clone)]
pub enum Answer {
    /// Accept every record.
    Ok,
    /// A failed count > 0: reject the records at these indices.
    Reject(Vec<usize>),
    /// The whole call fails with this status and error type.
    Error(u16, &'static str),
}

/// How one service names things in its requests and answers.
#[derive(Debug, Clone, Copy)]
pub struct Protocol {
    /// `X-Amz-Target` of the call.
    pub target: &'static str,
    /// The stream's field in the request, and the name it must have.
    pub stream_field: &'static str,
    pub stream: &'static str,
    /// The answer's failed count field, and its list of per-record results.
    pub failed_field: &'static str,
    pub results_field: &'static str,
    /// The error code of a rejected record.
    pub reject_code: &'static str,
    /// An accepted record's result.
    pub accepted: fn(usize) -> serde_json::Value,
}

pub const FIREHOSE: Protocol = Protocol {
    target: "Firehose_20150804.PutRecordBatch",
    stream_field: "DeliveryStreamName",
    stream: "s",
    failed_field: "FailedPutCount",
    results_field: "RequestResponses",
    reject_code: "ServiceUnavailableException",
    accepted: |i| serde_json::json!({"RecordId": format!("r{i}")}),
};

pub const KINESIS: Protocol = Protocol {
    target: "Kinesis_20131202.PutRecords",
    stream_field: "StreamName",
    stream: "s",
    failed_field: "FailedRecordCount",
    results_field: "Records",
    reject_code: "ProvisionedThroughputExceededException",
    accepted: |i| serde_json::json!({"SequenceNumber": format!("{i}"), "ShardId": "shardId-000000000000"}),
};

#[derive(Default)]
pub struct State {
    pub script: Vec<Answer>,
    /// (partition key, or "" without one; data) of every record of every
    /// call, in order.
    pub calls: Vec<Vec<(String, Vec<u8>)>>,
    /// Request body sizes.
    pub bodies: Vec<usize>,
}

impl State {
    /// The data of every record of every call.
    pub fn data(&self) -> Vec<Vec<Vec<u8>>> {
        self.calls
            .iter()
            .map(|c| c.iter().map(|(_, d)| d.clone()).collect())
            .collect()
    }
}

/// Listens on loopback; returns the endpoint URL and the shared state.
pub fn start(protocol: Protocol, script: Vec<Answer>) -> (String, Arc<Mutex<State>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(State {
        script,
        ..State::default()
    }));
    let st = state.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let st = st.clone();
            std::thread::spawn(move || serve(protocol, conn, st));
        }
    });
    (url, state)
}

fn serve(p: Protocol, conn: TcpStream, st: Arc<Mutex<State>>) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut target = String::new();
        let mut first = true;
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                return;
            }
            let l = l.trim_end();
            if l.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
                if k.eq_ignore_ascii_case("x-amz-target") {
                    target = v.trim().to_string();
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        assert_eq!(target, p.target);
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(req[p.stream_field], p.stream);
        let b64 = base64::engine::general_purpose::STANDARD;
        let records: Vec<(String, Vec<u8>)> = req["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rec| {
                (
                    rec["PartitionKey"].as_str().unwrap_or_default().to_string(),
                    b64.decode(rec["Data"].as_str().unwrap()).unwrap(),
                )
            })
            .collect();
        let n = records.len();
        let answer = {
            let mut s = st.lock().unwrap();
            s.calls.push(records);
            s.bodies.push(len);
            if s.script.is_empty() {
                Answer::Ok
            } else {
                s.script.remove(0)
            }
        };
        let (status, text) = match answer {
            Answer::Ok => (200, response(p, n, &[])),
            Answer::Reject(idx) => (200, response(p, n, &idx)),
            Answer::Error(status, kind) => (
                status,
                serde_json::json!({"__type": kind, "message": "scripted"}).to_string(),
            ),
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        if w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(text.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}

fn response(p: Protocol, n: usize, rejected: &[usize]) -> String {
    let entries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            if rejected.contains(&i) {
                serde_json::json!({"ErrorCode": p.reject_code, "ErrorMessage": "slow down"})
            } else {
                (p.accepted)(i)
            }
        })
        .collect();
    let mut out = serde_json::json!({ p.results_field: entries });
    out[p.failed_field] = serde_json::json!(rejected.len());
    if p.failed_field == "FailedPutCount" {
        out["Encrypted"] = serde_json::json!(false);
    }
    out.to_string()
}
