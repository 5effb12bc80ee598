//! The fuzz targets' bodies (`fuzz/src/lib.rs`) run in the ordinary test suite: every input a
//! fuzzer ever found a crash or hang with (`fuzz/regressions/<target>/`, committed with its
//! fix), the natural inputs each target is seeded with, and a burst of mutations of them
//! (seed printed, `BEDSIDE_TEST_SEED` replays it). libFuzzer itself runs through
//! `fuzz/run.sh`; this keeps what it found fixed, and the bodies compiling, on every
//! `cargo test`.

#[path = "../fuzz/src/lib.rs"]
mod bodies;
mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use bedside::dicom::dimse;
use common::Rng;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, write_pdu};

/// Counts what each thread allocates (the allocation-bomb regressions are judged by it).
#[global_allocator]
static ALLOC: bedside::alloc::Counting = bedside::alloc::Counting;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path, ext: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && ext.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

/// A peer's side of an association after the A-ASSOCIATE-AC: a C-STORE whose data set comes
/// in two fragments, then A-RELEASE-RQ; the first byte picks the contexts' transfer syntaxes.
fn scp_stream(pick: u8) -> Vec<u8> {
    let command = |data: Vec<u8>| Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    };
    let data = |data: Vec<u8>, is_last| Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Data,
            is_last,
            data,
        }],
    };
    let object = std::fs::read(root().join("tests/data/cxr-other-8bit.dcm")).unwrap();
    // The data set without the Part 10 preamble and file meta group, as C-STORE carries it:
    // (0002,0000) UL at byte 132 gives the group's length after it.
    let meta = u32::from_le_bytes(object[140..144].try_into().unwrap()) as usize;
    // Its first 3000 bytes: the SCP keeps data sets as they come, and a short input fuzzes
    // faster.
    let body = &object[144 + meta..144 + meta + 3000];
    let mut out = vec![pick];
    for pdu in [
        command(dimse::store_request(
            2,
            "1.2.840.10008.5.1.4.1.1.1.1",
            "2.25.7",
        )),
        data(body[..1000].to_vec(), false),
        data(body[1000..].to_vec(), true),
        Pdu::ReleaseRQ,
    ] {
        write_pdu(&mut out, &pdu).unwrap();
    }
    out
}

/// The natural inputs a target starts from (what `fuzz/seeds.sh` gives libFuzzer).
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let r = root();
    match target {
        "dicom_decode_prepare" | "dicom_parse" => {
            let mut s = files_in(&r.join("tests/data"), Some("dcm"));
            s.extend(files_in(&r.join("tests/data/pydicom"), Some("dcm")));
            s.retain(|(_, b)| b.len() <= 1 << 20);
            s
        }
        "scp_pdus" => (0..3)
            .map(|i| (format!("store stream {i}"), scp_stream(i)))
            .collect(),
        "outbox_recovery" => {
            // A segment as bedside writes it: made by the outbox itself.
            let dir = tempfile::tempdir().unwrap();
            let config = bedside::publish::OutboxConfig {
                max_bytes: 1 << 20,
                max_records: 1000,
                segment_bytes: 64 << 10,
            };
            let (mut outbox, _) = bedside::publish::Outbox::open(dir.path(), config).unwrap();
            for i in 0..5 {
                let record = format!("{{\"finding\":{i}}}");
                outbox
                    .append(bedside::publish::Class::Image, record.as_bytes())
                    .unwrap();
            }
            let mut buf = Vec::new();
            let first = outbox.take_next(&mut buf).unwrap().unwrap();
            outbox.settle(first).unwrap();
            drop(outbox);
            let mut seg = Vec::new();
            let mut ack = Vec::new();
            for (name, bytes) in files_in(dir.path(), None) {
                if name.ends_with(".seg") {
                    seg = bytes;
                } else if name.ends_with(".ack") {
                    ack = bytes;
                }
            }
            assert!(!seg.is_empty(), "the outbox wrote a segment");
            let split = (seg.len() / (seg.len() + ack.len()).div_ceil(255).max(1)).min(255) as u8;
            let mut input = vec![split];
            input.extend_from_slice(&seg);
            input.extend_from_slice(&ack);
            vec![("outbox segment".into(), input)]
        }
        "model_manifest" => ["models", "tests/fixtures"]
            .iter()
            .flat_map(|d| std::fs::read_dir(r.join(d)).unwrap())
            .filter_map(|e| std::fs::read(e.unwrap().path().join("model.toml")).ok())
            .enumerate()
            .map(|(i, b)| (format!("model.toml {i}"), b))
            .collect(),
        "board_profile" => files_in(&r.join("board"), Some("toml")),
        "camera_convert" => {
            // Every format at a small size, a plain buffer behind the 12-byte layout header.
            (0..12u8)
                .map(|f| {
                    let mut input = vec![f, 64, 0, 48, 0, 0, 1, 0, 0, 255, 255, 0];
                    input.extend((0..64 * 48 * 4).map(|i| (i % 251) as u8));
                    (format!("format {f}"), input)
                })
                .collect()
        }
        other => panic!("no seeds for {other}"),
    }
}

/// A mutation as libFuzzer's simplest ones: flip, overwrite with an "interesting" value,
/// insert, erase, duplicate a chunk, truncate.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len() as u64;
        let at = |rng: &mut Rng| rng.below(len.max(1)) as usize;
        match rng.below(6) {
            0 if len > 0 => {
                let i = at(rng);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len >= 4 => {
                let i = at(rng).min(out.len() - 4);
                let v: [u8; 4] = match rng.below(4) {
                    0 => [0xff; 4],
                    1 => [0; 4],
                    2 => 0x7fff_ffffu32.to_le_bytes(),
                    _ => 0x8000_0000u32.to_be_bytes(),
                };
                out[i..i + 4].copy_from_slice(&v);
            }
            2 => {
                let i = at(rng).min(out.len());
                let n = rng.below(16) as usize;
                let bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 1 => {
                let i = at(rng);
                let n = (rng.below(64) as usize).min(out.len() - i);
                out.drain(i..i + n);
            }
            4 if len > 1 => {
                let i = at(rng);
                let n = (rng.below(256) as usize).min(out.len() - i);
                let chunk = out[i..i + n].to_vec();
                let j = at(rng).min(out.len());
                out.splice(j..j, chunk);
            }
            _ => {
                let n = at(rng);
                out.truncate(n);
            }
        }
    }
    out
}

/// Runs `body` on `input`; on a panic, keeps the input where `fuzz/run.sh` would and fails.
fn run(target: &str, body: fn(&[u8]), name: &str, input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
        let dir = root().join("target/fuzz-failures").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("crash-{}", input.len()));
        std::fs::write(&path, input).unwrap();
        panic!(
            "{target} panicked on {name}; the input is in {} (replay: fuzz/run.sh or put it in fuzz/regressions/{target}/)",
            path.display()
        );
    }
}

/// Mutations per seed file per target: enough to walk each parser's error paths, few enough
/// for CI (the decode target runs whole images).
fn mutations(target: &str) -> usize {
    match target {
        "dicom_decode_prepare" => 15,
        _ => 400,
    }
}

#[test]
fn the_fuzz_targets_survive_their_regressions_their_seeds_and_a_burst_of_mutations() {
    let mut rng = Rng::from_time();
    let mut report = Vec::new();
    for (target, body) in bodies::TARGETS {
        let started = std::time::Instant::now();
        let regressions = files_in(&root().join("fuzz/regressions").join(target), None);
        for (name, input) in &regressions {
            run(target, body, name, input);
        }
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has seeds");
        // fuzz/seeds.sh hands libFuzzer the same starting points.
        if let Some(out) = std::env::var_os("BEDSIDE_FUZZ_SEEDS_OUT") {
            let dir = Path::new(&out).join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, (_, input)) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("suite-{i}")), input).unwrap();
            }
        }
        let mut runs = 0;
        for (name, input) in &seeds {
            run(target, body, name, input);
            for _ in 0..mutations(target) {
                let m = mutate(&mut rng, input);
                run(target, body, &format!("a mutation of {name}"), &m);
                runs += 1;
            }
        }
        report.push(format!(
            "{target}: {} regression inputs, {} seeds, {runs} mutations in {:.1?}",
            regressions.len(),
            seeds.len(),
            started.elapsed()
        ));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn the_scp_seed_stream_stores_an_object_through_the_session() {
    // The scp_pdus seed must reach the spool, or the target fuzzes only the reader.
    let dir = tempfile::tempdir().unwrap();
    let spool = std::sync::Arc::new(
        bedside::source::spool::Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap(),
    );
    let syntaxes = bedside::source::scp::decodable_transfer_syntaxes();
    let ts = syntaxes
        .iter()
        .position(|t| *t == "1.2.840.10008.1.2.1")
        .unwrap();
    let stream = scp_stream(ts as u8);
    let mut session =
        bedside::source::scp::session::Session::new(spool, vec![(1, syntaxes[ts].to_owned())]);
    let mut rest = &stream[1..];
    let mut last = None;
    while !rest.is_empty() {
        let mut cursor = std::io::Cursor::new(rest);
        let pdu = dicom_ul::pdu::read_pdu(&mut cursor, 64 * 1024, true)
            .unwrap()
            .unwrap();
        rest = &rest[cursor.position() as usize..];
        last = Some(session.on_pdu(pdu).next);
    }
    assert_eq!(session.stored, 1, "the C-STORE was answered with success");
    assert_eq!(
        last,
        Some(bedside::source::scp::session::Next::Released),
        "the stream ends with a release"
    );
}

#[test]
fn the_allocation_bombs_fuzzing_found_are_refused_before_anything_is_allocated_for_them() {
    // Before dicom::lengths, each of these made dicom-parser zero-fill a 2 GiB buffer
    // (`bedside infer` peaked at 2.1 GB RSS on the file); the second, before the walk read
    // Pixel Representation as the decoder does, 261 MiB (295 MB RSS). The bytes this thread
    // asks for while refusing each must stay within a few MiB.
    // The third, before the syntax UID was trimmed as dicom-rs trims it, 4 GiB (860 bytes).
    for (name, claim) in [
        (
            "dicom_decode_prepare/pixel-data-claims-2gib.dcm",
            "declares 2147483646 bytes",
        ),
        (
            "dicom_decode_prepare/ov-length-2-then-a-header-claiming-273678376.dcm",
            "element (0107,5353) declares 273678376 bytes from byte 1502",
        ),
        (
            "dicom_parse/ts-uid-ending-in-a-newline-then-4gib.dcm",
            "element (0000,0000) declares 4278190080 bytes from byte 390",
        ),
    ] {
        let file = root().join("fuzz/regressions").join(name);
        let (result, _, bytes) = bedside::alloc::count(|| bedside::dicom::decode::open_file(&file));
        assert!(bedside::alloc::installed());
        let err = result.expect_err(name);
        assert!(
            err.to_string().contains("a length that lies"),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(claim), "{name}: {err}");
        assert!(
            bytes < 4 << 20,
            "{name}: {bytes} bytes allocated to refuse it"
        );
    }

    let input =
        std::fs::read(root().join("fuzz/regressions/scp_pdus/command-claims-2gib.bin")).unwrap();
    // The P-DATA PDU's single command fragment: after the pick byte, the 6-byte PDU header
    // and the 6-byte PDV header.
    let command = &input[1 + 6 + 6..];
    let (result, _, bytes) =
        bedside::alloc::count(|| bedside::dicom::dimse::parse_request(command));
    let err = result.expect_err("a command claiming 2 GiB is refused");
    assert!(
        err.to_string().contains("declares 2147483646 bytes"),
        "{err}"
    );
    assert!(bytes < 1 << 20, "{bytes} bytes allocated to refuse it");
}

#[test]
fn dicom_rs_reading_a_bomb_unchecked_under_the_allocation_cap_fails_cleanly() {
    // The second line of defence (`alloc::capped`, as `decode::open_file_within` sets it):
    // each bomb read by dicom-rs directly, without the length check, under a cap of 8 times
    // its size and 1 MiB. Its reservation is refused and dicom-rs reports it; nothing near
    // the claimed gigabytes is allocated.
    for name in [
        "dicom_decode_prepare/pixel-data-claims-2gib.dcm",
        "dicom_decode_prepare/ov-length-2-then-a-header-claiming-273678376.dcm",
        "dicom_parse/ts-uid-ending-in-a-newline-then-4gib.dcm",
    ] {
        let bytes = std::fs::read(root().join("fuzz/regressions").join(name)).unwrap();
        let magic = bedside::dicom::lengths::magic_code_at(&bytes).unwrap();
        let cap = bytes.len() * 8 + (1 << 20);
        let (result, _, allocated) = bedside::alloc::count(|| {
            bedside::alloc::capped(cap, || {
                dicom_object::OpenFileOptions::new()
                    .read_preamble(dicom_object::file::ReadPreamble::Never)
                    .from_reader(&bytes[magic..])
            })
        });
        let err = result.expect_err(name);
        assert!(
            format!("{err:?}").contains("Allocat"),
            "{name}: not refused for its allocation: {err:?}"
        );
        assert!(allocated < 4 << 20, "{name}: {allocated} bytes allocated");
        // The cap is the caller's only: the thread allocates freely after it.
        let big: Vec<u8> = Vec::with_capacity(cap + 1);
        assert!(big.capacity() > cap);
    }
}

#[test]
fn no_regression_input_makes_its_target_allocate_more_than_the_fuzzers_limit_allows() {
    // libFuzzer ran with -malloc_limit_mb=256 and -rss_limit_mb=512; every OOM it reported is
    // in fuzz/regressions/. Here each must stay far under: what the thread allocates in all
    // while its body runs (a sum, so an upper bound of its peak) under 64 MiB. That sum
    // includes the deflated-data-set cap, reserved whole (the bodies' 4 MiB file limit).
    for (target, body) in bodies::TARGETS {
        for (name, input) in files_in(&root().join("fuzz/regressions").join(target), None) {
            let ((), _, bytes) = bedside::alloc::count(|| body(&input));
            let limit = 64 << 20;
            assert!(
                bytes < limit,
                "{target}: {name} made its body allocate {} MiB",
                bytes >> 20
            );
            eprintln!("{target}: {name}: {} KiB allocated", bytes >> 10);
        }
    }
}

#[test]
fn every_fuzz_target_is_declared_and_calls_its_body() {
    // What CI cannot build (an instrumented tree takes ~40 min on 2 cores; fuzz/run.sh does),
    // checked here: each body has its [[bin]] in fuzz/Cargo.toml and its libFuzzer entry
    // calls it, and there is no entry without a body.
    let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
    let mut entries: Vec<String> = std::fs::read_dir(root().join("fuzz/fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        // Every body in one binary, chosen by BEDSIDE_FUZZ_TARGET.
        .filter(|name| name != "by_name")
        .collect();
    entries.sort();
    let mut names: Vec<String> = bodies::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(entries, names, "fuzz/fuzz_targets/*.rs and bodies::TARGETS");
    for name in names {
        assert!(
            manifest.contains(&format!(
                "name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\""
            )),
            "fuzz/Cargo.toml declares {name}"
        );
        let entry =
            std::fs::read_to_string(root().join(format!("fuzz/fuzz_targets/{name}.rs"))).unwrap();
        assert!(
            entry.contains(&format!("bedside_fuzz::{name}(data)")),
            "fuzz_targets/{name}.rs calls bedside_fuzz::{name}"
        );
    }
}
