//! The command line every training program shares: flags become a TrainConfig and an
//! optimizer, bad combinations are errors naming the flag.

use clap::Parser;
use ringtrain_models::parallel::{InnerState, LocalSgd, NonFinitePolicy, OuterOptimizer};
use ringtrain_models::train::{
    Backend, CommKind, DeviceName, Devices, Every, OptimizerKind, Schedule, TrainArgs,
};

#[derive(Parser)]
struct Program {
    /// A flag of the program's own beside the shared ones.
    #[arg(long, default_value_t = 8)]
    width: usize,
    #[command(flatten)]
    train: TrainArgs,
}

fn parse(args: &[&str]) -> Result<Program, clap::Error> {
    Program::try_parse_from(std::iter::once("prog").chain(args.iter().copied()))
}

#[test]
fn defaults_and_every_flag_reach_the_config() {
    let p = parse(&[]).unwrap();
    let c = p.train.config().unwrap();
    assert_eq!(
        (c.epochs, c.steps, c.batch_size, c.seed),
        (Some(10), None, 128, 42)
    );
    assert_eq!(c.devices, Devices::of(Backend::Auto, None));
    assert_eq!(c.comm.kind, CommKind::Local);
    assert_eq!(c.schedule, Schedule::Constant { warmup: 0 });
    assert_eq!(p.width, 8);

    let p = parse(&[
        "--width",
        "3",
        "--backend",
        "cpu",
        "--devices",
        "4",
        "--steps",
        "500",
        "--batch-size",
        "32",
        "--lr",
        "0.003",
        "--optimizer",
        "adamw",
        "--weight-decay",
        "0.1",
        "--schedule",
        "cosine",
        "--warmup-steps",
        "50",
        "--min-lr-factor",
        "0.1",
        "--clip-grad-norm",
        "1.0",
        "--grad-accum",
        "4",
        "--seed",
        "7",
        "--checkpoint-dir",
        "/tmp/run",
        "--checkpoint-every",
        "100steps",
        "--keep-checkpoints",
        "5",
        "--on-nonfinite",
        "skip",
        "--eval-every",
        "250steps",
        "--metrics-out",
        "m.jsonl",
        "--quiet",
        "--threads",
        "2",
    ])
    .unwrap();
    let c = p.train.config().unwrap();
    assert_eq!(c.devices, Devices::of(Backend::Cpu, Some(4)));
    assert_eq!(
        (c.epochs, c.steps, c.batch_size, c.seed),
        (None, Some(500), 32, 7)
    );
    assert_eq!(
        c.schedule,
        Schedule::Cosine {
            warmup: 50,
            total: None,
            min_factor: 0.1
        }
    );
    assert_eq!((c.clip_grad_norm, c.grad_accum), (Some(1.0), 4));
    let ck = c.checkpoint.unwrap();
    assert_eq!((ck.every, ck.keep), (Every::Steps(100), 5));
    assert_eq!(c.on_nonfinite, NonFinitePolicy::Skip);
    assert_eq!(c.eval_every, Every::Steps(250));
    assert_eq!((c.quiet, c.threads), (true, Some(2)));
    assert_eq!(c.settings["optimizer"], "Adamw");
    assert_eq!(p.train.lr(|_| 1.0), 0.003);
    assert_eq!(p.width, 3);
}

#[test]
fn devices_are_a_count_or_a_list() {
    let c = parse(&["--devices", "gpu:1,cpu,gpu"])
        .unwrap()
        .train
        .config()
        .unwrap();
    assert_eq!(
        c.devices,
        Devices::List(vec![
            DeviceName::Gpu(Some(1)),
            DeviceName::Cpu,
            DeviceName::Gpu(None)
        ])
    );
    for bad in ["0", "tpu", "gpu:x", ""] {
        let err = parse(&["--devices", bad]).err().expect(bad).to_string();
        assert!(err.contains("--devices"), "{bad}: {err}");
    }
}

#[test]
fn bad_combinations_are_errors_naming_the_flag() {
    let config_err = |args: &[&str]| parse(args).unwrap().train.config().unwrap_err().to_string();
    assert!(config_err(&["--optimizer", "adamw", "--momentum", "0.5"]).contains("--momentum"));
    assert!(config_err(&["--schedule", "step"]).contains("--lr-decay-steps"));
    let step = parse(&[
        "--schedule",
        "step",
        "--lr-decay-steps",
        "10",
        "--lr-gamma",
        "0.5",
    ])
    .unwrap()
    .train
    .config()
    .unwrap();
    assert_eq!(
        step.schedule,
        Schedule::Step {
            warmup: 0,
            every: 10,
            gamma: 0.5
        }
    );
    for args in [
        &["--resume"][..],
        &["--batch-size", "0"],
        &["--lr", "-1"],
        &["--clip-grad-norm", "0"],
        &["--checkpoint-every", "3weeks"],
        &["--epochs", "0"],
        &["--comm-timeout", "nan"],
        &["--sync-every", "0"],
        &["--outer-lr", "0.5"],
        &["--inner-state", "local"],
        &["--sync-every", "4", "--outer-lr", "0"],
    ] {
        assert!(parse(args).is_err(), "{args:?} must be refused");
    }
    assert!(config_err(&["--sync-every", "4", "--outer-momentum", "1"]).contains("momentum"));
}

#[test]
fn local_sgd_flags_reach_the_config() {
    let config = |args: &[&str]| parse(args).unwrap().train.config().unwrap().local_sgd;
    assert_eq!(config(&[]), None);
    assert_eq!(config(&["--sync-every", "8"]), Some(LocalSgd::every(8)));
    let diloco = config(&[
        "--sync-every",
        "500",
        "--outer-lr",
        "0.7",
        "--outer-momentum",
        "0.9",
        "--inner-state",
        "local",
    ]);
    let expected = LocalSgd::every(500)
        .with_outer(OuterOptimizer::diloco())
        .with_inner_state(InnerState::Local);
    assert_eq!(diloco, Some(expected));
}

#[test]
fn the_optimizer_comes_from_the_flags() {
    use ringtrain_runtime::optim::ParamGroup;
    use ringtrain_runtime::{Device, Var};
    let vars = || {
        vec![ParamGroup::new(
            vec![Var::zeros(3, &Device::cpu()).unwrap()],
        )]
    };
    let default_lr = |k: OptimizerKind| match k {
        OptimizerKind::Sgd => 0.05,
        OptimizerKind::Adamw => 1e-3,
    };
    let sgd = parse(&[])
        .unwrap()
        .train
        .optimizer(vars(), default_lr)
        .unwrap();
    assert_eq!(sgd.learning_rate(), 0.05);
    let adamw = parse(&["--optimizer", "adamw"]).unwrap().train;
    assert_eq!(
        adamw.optimizer(vars(), default_lr).unwrap().learning_rate(),
        1e-3
    );
    let state = adamw
        .optimizer(vars(), default_lr)
        .unwrap()
        .state()
        .unwrap();
    assert!(state.iter().any(|(n, _, _)| n == "step.0"), "an AdamW");
}

#[test]
fn bagging_flags_make_a_bag_and_bad_ones_are_refused() {
    use ringtrain_models::train::Bagging;
    let c = parse(&["--bag", "3", "--checkpoint-dir", "runs/bag"])
        .unwrap()
        .train
        .config()
        .unwrap();
    assert_eq!(
        c.bagging,
        Some(Bagging {
            members: 3,
            only: None
        })
    );
    let c = parse(&["--bag", "3", "--bag-member", "2", "--checkpoint-dir", "x"])
        .unwrap()
        .train
        .config()
        .unwrap();
    assert_eq!(
        c.bagging,
        Some(Bagging {
            members: 3,
            only: Some(2)
        })
    );
    assert_eq!(c.bagging.unwrap().members(), vec![2]);
    // A bag of one, a member past the bag, a member without a bag, no folder to keep it.
    assert!(parse(&["--bag", "1", "--checkpoint-dir", "x"]).is_err());
    let past = parse(&["--bag", "3", "--bag-member", "3", "--checkpoint-dir", "x"]).unwrap();
    assert!(past
        .train
        .config()
        .unwrap_err()
        .to_string()
        .contains("bag member 3"));
    assert!(parse(&["--bag-member", "0", "--checkpoint-dir", "x"]).is_err());
    assert!(parse(&["--bag", "2"]).is_err());
}

#[test]
fn zero_and_balance_flags_reach_the_config() {
    use ringtrain_models::parallel::Balance;
    let c = parse(&["--zero", "1", "--balance", "auto:5"])
        .unwrap()
        .train
        .config()
        .unwrap();
    assert_eq!((c.zero, c.balance), (1, Balance::Auto { steps: 5 }));
    let c = parse(&["--balance", "3,1"])
        .unwrap()
        .train
        .config()
        .unwrap();
    assert_eq!((c.zero, c.balance), (0, Balance::Weights(vec![3.0, 1.0])));
    assert!(
        parse(&["--zero", "2"]).is_err(),
        "stages 2 and 3 are not built"
    );
    assert!(parse(&["--balance", "fast"]).is_err());
}
