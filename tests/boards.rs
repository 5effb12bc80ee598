//! Every shipped board profile is valid, its models load and verify, and its memory plan
//! fits its budget — checked the way an installer would, with `bedside check`.

mod common;

use common::*;
use std::path::Path;

#[test]
fn every_shipped_board_profile_passes_check() {
    let boards = board_profiles();
    let names: Vec<String> = boards
        .iter()
        .map(|b| b.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["dev", "jetson-orin-nano", "jetson-nano", "rpi5"] {
        assert!(
            names.iter().any(|n| n == want),
            "board/{want}.toml missing: {names:?}"
        );
    }
    for board in &boards {
        let stdout = bedside_ok(&["check".as_ref(), "--board".as_ref(), board.as_os_str()]);
        assert!(
            stdout.contains("valid") && stdout.contains("fits"),
            "{stdout}"
        );
        assert!(stdout.contains("verified, runs in tract"), "{stdout}");
        eprintln!(
            "{}: {}",
            board.display(),
            stdout
                .lines()
                .find(|l| l.starts_with("total"))
                .unwrap_or("")
        );
    }
}

/// A bad field is named with the reason.
#[test]
fn a_bad_profile_names_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(repo().join("board/jetson-nano.toml")).unwrap();
    for (from, to, field) in [
        ("fps = 30", "fps = 0", "video.v4l2.fps"),
        (
            "crop = [320, 60, 640, 600]",
            "crop = [900, 60, 640, 600]",
            "video.crop",
        ),
        ("budget_mib = 448", "budget_mib = 4", "memory.budget_mib"),
        ("threads = 1", "threads = 0", "video.threads"),
        (
            "formats = [\"YUYV\", \"MJPG\"]",
            "formats = [\"H264\"]",
            "H264",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, good.replace(from, to)).unwrap();
        // Relative model paths resolve against the profile's folder: point them back.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("../models", &repo().join("models").display().to_string());
        std::fs::write(&path, text).unwrap();
        let out = bedside()
            .args(["check", "--board"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{to} accepted");
        assert!(err.contains(field), "{to}: {err}");
    }
}

/// board/dev.toml as a test can check it: paths into the repository and `dir`.
fn dev_board(dir: &Path) -> String {
    std::fs::read_to_string(repo().join("board/dev.toml"))
        .unwrap()
        .replace("../models", &repo().join("models").display().to_string())
        .replace("../var", &dir.display().to_string())
}

/// `bedside check` of a board written into `dir`: its memory plan (it must pass).
fn plan_of(dir: &Path, board: &str) -> String {
    let path = dir.join("board.toml");
    std::fs::write(&path, board).unwrap();
    let out = bedside()
        .args(["check", "--board"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The plan's line that holds `what`.
fn plan_line<'a>(plan: &'a str, what: &str) -> &'a str {
    plan.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in the plan:\n{plan}"))
}

/// Each PACS destination has a sender thread of its own, and the plan's thread-stack line
/// counts it (it did not before stop 17).
#[test]
fn the_plan_counts_a_sender_thread_per_pacs_destination() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dev_board(dir.path());
    let threads = |destinations: usize| -> u64 {
        let extra: String = (0..destinations)
            .map(|i| {
                format!(
                    "[[dicom.destinations]]\nname = \"pacs{i}\"\nae_title = \"PACS{i}\"\nhost = \"127.0.0.1\"\nport = {}\n\n",
                    11113 + i
                )
            })
            .collect();
        let plan = plan_of(
            dir.path(),
            &dev.replacen("[video]", &format!("{extra}[video]"), 1),
        );
        let line = plan_line(&plan, "thread stacks: ");
        line.split("thread stacks: ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let none = threads(0);
    assert_eq!(threads(1), none + 1);
    assert_eq!(threads(2), none + 2);
}

/// A DICOM SEG is asked of segmentation models only, and its memory is planned.
#[test]
fn a_seg_is_asked_of_segmentation_models_and_planned() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dev_board(dir.path()).replace(
            "[video]",
            "[[dicom.destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 11113\n\n[video]",
        );
    let check = |text: String| {
        let path = dir.path().join("board.toml");
        std::fs::write(&path, text).unwrap();
        bedside()
            .args(["check", "--board"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let cls =
        "path = \"".to_owned() + &repo().join("models/cxr-tiny-cls").display().to_string() + "\"\n";
    assert!(dev.contains(&cls));
    let out = check(dev.replace(&cls, &format!("{cls}dicom_results = [\"sr\", \"seg\"]\n")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a SEG of a classification model accepted"
    );
    assert!(
        err.contains("\"seg\"") && err.contains("only segmentation models make a DICOM SEG"),
        "{err}"
    );

    // One image worker: the line below is per worker.
    let seg = format!(
        "[[models]]\npath = \"{}\"\nsources = [\"dicom\"]\ndicom_results = [\"seg\"]\n\n[images]\nworkers = 1\n\n[video]",
        repo().join("models/us-fast-fluid").display()
    );
    let plan = plan_of(dir.path(), &dev.replacen("[video]", &seg, 1));
    // 1 label x 3072 x 3072 bits, twice, and the 224 x 224 mask.
    let line = plan_line(&plan, "its SEG of 1 label(s) at 3072x3072");
    let mib: f64 = line
        .split_whitespace()
        .rev()
        .nth(2) // MiB, running total, basis
        .unwrap()
        .parse()
        .unwrap();
    let want = (2.0 * 3072.0 * 3072.0 / 8.0 + 224.0 * 224.0) / 1048576.0;
    assert!((mib - want).abs() < 0.06, "{line}: want {want:.2} MiB");
}

/// Each image worker adds its own per-image lines to the plan (runners, preparation, decode
/// buffers; the weights once); a count the profile sets is refused when it does not fit,
/// and the default is lowered to what fits.
#[test]
fn image_workers_are_planned_each_and_the_default_fits_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |tail: &str| {
        let board = write_board_with(dir.path(), "url = \"mqtt://127.0.0.1:1\"", tail);
        let profile = bedside::board::BoardProfile::load(&board).unwrap();
        bedside::plan::plan_for(&profile).unwrap()
    };
    let line = |p: &bedside::plan::MemoryPlan, what: &str| {
        p.lines
            .iter()
            .find(|l| l.what.contains(what))
            .unwrap_or_else(|| panic!("no line {what:?}:\n{}", p.table()))
            .bytes
    };
    let one = plan("[images]\nworkers = 1\n");
    let three = plan("[images]\nworkers = 3\n");
    assert_eq!(one.workers.count, 1);
    assert_eq!(three.workers.count, 3);
    for what in [
        "tract working memory",
        "preparation of a",
        "DICOM object read whole",
        "DICOM decode of a",
    ] {
        assert_eq!(
            line(&three.plan, what),
            3 * line(&one.plan, what),
            "{what}:\n{}",
            three.plan.table()
        );
    }
    assert_eq!(
        line(&three.plan, "weights, plan, state"),
        line(&one.plan, "weights, plan, state"),
        "the weights are shared"
    );
    assert!(three.plan.table().contains("x3 image workers"));
    // A budget between the plans for one and for three workers.
    let budget = ((one.plan.total() + three.plan.total()) / 2) >> 20;
    let refused = plan(&format!(
        "[images]\nworkers = 3\n[memory]\nbudget_mib = {budget}\n"
    ));
    assert!(
        refused.plan.check().is_err(),
        "3 workers set over the budget must be refused"
    );
    let default = plan(&format!("[memory]\nbudget_mib = {budget}\n"));
    assert!(!default.workers.explicit);
    assert!(
        default.plan.check().is_ok(),
        "the default must fit:\n{}",
        default.plan.table()
    );
    assert!(default.workers.count >= 1 && default.workers.count <= default.workers.free_cores);
    if default.workers.free_cores >= 3 {
        assert!(default.workers.count < 3);
        assert!(
            default
                .workers
                .to_string()
                .contains("lowered to what the memory budget holds")
        );
    }
    let no_budget = plan("");
    assert_eq!(no_budget.workers.count, no_budget.workers.free_cores);
    assert_eq!(
        no_budget.workers.free_cores,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        "no video: every core"
    );
    // Out of range is a profile error naming the field.
    let board = write_board_with(
        dir.path(),
        "url = \"mqtt://127.0.0.1:1\"",
        "[images]\nworkers = 0\n",
    );
    let err = bedside::board::BoardProfile::load(&board)
        .unwrap_err()
        .to_string();
    assert!(err.contains("images.workers"), "{err}");
}
