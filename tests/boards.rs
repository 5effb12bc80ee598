//! Every shipped board profile is valid, its models load and verify, and its memory plan
//! fits its budget — checked the way an installer would, with `bedside check`.

mod common;

use common::*;

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
