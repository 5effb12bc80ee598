//! Several tract engines in one process, first used at the same moment on different threads.
//! tract 0.23.9's AMX int8 kernel crashed in about 5 % of such processes on this machine; the
//! crash only shows on a process's first concurrent use, so the test runs itself in many
//! fresh processes.

mod common;

use std::process::Command;

use bedside::infer::{Engine, Variant};
use common::*;

const CHILD: &str = "BEDSIDE_CONCURRENCY_CHILD";
const PROCESSES: usize = 40;

fn load_and_run_on_two_threads() {
    let threads: Vec<_> = [Variant::Shipped, Variant::Shipped, Variant::Parent]
        .into_iter()
        .map(|variant| {
            std::thread::spawn(move || {
                let mut engine = Engine::load_variant(&model_dir(), variant).unwrap();
                let input = vec![0.25f32; 224 * 224];
                let first = engine.run(&input).unwrap();
                for _ in 0..5 {
                    assert_eq!(
                        engine.run(&input).unwrap(),
                        first,
                        "same input, same output"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn int8_engines_start_together_on_several_threads() {
    if std::env::var_os(CHILD).is_some() {
        load_and_run_on_two_threads();
        return;
    }
    let me = std::env::current_exe().unwrap();
    for i in 0..PROCESSES {
        let out = Command::new(&me)
            .args([
                "--exact",
                "int8_engines_start_together_on_several_threads",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "process {i} of {PROCESSES} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
