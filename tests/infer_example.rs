//! The infer example as a user runs it on the mnist example's checkpoints: a bag of two
//! MLPs trained by `mnist --bag 2`, one scored over the embedded test digits (IDX), an
//! int8 export a quarter of the size scoring the same, the two averaged (`--ensemble`),
//! bad rows on stdin answered with error lines, and `--listen` serving TCP clients.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn ok(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn classes(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["class"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn trains_a_bag_then_scores_quantizes_ensembles_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("bag");
    let d = |p: &std::path::Path| p.to_str().unwrap().to_string();
    ok(&support::run_example(
        "mnist",
        &[
            "--epochs",
            "1",
            "--hidden",
            "64",
            "--bag",
            "2",
            "--checkpoint-dir",
            &d(&runs),
            "--quiet",
        ],
    ));
    let (m0, m1) = (runs.join("member-0"), runs.join("member-1"));
    let test_images = "data/mnist-10k/t10k-images-idx3-ubyte.gz";
    let scored = support::run_example(
        "infer",
        &[
            "--checkpoint",
            &d(&m0),
            "--input",
            test_images,
            "--format",
            "idx",
        ],
    );
    let stderr = ok(&scored);
    assert!(
        stderr.contains("2000 rows read, 0 rejected") && stderr.contains("p99"),
        "{stderr}"
    );
    let f32_classes = classes(&scored.stdout);
    assert_eq!(f32_classes.len(), 2000);

    let int8 = dir.path().join("int8.safetensors");
    let stderr = ok(&support::run_example(
        "infer",
        &[
            "--checkpoint",
            &d(&m0),
            "--quantize",
            "int8",
            "--out",
            &d(&int8),
        ],
    ));
    let ratio: f64 = stderr
        .split("bytes, ")
        .nth(1)
        .unwrap()
        .split('x')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ratio <= 0.3, "{stderr}");
    let scored = support::run_example(
        "infer",
        &[
            "--checkpoint",
            &d(&int8),
            "--input",
            test_images,
            "--format",
            "idx",
            "--max-batch",
            "1",
        ],
    );
    ok(&scored);
    let same = classes(&scored.stdout)
        .iter()
        .zip(&f32_classes)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        same >= 1980,
        "int8 agrees with f32 on {same} of 2000 digits"
    );

    let ensemble = support::run_example(
        "infer",
        &[
            "--ensemble",
            &format!("{},{}", d(&m0), d(&m1)),
            "--input",
            test_images,
            "--format",
            "idx",
        ],
    );
    assert!(ok(&ensemble).contains("an ensemble of 2 models"));
    assert_eq!(classes(&ensemble.stdout).len(), 2000);

    // Bad rows on stdin: an error line each, the good one answered.
    let mut child = Command::new(support::example("infer"))
        .args(["--checkpoint", &d(&int8), "--format", "csv", "--pixels"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let good = vec!["0"; 784].join(",");
    let rows = format!("1,2,3\nnan,{}\n{good}\nhello\n", vec!["0"; 783].join(","));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rows.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    ok(&out);
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].contains("error") && lines[1].contains("error") && lines[3].contains("error"));
    assert!(lines[2].contains("class"));

    // --listen: two clients, one answer per request line.
    let mut server = Command::new(support::example("infer"))
        .args([
            "--checkpoint",
            &d(&int8),
            "--format",
            "csv",
            "--pixels",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(server.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "the server stopped");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    for _ in 0..2 {
        let stream = std::net::TcpStream::connect(&addr).unwrap();
        let mut w = stream.try_clone().unwrap();
        w.write_all(format!("{good}\nbad\n{good}\n").as_bytes())
            .unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
        let answers: Vec<String> = BufReader::new(stream).lines().map(Result::unwrap).collect();
        assert_eq!(answers.len(), 3, "{answers:?}");
        assert!(answers[1].contains("error") && answers[0] == answers[2]);
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn bad_arguments_and_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.safetensors");
    let out = support::run_example("infer", &["--checkpoint", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("none.safetensors"));
    let out = support::run_example("infer", &["--input", "x"]);
    assert!(
        !out.status.success(),
        "a checkpoint or an ensemble is required"
    );
}
