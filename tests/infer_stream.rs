//! Streams of rows through `ringtrain::infer`: every row gets exactly one answer, in
//! order; a bad row (not numbers, the wrong count, NaN, too long, not UTF-8) gets an
//! error line and the rest are served; ids come back; the TCP server answers every
//! request of 32 concurrent clients once, batching across them.

use ringtrain::checkpoint::Checkpoint;
use ringtrain::infer::{
    run_stream, serve, Answer, BatchConfig, Batcher, Output, Predictor, RowFormat, RowSpec,
    StreamConfig,
};
use ringtrain::zoo::{Activation, ModelSpec, MODEL_KEY};
use ringtrain::{rng_from_seed, Device};
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

const FEATURES: usize = 8;

fn predictor() -> Predictor {
    let spec = ModelSpec::Mlp {
        inputs: FEATURES,
        hidden: vec![16],
        outputs: 3,
        activation: Activation::Relu,
    };
    let model = spec.build(&Device::cpu(), &mut rng_from_seed(4)).unwrap();
    let mut c = Checkpoint::of_module(&model).unwrap();
    c.set_metadata(MODEL_KEY, spec.to_json());
    Predictor::from_checkpoint(&c, &Device::cpu()).unwrap()
}

fn row(i: usize) -> Vec<f32> {
    (0..FEATURES)
        .map(|j| ((i * 7 + j * 3) % 11) as f32 / 5.0 - 1.0)
        .collect()
}

fn csv(values: &[f32]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn config(format: RowFormat) -> StreamConfig {
    StreamConfig {
        format,
        rows: RowSpec {
            features: FEATURES,
            pixels: false,
        },
        max_line_bytes: 200,
    }
}

fn batcher(max_batch: usize, output: Output) -> Batcher {
    Batcher::start(
        Box::new(predictor()),
        BatchConfig {
            max_batch,
            max_wait: Duration::from_millis(1),
            output,
        },
    )
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn every_row_of_a_stream_is_answered_once_in_order_and_bad_ones_get_errors() {
    let reference = predictor();
    let mut input = Vec::new();
    let mut expected: Vec<Option<u32>> = Vec::new(); // a class, or an error
    for i in 0..300 {
        match i % 10 {
            3 => input.extend_from_slice(b"1,2,x,4,5,6,7,8\n"),
            4 => input.extend_from_slice(b"1,2,3\n"),
            5 => input.extend_from_slice(b"1,2,NaN,4,5,6,7,8\n"),
            6 => input.extend_from_slice(format!("{}\n", "9,".repeat(150)).as_bytes()),
            7 => input.extend_from_slice(b"\xff\xfe,1\n"),
            _ => {
                input.extend_from_slice(format!("{}\n", csv(&row(i))).as_bytes());
                expected.push(Some(reference.classify(&row(i)).unwrap()[0].0));
                continue;
            }
        }
        expected.push(None);
    }
    let b = batcher(16, Output::Class);
    let mut out = Vec::new();
    let counts = run_stream(&input[..], config(RowFormat::Csv), &b.sender(), &mut out).unwrap();
    let stats = b.finish();
    let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    assert_eq!(lines.len(), 300);
    assert_eq!((counts.rows, counts.rejected), (300, 150));
    assert_eq!(stats.rows, 150);
    assert!(
        stats.batches < 150,
        "rows were batched: {}",
        stats.summary()
    );
    for (line, want) in lines.iter().zip(&expected) {
        let v = json(line);
        match want {
            Some(class) => assert_eq!(v["class"], *class, "{line}"),
            None => assert!(v["error"].is_string(), "{line}"),
        }
    }
    assert!(json(lines[6])["error"]
        .as_str()
        .unwrap()
        .contains("longer than 200"));
}

#[test]
fn json_rows_carry_their_ids_and_vectors_come_back_whole() {
    let reference = predictor();
    let mut input = String::new();
    for i in 0..20 {
        input.push_str(&format!(
            "{{\"id\": \"r{i}\", \"features\": [{}]}}\n",
            csv(&row(i))
        ));
    }
    input.push_str("[1, 2]\n{\"features\": \"no\"}\n");
    let b = batcher(8, Output::Vector);
    let mut out = Vec::new();
    run_stream(
        input.as_bytes(),
        config(RowFormat::Jsonl),
        &b.sender(),
        &mut out,
    )
    .unwrap();
    b.finish();
    let lines: Vec<serde_json::Value> = std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .map(json)
        .collect();
    assert_eq!(lines.len(), 22);
    for (i, v) in lines[..20].iter().enumerate() {
        assert_eq!(v["id"], format!("r{i}"));
        let (want, _) = reference.outputs_of(&row(i)).unwrap();
        let got: Vec<f32> = v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        // Batched with other rows here, alone there: the same values to f32 rounding
        // (a one-row product sums in its own order).
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
    assert!(lines[20]["error"].is_string() && lines[21]["error"].is_string());
}

#[test]
fn idx_images_are_rows_and_a_corrupt_file_is_one_error_line() {
    // Three 2x4 "images" of bytes.
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 4];
    idx.extend((0..24).map(|i| (i * 10) as u8));
    let b = batcher(4, Output::Class);
    let mut out = Vec::new();
    let counts = run_stream(&idx[..], config(RowFormat::Idx), &b.sender(), &mut out).unwrap();
    assert_eq!(counts.rows, 3);
    let mut bad = Vec::new();
    let counts = run_stream(&idx[..10], config(RowFormat::Idx), &b.sender(), &mut bad).unwrap();
    b.finish();
    assert_eq!((counts.rows, counts.rejected), (1, 1));
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    assert!(json(String::from_utf8(bad).unwrap().trim())["error"].is_string());
}

#[test]
fn answers_are_json_lines() {
    let a = Answer::Class {
        class: 2,
        probability: 0.5,
    };
    assert_eq!(
        a.to_json(Some(&serde_json::json!(7))),
        r#"{"id":7,"class":2,"probability":0.5}"#
    );
    assert_eq!(
        Answer::Vector(vec![1.0, f32::NAN]).to_json(None),
        r#"{"outputs":[1.0,null]}"#
    );
}

/// 32 clients at once, 10,000 requests in all (some malformed), each pipelining a
/// window of requests: every request answered once, in each client's order; rows of
/// several clients share batches; the server stops when told, with its counts.
#[test]
fn the_server_answers_every_request_of_many_clients_once() {
    const CLIENTS: usize = 32;
    const PER_CLIENT: usize = 313; // 10,016 requests
    let b = batcher(64, Output::Class);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(serve(
        listener,
        config(RowFormat::Jsonl),
        b.sender(),
        async {
            let _ = stopped.await;
        },
    ));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let stream = std::net::TcpStream::connect(addr).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut answered = Vec::new();
                // Windows of 16 requests: written, then their answers read.
                for window in (0..PER_CLIENT).collect::<Vec<_>>().chunks(16) {
                    let mut text = String::new();
                    for &i in window {
                        if i % 50 == 49 {
                            text.push_str("{not json\n");
                        } else {
                            text.push_str(&format!(
                                "{{\"id\": {}, \"features\": [{}]}}\n",
                                c * 1000 + i,
                                csv(&row(i))
                            ));
                        }
                    }
                    writer.write_all(text.as_bytes()).unwrap();
                    for _ in window {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        answered.push(json(&line));
                    }
                }
                writer.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = String::new();
                assert_eq!(
                    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap(),
                    0,
                    "no extra answers"
                );
                answered
            })
        })
        .collect();
    for (c, client) in clients.into_iter().enumerate() {
        let answers = client.join().unwrap();
        assert_eq!(answers.len(), PER_CLIENT);
        for (i, a) in answers.iter().enumerate() {
            if i % 50 == 49 {
                assert!(a["error"].is_string(), "{a}");
            } else {
                assert_eq!(a["id"], c * 1000 + i, "client {c}'s answers in order");
                assert!(a["class"].as_u64().unwrap() < 3);
            }
        }
    }
    stop.send(()).unwrap();
    let counts = runtime.block_on(server).unwrap().unwrap();
    let stats = b.finish();
    use std::sync::atomic::Ordering::Relaxed;
    let total = (CLIENTS * PER_CLIENT) as u64;
    let malformed = (CLIENTS * (PER_CLIENT / 50)) as u64;
    assert_eq!(counts.connections.load(Relaxed), CLIENTS as u64);
    assert_eq!(counts.requests.load(Relaxed), total);
    assert_eq!(counts.rejected.load(Relaxed), malformed);
    assert_eq!(stats.rows, total - malformed);
    assert!(
        stats.batches < stats.rows / 2,
        "batched across clients: {}",
        stats.summary()
    );
    eprintln!("server load test: {}", stats.summary());
}

/// Output that refuses every write, as a closed pipe does.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

/// Rows of an endless source: the reader stops once nobody reads the answers.
struct Endless(Vec<u8>);

impl std::io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        Ok(n)
    }
}

#[test]
fn a_closed_output_ends_the_stream_with_its_error() {
    let b = batcher(8, Output::Class);
    let line = format!("{}\n", csv(&row(1)));
    let input = BufReader::new(Endless(line.repeat(64).into_bytes()));
    let err = run_stream(input, config(RowFormat::Csv), &b.sender(), ClosedPipe).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    b.finish();
}
